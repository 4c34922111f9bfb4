// leaseEvicted() and refusingWindow() against errors decoded from a gRPC
// trailer (grpc-status-details-bin) as the transport decodes them, without a
// daemon.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type DescMessage, type MessageShape, create, equals, toJsonString } from "@bufbuild/protobuf";
import { DurationSchema, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
// Connect's own trailer codec (internal, pinned with the package).
import { findTrailerError, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import {
  LeaseEvictedSchema,
  WindowSchema,
  Window_Kind,
  leaseEvicted,
  refusingWindow,
} from "../src/index.js";

const window = create(WindowSchema, {
  kind: Window_Kind.FREEZE,
  name: "release-freeze",
  reason: "release week",
  startsAt: timestampFromMs(1_790_000_000_000),
  endsAt: timestampFromMs(1_790_003_600_000),
});
const evicted = create(LeaseEvictedSchema, { actor: "oncall@example.org", reason: "incident 7" });
const duration = { desc: DurationSchema, value: create(DurationSchema, { seconds: 1n }) };

type Detail = { desc: DescMessage; value: MessageShape<DescMessage> };

/** The error a client sees for a FAILED_PRECONDITION trailer with these details. */
function received(...details: Detail[]): ConnectError {
  const sent = new ConnectError("the lease cannot be renewed", Code.FailedPrecondition, undefined, details);
  const trailer = setTrailerStatus(new Headers(), sent);
  assert.equal(trailer.has("grpc-status-details-bin"), details.length > 0);
  const error = findTrailerError(trailer);
  assert.ok(error, "an error status");
  assert.equal(error.code, Code.FailedPrecondition);
  return error;
}

describe("refusingWindow", () => {
  it("finds the window among other details", () => {
    const error = received(duration, { desc: WindowSchema, value: window }, { desc: LeaseEvictedSchema, value: evicted });
    const got = refusingWindow(error);
    assert.ok(got, "no window");
    assert.ok(equals(WindowSchema, got, window), toJsonString(WindowSchema, got));
    const alsoEvicted = leaseEvicted(error);
    assert.ok(alsoEvicted && equals(LeaseEvictedSchema, alsoEvicted, evicted));
  });

  it("is undefined for errors without it", () => {
    for (const error of [
      received(),
      received(duration),
      received({ desc: LeaseEvictedSchema, value: evicted }),
      new ConnectError("lease is not current", Code.FailedPrecondition),
      new Error("not from a call"),
      "not an error",
      undefined,
    ]) {
      assert.equal(refusingWindow(error), undefined, String(error));
    }
  });
});

describe("leaseEvicted", () => {
  it("finds the eviction among other details", () => {
    const error = received(duration, { desc: LeaseEvictedSchema, value: evicted });
    const got = leaseEvicted(error);
    assert.ok(got, "no eviction");
    assert.ok(equals(LeaseEvictedSchema, got, evicted), toJsonString(LeaseEvictedSchema, got));
    assert.equal(refusingWindow(error), undefined, "another detail");
  });

  it("is undefined for errors without it", () => {
    for (const error of [received(), received(duration), received({ desc: WindowSchema, value: window }), new Error("x")]) {
      assert.equal(leaseEvicted(error), undefined, String(error));
    }
  });
});
