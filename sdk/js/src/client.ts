/**
 * `StreamClient`: one logical stream over a succession of sockets. The connection state
 * machine (connecting → connected → reconnecting … → closed), reconnects with backoff and a
 * fresh credential per attempt, the auth handshake with `resume`, replies and events.
 *
 * Owns: the socket of the moment and the state. May use: every other module of the SDK.
 * Invariants: callbacks of a superseded socket are ignored (generation check); `closed` is
 * final until `connect()`; a position never advances past an event that was not handled.
 */

import { Backoff } from "./backoff.js";
import { decideClose, type CloseDecision, type CloseInfo } from "./close.js";
import { resolveCredential, streamUrl, defaultBaseUrl, ticketString, type Credential } from "./credentials.js";
import { Emitter } from "./emitter.js";
import { PositionBook, type PositionStorage } from "./positions.js";
import { parseServerMessage, type AuthSuccess, type ClientMessage, type Positions, type ServerMessage, type Topic } from "./protocol.js";
import { Subscriptions, type Pending } from "./subscriptions.js";
import type { Socket, Transport } from "./transport.js";
import { webSocketTransport } from "./transport.js";
import {
  StreamError,
  type ClientEvents,
  type ConnectionState,
  type DataMap,
  type StreamOptions,
} from "./types.js";

/** How an entry point (browser or Node) finds a WebSocket when none is passed. */
export type TransportResolver = () => Transport | Promise<Transport>;

export class StreamClient<D extends DataMap = DataMap> extends Subscriptions<D> {
  private currentState: ConnectionState = "closed";
  private readonly credential: Credential;
  private readonly url: URL;
  private readonly backoff: Backoff;
  private readonly connectTimeoutMs: number;
  private transport: Transport | undefined;
  private socket: Socket | undefined;
  private generation = 0;
  private connectedOnce = false;
  private sentResume: Positions | undefined;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  private idleTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly heartbeatMs: number;
  protected readonly events = new Emitter<ClientEvents<D>>();

  constructor(options: StreamOptions, private readonly resolveTransport: TransportResolver) {
    super(new PositionBook(storageFrom(options.persist), options.persistKey), options.pingTimeoutMs ?? 10_000);
    this.credential = resolveCredential(options);
    this.url = streamUrl(options.url ?? defaultBaseUrl());
    this.backoff = new Backoff(options.backoff, options.random);
    this.connectTimeoutMs = options.connectTimeoutMs ?? 15_000;
    this.heartbeatMs = options.heartbeatMs ?? 30_000;
    if (options.transport) this.transport = options.transport;
    else if (options.WebSocket) this.transport = webSocketTransport(options.WebSocket);
  }

  /** The connection state. */
  get state(): ConnectionState {
    return this.currentState;
  }

  /** Adds a listener for a client event; returns a function that removes it. */
  on<K extends keyof ClientEvents<D>>(name: K, listener: (arg: ClientEvents<D>[K]) => void): () => void {
    return this.events.on(name, listener);
  }

  once<K extends keyof ClientEvents<D>>(name: K, listener: (arg: ClientEvents<D>[K]) => void): () => void {
    return this.events.once(name, listener);
  }

  off<K extends keyof ClientEvents<D>>(name: K, listener: (arg: ClientEvents<D>[K]) => void): void {
    this.events.off(name, listener);
  }

  /** Starts connecting (no-op unless `closed`). Returns the client for chaining. */
  connect(): this {
    if (this.currentState !== "closed") return this;
    this.backoff.reset();
    this.setState(this.connectedOnce ? "reconnecting" : "connecting");
    void this.attempt();
    return this;
  }

  /** Closes the stream for good (until `connect()`); pending requests are rejected. */
  close(): void {
    if (this.currentState === "closed") return;
    this.detach(1000, "client closed");
    this.finish({ code: 1000, reason: "client closed", meaning: "closed by the app", byClient: true });
  }

  /** Resolves when the stream is `connected` (at once if it is); rejects if it closes first. */
  ready(): Promise<void> {
    if (this.currentState === "connected") return Promise.resolve();
    return new Promise((resolve, reject) => {
      const offConnected = this.events.once("connected", () => {
        offClosed();
        resolve();
      });
      const offClosed = this.events.once("closed", (info) => {
        offConnected();
        reject(new StreamError("connection", `stream closed: ${info.meaning}`, String(info.code)));
      });
    });
  }

  // === the socket's life ===

