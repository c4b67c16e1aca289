// Reconnect delays: exponential backoff with full jitter (a random delay
// between 0 and the exponential ceiling), so that a bridge's thousands of
// clients do not come back in step after it restarts.
export const DEFAULT_BACKOFF = { baseMs: 500, capMs: 30_000 };
/** The delay before retry number `attempt` (0 for the first). */
export function fullJitter(attempt, options, random = Math.random) {
    const ceiling = Math.min(options.capMs, options.baseMs * 2 ** Math.min(attempt, 30));
    return Math.floor(random() * ceiling);
}
