// A Connect gRPC transport to stormlockd over (mutual) TLS.

import { readFileSync } from "node:fs";
import type * as http2 from "node:http2";
import type { Transport } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import { type ConnectOptions, type Settings, resolveSettings } from "./settings.js";

/** A transport with a way to close its HTTP/2 connection. */
export type StormlockTransport = Transport & {
  /** Closes the connection; calls still running fail with CANCELED. */
  close(): void;
};

/**
 * Creates a gRPC transport to the daemon with the CLI's settings (see
 * resolveSettings()); pass it to `createClient(LockService, transport)`.
 */
export function createStormlockTransport(options: ConnectOptions = {}): StormlockTransport {
  return transportFor(resolveSettings(options));
}

/** Creates a gRPC transport for settings already resolved. */
export function transportFor(settings: Settings): StormlockTransport {
  const { host, port, tls } = settings.target;
  const authority = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
  const baseUrl = `${tls ? "https" : "http"}://${authority}`;
  // Try every address a name resolves to (happy eyeballs), as the Rust CLI
  // does: Node 18 otherwise connects to the first one only, and `localhost`
  // resolves to ::1 first while a daemon may listen on 127.0.0.1 alone.
  const nodeOptions: http2.SecureClientSessionOptions & { autoSelectFamily?: boolean } = {
    autoSelectFamily: true,
  };
  if (settings.ca !== undefined) nodeOptions.ca = readFileSync(settings.ca);
  if (settings.cert !== undefined) nodeOptions.cert = readFileSync(settings.cert);
  if (settings.key !== undefined) nodeOptions.key = readFileSync(settings.key);
  if (settings.serverName !== undefined) nodeOptions.servername = settings.serverName;
  const sessionManager = new Http2SessionManager(baseUrl, undefined, nodeOptions);
  const transport = createGrpcTransport({ baseUrl, sessionManager });
  return Object.assign(transport, { close: () => sessionManager.abort() });
}
