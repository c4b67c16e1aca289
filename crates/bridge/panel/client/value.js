// A value that changes over time and tells who listens: the counts a badge
// shows, the mutes a settings screen shows.
export class Value {
    current;
    same;
    listeners = new Set();
    constructor(current, same = Object.is) {
        this.current = current;
        this.same = same;
    }
    get value() {
        return this.current;
    }
    subscribe(fn) {
        this.listeners.add(fn);
        this.call(fn);
        return () => this.listeners.delete(fn);
    }
    /** Changes the value; listeners hear of it only if it differs. */
    set(value) {
        if (this.same(this.current, value)) {
            return;
        }
        this.current = value;
        for (const fn of this.listeners) {
            this.call(fn);
        }
    }
    call(fn) {
        try {
            fn(this.current);
        }
        catch (e) {
            // A listener's bug must not break the others.
            console.error('notify client listener failed', e);
        }
    }
}
