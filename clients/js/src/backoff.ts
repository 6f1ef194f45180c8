/**
 * Reconnect delays: exponential backoff with full jitter, never shorter than what the
 * server advised (mirrors crates/client/src/backoff.rs).
 *
 * Full jitter (a uniform delay in `[0, min(max, base * 2^attempt)]`) spreads clients that
 * lost the same node over the whole window instead of bunching them at each step, and the
 * server's `reconnect_after_ms` is a floor, so a node shedding load is not hammered.
 */
export interface BackoffOptions {
  /** Ceiling of the first delay, ms. Default 200. */
  baseMs?: number;
  /** Largest delay, ms. Default 20 000. */
  maxMs?: number;
}

/** The ceiling of the delay before reconnect attempt `attempt` (0-based). */
export function backoffCeiling(options: BackoffOptions, attempt: number): number {
  const { baseMs = 200, maxMs = 20_000 } = options;
  return Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 20));
}

/** The delay before attempt `attempt`: uniform in `[0, ceiling]`, raised to the advice. */
export function backoffDelay(
  options: BackoffOptions,
  attempt: number,
  advisedMs = 0,
  random: () => number = Math.random,
): number {
  return Math.max(Math.round(random() * backoffCeiling(options, attempt)), advisedMs);
}
