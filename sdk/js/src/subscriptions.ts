/**
 * What the app asked to receive, and the replies that confirm it: `subscribe` (with event
 * filters), `unsubscribe`, `ping`, per-topic handlers, and the continuity reports built on
 * the position book (`resumed`, `gap`). The connection itself lives in `client.ts`.
 *
 * Owns: wanted/unwanted topics, requests awaiting a reply, topic handles.
 * May use: protocol, positions, emitter, types. Never: sockets, timers other than ping's.
 * Invariants: every request sent gets exactly one reply (the server answers each client
 * message once, in order), so replies are matched to requests first-in, first-out.
 */

import { Emitter } from "./emitter.js";
import type { PositionBook } from "./positions.js";
import {
  eventMatches,
  isTopic,
  type AuthSuccess,
  type ClientMessage,
  type Position,
  type Positions,
  type ServerMessage,
  type StreamEvent,
  type Topic,
} from "./protocol.js";
import { StreamError, type ClientEvents, type DataMap, type DataOf, type SubscribeOptions, type TopicEvents } from "./types.js";

export type Pending =
  | { kind: "subscribe"; topics: Topic[] }
  | { kind: "unsubscribe"; topics: Topic[] }
  | { kind: "ping"; sentAt: number; resolve: (rtt: number) => void; reject: (e: StreamError) => void; timer: ReturnType<typeof setTimeout> };

type Waiter = { resolve: () => void; reject: (e: StreamError) => void };

/** Handlers of one topic: `stream.topic("tasks").on("event", …)`. */
export interface TopicHandle<T extends Topic, X> {
  readonly name: T;
  /** The last position seen on this topic (SPEC §7), if the server sends positions. */
  readonly position: Position | undefined;
  on<K extends keyof TopicEvents<T, X>>(name: K, listener: (arg: TopicEvents<T, X>[K]) => void): () => void;
  off<K extends keyof TopicEvents<T, X>>(name: K, listener: (arg: TopicEvents<T, X>[K]) => void): void;
}

export abstract class Subscriptions<D extends DataMap> {
  protected abstract readonly events: Emitter<ClientEvents<D>>;
  protected abstract send(message: ClientMessage): boolean;
  protected abstract isConnected(): boolean;

  /** Topics the app subscribed explicitly, with their filter. */
  private readonly wanted = new Map<Topic, SubscribeOptions>();
  /** Topics the app unsubscribed: dropped from every connection's auto-subscription. */
  private readonly unwanted = new Set<Topic>();
  /** Topics the current connection is subscribed to. */
  private readonly active = new Set<Topic>();
  private pending: Pending[] = [];
  private readonly waiters = new Map<Topic, Waiter[]>();
  private readonly topics = new Map<Topic, Emitter<TopicEvents<Topic, unknown>>>();
  private counters = { events: 0, duplicates: 0, reconnects: 0 };

  constructor(
    protected readonly book: PositionBook,
    private readonly pingTimeoutMs: number,
  ) {}

  /** Counts since the client was made: events handed to the app, duplicates dropped, reconnects. */
  get stats(): Readonly<{ events: number; duplicates: number; reconnects: number }> {
    return { ...this.counters };
  }

  /** The topics the current connection receives. */
  channels(): Topic[] {
    return [...this.active].filter((t) => !this.unwanted.has(t)).sort();
  }

  /** The handlers of one topic (creating the handle subscribes nothing). */
  topic<T extends Topic>(name: T): TopicHandle<T, DataOf<D, T>> {
    assertTopic(name);
    const emitter = this.topicEmitter(name);
    const book = this.book;
    return {
      name,
      get position() {
        return book.get(name);
      },
      on: (event, listener) => emitter.on(event, listener as never),
      off: (event, listener) => emitter.off(event, listener as never),
    };
  }

  /**
   * Receives `topic` (again), only the events matching `events` if given. Resolves when the
   * server confirms; if the connection is down, when the next one does. Rejects with a
   * `StreamError` of kind `server` (`insufficient_scope`, `unknown_channel`, …).
   */
  subscribe(topic: Topic, options: SubscribeOptions = {}): Promise<void> {
    assertTopic(topic);
    if (options.events !== undefined && (!Array.isArray(options.events) || options.events.length === 0)) {
      throw new TypeError("events must be a non-empty array of event-name patterns");
    }
    this.unwanted.delete(topic);
    this.wanted.set(topic, options.events ? { events: [...options.events] } : {});
    const done = this.wait(topic);
    if (this.isConnected()) this.request({ kind: "subscribe", topics: [topic] }, options.events);
    return done;
  }

