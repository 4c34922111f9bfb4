package details

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	stormlockv1 "stormlock/clients/go/stormlockv1"
)

func TestLeaseEvictedFindsTheDetail(t *testing.T) {
	want := &stormlockv1.LeaseEvicted{Actor: "oncall@example.org", Reason: "incident 7"}
	st, err := status.New(codes.FailedPrecondition, "lease is not current").
		WithDetails(durationpb.New(time.Second), want)
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{st.Err(), fmt.Errorf("renew: %w", st.Err())} {
		if got := LeaseEvicted(err); !proto.Equal(got, want) {
			t.Errorf("LeaseEvicted(%v) = %v, want %v", err, got, want)
		}
	}
}

func TestLeaseEvictedOfOtherErrorsIsNil(t *testing.T) {
	other, err := status.New(codes.FailedPrecondition, "not current").WithDetails(durationpb.New(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{
		nil,
		errors.New("not from a call"),
		status.Error(codes.FailedPrecondition, "lease is not current"),
		other.Err(),
	} {
		if got := LeaseEvicted(err); got != nil {
			t.Errorf("LeaseEvicted(%v) = %v, want nil", err, got)
		}
	}
}
