/**
 * What each way a connection can end means for the client: reconnect (normally or after a
 * longer wait), stop, and whether it points at a bug in the client (SPEC §4's close codes;
 * docs/API.md's refusals before the upgrade).
 *
 * Owns: the close-code table. May use: nothing. Never: timers, I/O.
 */

/** An upgrade the server refused over HTTP before any WebSocket existed. */
export interface HttpRefusal {
  status: number;
  /** The error `code` of the JSON body, e.g. `revoked_api_key`, when it could be read. */
  code?: string;
  message?: string;
  /** From the `Retry-After` header. */
  retryAfterMs?: number;
}

export interface CloseInfo {
  code: number;
  reason: string;
  /** Set when the upgrade was refused and the transport could see the HTTP answer. */
  http?: HttpRefusal;
}

export interface CloseDecision {
  /** `reconnect`: try again after a backoff delay; `stop`: go to `closed` and report. */
  action: "reconnect" | "stop";
  /** `throttled` waits at least `backoff.throttleMs` (and any Retry-After). */
  backoff: "normal" | "throttled";
  /** The server says this client broke the protocol (4008, 1009, 1002, 1007, 400, 426). */
  clientBug: boolean;
  /** A short human-readable meaning. */
  meaning: string;
}

const reconnect = (meaning: string, backoff: "normal" | "throttled" = "normal", clientBug = false): CloseDecision => ({
  action: "reconnect",
  backoff,
  clientBug,
  meaning,
});
const stop = (meaning: string, clientBug = false): CloseDecision => ({
  action: "stop",
  backoff: "normal",
  clientBug,
  meaning,
});

/** WebSocket close codes (the server's, SPEC §4, plus the RFC 6455 ones a client can see). */
export const CLOSE_CODES: Readonly<Record<number, CloseDecision>> = {
  1000: reconnect("the server ended the stream"),
  1001: reconnect("the server is shutting down"),
  1002: reconnect("protocol error", "normal", true),
  1006: reconnect("the connection was lost"),
  1007: reconnect("invalid UTF-8 from the client", "normal", true),
  1009: reconnect("a client message was larger than the server allows", "normal", true),
  1011: reconnect("server error"),
  1012: reconnect("the server is restarting"),
  1013: reconnect("the server cannot serve this stream now; try again later", "throttled"),
  4001: stop("authentication failed"),
  4002: reconnect("authentication timed out"),
  4003: stop("the key was revoked, expired or rotated past its grace period"),
  4004: reconnect("heartbeat timeout"),
  4008: reconnect("the client sent messages faster than the server allows", "throttled", true),
  4009: reconnect("slow consumer: the client read events slower than they arrived"),
  4029: reconnect("too many connections for this key or account", "throttled"),
};

/** Decides what a close means. `credential` matters only for a refused upgrade. */
export function decideClose(info: CloseInfo, credential: "key" | "ticket"): CloseDecision {
  if (info.http) return decideRefusal(info.http, credential);
  return CLOSE_CODES[info.code] ?? reconnect(`closed with code ${info.code}`);
}

function decideRefusal(http: HttpRefusal, credential: "key" | "ticket"): CloseDecision {
  const what = http.code ? `${http.status} ${http.code}` : `HTTP ${http.status}`;
  if (http.status === 429) return reconnect(`refused: ${what} (rate limited)`, "throttled");
  if (http.status === 401) {
    // A ticket is single-use and short-lived: a fresh one may work. A key will not heal.
    return credential === "ticket" ? reconnect(`ticket refused: ${what}`) : stop(`key refused: ${what}`);
  }
  if (http.status === 403) return stop(`refused: ${what}`);
  if (http.status === 400 || http.status === 426) return stop(`refused: ${what}`, true);
  return reconnect(`refused: ${what}`);
}
