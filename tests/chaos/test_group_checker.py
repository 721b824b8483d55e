#!/usr/bin/python3
"""test_group_checker.py — the scale-out chaos test's checker (group.check_output) on
synthetic progress and output records: a clean run passes; a lost line, a duplicated
line, a record of an aborted attempt counted as output, a record in another task's
partition, a batch delivered twice on a real broker, input never read and a progress
record in the wrong partition are each caught and named; a mock-only killed delivery
(fewer records than its progress record declares, its writer killed right after) is
excused on the mock only, and only when the kill followed it.

Run by ctest as unit_chaos_group_checker; prints `group checker: ok` or fails with a
traceback.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaos import Provenance  # noqa: E402
from group import check_output  # noqa: E402

APP = "g"


def att(n):
    return f"{n:016x}"


class Run:
    """Builds what the runner reads back: input lines, progress records, output."""

    def __init__(self, partitions=2):
        self.partitions = partitions
        self.lines = {}
        self.progress = []
        self.output = []
        self.next_off = [0] * partitions
        self.until = [0] * partitions

    def line(self, p, n=1):
        for _ in range(n):
            off = self.next_off[p]
            self.lines[(p, off)] = (f"k{p}-{off}", f"v{p}-{off}")
            self.next_off[p] += 1

    def batch(self, p, batch, attempt, upto, ckpt="c1", ts=1000, write=None, declare=None,
              part=None, out_part=None):
        """Task p delivers input [until, upto) as batch with attempt: its records (all, or
        the offsets in write) and its progress record (declaring declare records)."""
        offs = list(range(self.until[p], upto)) if write is None else write
        for off in offs:
            k, v = self.lines[(p, off)]
            self.output.append((p if out_part is None else out_part,
                                Provenance(batch, att(attempt), APP, "to-kafka", False), k, v))
        n = len(range(self.until[p], upto)) if declare is None else declare
        self.progress.append((p if part is None else part, ts,
                              {"app": APP, "task": f"{APP}.{p}", "checkpoint": ckpt,
                               "batch": batch, "attempt": att(attempt),
                               "offsets": [{"topic": "lines", "partition": p, "until": upto}],
                               "sinks": {"to-kafka": {"topic": "copy-out", "records": n}}}))
        self.until[p] = upto

    def check(self, **kw):
        return check_output(APP, self.lines, self.progress, self.output, self.partitions, **kw)


def clean():
    r = Run()
    r.line(0, 10)
    r.line(1, 6)
    r.batch(0, 1, 11, 4, ckpt="A")
    r.batch(0, 2, 12, 10, ckpt="B")  # handoff: another checkpoint continues
    r.batch(1, 1, 21, 6, ckpt="A")
    return r


def main():
    # a clean run: every line once; the handoff counted
    res = clean().check()
    assert (res.lost, res.dup, res.problems) == (0, 0, []), res.problems
    assert res.stats["handoffs"] == 1 and res.stats["batches"] == 3, res.stats

    # records of an aborted attempt (another attempt of a batch) are not output
    r = clean()
    k, v = r.lines[(0, 0)]
    r.output.append((0, Provenance(1, att(99), APP, "to-kafka", False), k, v))
    res = r.check()
    assert (res.lost, res.dup, res.problems) == (0, 0, []), res.problems
    assert res.stats["records of aborted attempts"] == 1
    # ... but on a real broker they must not be visible to read_committed
    res = r.check(real_broker=True)
    assert any("visible to read_committed" in p for p in res.problems), res.problems

    # a line lost from a committed batch: named with its batch
    r = Run()
    r.line(0, 5)
    r.line(1, 1)
    r.batch(0, 1, 1, 5, write=[0, 1, 3, 4], declare=5)
    r.batch(1, 1, 2, 1)
    res = r.check()
    assert res.lost == 1 and res.dup == 0, (res.lost, res.dup)
    assert any("4 of the 5 records" in p for p in res.problems), res.problems
    assert res.examples["lost"] == [(0, 2, "v0-2", "g.0", 1)], res.examples

    # the same on the mock when the writer was killed right after: excused (adopted) ...
    res = r.check(kills={"s1": [1500]}, ckpt_slot={"c1": "s1"})
    assert (res.lost, res.dup, res.problems) == (0, 0, []), res.problems
    assert res.stats["adopted batches (mock)"] == 1
    assert res.stats["lines in adopted batches not found (mock)"] == 1
    # ... or when the phase file named its attempt at a kill
    res = r.check(killed_attempts={att(1)})
    assert (res.lost, res.problems) == (0, []), res.problems
    # ... never on a real broker, nor when the kill came before it, long after it, or
    # after the checkpoint had written for the task again
    for kw in ({"real_broker": True, "kills": {"s1": [1500]}, "ckpt_slot": {"c1": "s1"}},
               {"kills": {"s1": [900]}, "ckpt_slot": {"c1": "s1"}},
               {"kills": {"s1": [12000]}, "ckpt_slot": {"c1": "s1"}},
               {"kills": {"s2": [1500]}, "ckpt_slot": {"c1": "s1"}}):
        res = r.check(**kw)
        assert res.lost == 1, (kw, res.lost)
    r2 = Run(1)
    r2.line(0, 4)
    r2.batch(0, 1, 1, 2, write=[0], declare=2, ts=1000)
    r2.batch(0, 2, 2, 4, ts=1200)
    res = r2.check(kills={"s1": [1500]}, ckpt_slot={"c1": "s1"})
    assert res.lost == 1, res.problems

    # a line delivered twice (in two committed batches of two tasks' attempts)
    r = clean()
    k, v = r.lines[(0, 5)]
    r.output.append((0, Provenance(2, att(12), APP, "to-kafka", False), k, v))
    res = r.check()
    assert res.dup == 1 and res.lost == 0, (res.lost, res.dup)
    assert res.examples["duplicated"] == [((0, k, v), 1)], res.examples
    assert any("7 records, its progress record declares 6" in p for p in res.problems), \
        res.problems

    # a task's record in another partition (output.partition=keep)
    r = Run()
    r.line(0, 2)
    r.line(1, 2)
    r.batch(0, 1, 1, 2)
    r.batch(1, 1, 2, 2, out_part=0)
    res = r.check()
    assert any("task g.1" in p and "partition 1" in p for p in res.problems), res.problems

    # two progress records of one batch: the mock's last one wins; a real broker's are a
    # batch delivered twice
    r = Run(1)
    r.line(0, 4)
    r.batch(0, 1, 1, 2, write=[0])           # an aborted attempt, its progress visible
    r.until[0] = 0
    r.batch(0, 1, 2, 2, ckpt="c2", ts=2000)  # the batch again, delivered whole
    r.batch(0, 2, 3, 4, ckpt="c2", ts=2100)
    res = r.check()
    assert (res.lost, res.dup, res.problems) == (0, 0, []), res.problems
    assert res.stats["batches with several progress records (mock)"] == 1
    res = r.check(real_broker=True)
    assert any("delivered twice" in p for p in res.problems), res.problems

    # input past the last committed batch: never read (lost)
    r = clean()
    r.line(1, 3)
    res = r.check()
    assert res.lost == 3 and any("past every committed batch" in p for p in res.problems)

    # a progress record in the wrong partition, and one going back
    r = clean()
    r.batch(1, 2, 22, 6, part=0)
    res = r.check()
    assert any("progress partition 0 holds a record of app 'g' task 'g.1'" in p
               for p in res.problems), res.problems
    r = clean()
    r.until[1] = 0
    r.batch(1, 2, 23, 3, write=[])
    res = r.check()
    assert any("goes back" in p for p in res.problems), res.problems

    # a record without provenance, or of another app
    r = clean()
    r.output.append((0, None, "x", "y"))
    r.output.append((0, Provenance(1, att(11), "other", "to-kafka", False), "x", "y"))
    res = r.check()
    assert any("without a provenance header" in p for p in res.problems)
    assert any("of app 'other'" in p for p in res.problems)
    print("group checker: ok")


if __name__ == "__main__":
    main()
