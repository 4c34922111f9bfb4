// How a client finds and authenticates to stormlockd: the same settings as
// the `stormlock` CLI. See createStormlockTransport() in transport.ts.

import { existsSync } from "node:fs";
import { isIP } from "node:net";
import * as path from "node:path";

/** The daemon's default gRPC port. */
export const DEFAULT_PORT = 7466;

/** Where the daemon listens when started without configuration. */
export const DEFAULT_ADDRESS = `127.0.0.1:${DEFAULT_PORT}`;

/** A parsed daemon address. */
export interface Target {
  /** Host name or IP address (IPv6 without brackets). */
  host: string;
  /** TCP port. */
  port: number;
  /** False only for an explicit `http://` address (a daemon run with `--insecure`). */
  tls: boolean;
}

/** What a client needs to reach the daemon, resolved by resolveSettings(). */
export interface Settings {
  /** Where the daemon is. */
  target: Target;
  /** CA certificate file (PEM); undefined: Node's default roots. */
  ca?: string;
  /** Client certificate file (PEM) for mutual TLS. */
  cert?: string;
  /** Private key file (PEM) of `cert`. */
  key?: string;
  /** Name to check the daemon's certificate against, when not the host's. */
  serverName?: string;
}

/** Options of resolveSettings() and createStormlockTransport(). */
export interface ConnectOptions {
  /**
   * `host:port`, `https://host[:port]`, or `http://host[:port]` for a daemon
   * run with `--insecure`. Default: `$STORMLOCK_ADDR`, else `127.0.0.1:7466`.
   */
  address?: string;
  /** CA certificate file (PEM). */
  ca?: string;
  /** Client certificate file (PEM); give `key` with it. */
  cert?: string;
  /** Client private key file (PEM). */
  key?: string;
  /** TLS server name to verify; default: `localhost` for loopback IPs. */
  serverName?: string;
  /** Where to look for the development certificates; default: defaultDataDir(). */
  dataDir?: string;
}

/**
 * Parses `host`, `host:port`, `[v6]:port`, or the same after `https://` (TLS)
 * or `http://` (plain text). The port defaults to 7466. Throws on anything else.
 */
export function parseAddress(address: string): Target {
  let text = address.trim();
  let tls = true;
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(text);
  if (scheme) {
    const name = scheme[1]!.toLowerCase();
    if (name === "http") tls = false;
    else if (name !== "https") throw new Error(`unsupported scheme in daemon address "${address}": use https:// or http://`);
    text = text.slice(scheme[0].length).replace(/\/+$/, "");
    if (text.includes("/")) throw new Error(`daemon address "${address}" has a path; give only host and port`);
  }
  let host: string;
  let port = DEFAULT_PORT;
  if (text.startsWith("[")) {
    const end = text.indexOf("]");
    if (end < 0) throw new Error(`daemon address "${address}": missing ']' after the IPv6 address`);
    host = text.slice(1, end);
    const rest = text.slice(end + 1);
    if (rest !== "") {
      if (!rest.startsWith(":")) throw new Error(`daemon address "${address}": expected ':port' after ']'`);
      port = parsePort(rest.slice(1), address);
    }
  } else if (text.split(":").length === 2) {
    const [h, p] = text.split(":") as [string, string];
    host = h;
    port = parsePort(p, address);
  } else {
    // No colon, or a bare IPv6 address.
    host = text;
  }
  if (host === "") throw new Error(`daemon address "${address}" has no host`);
  if (host.includes(":") && isIP(host) !== 6) {
    throw new Error(`daemon address "${address}": "${host}" is not an IPv6 address`);
  }
  return { host, port, tls };
}

/**
 * The daemon's default data directory: `$STORMLOCK_DATA_DIR`, else
 * `$XDG_STATE_HOME/stormlock`, else `~/.local/state/stormlock`.
 */
export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.STORMLOCK_DATA_DIR) return env.STORMLOCK_DATA_DIR;
  if (env.XDG_STATE_HOME) return path.join(env.XDG_STATE_HOME, "stormlock");
  if (env.HOME) return path.join(env.HOME, ".local", "state", "stormlock");
  return "stormlock-state";
}

/** True for `localhost` and loopback IP addresses. */
export function isLoopback(host: string): boolean {
  return host.toLowerCase() === "localhost" || isLoopbackIp(host);
}

/**
 * Resolves the settings as the CLI does. With a loopback address and no TLS
 * settings at all, the development PKI that a local daemon creates in its
 * data directory (`tls/ca.crt`, `tls/client.crt`, `tls/client.key`); for a
 * loopback IP the TLS server name is `localhost`, the name in the daemon's
 * development certificate. Throws on inconsistent settings and when the
 * development certificates are missing.
 */
export function resolveSettings(options: ConnectOptions = {}, env: NodeJS.ProcessEnv = process.env): Settings {
  const target = parseAddress(options.address || env.STORMLOCK_ADDR || DEFAULT_ADDRESS);
  let { ca, cert, key, serverName } = options;
  if ((cert === undefined) !== (key === undefined)) {
    throw new Error("give both a client certificate and its key, or neither");
  }
  if (!target.tls) {
    if (ca !== undefined || cert !== undefined || serverName !== undefined) {
      throw new Error(
        `${target.host}:${target.port} was given as http:// (plain text) together with TLS settings; ` +
          "use https:// or drop the TLS settings",
      );
    }
    return { target };
  }
  if (ca === undefined && cert === undefined && isLoopback(target.host)) {
    const dir = path.join(options.dataDir ?? defaultDataDir(env), "tls");
    [ca, cert, key] = ["ca.crt", "client.crt", "client.key"].map((f) => path.join(dir, f));
    const missing = [ca, cert, key].filter((f) => !existsSync(f!)).map((f) => path.basename(f!));
    if (missing.length > 0) {
      throw new Error(
        `no TLS settings were given for ${target.host}:${target.port} and the development certificates ` +
          `are missing from ${dir} (${missing.join(", ")}): start stormlockd on this machine (it creates them), ` +
          "point STORMLOCK_DATA_DIR at its data directory, or pass ca, cert and key",
      );
    }
  }
  if (serverName === undefined && isLoopbackIp(target.host)) serverName = "localhost";
  const settings: Settings = { target };
  if (ca !== undefined) settings.ca = ca;
  if (cert !== undefined) settings.cert = cert;
  if (key !== undefined) settings.key = key;
  if (serverName !== undefined) settings.serverName = serverName;
  return settings;
}

function parsePort(text: string, address: string): number {
  const port = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!(port > 0 && port < 65536)) throw new Error(`daemon address "${address}": "${text}" is not a port number`);
  return port;
}

function isLoopbackIp(host: string): boolean {
  switch (isIP(host)) {
    case 4:
      return host.startsWith("127.");
    case 6:
      // The URL parser writes IPv6 addresses in their canonical short form.
      return new URL(`http://[${host}]/`).hostname === "[::1]";
    default:
      return false;
  }
}
