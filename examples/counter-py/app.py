"""The counter actor in Python: `incr`, `get`, and `churn`, which allocates
heavily. State is plain globals; tern persists the interpreter itself.

Build with `tern build examples/counter-py` (needs componentize-py:
`pip install componentize-py==0.25.1`)."""

from tern_actor import Actor, fail

value = 0
# Kept between calls by `churn` (bounded).
kept = []
KEPT_MAX = 64


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
