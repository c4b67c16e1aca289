// The WebSocket protocol of the notify bridge (docs/design.md, "WebSocket protocol"), as types.
/** Close codes the bridge uses. */
export const CloseCode = {
    /** Server restarting: reconnect at once, to another bridge. */
    Restart: 1012,
    /** Disconnected through the API: do not reconnect. */
    Disconnected: 4003,
    /** Slow consumer: reconnect and resume. */
    SlowConsumer: 4008,
    /** Token expired: reconnect with a fresh token. */
    TokenExpired: 4009,
};
/** Parses one text frame; null if it is not a frame of this protocol. */
export function parseFrame(text) {
    let value;
    try {
        value = JSON.parse(text);
    }
    catch {
        return null;
    }
    if (typeof value !== 'object' || value === null || typeof value.type !== 'string') {
        return null;
    }
    return value;
}
const FIGHT_KINDS = new Set([
    'fight_created',
    'fight_accepted',
    'fight_completed',
    'fight_cancelled',
    'fight_expired',
    'fight_updated',
]);
/** The fight event a message carries, or null if it carries none. */
export function fightEvent(message) {
    if (!FIGHT_KINDS.has(message.event)) {
        return null;
    }
    const data = message.data;
    if (typeof data !== 'object' || data === null || typeof data.fight !== 'object' || data.fight === null) {
        return null;
    }
    return { kind: message.event, ...data };
}
