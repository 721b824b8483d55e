#!/usr/bin/python3
"""operator_faults.py — what operators get wrong, with nothing lost.

Against a `lockstep mock-broker`, a word count (pipeline=copy, so every input record
must appear exactly once in the output topic) meets:
  1. a second instance on the same checkpoint: refused at once, naming the holder's pid;
     the first one goes on;
  2. a full disk (RLIMIT_FSIZE, as `ulimit -f`): writes fail, the error is logged and
     retried, nothing is committed half; once space is back the run completes;
  3. a corrupted checkpoint (LMDB's meta pages overwritten): refused with a clear
     message naming the directory; nothing starts;
and finally every input record appears exactly once in the output.
The zombie case (two instances with one transactional.id) needs a broker that fences:
the mock cannot (tests/mock/test_sink_kafka.c emulates it with injected errors), and
chaos.py against KAFKA_BOOTSTRAP covers it on a real one.
Prints `operator faults: ok` and exits 0, or names what is wrong and exits 1.
"""

import argparse
import collections
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chaos import graceful_stop, provenance, read_topic  # noqa: E402

from confluent_kafka import Producer  # noqa: E402


def fail(msg):
    print(f"operator faults: FAILED: {msg}", flush=True)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lockstep", required=True)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="lockstep-operator.")
    broker = subprocess.Popen([args.lockstep, "mock-broker", "--topic", "in:2", "--topic",
                               "out:2", "--topic", "op.progress:1"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    bootstrap = broker.stdout.readline().strip().split("=", 1)[1]
    ckpt = f"{work}/checkpoint"
    produced = collections.Counter()

    def produce(n, tag):
        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        for i in range(n):
            v = f"{tag}-{i}-" + "x" * 200
            p.produce("in", value=v.encode(), key=f"k{i}".encode(), partition=i % 2)
            produced[(i % 2, v)] += 1
        if p.flush(30):
            fail("input not delivered")

    def start(fsize=None):
        cmd = [args.lockstep, "run"]
        for kv in ["app.id=op", f"checkpoint.dir={ckpt}", f"kafka.bootstrap.servers={bootstrap}",
                   "kafka.fetch.wait.max.ms=10", "kafka.log_level=3", "batch.interval.ms=0",
                   "max.records.per.partition=50", "log.level=warning", "pipeline=copy",
                   "input.topics=in", "output.topic=out", "output.partition=keep",
                   "retry.backoff.max.ms=500", "checkpoint.map.size=1M"]:
            cmd += ["-X", kv]

        def limit():
            if fsize is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, preexec_fn=limit)

    def offsets():
        out = subprocess.run([args.lockstep, "checkpoint", "inspect", ckpt, "--json"],
                             capture_output=True, text=True)
        if out.returncode:
            return None, None
        d = json.loads(out.stdout)
        return {o["partition"]: o["offset"] for o in d["offsets"]}, d

    def wait_for(pred, what, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if pred():
                return
            time.sleep(0.3)
        fail(f"timed out waiting for {what}")

    def stop(proc, what):
        rc = graceful_stop(proc)
        if rc == "timeout":
            fail(f"{what}: no graceful stop")
        if rc != 0:
            fail(f"{what}: exited {rc}: {proc.stderr.read()}")

    try:
        # 1. two instances on one checkpoint
        produce(300, "a")
        first = start()
        wait_for(lambda: (offsets()[0] or {}).get(0, 0) > 0, "the first instance to commit")
        second = start()
        try:
            rc = second.wait(timeout=30)
        except subprocess.TimeoutExpired:
            second.kill()
            fail("a second instance on the same checkpoint was not refused")
        err = second.stderr.read()
        if rc == 0 or f"held by pid {first.pid}" not in err:
            fail(f"second instance: exit {rc}, expected a refusal naming pid {first.pid}: {err}")
        print(f"operator faults: second instance refused: {err.strip().splitlines()[-1]}",
              flush=True)
        if first.poll() is not None:
            fail("the first instance died when the second was refused")
        stop(first, "first instance")

        # 2. a full disk: the checkpoint cannot grow past its current size
        size = os.path.getsize(f"{ckpt}/data.mdb")
        produce(3000, "b")
        full = start(fsize=size)
        time.sleep(8)
        if full.poll() is not None:
            fail(f"with a full disk the process must keep retrying, it exited "
                 f"{full.returncode}: {full.stderr.read()}")
        full.send_signal(signal.SIGKILL)  # the operator gives up and frees space
        full.wait()
        err = full.stderr.read()
        if "disk full" not in err:
            fail(f"no clear error about the full disk in the log: {err[-2000:]}")
        line = [l for l in err.splitlines() if "disk full" in l][0]
        print(f"operator faults: full disk reported: {line}", flush=True)
        # space is back: the run completes
        again = start()
        wait_for(lambda: sum((offsets()[0] or {}).values()) == sum(produced.values())
                 and not offsets()[1]["outbox"], "the run to complete after the disk full")
        stop(again, "after the full disk")

        # 3. a corrupted checkpoint: refused, clearly
        shutil.copytree(ckpt, f"{work}/corrupt")
        with open(f"{work}/corrupt/data.mdb", "r+b") as f:
            f.write(os.urandom(8192))  # both LMDB meta pages
        out = subprocess.run([args.lockstep, "run", "-X", "app.id=op", "-X",
                              f"checkpoint.dir={work}/corrupt", "-X",
                              f"kafka.bootstrap.servers={bootstrap}", "-X", "pipeline=copy",
                              "-X", "input.topics=in", "-X", "output.topic=out"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 1 or "corrupt" not in out.stderr or "/corrupt" not in out.stderr:
            fail(f"corrupted checkpoint: exit {out.returncode}: {out.stderr}")
        print(f"operator faults: corrupted checkpoint refused: {out.stderr.strip()}", flush=True)

        # every input record exactly once in the output
        progress = collections.Counter()
        attempt = {}
        for m in read_topic(bootstrap, "op.progress"):
            d = json.loads(m.value())
            progress[d["batch"]] += 1
            attempt[d["batch"]] = d["attempt"]
        if any(n > 1 for n in progress.values()):
            fail("a batch was delivered twice")
        got = collections.Counter()
        for m in read_topic(bootstrap, "out"):
            p = provenance(m)
            if p is None or (p.app, p.sink) != ("op", "to-kafka"):
                fail(f"a record of out with provenance {p}, not of app 'op' sink 'to-kafka'")
            if attempt.get(p.batch) == p.attempt:
                got[(m.partition(), m.value().decode())] += 1
        if got != produced:
            fail(f"{sum((produced - got).values())} records lost, "
                 f"{sum((got - produced).values())} duplicated")
        print(f"operator faults: ok ({sum(produced.values())} records exactly once)", flush=True)
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait()
        if args.keep:
            print(f"operator faults: work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
