/**
 * A minimal typed event emitter (no dependency on Node's `events` or the DOM's EventTarget,
 * so one implementation serves both).
 *
 * Owns: listener lists. May use: nothing. Invariants: a throwing listener never stops the
 * others or the client; its error goes to `onListenerError`.
 */

export type Listener<A> = (arg: A) => void;

export class Emitter<M extends object> {
  private readonly listeners = new Map<keyof M, Set<Listener<never>>>();

  constructor(private readonly onListenerError: (error: unknown) => void = reportAsync) {}

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof M>(name: K, listener: Listener<M[K]>): () => void {
    let set = this.listeners.get(name);
    if (!set) this.listeners.set(name, (set = new Set()));
    set.add(listener as Listener<never>);
    return () => this.off(name, listener);
  }

  /** Adds a listener that is removed after its first call. */
  once<K extends keyof M>(name: K, listener: Listener<M[K]>): () => void {
    const off = this.on(name, (arg) => {
      off();
      listener(arg);
    });
    return off;
  }

  off<K extends keyof M>(name: K, listener: Listener<M[K]>): void {
    this.listeners.get(name)?.delete(listener as Listener<never>);
  }

  emit<K extends keyof M>(name: K, arg: M[K]): void {
    const set = this.listeners.get(name);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        (listener as Listener<M[K]>)(arg);
      } catch (error) {
        this.onListenerError(error);
      }
    }
  }

  listenerCount(name: keyof M): number {
    return this.listeners.get(name)?.size ?? 0;
  }
}

/** Rethrows outside the client's call stack, so the app sees it and the client goes on. */
function reportAsync(error: unknown): void {
  setTimeout(() => {
    throw error;
  }, 0);
}
