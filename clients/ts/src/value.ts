// A value that changes over time and tells who listens: the counts a badge
// shows, the mutes a settings screen shows.

/** Read side: the value now, and every change. */
export interface Observable<T> {
  readonly value: T;
  /** Calls `fn` with the value now and after every change; returns the unsubscribe. */
  subscribe(fn: (value: T) => void): () => void;
}

export class Value<T> implements Observable<T> {
  private readonly listeners = new Set<(value: T) => void>();

  constructor(
    private current: T,
    private readonly same: (a: T, b: T) => boolean = Object.is,
  ) {}

  get value(): T {
    return this.current;
  }

  subscribe(fn: (value: T) => void): () => void {
    this.listeners.add(fn);
    this.call(fn);
    return () => this.listeners.delete(fn);
  }

  /** Changes the value; listeners hear of it only if it differs. */
  set(value: T): void {
    if (this.same(this.current, value)) {
      return;
    }
    this.current = value;
    for (const fn of this.listeners) {
      this.call(fn);
    }
  }

  private call(fn: (value: T) => void): void {
    try {
      fn(this.current);
    } catch (e) {
      // A listener's bug must not break the others.
      console.error('notify client listener failed', e);
    }
  }
}
