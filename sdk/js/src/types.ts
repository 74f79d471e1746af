/**
 * The public option and event types of the client.
 *
 * Owns: type declarations only. May use: protocol, close, backoff, positions, transport.
 */

import type { BackoffOptions } from "./backoff.js";
import type { HttpRefusal } from "./close.js";
import type { TicketResult } from "./credentials.js";
import type { PositionStorage } from "./positions.js";
import type { Position, StreamEvent, Topic } from "./protocol.js";
import type { Transport, WebSocketConstructor } from "./transport.js";

/** Maps topics to the type of their events' `data`; topics not listed carry `unknown`. */
export type DataMap = { [T in Topic]?: unknown };

export type DataOf<D extends DataMap, T extends Topic> = T extends keyof D ? D[T] : unknown;

/** An event of any topic, discriminated by `channel`. */
export type AnyEvent<D extends DataMap> = { [T in Topic]: StreamEvent<T, DataOf<D, T>> }[Topic];

export type ConnectionState = "connecting" | "connected" | "reconnecting" | "closed";

export interface StreamOptions {
  /** Server base URL (`https://…`, `wss://…`, or a full `…/v1/ws`). Default: `MITEOS_STREAM_URL` (Node) or the page's origin (browser). */
  url?: string;
  /** An API key (Node, or a test key while developing). Default in Node: `MITEOS_API_KEY`. */
  apiKey?: string;
  /** Browsers: returns a fresh single-use ticket from your backend; called before every attempt. */
  getTicket?: () => TicketResult | Promise<TicketResult>;
  /** Reconnect delays (full jitter). */
  backoff?: BackoffOptions;
  /** Longest wait from opening a socket to `auth.success` before trying again, in ms (default 15 000). */
  connectTimeoutMs?: number;
  /** After this many ms without a message from the server, ping it; no pong within `pingTimeoutMs` → reconnect (default 30 000; 0 turns it off). */
  heartbeatMs?: number;
  /** How long `ping()` (and the heartbeat's ping) waits for its pong, in ms (default 10 000). */
  pingTimeoutMs?: number;
  /** Where positions survive a page reload: `"sessionStorage"`, any Storage-like object, or none (default). */
  persist?: "sessionStorage" | PositionStorage;
  /** The storage key for `persist` (default `miteos-stream:positions`); use one per stream on a page. */
  persistKey?: string;
  /** A WebSocket constructor to use instead of the platform's (or, in Node, `ws`). */
  WebSocket?: WebSocketConstructor;
  /** Lower-level than `WebSocket`: opens sockets for the client (tests use a fake). */
  transport?: Transport;
  /** Source of randomness for the jitter, in [0, 1) (tests pass a fixed one). */
  random?: () => number;
}

export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
}

export interface ConnectedInfo {
  connectionId: string;
  keyId: string;
  environment: "live" | "test";
  /** The topics this connection receives (after the app's own subscribe/unsubscribe calls). */
  channels: Topic[];
  /** True for every connection after the first one. */
  reconnect: boolean;
  /** Per resumed topic: whether every missed event is being delivered (SPEC §7). */
  recovered: Partial<Record<Topic, boolean>>;
}

export interface DisconnectedInfo {
  code: number;
  reason: string;
  /** What the code means, in words. */
  meaning: string;
  /** The HTTP answer of a refused upgrade, where the platform exposes it. */
  http?: HttpRefusal;
  /** The next attempt starts after this many ms. */
  reconnectInMs: number;
}

export interface ClosedInfo {
  /** The close code, or 1000 when the app called `close()`. */
  code: number;
  reason: string;
  meaning: string;
  http?: HttpRefusal;
  /** True when the app called `close()`; false when the server's answer stopped the client. */
  byClient: boolean;
}

export interface ResumedInfo {
  topic: Topic;
  /** True: the missed events follow, each once, in order. False: reload this topic's state. */
  recovered: boolean;
  /** The position the stream continues from. */
  position?: Position;
}

export interface GapInfo {
  topic: Topic;
  /** Events of this topic before this position may be missing: reload. */
  position: Position;
  /** `server`: a `gap` message. `client`: the SDK saw an event offset skip (no event filter on the topic). */
  source: "server" | "client";
}

export interface UnsubscribedInfo {
  topic: Topic;
  /** Why the server removed it, e.g. `scope_removed` (a key update took the scope away). */
  reason: string;
}

export interface ClientEvents<D extends DataMap> {
  state: StateChange;
  connected: ConnectedInfo;
  disconnected: DisconnectedInfo;
  closed: ClosedInfo;
  event: AnyEvent<D>;
  resumed: ResumedInfo;
  gap: GapInfo;
  unsubscribed: UnsubscribedInfo;
  error: StreamError;
}

export interface TopicEvents<T extends Topic, X> {
  event: StreamEvent<T, X>;
  resumed: ResumedInfo;
  gap: GapInfo;
  unsubscribed: UnsubscribedInfo;
}

export interface SubscribeOptions {
  /** Event-name patterns: exact names or a trailing `*` (`task.*`). Default: every event. */
  events?: string[];
}

export type StreamErrorKind =
  /** The server says this client broke the protocol (close 4008, 1009, …). A bug to fix. */
  | "client_bug"
  /** `getTicket()` threw or returned nothing; the client retries with backoff. */
  | "ticket"
  /** An `error` message from the server (`insufficient_scope`, `unknown_channel`, …). */
  | "server"
  /** The connection ended before a request (ping, subscribe) was answered, or the client is closed. */
  | "connection";

export class StreamError extends Error {
  override name = "StreamError";
  constructor(
    readonly kind: StreamErrorKind,
    message: string,
    /** The server's error code, or the close code as a string. */
    readonly code?: string,
    /** The server's `param` (e.g. the missing scope). */
    readonly param?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
