/**
 * `@miteos/stream` for browsers (and any runtime with a platform `WebSocket`).
 *
 * Layout: client.ts (connection state machine) · subscriptions.ts (subscribe, ping, topic
 * handlers, continuity reports) · positions.ts (SPEC §7 positions, persistence) ·
 * backoff.ts · close.ts (close-code table) · credentials.ts · transport.ts (socket seam) ·
 * tickets.ts (backend ticket minting) · protocol.ts · types.ts · emitter.ts.
 * node.ts is the same API with Node's WebSocket resolution.
 */

import { StreamClient } from "./client.js";
import { webSocketTransport, type WebSocketConstructor } from "./transport.js";
import type { DataMap, StreamOptions } from "./types.js";

/** A stream of a key's (or ticket's) events, reconnecting and resuming by itself. */
export class MiteosStream<D extends DataMap = DataMap> extends StreamClient<D> {
  constructor(options: StreamOptions = {}) {
    super(options, () => {
      const Ctor = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
      if (!Ctor) throw new TypeError("no global WebSocket here: pass the WebSocket option");
      return webSocketTransport(Ctor);
    });
  }
}

export * from "./exports.js";
