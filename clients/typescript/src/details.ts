// Typed details of the daemon's error answers. The daemon puts them in the
// standard google.rpc.Status of an error (the grpc-status-details-bin
// trailer), which Connect's gRPC transport decodes, so that callers never
// parse the message text.

import { ConnectError } from "@connectrpc/connect";
import {
  type LeaseEvicted,
  LeaseEvictedSchema,
  type Window,
  WindowSchema,
} from "./gen/stormlock/v1/lock_pb.js";

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

/**
 * The window that refused a renewal, from the FAILED_PRECONDITION error of
 * `renew` while a freeze window or someone's reservation that refuses the
 * caller is in force on the resource, or starts within a second: its `kind`
 * (`Window_Kind.FREEZE` or `Window_Kind.RESERVATION`), `name`, `reason`,
 * `startsAt` and `endsAt` (and, for a reservation, `owner` and `resource`).
 * Undefined when the error carries no such detail (the lease is not current,
 * see {@link leaseEvicted}, or the error is of another kind). `acquire` is not
 * refused with an error: its answer has `acquired` false and the window in
 * `window`.
 *
 * ```ts
 * try {
 *   await locks.renew({ resource, leaseId, ttl });
 * } catch (err) {
 *   const window = refusingWindow(err);
 *   if (window) {
 *     const until = timestampDate(window.endsAt!).toISOString(); // @bufbuild/protobuf/wkt
 *     console.error(`${window.name} until ${until}: ${window.reason}`);
 *   }
 *   throw err;
 * }
 * ```
 */
export function refusingWindow(err: unknown): Window | undefined {
  return ConnectError.from(err).findDetails(WindowSchema)[0];
}
