package details

import (
	"context"
	"errors"
	"fmt"
	"log"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

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

func testWindow() *stormlockv1.Window {
	return &stormlockv1.Window{
		Kind:     stormlockv1.Window_KIND_FREEZE,
		Name:     "release-freeze",
		Reason:   "release week",
		StartsAt: timestamppb.New(time.Unix(1790000000, 0)),
		EndsAt:   timestamppb.New(time.Unix(1790003600, 0)),
	}
}

func TestWindowFindsTheDetail(t *testing.T) {
	want := testWindow()
	evicted := &stormlockv1.LeaseEvicted{Actor: "oncall@example.org", Reason: "incident 7"}
	st, err := status.New(codes.FailedPrecondition, "the lease cannot be renewed").
		WithDetails(durationpb.New(time.Second), want, evicted)
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{st.Err(), fmt.Errorf("renew: %w", st.Err())} {
		if got := Window(err); !proto.Equal(got, want) {
			t.Errorf("Window(%v) = %v, want %v", err, got, want)
		}
		if got := LeaseEvicted(err); !proto.Equal(got, evicted) {
			t.Errorf("LeaseEvicted(%v) = %v, want %v", err, got, evicted)
		}
	}
}

func TestWindowOfOtherErrorsIsNil(t *testing.T) {
	other, err := status.New(codes.FailedPrecondition, "not current").WithDetails(durationpb.New(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	evicted, err := status.New(codes.FailedPrecondition, "not current").
		WithDetails(&stormlockv1.LeaseEvicted{Actor: "oncall@example.org", Reason: "incident 7"})
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{
		nil,
		errors.New("not from a call"),
		status.Error(codes.FailedPrecondition, "lease is not current"),
		other.Err(),
		evicted.Err(),
	} {
		if got := Window(err); got != nil {
			t.Errorf("Window(%v) = %v, want nil", err, got)
		}
	}
}

func TestLeaseEvictedOfAWindowIsNil(t *testing.T) {
	st, err := status.New(codes.FailedPrecondition, "the lease cannot be renewed").WithDetails(testWindow())
	if err != nil {
		t.Fatal(err)
	}
	if got := LeaseEvicted(st.Err()); got != nil {
		t.Errorf("LeaseEvicted(%v) = %v, want nil", st.Err(), got)
	}
}

// The window that refused a renewal, and until when.
func ExampleWindow() {
	var (
		locks   stormlockv1.LockServiceClient // from stormlockv1.NewLockServiceClient
		ctx     = context.Background()
		leaseID = "…" // from Acquire
	)
	_, err := locks.Renew(ctx, &stormlockv1.RenewRequest{Resource: "deploy/prod", LeaseId: leaseID, Ttl: durationpb.New(10 * time.Minute)})
	if w := Window(err); w != nil {
		log.Printf("not renewed: %s %q until %s: %s", w.GetKind(), w.GetName(), w.GetEndsAt().AsTime(), w.GetReason())
	}
}
