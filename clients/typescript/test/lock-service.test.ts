// The generated TypeScript client against a real stormlockd over mutual TLS.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, type Client, createClient } from "@connectrpc/connect";
import { durationFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import {
  type AcquireResponse,
  type StormlockTransport,
  Health,
  HealthCheckResponse_ServingStatus,
  LockService,
  Window_Kind,
  createStormlockTransport,
  leaseEvicted,
  refusingWindow,
} from "../src/index.js";
import { type Daemon, startDaemon } from "./daemon.js";

const LEASE_ID = /^[0-9a-f]{32}$/;
const TIMEOUT_MS = 10_000;

let daemon: Daemon;
let transport: StormlockTransport;
let locks: Client<typeof LockService>;
const transports: StormlockTransport[] = [];

/** A resource name no other test uses. */
const fresh = () => `ts-tests/${randomBytes(6).toString("hex")}`;

function open(options: Parameters<typeof createStormlockTransport>[0]): StormlockTransport {
  const t = createStormlockTransport(options);
  transports.push(t);
  return t;
}

function acquire(resource: string, ttlSeconds = 600, reason = ""): Promise<AcquireResponse> {
  return locks.acquire({ resource, ttl: durationFromMs(ttlSeconds * 1000), reason }, { timeoutMs: TIMEOUT_MS });
}

/** Asserts that `call` fails with `code` and returns the error. */
async function failsWith(call: Promise<unknown>, code: Code): Promise<ConnectError> {
  try {
    await call;
  } catch (e) {
    const error = ConnectError.from(e);
    assert.equal(Code[error.code], Code[code], error.message);
    return error;
  }
  assert.fail(`expected ${Code[code]}, the call succeeded`);
}

before(async () => {
  daemon = await startDaemon();
  transport = open({
    address: daemon.address,
    ca: path.join(daemon.tlsDir, "ca.crt"),
    cert: path.join(daemon.tlsDir, "client.crt"),
    key: path.join(daemon.tlsDir, "client.key"),
  });
  locks = createClient(LockService, transport);
});

after(async () => {
  for (const t of transports) t.close();
  await daemon?.stop();
});

describe("LockService over mutual TLS", () => {
  it("reports SERVING on the health service", async () => {
    const health = createClient(Health, transport);
    for (const service of ["", "stormlock.v1.LockService"]) {
      const answer = await health.check({ service }, { timeoutMs: TIMEOUT_MS });
      assert.equal(answer.status, HealthCheckResponse_ServingStatus.SERVING, service);
    }
  });

  it("grants a lease", async () => {
    const resource = fresh();
    const before = Date.now();
    const answer = await acquire(resource, 600, "ts suite");
    assert.equal(answer.acquired, true);
    assert.equal(answer.holder, undefined);
    const lease = answer.lease!;
    assert.equal(lease.resource, resource);
    assert.match(lease.leaseId, LEASE_ID);
    assert.match(lease.principal, /@/); // user@host of the client certificate
    assert.equal(lease.reason, "ts suite");
    assert.ok(lease.fence > 0n);
    const acquiredAt = timestampMs(lease.acquiredAt!);
    assert.ok(acquiredAt >= before - 2000 && acquiredAt <= Date.now() + 2000, `${acquiredAt}`);
    assert.ok(Math.abs(timestampMs(lease.expiresAt!) - acquiredAt - 600_000) <= 1000);
  });

  it("answers contention with the holder", async () => {
    const resource = fresh();
    const first = await acquire(resource, 600, "deploying");
    assert.equal(first.acquired, true);
    const second = await acquire(resource, 600, "me too");
    assert.equal(second.acquired, false);
    assert.equal(second.lease, undefined);
    const holder = second.holder!;
    assert.equal(holder.resource, resource);
    assert.equal(holder.principal, first.lease!.principal);
    assert.equal(holder.reason, "deploying");
    assert.equal(holder.fence, first.lease!.fence);
    assert.equal(timestampMs(holder.acquiredAt!), timestampMs(first.lease!.acquiredAt!));
    // The caller is the holder (same client certificate), so it sees the id.
    assert.equal(holder.leaseId, first.lease!.leaseId);
  });

  it("renews with a new TTL", async () => {
    const resource = fresh();
    const lease = (await acquire(resource, 60)).lease!;
    const renewed = (
      await locks.renew({ resource, leaseId: lease.leaseId, ttl: durationFromMs(7_200_000) }, { timeoutMs: TIMEOUT_MS })
    ).lease!;
    assert.equal(renewed.leaseId, lease.leaseId);
    assert.equal(renewed.fence, lease.fence);
    assert.ok(Math.abs(timestampMs(renewed.expiresAt!) - (Date.now() + 7_200_000)) <= 5000);
    const current = await locks.current({ resource }, { timeoutMs: TIMEOUT_MS });
    assert.equal(timestampMs(current.lease!.expiresAt!), timestampMs(renewed.expiresAt!));
  });

  it("refuses to renew a released lease with FAILED_PRECONDITION", async () => {
    const resource = fresh();
    const lease = (await acquire(resource)).lease!;
    await locks.release({ resource, leaseId: lease.leaseId }, { timeoutMs: TIMEOUT_MS });
    await failsWith(locks.renew({ resource, leaseId: lease.leaseId }, { timeoutMs: TIMEOUT_MS }), Code.FailedPrecondition);
  });

  it("says who broke a lease, and why, to Renew and IsHeld", async () => {
    const resource = fresh();
    const lease = (await acquire(resource, 600, "long job")).lease!;
    const broken = await locks.forceRelease({ resource, reason: "incident 42" }, { timeoutMs: TIMEOUT_MS });
    assert.equal(broken.released?.leaseId, lease.leaseId);
    const request = { resource, leaseId: lease.leaseId };
    for (const call of [() => locks.renew(request, { timeoutMs: TIMEOUT_MS }), () => locks.isHeld(request, { timeoutMs: TIMEOUT_MS })]) {
      const error = await failsWith(call(), Code.FailedPrecondition);
      const evicted = leaseEvicted(error);
      // The development client certificate is the administrator's.
      assert.equal(evicted?.actor, lease.principal);
      assert.equal(evicted?.reason, "incident 42");
      assert.equal(refusingWindow(error), undefined);
    }
  });

  it("names no evictor for an expired or released lease", async () => {
    const resource = fresh();
    const expired = (await acquire(resource, 1)).lease!;
    await new Promise((r) => setTimeout(r, 2200));
    const released = (await acquire(resource)).lease!;
    await locks.release({ resource, leaseId: released.leaseId }, { timeoutMs: TIMEOUT_MS });
    for (const lease of [expired, released]) {
      const call = locks.renew({ resource, leaseId: lease.leaseId }, { timeoutMs: TIMEOUT_MS });
      const error = await failsWith(call, Code.FailedPrecondition);
      assert.equal(leaseEvicted(error), undefined);
      assert.equal(refusingWindow(error), undefined);
    }
    const invalid = await failsWith(locks.acquire({ resource: "" }, { timeoutMs: TIMEOUT_MS }), Code.InvalidArgument);
    assert.equal(leaseEvicted(invalid), undefined);
    assert.equal(leaseEvicted(new Error("not from a call")), undefined);
    assert.equal(refusingWindow(invalid), undefined);
  });

  it("tells a current lease from a stale one", async () => {
    const resource = fresh();
    const lease = (await acquire(resource)).lease!;
    const held = async (leaseId: string) => (await locks.isHeld({ resource, leaseId }, { timeoutMs: TIMEOUT_MS })).held;
    assert.equal(await held(lease.leaseId), true);
    assert.equal(await held(randomBytes(16).toString("hex")), false);
    await locks.release({ resource, leaseId: lease.leaseId }, { timeoutMs: TIMEOUT_MS });
    assert.equal(await held(lease.leaseId), false);
  });

  it("releases, idempotently", async () => {
    const resource = fresh();
    const lease = (await acquire(resource)).lease!;
    const request = { resource, leaseId: lease.leaseId };
    assert.equal((await locks.release(request, { timeoutMs: TIMEOUT_MS })).released, true);
    assert.equal((await locks.current({ resource }, { timeoutMs: TIMEOUT_MS })).lease, undefined);
    assert.equal((await locks.release(request, { timeoutMs: TIMEOUT_MS })).released, false);
    assert.equal((await acquire(resource)).acquired, true);
  });

  it("shows the current holder", async () => {
    const resource = fresh();
    assert.equal((await locks.current({ resource }, { timeoutMs: TIMEOUT_MS })).lease, undefined);
    const lease = (await acquire(resource, 600, "looking")).lease!;
    const current = (await locks.current({ resource }, { timeoutMs: TIMEOUT_MS })).lease!;
    assert.equal(current.leaseId, lease.leaseId);
    assert.equal(current.fence, lease.fence);
    assert.equal(current.reason, "looking");
  });

  it("lists a prefix a page at a time", async () => {
    const prefix = `ts-list-${randomBytes(4).toString("hex")}/`;
    const names = [3, 0, 4, 1, 2].map((i) => `${prefix}${i}`);
    for (const name of names) assert.equal((await acquire(name)).acquired, true);
    assert.equal((await acquire(`${prefix.slice(0, -1)}-outside`)).acquired, true); // shares the text, not the prefix

    const pages: string[][] = [];
    let pageToken = "";
    do {
      const page = await locks.list({ prefix, pageSize: 2, pageToken }, { timeoutMs: TIMEOUT_MS });
      pages.push(page.leases.map((l) => l.resource));
      pageToken = page.nextPageToken;
      assert.ok(pages.length < 10, "List keeps returning a next page");
    } while (pageToken !== "");
    assert.deepEqual(pages.map((p) => p.length), [2, 2, 1]);
    assert.deepEqual(pages.flat(), [...names].sort());
  });

  it("increases the fence with every acquisition", async () => {
    const resource = fresh();
    const fences: bigint[] = [];
    for (let i = 0; i < 3; i++) {
      const lease = (await acquire(resource)).lease!;
      fences.push(lease.fence);
      assert.equal((await locks.release({ resource, leaseId: lease.leaseId }, { timeoutMs: TIMEOUT_MS })).released, true);
    }
    assert.ok(fences[0]! < fences[1]! && fences[1]! < fences[2]!, fences.join(" "));
  });

  for (const [name, request, word] of [
    ["an empty resource", { resource: "", ttl: durationFromMs(60_000) }, "resource"],
    ["a zero TTL", { resource: "ts-tests/zero-ttl", ttl: durationFromMs(0) }, "ttl"],
    ["a control character", { resource: "ts-tests/bad\nname" }, "control"],
  ] as const) {
    it(`answers ${name} with INVALID_ARGUMENT`, async () => {
      const error = await failsWith(locks.acquire(request, { timeoutMs: TIMEOUT_MS }), Code.InvalidArgument);
      assert.ok(error.rawMessage.includes(word), error.rawMessage);
    });
  }
});

/** `t` (ms since the epoch, whole seconds) in RFC 3339. */
const rfc3339 = (t: number) => new Date(t).toISOString().replace(/\.\d+Z$/, "Z");

/** Seconds from writing the configuration to the start of `soon-freeze`: time
 * for the daemon to start and a lease to be taken before it (a lease is
 * refused from one second before the start). */
const SOON_LEAD_S = 5;

describe("freeze windows (a daemon of their own)", () => {
  let frozen: Daemon;
  let frozenLocks: Client<typeof LockService>;

  before(async () => {
    // Two windows that exempt nobody (the development client is refused like
    // anyone): one in force since a minute ago, one that starts soon.
    const now = Math.floor(Date.now() / 1000) * 1000;
    frozen = await startDaemon(`
[[freezes]]
name = "release-freeze"
match = ["frozen/**"]
start = "${rfc3339(now - 60_000)}"
duration = "1h"
reason = "release week"

[[freezes]]
name = "soon-freeze"
match = ["soon/**"]
start = "${rfc3339(now + SOON_LEAD_S * 1000)}"
duration = "1h"
reason = "starting soon"
`);
    frozenLocks = createClient(
      LockService,
      open({
        address: frozen.address,
        ca: path.join(frozen.tlsDir, "ca.crt"),
        cert: path.join(frozen.tlsDir, "client.crt"),
        key: path.join(frozen.tlsDir, "client.key"),
      }),
    );
  });

  after(async () => {
    await frozen?.stop();
  });

  it("refuses Acquire with the window in force, in the answer", async () => {
    const answer = await frozenLocks.acquire({ resource: "frozen/x", ttl: durationFromMs(600_000) }, { timeoutMs: TIMEOUT_MS });
    assert.equal(answer.acquired, false);
    assert.equal(answer.lease, undefined);
    assert.equal(answer.holder, undefined, "no lease holds it");
    const window = answer.window!;
    assert.equal(window.kind, Window_Kind.FREEZE);
    assert.equal(window.name, "release-freeze");
    assert.equal(window.reason, "release week");
    const startsAt = timestampMs(window.startsAt!);
    const endsAt = timestampMs(window.endsAt!);
    assert.ok(startsAt <= Date.now() && Date.now() < endsAt, `${startsAt}..${endsAt}`);
    assert.equal(endsAt - startsAt, 3_600_000);
  });

  it("refuses a Renew into a freeze with the window as the error's detail", async () => {
    const answer = await frozenLocks.acquire({ resource: "soon/x", ttl: durationFromMs(600_000) }, { timeoutMs: TIMEOUT_MS });
    assert.equal(answer.acquired, true, `soon-freeze began before the lease was taken (the daemon started too slowly?): ${answer.window?.name}`);
    const cut = answer.cutShortBy!;
    assert.equal(cut.kind, Window_Kind.FREEZE);
    assert.equal(cut.name, "soon-freeze");
    const start = timestampMs(cut.startsAt!);
    assert.ok(timestampMs(answer.lease!.expiresAt!) <= start, "never granted past the start");

    // Until the daemon says the window is in force (bounded).
    const deadline = Date.now() + 30_000;
    while ((await frozenLocks.current({ resource: "soon/x" }, { timeoutMs: TIMEOUT_MS })).window === undefined) {
      assert.ok(Date.now() < deadline, `soon-freeze not in force by ${new Date(start).toISOString()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    // With a TTL: the daemon weighs the window before the lease, which ended
    // at the start (without one it would look up the lease's own TTL first,
    // and answer that the lease is not current).
    const renew = frozenLocks.renew(
      { resource: "soon/x", leaseId: answer.lease!.leaseId, ttl: durationFromMs(60_000) },
      { timeoutMs: TIMEOUT_MS },
    );
    const error = await failsWith(renew, Code.FailedPrecondition);
    const window = refusingWindow(error);
    assert.ok(window, error.rawMessage);
    assert.equal(window.kind, Window_Kind.FREEZE);
    assert.equal(window.name, "soon-freeze");
    assert.equal(window.reason, "starting soon");
    assert.equal(timestampMs(window.startsAt!), start);
    assert.equal(timestampMs(window.endsAt!), start + 3_600_000);
    assert.equal(leaseEvicted(error), undefined);
  });
});

describe("createStormlockTransport", () => {
  it("uses the development certificates for a loopback address without TLS settings", async () => {
    for (const address of [daemon.address, `https://127.0.0.1:${daemon.port}`, `localhost:${daemon.port}`]) {
      const client = createClient(LockService, open({ address, dataDir: daemon.dataDir }));
      const answer = await client.current({ resource: fresh() }, { timeoutMs: TIMEOUT_MS });
      assert.equal(answer.lease, undefined, address);
    }
  });

  it("finds the daemon through STORMLOCK_ADDR and STORMLOCK_DATA_DIR", async () => {
    const saved = { addr: process.env.STORMLOCK_ADDR, dir: process.env.STORMLOCK_DATA_DIR };
    process.env.STORMLOCK_ADDR = daemon.address;
    process.env.STORMLOCK_DATA_DIR = daemon.dataDir;
    try {
      const client = createClient(LockService, open({}));
      const answer = await client.acquire({ resource: fresh() }, { timeoutMs: TIMEOUT_MS });
      assert.equal(answer.acquired, true);
    } finally {
      for (const [name, value] of [["STORMLOCK_ADDR", saved.addr], ["STORMLOCK_DATA_DIR", saved.dir]] as const) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
  });

  it("is refused without a client certificate", async () => {
    const resource = fresh();
    const client = createClient(LockService, open({ address: daemon.address, ca: path.join(daemon.tlsDir, "ca.crt") }));
    // Connect reports TLS failures as INTERNAL, with OpenSSL's reason.
    const error = await failsWith(client.acquire({ resource }, { timeoutMs: TIMEOUT_MS }), Code.Internal);
    assert.match(error.rawMessage, /certificate required/);
    // Nothing was taken on the refused connection.
    assert.equal((await locks.current({ resource }, { timeoutMs: TIMEOUT_MS })).lease, undefined);
  });

  it("refuses a daemon it cannot verify", async () => {
    // A client certificate is no CA: the daemon's certificate does not chain to it.
    const dir = mkdtempSync(path.join(tmpdir(), "stormlock-ts-ca-"));
    try {
      writeFileSync(path.join(dir, "ca.crt"), readFileSync(path.join(daemon.tlsDir, "client.crt")));
      const client = createClient(
        LockService,
        open({
          address: daemon.address,
          ca: path.join(dir, "ca.crt"),
          cert: path.join(daemon.tlsDir, "client.crt"),
          key: path.join(daemon.tlsDir, "client.key"),
        }),
      );
      const error = await failsWith(client.current({ resource: fresh() }, { timeoutMs: TIMEOUT_MS }), Code.Internal);
      assert.match(error.rawMessage, /unable to verify/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
