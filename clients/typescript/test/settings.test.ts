// How createStormlockTransport() resolves its settings, without a daemon.

import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { after, describe, it } from "node:test";
import { DEFAULT_PORT, type Target, defaultDataDir, parseAddress, resolveSettings } from "../src/index.js";

const scratch = mkdtempSync(path.join(tmpdir(), "stormlock-ts-settings-"));
after(() => rmSync(scratch, { recursive: true, force: true }));
let dirs = 0;

/** A data directory with (fake) development certificates; returns it and its tls/. */
function devPki(): { dataDir: string; tls: string } {
  const dataDir = path.join(scratch, `data-${dirs++}`);
  const tls = path.join(dataDir, "tls");
  mkdirSync(tls, { recursive: true });
  for (const f of ["ca.crt", "client.crt", "client.key"]) writeFileSync(path.join(tls, f), "PEM");
  return { dataDir, tls };
}

describe("parseAddress", () => {
  const cases: [string, Target][] = [
    ["127.0.0.1:7000", { host: "127.0.0.1", port: 7000, tls: true }],
    ["locks.example.org", { host: "locks.example.org", port: DEFAULT_PORT, tls: true }],
    ["https://locks.example.org:443/", { host: "locks.example.org", port: 443, tls: true }],
    ["HTTPS://locks.example.org", { host: "locks.example.org", port: DEFAULT_PORT, tls: true }],
    ["http://127.0.0.1:7000", { host: "127.0.0.1", port: 7000, tls: false }],
    ["[::1]:7000", { host: "::1", port: 7000, tls: true }],
    ["https://[::1]", { host: "::1", port: DEFAULT_PORT, tls: true }],
    ["::1", { host: "::1", port: DEFAULT_PORT, tls: true }],
  ];
  for (const [address, expected] of cases) {
    it(`parses ${address}`, () => assert.deepEqual(parseAddress(address), expected));
  }
  for (const address of ["", "ftp://host", "host:port", "host:0", "host:70000", "https://host/api", "[::1", "[::1]x", ":7466", "a:b:c"]) {
    it(`rejects "${address}"`, () => assert.throws(() => parseAddress(address)));
  }
});

describe("defaultDataDir", () => {
  it("prefers STORMLOCK_DATA_DIR, then XDG_STATE_HOME, then HOME", () => {
    assert.equal(defaultDataDir({ HOME: "/h" }), path.join("/h", ".local", "state", "stormlock"));
    assert.equal(defaultDataDir({ HOME: "/h", XDG_STATE_HOME: "/s" }), path.join("/s", "stormlock"));
    assert.equal(defaultDataDir({ HOME: "/h", XDG_STATE_HOME: "/s", STORMLOCK_DATA_DIR: "/d" }), "/d");
    assert.equal(defaultDataDir({ HOME: "/h", XDG_STATE_HOME: "/s", STORMLOCK_DATA_DIR: "" }), path.join("/s", "stormlock"));
  });
});

describe("resolveSettings", () => {
  for (const host of ["127.0.0.1", "127.1.2.3", "[::1]", "[0:0:0:0:0:0:0:1]", "localhost"]) {
    it(`uses the development PKI for ${host} without TLS settings`, () => {
      const { dataDir, tls } = devPki();
      const s = resolveSettings({ address: `${host}:7000`, dataDir }, {});
      assert.deepEqual([s.ca, s.cert, s.key], ["ca.crt", "client.crt", "client.key"].map((f) => path.join(tls, f)));
      // The development certificate names localhost; the IP would not be checked against it.
      assert.equal(s.serverName, host === "localhost" ? undefined : "localhost");
    });
  }

  it("finds the development PKI through the environment", () => {
    const { dataDir, tls } = devPki();
    assert.equal(resolveSettings({}, { STORMLOCK_DATA_DIR: dataDir }).ca, path.join(tls, "ca.crt"));
  });

  it("says where it looked when the development PKI is missing", () => {
    const dataDir = path.join(scratch, "empty");
    assert.throws(() => resolveSettings({ address: "127.0.0.1:7000", dataDir }, {}), (e: Error) =>
      e.message.includes(path.join(dataDir, "tls")),
    );
  });

  it("uses the system roots and the host's own name for a remote daemon", () => {
    const { dataDir } = devPki();
    assert.deepEqual(resolveSettings({ address: "locks.example.org", dataDir }, {}), {
      target: { host: "locks.example.org", port: DEFAULT_PORT, tls: true },
    });
  });

  it("lets explicit settings win over the development PKI", () => {
    const { dataDir } = devPki();
    const s = resolveSettings({ address: "127.0.0.1:7000", ca: "my-ca.pem", dataDir }, {});
    assert.deepEqual([s.ca, s.cert, s.key], ["my-ca.pem", undefined, undefined]);
    assert.equal(resolveSettings({ address: "127.0.0.1", ca: "ca.pem", serverName: "locks" }, {}).serverName, "locks");
  });

  it("takes the address from STORMLOCK_ADDR", () => {
    assert.deepEqual(resolveSettings({}, { STORMLOCK_ADDR: "http://127.0.0.1:7001" }).target, {
      host: "127.0.0.1",
      port: 7001,
      tls: false,
    });
    assert.equal(resolveSettings({ ca: "ca.pem" }, {}).target.port, DEFAULT_PORT);
  });

  it("refuses inconsistent settings", () => {
    assert.throws(() => resolveSettings({ address: "locks.example.org", cert: "c.pem" }, {}), /both/);
    assert.throws(() => resolveSettings({ address: "http://127.0.0.1", ca: "ca.pem" }, {}), /plain text/);
  });
});
