// A fake Transport for unit tests: every socket the client opens is recorded, and the
// test plays the server (open, send messages, close with a code or a refused upgrade).

export class FakeSocket {
  constructor(url, handlers) {
    this.url = new URL(url);
    this.handlers = handlers;
    this.sent = [];
    this.closedByClient = null;
    this.ended = false;
  }
  // --- the client's side (the Socket interface) ---
  send(text) {
    if (this.ended) throw new Error("send on a closed socket");
    this.sent.push(JSON.parse(text));
  }
  close(code, reason) {
    this.closedByClient = { code, reason };
  }
  // --- the test's side (the server) ---
  open() {
    this.handlers.onOpen();
    return this;
  }
  push(message) {
    this.handlers.onMessage(typeof message === "string" ? message : JSON.stringify(message));
    return this;
  }
  authSuccess(extra = {}) {
    return this.push({
      type: "auth.success",
      message: "Authenticated successfully",
      connection_id: "conn_1",
      key_id: "key_1",
      environment: "test",
      channels: ["agents", "tasks"],
      ...extra,
    });
  }
  event(channel, event, offset, data = {}) {
    const msg = { type: "event", channel, event, id: `evt_${offset ?? "x"}`, created_at: "2026-12-02T00:00:00Z", data };
    if (offset !== undefined) msg.offset = offset;
    return this.push(msg);
  }
  serverClose(code, reason = "", http) {
    this.ended = true;
    this.handlers.onClose(code, reason, http);
  }
  /** The messages the client sent of one type. */
  sentOf(type) {
    return this.sent.filter((m) => m.type === type);
  }
}

export class FakeTransport {
  constructor() {
    this.sockets = [];
    this.waiting = [];
    this.transport = (url, handlers) => {
      const socket = new FakeSocket(url, handlers);
      this.sockets.push(socket);
      this.waiting.splice(0).forEach((resolve) => resolve(socket));
      return socket;
    };
  }
  get last() {
    return this.sockets[this.sockets.length - 1];
  }
  /** Resolves with the next socket the client opens (or the newest, if it is newer than `after`). */
  next(after = this.sockets.length) {
    if (this.sockets.length > after) return Promise.resolve(this.sockets[after]);
    return new Promise((resolve) => this.waiting.push(resolve));
  }
}

/** A Storage-like object for persistence tests. */
export class MemoryStorage {
  constructor() {
    this.map = new Map();
  }
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    this.map.set(k, String(v));
  }
  removeItem(k) {
    this.map.delete(k);
  }
}

/** Resolves with the next emission of a client event. */
export function nextEmit(client, name) {
  return new Promise((resolve) => client.once(name, resolve));
}

/** Lets pending promise callbacks (the client's awaits) run. */
export async function flush() {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}
