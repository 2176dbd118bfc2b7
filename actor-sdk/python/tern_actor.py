"""tern's guest helper for Python actors (the Rust SDK's `actor!`, in Python).

An actor is a class named ``WitWorld`` that subclasses :class:`Actor`. Each
public method is an actor method: it gets the call's JSON payload, decoded
(``{}`` when empty), and returns something JSON-encodable, or raises
:func:`fail`. State is plain module globals or attributes: tern persists the
whole interpreter, so there is nothing to serialize.

    from tern_actor import Actor, fail

    value = 0

    class WitWorld(Actor):
        def incr(self, args):
            global value
            value += int(args.get("by", 1))
            return {"value": value}

``tern build DIR`` builds ``DIR/app.py`` with componentize-py against the
``tern:actor`` world and puts this module on the path.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.types import ActorError, ErrorKind

_KINDS = {
    "not-found": ErrorKind.NOT_FOUND,
    "invalid-argument": ErrorKind.INVALID_ARGUMENT,
    "failed-precondition": ErrorKind.FAILED_PRECONDITION,
    "resource-exhausted": ErrorKind.RESOURCE_EXHAUSTED,
    "unavailable": ErrorKind.UNAVAILABLE,
    "aborted": ErrorKind.ABORTED,
    "internal": ErrorKind.INTERNAL,
}

_LEVELS = {
    "trace": host.Level.TRACE,
    "debug": host.Level.DEBUG,
    "info": host.Level.INFO,
    "warn": host.Level.WARN,
    "error": host.Level.ERROR,
}

_ENTRIES = ("handle", "save", "load", "on_alarm")

# The method an alarm's turn runs; the SDK calls ``on_alarm`` for it.
ALARM_METHOD = "~alarm"


def fail(kind, message):
    """An error to raise from a method: ``kind`` is one of the world's
    error kinds (``"not-found"``, ``"invalid-argument"``, ...)."""
    return Err(ActorError(_KINDS[kind], str(message)))


def log(level, message):
    """Logs through the POP (``"trace"`` ... ``"error"``)."""
    host.log(_LEVELS[level], str(message))


def now_ms():
    """The POP's clock, ms since the Unix epoch."""
    return host.now_ms()


def random_u64():
    """A random 64-bit integer from the host."""
    return host.random_u64()


def call(actor_type, actor_id, method, args=None):
    """Calls another actor; returns its decoded JSON reply."""
    payload = b"" if args is None else json.dumps(args).encode()
    return _decode(host.call(actor_type, actor_id, method, payload))


def set_alarm(at_ms, tag=""):
    """Sets a durable alarm at ``at_ms`` (ms since the Unix epoch), committed
    with this call's turn; returns its id. At that time the actor's
    ``on_alarm(alarm)`` method runs with ``{"id", "tag", "at_ms"}``
    (at least once: check the id if it must not repeat)."""
    return host.set_alarm(int(at_ms), str(tag))


def cancel_alarm(alarm_id):
    """Cancels an alarm with this turn; False if it is not set."""
    return host.cancel_alarm(int(alarm_id))


def publish(topic, value):
    """Publishes ``value`` (JSON) on ``topic`` to the actor's subscribers,
    once this turn commits."""
    host.publish(str(topic), json.dumps(value).encode())


def _decode(payload):
    if not payload:
        return {}
    try:
        return json.loads(payload)
    except ValueError as e:
        raise fail("invalid-argument", f"payload is not JSON: {e}")


class Actor(wit_world.WitWorld):
    """Dispatches calls to the subclass's public methods by name."""

    def handle(self, method, payload):
        if method == ALARM_METHOD:
            fn = getattr(self, "on_alarm", None)
            if not callable(fn):
                raise fail("not-found", "an alarm fired but the actor defines no on_alarm(alarm)")
            fn(_decode(payload))
            return b"null"
        if method.startswith("_") or method in _ENTRIES:
            raise fail("not-found", f"no method {method!r}")
        fn = getattr(self, method, None)
        if not callable(fn):
            raise fail("not-found", f"no method {method!r}")
        result = fn(_decode(payload))
        return json.dumps(result).encode()

    def save(self):
        raise fail(
            "failed-precondition",
            "this actor does not implement save(); define it to move its state to another version",
        )

    def load(self, state):
        raise fail(
            "failed-precondition",
            "this actor does not implement load(); define it to take state from another version",
        )
