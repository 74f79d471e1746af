/**
 * Continuity bookkeeping (SPEC §7): the last position seen per topic, how replies, events
 * and gap messages move it, and optional persistence (e.g. `sessionStorage`) so that a
 * page reload resumes too.
 *
 * Owns: the per-topic positions. May use: protocol. Never: sockets, timers.
 * Invariants: within an epoch a position only moves forward; a position is never advanced
 * past an event the client has not seen (so a resume never skips one).
 */

import { isPosition, isTopic, type Position, type Positions, type ReplyPosition, type Topic } from "./protocol.js";

/** Where positions survive a page reload. `sessionStorage` fits (it is per tab). */
export interface PositionStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** What an event's offset says about continuity. */
export type EventVerdict =
  | { kind: "next" }
  | { kind: "untracked" }
  | { kind: "duplicate" }
  | { kind: "hole"; expected: number };

export class PositionBook {
  private readonly positions = new Map<Topic, Position>();

  constructor(
    private readonly storage?: PositionStorage,
    private readonly storageKey = "miteos-stream:positions",
  ) {
    this.load();
  }

  get(topic: Topic): Position | undefined {
    const p = this.positions.get(topic);
    return p ? { ...p } : undefined;
  }

  /** The `resume` object for the auth message: every tracked topic except `exclude`. */
  resume(exclude: ReadonlySet<Topic> = new Set()): Positions | undefined {
    const out: Positions = {};
    let any = false;
    for (const [topic, p] of this.positions) {
      if (exclude.has(topic)) continue;
      out[topic] = { offset: p.offset, epoch: p.epoch };
      any = true;
    }
    return any ? out : undefined;
  }

  /**
   * A reply (auth.success / subscribed) position. Recovered: keep ours, the missed events
   * follow and move it. Otherwise the reply's position is where this stream now starts.
   */
  applyReply(topic: Topic, reply: ReplyPosition | undefined, resumed: boolean): void {
    if (!isPosition(reply)) return;
    if (resumed && reply.recovered === true && this.positions.has(topic)) return;
    this.set(topic, { offset: reply.offset, epoch: reply.epoch });
  }

  /**
   * An event's offset. `contiguous` says every event of the topic reaches this client (no
   * event filter), so a jump in offsets is a hole rather than a filtered-out event.
   */
  applyEvent(topic: Topic, offset: number | undefined, contiguous: boolean): EventVerdict {
    const p = this.positions.get(topic);
    if (typeof offset !== "number" || !p) return { kind: "untracked" };
    if (offset <= p.offset) return { kind: "duplicate" };
    const expected = p.offset + 1;
    this.set(topic, { offset, epoch: p.epoch });
    return contiguous && offset !== expected ? { kind: "hole", expected } : { kind: "next" };
  }

  /** A server `gap` message: events before this position may be missing. */
  applyGap(topic: Topic, position: Position): void {
    this.set(topic, { offset: position.offset, epoch: position.epoch });
  }

  forget(topic: Topic): void {
    if (this.positions.delete(topic)) this.save();
  }

  private set(topic: Topic, p: Position): void {
    this.positions.set(topic, p);
    this.save();
  }

  private load(): void {
    if (!this.storage) return;
    let raw: string | null = null;
    try {
      raw = this.storage.getItem(this.storageKey);
    } catch {
      return; // storage disabled (private mode, sandboxed frame): positions stay in memory
    }
    if (!raw) return;
    try {
      const parsed = JSON.parse(raw) as Record<string, unknown>;
      for (const [topic, p] of Object.entries(parsed)) {
        if (isTopic(topic) && isPosition(p)) this.positions.set(topic, { offset: p.offset, epoch: p.epoch });
      }
    } catch {
      // A corrupt entry is dropped: no resume is better than a wrong one.
    }
  }

  private save(): void {
    if (!this.storage) return;
    try {
      if (this.positions.size === 0) this.storage.removeItem(this.storageKey);
      else this.storage.setItem(this.storageKey, JSON.stringify(Object.fromEntries(this.positions)));
    } catch {
      // Quota or disabled storage: keep going with the in-memory positions.
    }
  }
}
