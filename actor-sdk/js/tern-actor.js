// tern's guest helper for JavaScript actors (the Rust SDK's `actor!`, in
// JavaScript). `tern build DIR` puts it in front of DIR's module when that
// module does not export `handle` itself: the module then calls
// `actor({ method(args) { ... }, ... })` once. Each method gets the call's
// JSON payload, decoded (`{}` when empty), and returns something
// JSON-encodable, or throws `fail(kind, message)`. State is plain
// module-level variables: tern persists the whole engine, so there is
// nothing to serialize.
import * as host from 'tern:actor/host@0.1.0';

const __ternEnc = new TextEncoder();
const __ternDec = new TextDecoder();
let __ternMethods = null;
let __ternUpgrade = {};

// An error to throw from a method: `kind` is one of the world's error kinds
// ('not-found', 'invalid-argument', ...).
export function fail(kind, message) {
  const e = new Error(String(message));
  e.payload = { kind, message: String(message) };
  return e;
}

// Logs through the POP ('trace' ... 'error').
export function log(level, message) {
  host.log(level, String(message));
}

// The POP's clock, ms since the Unix epoch.
export function nowMs() {
  return host.nowMs();
}

// A random 64-bit integer from the host (a BigInt).
export function randomU64() {
  return host.randomU64();
}

// Calls another actor; returns its decoded JSON reply.
export function call(actorType, id, method, args) {
  const payload = args === undefined ? new Uint8Array() : __ternEnc.encode(JSON.stringify(args));
  return __ternDecode(host.call(actorType, id, method, payload));
}

// Sets a durable alarm at `atMs` (ms since the Unix epoch), committed with
// this call's turn; returns its id (a BigInt). At that time the actor's
// `onAlarm(alarm)` method runs with `{id, tag, at_ms}` (at least once:
// check the id if it must not repeat).
export function setAlarm(atMs, tag = '') {
  return host.setAlarm(BigInt(atMs), String(tag));
}

// Cancels an alarm with this turn; false if it is not set.
export function cancelAlarm(id) {
  return host.cancelAlarm(BigInt(id));
}

// Publishes `value` (JSON) on `topic` to the actor's subscribers, once this
// turn commits.
export function publish(topic, value) {
  host.publish(String(topic), __ternEnc.encode(JSON.stringify(value)));
}

function __ternDecode(bytes) {
  if (!bytes || bytes.length === 0) return {};
  try {
    return JSON.parse(__ternDec.decode(bytes));
  } catch (e) {
    throw fail('invalid-argument', `payload is not JSON: ${e}`);
  }
}

// Declares the actor's methods (and optionally `save`/`load` for upgrades).
export function actor(methods, upgrade = {}) {
  __ternMethods = methods;
  __ternUpgrade = upgrade;
}

export function handle(method, payload) {
  if (method === '~alarm') {
    const onAlarm = __ternMethods && Object.hasOwn(__ternMethods, 'onAlarm') ? __ternMethods.onAlarm : undefined;
    if (typeof onAlarm !== 'function') throw fail('not-found', 'an alarm fired but the actor defines no onAlarm(alarm)');
    onAlarm(__ternDecode(payload));
    return __ternEnc.encode('null');
  }
  // `onAlarm` runs only for the actor's own alarms.
  const fn = method !== 'onAlarm' && __ternMethods && Object.hasOwn(__ternMethods, method) ? __ternMethods[method] : undefined;
  if (typeof fn !== 'function') throw fail('not-found', `no method '${method}'`);
  return __ternEnc.encode(JSON.stringify(fn(__ternDecode(payload)) ?? null));
}

export function save() {
  if (!__ternUpgrade.save) {
    throw fail('failed-precondition', 'this actor does not implement save(); pass it to actor() to move its state to another version');
  }
  return __ternEnc.encode(JSON.stringify(__ternUpgrade.save()));
}

export function load(state) {
  if (!__ternUpgrade.load) {
    throw fail('failed-precondition', 'this actor does not implement load(); pass it to actor() to take state from another version');
  }
  __ternUpgrade.load(__ternDecode(state));
}

// ---- the actor's module follows ----