  /** Stops receiving `topic`, on this connection and every later one. */
  unsubscribe(topic: Topic): Promise<void> {
    assertTopic(topic);
    this.wanted.delete(topic);
    this.unwanted.add(topic);
    this.book.forget(topic);
    this.rejectWaiters(topic, new StreamError("connection", `unsubscribed from ${topic} before the server confirmed`));
    if (this.isConnected() && this.active.has(topic)) {
      this.request({ kind: "unsubscribe", topics: [topic] });
    }
    return Promise.resolve();
  }

  /** Sends `{"type":"ping"}`; resolves with the round trip in ms when the pong arrives. */
  ping(): Promise<number> {
    if (!this.isConnected()) return Promise.reject(new StreamError("connection", "not connected"));
    return new Promise((resolve, reject) => {
      const entry: Pending = {
        kind: "ping",
        sentAt: now(),
        resolve,
        reject,
        timer: setTimeout(() => {
          this.pending = this.pending.filter((p) => p !== entry);
          reject(new StreamError("connection", `no pong within ${this.pingTimeoutMs} ms`));
        }, this.pingTimeoutMs),
      };
      this.pending.push(entry);
      if (!this.send({ type: "ping" })) {
        clearTimeout(entry.timer);
        this.pending = this.pending.filter((p) => p !== entry);
        reject(new StreamError("connection", "not connected"));
      }
    });
  }

  // === hooks for the client ===

  /** The `resume` to send: every tracked position of a topic the app still wants. */
  protected resumePositions(): Positions | undefined {
    return this.book.resume(this.unwanted);
  }

  /** Applies auth.success's channels and positions; returns `recovered` per resumed topic. */
  protected applyAuth(message: AuthSuccess, sentResume: Positions | undefined): Partial<Record<Topic, boolean>> {
    this.active.clear();
    const recovered: Partial<Record<Topic, boolean>> = {};
    for (const topic of message.channels) {
      if (!isTopic(topic)) continue;
      this.active.add(topic);
      if (this.unwanted.has(topic)) continue;
      const resumed = sentResume?.[topic] !== undefined;
      const reply = message.positions?.[topic];
      if (resumed) recovered[topic] = reply?.recovered === true;
      this.book.applyReply(topic, reply, resumed);
    }
    return recovered;
  }

  /** After a reconnect (or a resume from storage): tells the app, per topic, what it missed. */
  protected reportResumes(message: AuthSuccess, sentResume: Positions | undefined, reconnect: boolean): void {
    if (reconnect) this.counters.reconnects += 1;
    for (const topic of this.channels()) {
      const resumed = sentResume?.[topic] !== undefined;
      if (!reconnect && !resumed) continue;
      const recovered = resumed && message.positions?.[topic]?.recovered === true;
      const position = this.book.get(topic);
      const info = position ? { topic, recovered, position } : { topic, recovered };
      this.events.emit("resumed", info);
      this.topics.get(topic)?.emit("resumed", info);
    }
  }

  /** Re-applies the app's subscribe/unsubscribe calls on a new connection. */
  protected restoreSubscriptions(channels: Topic[]): void {
    const drop = channels.filter((t) => this.unwanted.has(t));
    if (drop.length > 0) this.request({ kind: "unsubscribe", topics: drop });
    // One subscribe per distinct filter keeps the burst of messages small.
    const byFilter = new Map<string, Topic[]>();
    for (const [topic, options] of this.wanted) {
      const key = JSON.stringify(options.events ?? null);
      byFilter.set(key, [...(byFilter.get(key) ?? []), topic]);
    }
    for (const [key, topics] of byFilter) {
      this.request({ kind: "subscribe", topics }, JSON.parse(key) ?? undefined);
    }
  }

  protected onMessage(message: Exclude<ServerMessage, AuthSuccess>): void {
    switch (message.type) {
      case "event":
        return this.onEvent(message);
      case "gap": {
        this.book.applyGap(message.channel, message.position);
        this.emitGap({ topic: message.channel, position: { ...message.position }, source: "server" });
        return;
      }
      case "subscribed": {
        this.take("subscribe");
        for (const topic of message.channels) {
          // A topic this connection already had keeps its own position: the reply's may be
          // ahead of events still on their way (a resume's missed events, say).
          if (!this.active.has(topic)) this.book.applyReply(topic, message.positions?.[topic], false);
          this.active.add(topic);
          this.resolveWaiters(topic);
        }
        return;
      }
      case "unsubscribed": {
        if (message.reason) {
          for (const topic of message.channels) this.removedByServer(topic, message.reason);
          return;
        }
        this.take("unsubscribe");
        for (const topic of message.channels) this.active.delete(topic);
        return;
      }
      case "pong": {
        const head = this.take("ping");
        if (head?.kind === "ping") {
          clearTimeout(head.timer);
          head.resolve(now() - head.sentAt);
        }
        return;
      }
      case "error": {
        const error = new StreamError("server", message.message, message.code, message.param);
        const head = this.pending.shift();
        if (head?.kind === "ping") {
          clearTimeout(head.timer);
          head.reject(error);
        } else if (head?.kind === "subscribe") {
          this.subscribeRefused(head.topics, error);
        } else {
          this.events.emit("error", error);
        }
        return;
      }
    }
  }

