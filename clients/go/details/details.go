// Package details reads the typed details of stormlockd's error answers.
//
// The daemon puts them in the standard google.rpc.Status of an error (the
// grpc-status-details-bin trailer), which grpc-go decodes into the error's
// *status.Status, so callers never parse the message text. The package lives
// beside stormlockv1 because that directory holds generated code only.
package details

import (
	"errors"

	"google.golang.org/grpc/status"

	stormlockv1 "stormlock/clients/go/stormlockv1"
)

// LeaseEvicted returns who broke a lease and why, from the
// FAILED_PRECONDITION error of Renew or IsHeld for a lease that an
// administrator force-released. It returns nil when err carries no such
// detail: the lease expired or was released by its holder, or err is of
// another kind. err may wrap the gRPC error (fmt.Errorf with %w).
func LeaseEvicted(err error) *stormlockv1.LeaseEvicted {
	for _, detail := range statusDetails(err) {
		if evicted, ok := detail.(*stormlockv1.LeaseEvicted); ok {
			return evicted
		}
	}
	return nil
}

// Window returns the window that refused a renewal, from the
// FAILED_PRECONDITION error of Renew while a freeze window or someone's
// reservation that refuses the caller is in force on the resource, or starts
// within a second: its Kind (stormlockv1.Window_KIND_FREEZE or
// Window_KIND_RESERVATION), Name, Reason, StartsAt and EndsAt (and, for a
// reservation, Owner and Resource). It returns nil when err carries no such
// detail: the lease is not current (see LeaseEvicted), or err is of another
// kind. err may wrap the gRPC error (fmt.Errorf with %w). Acquire is not
// refused with an error: its answer has Acquired false and the window in
// AcquireResponse.Window.
//
//	_, err := locks.Renew(ctx, &stormlockv1.RenewRequest{Resource: r, LeaseId: id, Ttl: ttl})
//	if w := details.Window(err); w != nil {
//		log.Printf("%s until %s: %s", w.GetName(), w.GetEndsAt().AsTime(), w.GetReason())
//	}
func Window(err error) *stormlockv1.Window {
	for _, detail := range statusDetails(err) {
		if window, ok := detail.(*stormlockv1.Window); ok {
			return window
		}
	}
	return nil
}

// statusDetails returns the decoded details of the gRPC status that err is
// or wraps (those of unknown types as errors), or none.
func statusDetails(err error) []interface{} {
	// status.FromError of older grpc-go releases does not unwrap.
	var grpcErr interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &grpcErr) {
		return nil
	}
	return grpcErr.GRPCStatus().Details()
}
