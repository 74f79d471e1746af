/**
 * `@miteos/stream` for Node 20+. The same API as the browser entry; the WebSocket is the
 * `ws` package when installed (it reports a refused upgrade's status, so a revoked key
 * stops instead of retrying), else Node's own global `WebSocket` (Node 22+).
 */

import { StreamClient } from "./client.js";
import { webSocketTransport, type Transport, type WebSocketConstructor } from "./transport.js";
import type { DataMap, StreamOptions } from "./types.js";

async function nodeTransport(): Promise<Transport> {
  try {
    const ws = (await import("ws")) as { default?: unknown; WebSocket?: unknown };
    const Ctor = (ws.WebSocket ?? ws.default) as WebSocketConstructor | undefined;
    if (Ctor) return webSocketTransport(Ctor);
  } catch {
    // `ws` is an optional peer dependency; fall through to the global one.
  }
  const Global = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (Global) return webSocketTransport(Global);
  throw new TypeError("no WebSocket: install the `ws` package (npm install ws) or use Node 22+");
}

/** A stream of a key's events, reconnecting and resuming by itself. */
export class MiteosStream<D extends DataMap = DataMap> extends StreamClient<D> {
  constructor(options: StreamOptions = {}) {
    super(options, nodeTransport);
  }
}

export * from "./exports.js";
