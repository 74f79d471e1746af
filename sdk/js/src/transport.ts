/**
 * The socket seam: the client talks to a `Transport`, which opens one socket per attempt.
 * `webSocketTransport` adapts any WHATWG-style WebSocket constructor: the browser's, Node's
 * own (22+), or the `ws` package's, whose refused-upgrade answers (status, Retry-After,
 * error code) it also reads. Tests pass a fake transport.
 *
 * Owns: socket callbacks → `SocketHandlers`. May use: close (types). Never: reconnect policy.
 * Invariants: `onClose` is called exactly once per socket, after `onOpen` or instead of it.
 */

import type { HttpRefusal } from "./close.js";

export interface SocketHandlers {
  onOpen(): void;
  onMessage(text: string): void;
  /** `http` is set when the upgrade was refused and the answer could be read. */
  onClose(code: number, reason: string, http?: HttpRefusal): void;
}

/** One open (or opening) socket. */
export interface Socket {
  send(text: string): void;
  close(code?: number, reason?: string): void;
}

export type Transport = (url: string, handlers: SocketHandlers) => Socket;

/** The part of the WHATWG WebSocket the client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: string, listener: (event: any) => void): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** The `ws` package's extra surface: `on('unexpected-response')` and `terminate()`. */
interface NodeWsLike extends WebSocketLike {
  on(event: "unexpected-response", listener: (req: unknown, res: IncomingLike) => void): void;
  terminate(): void;
}

interface IncomingLike {
  statusCode?: number;
  headers: Record<string, string | string[] | undefined>;
  on(event: "data", listener: (chunk: Uint8Array) => void): void;
  on(event: "end" | "error", listener: () => void): void;
  setEncoding?(encoding: string): void;
  destroy?(): void;
}

/** Wraps a WebSocket constructor into a `Transport`. */
export function webSocketTransport(Ctor: WebSocketConstructor): Transport {
  return (url, handlers) => {
    const ws = new Ctor(url);
    let closed = false;
    let refusal: HttpRefusal | undefined;
    const finish = (code: number, reason: string) => {
      if (closed) return;
      closed = true;
      handlers.onClose(code, reason, refusal);
    };
    ws.addEventListener("open", () => {
      if (!closed) handlers.onOpen();
    });
    ws.addEventListener("message", (event: { data: unknown }) => {
      if (closed) return;
      const data = event.data;
      if (typeof data === "string") handlers.onMessage(data);
      // The server sends only text frames; anything else is ignored.
    });
    ws.addEventListener("close", (event: { code?: number; reason?: string }) => {
      finish(event.code ?? 1006, event.reason ?? "");
    });
    // An error is always followed by a close event; nothing to do here but not crash.
    ws.addEventListener("error", () => {});
    if (isNodeWs(ws)) {
      ws.on("unexpected-response", (_req, res) => {
        readRefusal(res).then((r) => {
          refusal = r;
          ws.terminate();
        });
      });
    }
    return {
      send: (text) => ws.send(text),
      close: (code, reason) => {
        try {
          ws.close(code, reason);
        } catch {
          // Closing a socket that is still connecting throws in some runtimes.
        }
      },
    };
  };
}

function isNodeWs(ws: WebSocketLike): ws is NodeWsLike {
  const candidate = ws as Partial<NodeWsLike>;
  return typeof candidate.on === "function" && typeof candidate.terminate === "function";
}

const MAX_BODY = 4096;

/** Status, Retry-After and the JSON error body (at most 4 KiB) of a refused upgrade. */
function readRefusal(res: IncomingLike): Promise<HttpRefusal> {
  const refusal: HttpRefusal = { status: res.statusCode ?? 0 };
  const retryAfter = parseRetryAfter(res.headers["retry-after"]);
  if (retryAfter !== undefined) refusal.retryAfterMs = retryAfter;
  return new Promise((resolve) => {
    let body = "";
    const decoder = new TextDecoder();
    const done = () => {
      try {
        const parsed = JSON.parse(body) as { error?: { code?: unknown; message?: unknown } };
        if (typeof parsed.error?.code === "string") refusal.code = parsed.error.code;
        if (typeof parsed.error?.message === "string") refusal.message = parsed.error.message;
      } catch {
        // Not our JSON error (a proxy's page): status alone decides.
      }
      resolve(refusal);
    };
    res.on("data", (chunk) => {
      body += decoder.decode(chunk, { stream: true });
      if (body.length > MAX_BODY) {
        res.destroy?.();
        done();
      }
    });
    res.on("end", done);
    res.on("error", done);
  });
}

/** `Retry-After` in seconds (the server's form) or as an HTTP date, in ms. */
export function parseRetryAfter(value: string | string[] | undefined): number | undefined {
  const raw = Array.isArray(value) ? value[0] : value;
  if (raw === undefined || raw.trim() === "") return undefined;
  const seconds = Number(raw);
  if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
  const date = Date.parse(raw);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}
