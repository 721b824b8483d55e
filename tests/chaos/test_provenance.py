#!/usr/bin/python3
"""test_provenance.py — the chaos checkers' one provenance reader (chaos.provenance):
each field of the `lockstep` header read back exactly, the sink uid whole as the last
field, malformed values refused, the first header taken, and the four headers of
versions before it still read (an output topic written across an upgrade holds both).
The C parser (sink/provenance.c) has the same cases in tests/unit/test_provenance.c.

Run by ctest as unit_chaos_provenance; prints `provenance: ok` or fails with a traceback.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaos import Provenance, parse_provenance, provenance  # noqa: E402

ATT = "0123456789abcdef"


class Msg:
    """What provenance() reads of a confluent_kafka Message: headers()."""

    def __init__(self, headers):
        self._h = headers

    def headers(self):
        return self._h


def raises(f, *a):
    try:
        f(*a)
    except ValueError:
        return True
    return False


def main():
    h = f"v1 42 {ATT} wc_1.a-b to-kafka".encode()
    assert provenance(Msg([("lockstep", h)])) == Provenance(42, ATT, "wc_1.a-b", "to-kafka",
                                                            False)
    assert parse_provenance(f"v1 {2**64 - 1} {ATT} a s".encode()).batch == 2**64 - 1
    # the sink uid is the whole rest, whatever it holds; empty on a progress record
    for uid in ["a b  c", " lead", "trail ", f"v1 9 {ATT} x y", "\u00fc:\n,;", ""]:
        p = parse_provenance(f"v1 3 {ATT} app {uid}".encode())
        assert p == Provenance(3, ATT, "app", uid, False), (uid, p)
    for bad in [b"", None, b"v1", f"v2 1 {ATT} app sink".encode(),
                f"V1 1 {ATT} app sink".encode(), f"v1 1 {ATT} app".encode(),
                f"v1  {ATT} app sink".encode(), f"v1 -1 {ATT} app sink".encode(),
                f"v1 1x {ATT} app sink".encode(), f"v1 {2**64} {ATT} a s".encode(),
                b"v1 1 0123456789ABCDEF app sink", b"v1 1 0123456789abcde app sink",
                b"v1 1 0123456789abcdef0 app sink", b"v1 1 0123456789abcdeg app sink",
                f"v1 1 {ATT}  sink".encode(), f"v1 \u0661 {ATT} app sink".encode()]:
        assert raises(parse_provenance, bad), bad
        assert raises(provenance, Msg([("lockstep", bad)])), bad
    # the first `lockstep` header is the sink's: a copied input's comes after it
    m = Msg([("lockstep", f"v1 8 {ATT} app sink".encode()), ("user", b"x"),
             ("lockstep", b"v1 1 fedcba9876543210 upstream s")])
    assert provenance(m) == Provenance(8, ATT, "app", "sink", False)
    # records of older versions: four headers
    old = [("lockstep.app", b"wc"), ("lockstep.sink", b"to-kafka"), ("lockstep.batch", b"17"),
           ("lockstep.attempt", ATT.encode()), ("user", b"x")]
    assert provenance(Msg(old)) == Provenance(17, ATT, "wc", "to-kafka", True)
    prog = [("lockstep.app", b"wc"), ("lockstep.sink", None), ("lockstep.batch", b"3"),
            ("lockstep.attempt", ATT.encode())]
    assert provenance(Msg(prog)) == Provenance(3, ATT, "wc", "", True)
    # none, incomplete, malformed
    assert provenance(Msg(None)) is None
    assert provenance(Msg([("user", b"x")])) is None
    assert raises(provenance, Msg([h for h in old if h[0] != "lockstep.sink"]))
    assert raises(provenance, Msg([("lockstep.batch", b"x")] + old))  # the first one counts
    # a malformed new header is not replaced by old ones beside it
    assert raises(provenance, Msg([("lockstep", f"v1 x {ATT} a s".encode())] + old))
    print("provenance: ok")


if __name__ == "__main__":
    main()
