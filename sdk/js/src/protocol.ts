/**
 * The WebSocket wire protocol of miteos-stream (SPEC §4 and §7), as TypeScript types.
 *
 * Owns: message shapes and their parsing. May use: nothing. Never: I/O.
 */

/** The nine readable topics (SPEC §1). */
export const TOPICS = [
  "tasks",
  "agents",
  "workspaces",
  "billing",
  "teams",
  "integrations",
  "trading",
  "social",
  "commerce",
] as const;

export type Topic = (typeof TOPICS)[number];

export function isTopic(value: unknown): value is Topic {
  return typeof value === "string" && (TOPICS as readonly string[]).includes(value);
}

/** A channel's position: the offset of its last event within an epoch (SPEC §7). */
export interface Position {
  offset: number;
  epoch: string;
}

/** A position in a reply; `recovered` is present for channels the client asked to resume. */
export interface ReplyPosition extends Position {
  recovered?: boolean;
}

export type Positions = Partial<Record<Topic, Position>>;

/** One event as delivered. `offset` is absent for an event published around the history. */
export interface StreamEvent<T extends Topic = Topic, D = unknown> {
  type: "event";
  channel: T;
  event: string;
  id: string;
  created_at: string;
  offset?: number;
  data: D;
}

export interface AuthSuccess {
  type: "auth.success";
  message: string;
  connection_id: string;
  key_id: string;
  environment: "live" | "test";
  channels: Topic[];
  positions?: Partial<Record<Topic, ReplyPosition>>;
}

export interface Subscribed {
  type: "subscribed";
  channels: Topic[];
  positions?: Partial<Record<Topic, ReplyPosition>>;
}

export interface Unsubscribed {
  type: "unsubscribed";
  channels: Topic[];
  /** `scope_removed` when the server took the topic away (SPEC §8); absent when asked for. */
  reason?: string;
}

export interface Pong {
  type: "pong";
}

export interface ErrorMessage {
  type: "error";
  code: string;
  message: string;
  param?: string;
}

export interface Gap {
  type: "gap";
  channel: Topic;
  position: Position;
}

export type ServerMessage =
  | AuthSuccess
  | Subscribed
  | Unsubscribed
  | Pong
  | ErrorMessage
  | Gap
  | StreamEvent;

export type ClientMessage =
  | { type: "auth"; token?: string; ticket?: string; resume?: Positions }
  | { type: "subscribe"; channels: Topic[]; events?: string[]; resume?: Positions }
  | { type: "unsubscribe"; channels: Topic[] }
  | { type: "ping" };

/** Parses one text frame; returns null for anything that is not a known server message. */
export function parseServerMessage(text: string): ServerMessage | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null) return null;
  const type = (value as { type?: unknown }).type;
  switch (type) {
    case "auth.success":
    case "subscribed":
    case "unsubscribed":
      return Array.isArray((value as { channels?: unknown }).channels)
        ? (value as ServerMessage)
        : null;
    case "event":
      return isTopic((value as { channel?: unknown }).channel) &&
        typeof (value as { event?: unknown }).event === "string"
        ? (value as ServerMessage)
        : null;
    case "gap":
      return isTopic((value as { channel?: unknown }).channel) &&
        isPosition((value as { position?: unknown }).position)
        ? (value as ServerMessage)
        : null;
    case "pong":
    case "error":
      return value as ServerMessage;
    default:
      return null;
  }
}

export function isPosition(value: unknown): value is Position {
  if (typeof value !== "object" || value === null) return false;
  const p = value as { offset?: unknown; epoch?: unknown };
  return typeof p.offset === "number" && Number.isFinite(p.offset) && typeof p.epoch === "string";
}

/**
 * Whether an event name matches a subscription's patterns, exactly as the server does:
 * exact names, or a trailing `*` that matches one dot-separated segment or more.
 */
export function eventMatches(patterns: readonly string[], event: string): boolean {
  return patterns.some((p) => {
    if (!p.endsWith("*")) return p === event;
    const prefix = p.slice(0, -1);
    return event.length > prefix.length && event.startsWith(prefix);
  });
}
