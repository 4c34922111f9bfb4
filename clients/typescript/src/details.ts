// Typed details of the daemon's error answers. The daemon puts them in the
// standard google.rpc.Status of an error (the grpc-status-details-bin
// trailer), which Connect's gRPC transport decodes, so that callers never
// parse the message text.

import { ConnectError } from "@connectrpc/connect";
import { type LeaseEvicted, LeaseEvictedSchema } from "./gen/stormlock/v1/lock_pb.js";

/**
 * Who broke a lease and why, from the FAILED_PRECONDITION error of `renew` or
 * `isHeld` for a lease that an administrator force-released; undefined when
 * the error carries no such detail (the lease expired or was released by its
 * holder, or the error is of another kind).
 *
 * ```ts
 * try {
 *   await locks.renew({ resource, leaseId });
 * } catch (err) {
 *   const evicted = leaseEvicted(err);
 *   if (evicted) console.error(`${evicted.actor} broke the lease: ${evicted.reason}`);
 *   throw err;
 * }
 * ```
 */
export function leaseEvicted(err: unknown): LeaseEvicted | undefined {
  return ConnectError.from(err).findDetails(LeaseEvictedSchema)[0];
}