  private async attempt(): Promise<void> {
    const gen = ++this.generation;
    let transport: Transport;
    try {
      transport = this.transport ??= await this.resolveTransport();
    } catch (error) {
      if (gen !== this.generation) return;
      this.events.emit("error", new StreamError("connection", `no WebSocket available: ${describe(error)}`, undefined, undefined, { cause: error }));
      if (gen === this.generation) this.finish({ code: 1006, reason: "", meaning: "no WebSocket implementation", byClient: false });
      return;
    }
    let query: string;
    let auth: Extract<ClientMessage, { type: "auth" }>;
    if (this.credential.kind === "key") {
      query = `token=${encodeURIComponent(this.credential.token)}`;
      auth = { type: "auth", token: this.credential.token };
    } else {
      try {
        const ticket = ticketString(await this.credential.getTicket());
        query = `ticket=${encodeURIComponent(ticket)}`;
        auth = { type: "auth", ticket };
      } catch (error) {
        if (gen !== this.generation) return;
        this.events.emit("error", new StreamError("ticket", `getTicket() failed: ${describe(error)}`, undefined, undefined, { cause: error }));
        if (gen !== this.generation) return; // a listener called close()
        this.scheduleReconnect({ code: 1006, reason: "" }, { action: "reconnect", backoff: "normal", clientBug: false, meaning: "could not get a ticket" });
        return;
      }
    }
    if (gen !== this.generation) return; // closed (or superseded) while waiting for the ticket
    this.sentResume = this.resumePositions();
    if (this.sentResume) auth.resume = this.sentResume;
    this.connectTimer = setTimeout(() => {
      if (gen !== this.generation) return;
      this.detach(4000, "connect timeout");
      this.onSocketClose({ code: 1006, reason: "connect timeout" });
    }, this.connectTimeoutMs);
    const url = `${this.url.href}?${query}`;
    this.socket = transport(url, {
      onOpen: () => {
        if (gen === this.generation) this.send(auth);
      },
      onMessage: (text) => {
        if (gen === this.generation) this.onText(text);
      },
      onClose: (code, reason, http) => {
        if (gen !== this.generation) return;
        this.socket = undefined;
        this.onSocketClose(http ? { code, reason, http } : { code, reason });
      },
    });
  }

  protected send(message: ClientMessage): boolean {
    if (!this.socket) return false;
    try {
      this.socket.send(JSON.stringify(message));
      return true;
    } catch {
      return false; // the close callback follows and decides what happens next
    }
  }

  protected isConnected(): boolean {
    return this.currentState === "connected";
  }

  private onText(text: string): void {
    this.armHeartbeat();
    const message = parseServerMessage(text);
    if (!message) return; // unknown message types are ignored: newer servers may add some
    if (message.type === "auth.success") this.onAuthSuccess(message);
    else this.onMessage(message as Exclude<ServerMessage, AuthSuccess>);
  }

  private onAuthSuccess(message: AuthSuccess): void {
    clearTimeout(this.connectTimer);
    const reconnect = this.connectedOnce;
    this.connectedOnce = true;
    this.backoff.reset();
    const recovered = this.applyAuth(message, this.sentResume);
    this.setState("connected");
    this.armHeartbeat();
    this.events.emit("connected", {
      connectionId: message.connection_id,
      keyId: message.key_id,
      environment: message.environment,
      channels: this.channels(),
      reconnect,
      recovered,
    });
    this.reportResumes(message, this.sentResume, reconnect);
    this.restoreSubscriptions(message.channels);
  }

  /**
   * A browser never sees the server's ping frames, and a dead network can keep a socket
   * "open" for minutes: after `heartbeatMs` without any message, ping; no pong → reconnect.
   */
  private armHeartbeat(): void {
    clearTimeout(this.idleTimer);
    if (this.heartbeatMs <= 0 || this.currentState !== "connected") return;
    const socket = this.socket;
    this.idleTimer = setTimeout(() => {
      this.ping().catch(() => {
        // Only a missing pong on the same, still current socket means it is dead.
        if (this.socket !== socket || this.currentState !== "connected") return;
        this.detach(4000, "heartbeat timeout");
        this.onSocketClose({ code: 1006, reason: "heartbeat timeout" });
      });
    }, this.heartbeatMs);
  }

  private onSocketClose(info: CloseInfo): void {
    clearTimeout(this.connectTimer);
    clearTimeout(this.idleTimer);
    this.connectionLost();
    const decision = decideClose(info, this.credential.kind);
    if (decision.clientBug) {
      this.events.emit("error", new StreamError("client_bug", `the server closed the stream: ${decision.meaning}`, String(info.http?.status ?? info.code)));
    }
    if (decision.action === "stop") {
      const closed = { code: info.code, reason: info.reason, meaning: decision.meaning, byClient: false };
      this.finish(info.http ? { ...closed, http: info.http } : closed);
      return;
    }
    this.scheduleReconnect(info, decision);
  }

  private scheduleReconnect(info: CloseInfo, decision: CloseDecision): void {
    const delay = this.backoff.next(decision.backoff, info.http?.retryAfterMs);
    this.setState("reconnecting");
    const disconnected = { code: info.code, reason: info.reason, meaning: decision.meaning, reconnectInMs: delay };
    this.events.emit("disconnected", info.http ? { ...disconnected, http: info.http } : disconnected);
    if (this.currentState !== "reconnecting") return; // a listener called close()
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.attempt();
    }, delay);
  }

  /** Forgets the socket of the moment, closing it; its later callbacks are ignored. */
  private detach(code: number, reason: string): void {
    this.generation += 1;
    clearTimeout(this.connectTimer);
    clearTimeout(this.idleTimer);
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    const socket = this.socket;
    this.socket = undefined;
    socket?.close(code, reason);
  }

  private finish(info: { code: number; reason: string; meaning: string; byClient: boolean; http?: CloseInfo["http"] }): void {
    this.generation += 1;
    this.connectionLost();
    this.closedForGood(info.meaning);
    this.setState("closed");
    this.events.emit("closed", info);
  }

  private setState(state: ConnectionState): void {
    const previous = this.currentState;
    if (previous === state) return;
    this.currentState = state;
    this.events.emit("state", { state, previous });
  }
}

function storageFrom(persist: StreamOptions["persist"]): PositionStorage | undefined {
  if (persist === undefined) return undefined;
  if (persist !== "sessionStorage") return persist;
  const storage = (globalThis as { sessionStorage?: PositionStorage }).sessionStorage;
  if (!storage) throw new TypeError('persist: "sessionStorage" is not available here; pass a storage object');
  return storage;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export type { Pending };
