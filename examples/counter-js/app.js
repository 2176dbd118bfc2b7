// The counter actor in JavaScript: `incr`, `get`, `churn`, which allocates
// heavily, and `remind`, which sets an alarm (counted by `reminded`). State is plain module variables; tern persists the
// engine itself. `actor` and `fail` come from tern's helper, which
// `tern build` puts in front of this module.
//
// Build with `tern build examples/counter-js` (needs componentize-js:
// `npm install @bytecodealliance/componentize-js@0.23.0`).

let value = 0;
// Kept between calls by `churn` (bounded).
const kept = [];
const KEPT_MAX = 64;
// Alarms delivered, by id (delivery is at least once).
const reminded = new Set();

actor({
  incr(args) {
    const by = args.by ?? 1;
    if (!Number.isInteger(by)) throw fail('invalid-argument', 'by must be an integer');
    value += by;
    return { value };
  },
  get() {
    return { value };
  },
  // Builds and drops a big array (n items), keeps one small string.
  churn(args) {
    const n = args.n ?? 100000;
    if (!Number.isInteger(n) || n < 0 || n > 1000000) {
      throw fail('invalid-argument', 'n must be an integer in 0..=1000000');
    }
    const squares = Array.from({ length: n }, (_, i) => i * i);
    kept.push(String(squares.reduce((a, b) => (a + b) % 1000003, 0)));
    kept.splice(0, Math.max(0, kept.length - KEPT_MAX));
    return { items: n, kept: kept.length, last: kept[kept.length - 1] };
  },
  // Sets an alarm `in_ms` from now.
  remind(args) {
    // u64s cross as BigInts.
    return { id: Number(setAlarm(nowMs() + BigInt(args.in_ms ?? 0), 'remind')) };
  },
  onAlarm(alarm) {
    if (!reminded.has(alarm.id)) {
      reminded.add(alarm.id);
      publish('reminders', alarm);
    }
  },
  reminded() {
    return { reminded: reminded.size };
  },
});
