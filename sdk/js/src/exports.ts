/**
 * Everything both entry points (index.ts, node.ts) export besides `MiteosStream`.
 */

export { StreamClient, type TransportResolver } from "./client.js";
export type { TopicHandle } from "./subscriptions.js";
export { Backoff, type BackoffOptions, type BackoffKind } from "./backoff.js";
export { CLOSE_CODES, decideClose, type CloseDecision, type CloseInfo, type HttpRefusal } from "./close.js";
export { CredentialError, isBrowser, streamUrl, type TicketResult } from "./credentials.js";
export { PositionBook, type PositionStorage } from "./positions.js";
export { createTicket, TicketError, type CreateTicketOptions, type Ticket } from "./tickets.js";
export { webSocketTransport, type Socket, type SocketHandlers, type Transport, type WebSocketConstructor, type WebSocketLike } from "./transport.js";
export { TOPICS, eventMatches, isTopic } from "./protocol.js";
export type * from "./protocol.js";
export { StreamError } from "./types.js";
export type * from "./types.js";
