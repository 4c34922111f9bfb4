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
	// status.FromError of older grpc-go releases does not unwrap.
	var grpcErr interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &grpcErr) {
		return nil
	}
	for _, detail := range grpcErr.GRPCStatus().Details() {
		if evicted, ok := detail.(*stormlockv1.LeaseEvicted); ok {
			return evicted
		}
	}
	return nil
}
