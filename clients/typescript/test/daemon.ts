// A real stormlockd for the tests: a free loopback port, its own data
// directory (and so its own development PKI), optionally a configuration
// file, stopped by stop().

import { type ChildProcess, spawn } from "node:child_process";
import { accessSync, constants, closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

// dist/test/daemon.js -> the repository root.
const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");
const START_TIMEOUT_MS = 60_000;

export interface Daemon {
  /** `127.0.0.1:PORT`. */
  address: string;
  port: number;
  /** Its data directory; the development PKI is in `tls/`. */
  dataDir: string;
  tlsDir: string;
  /** Stops the daemon and removes its directory. */
  stop(): Promise<void>;
}

/** `$STORMLOCK_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`, else the repository's `target/debug`. */
export function daemonBinary(): string {
  const env = process.env;
  const dir = env.STORMLOCK_BIN_DIR
    ? env.STORMLOCK_BIN_DIR
    : env.CARGO_TARGET_DIR
      ? path.join(env.CARGO_TARGET_DIR, "debug")
      : path.join(REPO, "target", "debug");
  const binary = path.join(dir, "stormlockd");
  try {
    accessSync(binary, constants.X_OK);
  } catch {
    throw new Error(`stormlockd not found in ${dir}: build it with \`cargo build --bin stormlockd\` or set STORMLOCK_BIN_DIR`);
  }
  return binary;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

function tail(file: string, lines = 30): string {
  try {
    return readFileSync(file, "utf8").split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

/** Starts a daemon with the configuration file `config` (TOML), else none (the defaults). */
export async function startDaemon(config?: string): Promise<Daemon> {
  const binary = daemonBinary();
  const root = mkdtempSync(path.join(tmpdir(), "stormlockd-ts-"));
  const dataDir = path.join(root, "data");
  const log = path.join(root, "stormlockd.log");
  const args: string[] = [];
  if (config !== undefined) {
    writeFileSync(path.join(root, "stormlockd.toml"), config);
    args.push("--config", path.join(root, "stormlockd.toml"));
  }
  const port = await freePort();
  const address = `127.0.0.1:${port}`;
  // The daemon must not pick up the caller's configuration.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("STORMLOCK_")));
  const logFd = openSync(log, "w");
  const child: ChildProcess = spawn(binary, [...args, "--listen", address, "--data-dir", dataDir], {
    stdio: ["ignore", "ignore", logFd],
    env,
  });
  closeSync(logFd);
  let exited: number | null | undefined;
  const exit = new Promise<void>((resolve) =>
    child.once("exit", (code, signal) => {
      exited = code ?? (signal ? -1 : 0);
      resolve();
    }),
  );
  const stop = async () => {
    if (exited === undefined) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exit;
      clearTimeout(timer);
    }
    rmSync(root, { recursive: true, force: true });
  };

  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!readFileSync(log, "utf8").includes("listening")) {
    if (exited !== undefined) {
      const message = `stormlockd exited with ${exited}:\n${tail(log)}`;
      await stop();
      throw new Error(message);
    }
    if (Date.now() > deadline) {
      const message = `stormlockd not ready after ${START_TIMEOUT_MS} ms:\n${tail(log)}`;
      await stop();
      throw new Error(message);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { address, port, dataDir, tlsDir: path.join(dataDir, "tls"), stop };
}