  /** The socket is gone: pings fail, subscribe calls wait for the next connection. */
  protected connectionLost(): void {
    for (const p of this.pending) {
      if (p.kind !== "ping") continue;
      clearTimeout(p.timer);
      p.reject(new StreamError("connection", "the connection closed before the pong"));
    }
    this.pending = [];
    this.active.clear();
  }

  /** The client is closed: every waiting subscribe call fails. */
  protected closedForGood(meaning: string): void {
    for (const topic of [...this.waiters.keys()]) {
      this.rejectWaiters(topic, new StreamError("connection", `stream closed: ${meaning}`));
    }
  }

  // === internals ===

  private onEvent(message: StreamEvent): void {
    const topic = message.channel;
    if (this.unwanted.has(topic)) return;
    const filter = this.wanted.get(topic)?.events;
    const verdict = this.book.applyEvent(topic, message.offset, filter === undefined);
    if (verdict.kind === "duplicate") {
      this.counters.duplicates += 1;
      return;
    }
    if (verdict.kind === "hole") {
      const position = this.book.get(topic);
      if (position) this.emitGap({ topic, position: { offset: verdict.expected - 1, epoch: position.epoch }, source: "client" });
    }
    // Filtered here too: events sent before the server applied a new filter stay out.
    if (filter && !eventMatches(filter, message.event)) return;
    this.counters.events += 1;
    this.events.emit("event", message as never);
    this.topics.get(topic)?.emit("event", message);
  }

  /**
   * The server validates a whole subscribe before changing anything. When its `param`
   * names one topic (`agents.read`, `agents`), that topic is dropped and the rest sent again.
   */
  private subscribeRefused(topics: Topic[], error: StreamError): void {
    const culprit = topics.find((t) => error.param === t || error.param === `${t}.read`);
    const refused = culprit ? [culprit] : topics;
    for (const topic of refused) {
      this.wanted.delete(topic); // not retried on every reconnect
      this.rejectWaiters(topic, error);
    }
    const rest = topics.filter((t) => !refused.includes(t) && this.wanted.has(t));
    if (rest.length > 0) this.request({ kind: "subscribe", topics: rest }, this.wanted.get(rest[0]!)?.events);
  }

  private removedByServer(topic: Topic, reason: string): void {
    this.active.delete(topic);
    this.book.forget(topic);
    const info = { topic, reason };
    this.events.emit("unsubscribed", info);
    this.topics.get(topic)?.emit("unsubscribed", info);
  }

  private emitGap(info: { topic: Topic; position: Position; source: "server" | "client" }): void {
    this.events.emit("gap", info);
    this.topics.get(info.topic)?.emit("gap", info);
  }

  private request(entry: Extract<Pending, { kind: "subscribe" | "unsubscribe" }>, events?: string[]): void {
    const message: ClientMessage =
      entry.kind === "subscribe"
        ? events
          ? { type: "subscribe", channels: entry.topics, events }
          : { type: "subscribe", channels: entry.topics }
        : { type: "unsubscribe", channels: entry.topics };
    if (this.send(message)) this.pending.push(entry);
  }

  /** Removes the oldest pending request of this kind (replies come in request order). */
  private take(kind: Pending["kind"]): Pending | undefined {
    const index = this.pending.findIndex((p) => p.kind === kind);
    return index < 0 ? undefined : this.pending.splice(index, 1)[0];
  }

  private wait(topic: Topic): Promise<void> {
    return new Promise((resolve, reject) => {
      this.waiters.set(topic, [...(this.waiters.get(topic) ?? []), { resolve, reject }]);
    });
  }

  private resolveWaiters(topic: Topic): void {
    const list = this.waiters.get(topic);
    this.waiters.delete(topic);
    list?.forEach((w) => w.resolve());
  }

  private rejectWaiters(topic: Topic, error: StreamError): void {
    const list = this.waiters.get(topic);
    this.waiters.delete(topic);
    list?.forEach((w) => w.reject(error));
  }

  private topicEmitter(topic: Topic): Emitter<TopicEvents<Topic, unknown>> {
    let emitter = this.topics.get(topic);
    if (!emitter) this.topics.set(topic, (emitter = new Emitter()));
    return emitter;
  }
}

function assertTopic(topic: unknown): asserts topic is Topic {
  if (!isTopic(topic)) throw new TypeError(`unknown topic ${JSON.stringify(topic)}`);
}

function now(): number {
  return typeof performance !== "undefined" ? performance.now() : Date.now();
}
