export type Listener<T> = (event: T) => void;

/** A minimal typed event emitter, the same in browsers and Node. */
export class Emitter<Events> {
  private listeners: { [K in keyof Events]?: Set<Listener<Events[K]>> } = {};

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(type: K, listener: Listener<Events[K]>): () => void {
    (this.listeners[type] ??= new Set()).add(listener);
    return () => this.off(type, listener);
  }

  off<K extends keyof Events>(type: K, listener: Listener<Events[K]>): void {
    this.listeners[type]?.delete(listener);
  }

  /** @internal */
  emit<K extends keyof Events>(type: K, event: Events[K]): void {
    const listeners = this.listeners[type];
    if (!listeners) return;
    for (const listener of [...listeners]) {
      try {
        listener(event);
      } catch (error) {
        // A throwing listener must not break the connection's bookkeeping halfway through
        // a frame; report it the way an uncaught error in an event handler is reported.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}
