"""The counter actor in Python: `incr`, `get`, `churn`, which allocates
heavily, and `remind`, which sets an alarm (counted by `reminded`). State is plain globals; tern persists the interpreter itself.

Build with `tern build examples/counter-py` (needs componentize-py:
`pip install componentize-py==0.25.1`)."""

from tern_actor import Actor, fail, now_ms, publish, set_alarm

value = 0
# Kept between calls by `churn` (bounded).
kept = []
KEPT_MAX = 64
# Alarms delivered, by id (delivery is at least once).
reminded = set()


class WitWorld(Actor):
    def incr(self, args):
        global value
        by = args.get("by", 1)
        if not isinstance(by, int):
            raise fail("invalid-argument", "by must be an integer")
        value += by
        return {"value": value}

    def get(self, args):
        return {"value": value}

    def churn(self, args):
        """Builds and drops a big list (n items), keeps one small string."""
        n = args.get("n", 100_000)
        if not isinstance(n, int) or not 0 <= n <= 1_000_000:
            raise fail("invalid-argument", "n must be an integer in 0..=1000000")
        squares = [i * i for i in range(n)]
        kept.append(str(sum(squares) % 1_000_003))
        del kept[:-KEPT_MAX]
        return {"items": n, "kept": len(kept), "last": kept[-1]}

    def remind(self, args):
        """Sets an alarm `in_ms` from now."""
        return {"id": set_alarm(now_ms() + args.get("in_ms", 0), "remind")}

    def on_alarm(self, alarm):
        if alarm["id"] not in reminded:
            reminded.add(alarm["id"])
            publish("reminders", alarm)

    def reminded(self, args):
        return {"reminded": len(reminded)}
