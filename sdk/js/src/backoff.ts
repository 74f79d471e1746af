/**
 * Reconnect delays: exponential backoff with full jitter (AWS Architecture Blog,
 * "Exponential Backoff And Jitter"): delay = random(0, min(maxMs, initialMs * 2^attempt)).
 *
 * Owns: the delay arithmetic. May use: nothing. Never: timers, I/O.
 */

export interface BackoffOptions {
  /** Upper bound of the first delay, in ms (default 500). */
  initialMs?: number;
  /** Upper bound of any normal delay, in ms (default 30 000). */
  maxMs?: number;
  /**
   * Floor of a delay after the server said "too many" (close 4029, HTTP 429) or
   * "try again later" (1013), in ms (default 5 000); a `Retry-After` that is longer wins.
   */
  throttleMs?: number;
}

export type BackoffKind = "normal" | "throttled";

export class Backoff {
  readonly initialMs: number;
  readonly maxMs: number;
  readonly throttleMs: number;
  private attempt = 0;

  constructor(options: BackoffOptions = {}, private readonly random: () => number = Math.random) {
    this.initialMs = positive(options.initialMs, 500, "backoff.initialMs");
    this.maxMs = positive(options.maxMs, 30_000, "backoff.maxMs");
    this.throttleMs = positive(options.throttleMs, 5_000, "backoff.throttleMs");
    if (this.maxMs < this.initialMs) throw new RangeError("backoff.maxMs must be >= backoff.initialMs");
  }

  /** How many delays were handed out since the last reset. */
  get attempts(): number {
    return this.attempt;
  }

  /** The ceiling of the next normal delay (before jitter). */
  ceiling(): number {
    // 2^attempt overflows to Infinity for large attempts; min() keeps it at maxMs.
    return Math.min(this.maxMs, this.initialMs * 2 ** this.attempt);
  }

  /** The next delay in ms, and one more attempt counted. */
  next(kind: BackoffKind = "normal", retryAfterMs?: number): number {
    const jittered = Math.floor(this.random() * this.ceiling());
    this.attempt += 1;
    if (kind === "normal") return jittered;
    const floor = Math.max(this.throttleMs, retryAfterMs ?? 0);
    // Still jittered above the floor, so many throttled clients do not return in step.
    return floor + jittered;
  }

  /** After a successful connection: the next delay starts small again. */
  reset(): void {
    this.attempt = 0;
  }
}

function positive(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value <= 0) throw new RangeError(`${name} must be a positive number`);
  return value;
}
