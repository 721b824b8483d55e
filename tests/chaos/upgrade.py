#!/usr/bin/python3
"""upgrade.py — an upgrade done the way users do it: graceful stop, new binary, start.

With a `lockstep mock-broker`: run plugin v1 (a word count) part of the way and stop it
with SIGTERM; try a bad v2 that changes a state schema version without a migration,
which must be refused naming the operator and leave the checkpoint byte-for-byte as
it was; then run the good v2, which keeps v1's operator uids and adds a new stateful
operator, to the end. Checks, with this file's own read_committed reader:
  - word counts equal counts of ALL input (the state carried over the upgrade);
  - the new operator counted exactly the input after the upgrade (it starts empty);
  - one progress record per batch and sink (nothing delivered twice).
Prints `upgrade: ok` and exits 0, or names what is wrong and exits 1.

The versions are the plugin's: one lockstep binary writes all the output, so every record
carries the provenance header of this build (chaos.provenance() would also read the
four headers of builds before it, which a topic written across a lockstep upgrade holds).
"""

import argparse
import collections
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaos import graceful_stop, provenance, read_topic  # noqa: E402  (the same independent reader as chaos.py)

from confluent_kafka import Producer  # noqa: E402

WORDS = ["red", "green", "blue", "cyan", "magenta", "yellow", "black", "white", "orange"]


def fail(msg):
    print(f"upgrade: FAILED: {msg}", flush=True)
    sys.exit(1)


def checkpoint_digest(d):
    h = hashlib.sha256()
    for name in sorted(os.listdir(d)):
        if name in ("LOCK", "lock.mdb"):
            continue
        h.update(name.encode())
        with open(os.path.join(d, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lockstep", required=True)
    ap.add_argument("--plugin-v1", required=True)
    ap.add_argument("--plugin-v2", required=True)
    ap.add_argument("--plugin-bad", required=True)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="lockstep-upgrade.")
    broker = subprocess.Popen([args.lockstep, "mock-broker", "--topic", "lines:2", "--topic",
                               "counts:2", "--topic", "lengths:2", "--topic", "up.progress:1"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    bootstrap = broker.stdout.readline().strip().split("=", 1)[1]
    rng = random.Random(7)
    lines = {0: [], 1: []}

    def produce(n):
        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        for i in range(n):
            part = i % 2
            v = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5)))
            p.produce("lines", value=v.encode(), partition=part)
            lines[part].append(v)
        if p.flush(30):
            fail("input not delivered")

    ckpt = f"{work}/checkpoint"

    def run(plugin, extra=()):
        cmd = [args.lockstep, "run"]
        for kv in ["app.id=up", f"checkpoint.dir={ckpt}", f"kafka.bootstrap.servers={bootstrap}",
                   "kafka.fetch.wait.max.ms=10", "kafka.log_level=3", "batch.interval.ms=0",
                   "max.records.per.partition=100", "log.level=warning",
                   f"pipeline.plugin={plugin}", "input.topics=lines", "output.topic=counts",
                   *extra]:
            cmd += ["-X", kv]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def inspect():
        out = subprocess.run([args.lockstep, "checkpoint", "inspect", ckpt, "--json"],
                             capture_output=True, text=True)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def offsets():
        doc = inspect()
        return {o["partition"]: o["offset"] for o in doc["offsets"]} if doc else {}

    def stop(proc, what):
        rc = graceful_stop(proc)
        if rc == "timeout":
            fail(f"{what}: no graceful stop within 60 s")
        if rc != 0:
            fail(f"{what}: graceful stop exited {rc}: {proc.stderr.read()}")

    try:
        # 1. v1 reads the first 1000 lines and is stopped gracefully; 1000 more arrive
        # after it stopped, so the upgrade happens part of the way through the input
        # whatever the speed of this machine
        produce(1000)
        v1 = run(args.plugin_v1)
        deadline = time.time() + 60
        while sum(offsets().values()) < 1000:
            if time.time() > deadline:
                fail(f"v1 did not read the first 1000 lines: offsets {offsets()}")
            time.sleep(0.3)
        stop(v1, "v1")
        at_upgrade = offsets()
        if at_upgrade != {0: 500, 1: 500}:
            fail(f"v1 should have stopped after the first 1000 lines, offsets {at_upgrade}")
        produce(1000)
        print(f"upgrade: v1 stopped gracefully at offsets {at_upgrade}", flush=True)

        # 2. a bad v2 is refused and leaves the checkpoint as it was
        before = checkpoint_digest(ckpt)
        bad = run(args.plugin_bad)
        try:
            rc = bad.wait(timeout=60)
        except subprocess.TimeoutExpired:
            bad.kill()
            fail("the bad v2 was not refused")
        err = bad.stderr.read()
        if rc != 1 or "'word-counts'" not in err or "schema version" not in err:
            fail(f"the bad v2 should be refused naming word-counts' schema (exit {rc}): {err}")
        if checkpoint_digest(ckpt) != before:
            fail("the refused start modified the checkpoint")
        print(f"upgrade: bad v2 refused: {err.strip().splitlines()[-1]}", flush=True)

        # 3. the good v2 runs to the end
        produce(600)
        v2 = run(args.plugin_v2, ["plugin.lengths.topic=lengths"])
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.3)
            doc = inspect()
            offs = offsets()
            if offs.get(0) == len(lines[0]) and offs.get(1) == len(lines[1]) and \
                    doc and not doc["outbox"]:
                break
        else:
            fail(f"v2 did not read everything: offsets {offsets()}")
        stop(v2, "v2")

        # 4. check the output
        def latest(topic, sink):
            progress = collections.Counter()
            attempt = {}
            for m in read_topic(bootstrap, "up.progress"):
                d = json.loads(m.value())
                if sink in d.get("sinks", {}) or d.get("sink") == sink:
                    progress[d["batch"]] += 1
                    attempt[d["batch"]] = d["attempt"]
            twice = [b for b, n in progress.items() if n > 1]
            if twice:
                fail(f"{sink}: batches delivered twice: {twice}")
            out = {}
            for m in read_topic(bootstrap, topic):
                p = provenance(m)
                if p is None or (p.app, p.sink) != ("up", sink):
                    fail(f"a record of {topic} with provenance {p}, not of app 'up' sink "
                         f"{sink!r}")
                b = p.batch
                if attempt.get(b) != p.attempt:
                    continue  # an aborted attempt, visible on the mock
                k = m.key().decode()
                if k not in out or b >= out[k][0]:
                    out[k] = (b, int(m.value()))
            return {k: v for k, (_, v) in out.items()}

        all_words = collections.Counter(w for p in lines for v in lines[p] for w in v.split())
        got = latest("counts", "to-kafka")
        if got != dict(all_words):
            fail(f"word counts differ from the input: {got} vs {dict(all_words)}")
        after = collections.Counter(str(len(w)) for p in lines
                                    for v in lines[p][at_upgrade.get(p, 0):] for w in v.split())
        got = latest("lengths", "lengths-to-kafka")
        if got != dict(after):
            fail(f"the new operator's counts differ from the input after the upgrade: "
                 f"{got} vs {dict(after)}")
        print("upgrade: ok (state carried over; the new operator counted exactly the input "
              "after the upgrade; a schema change without migration was refused)", flush=True)
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait()
        if args.keep:
            print(f"upgrade: work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
