#!/usr/bin/python3
"""scenarios.py — what librdkafka's mock cluster cannot show, on a real Apache Kafka.

    scenarios.py --lockstep BIN --bootstrap HOST:PORT SCENARIO...   (or --list)

Each scenario builds its own topics and checkpoints (names carry a random suffix, so many
run on one broker, even in parallel) and asserts the committed output exactly: read back
read_committed by an independent consumer, every expected record once and nothing else.

  open-transaction      an input transaction left open holds lockstep at the last stable
                        offset: nothing past it is read until it commits, then all is;
                        /metrics shows the records held back behind it (high watermark -
                        last stable offset) while the lag is 0
  markers-aborted       transaction markers and aborted records inside and at the end of
                        planned ranges: only committed input reaches the output, once
  markers-aborted-bytecap  the same with max.bytes.per.batch cutting ranges in between
  zombie-fenced         an instance frozen (SIGSTOP) while a copy of its checkpoint runs
                        elsewhere is fenced when it wakes (SIGCONT): it stops, naming the
                        transactional.id, and the output holds every record once
  orphan-timeout        a kill with a transaction open: read_committed sees none of it,
                        read_uncommitted does; the broker aborts it after
                        transaction.timeout.ms, without any restart; a restart then
                        delivers every record once
  compacted-input       a compacted input topic with offset gaps is read whole, once
  partitions-added      partitions added to the input while running are read from their
                        start, once
  topic-recreated       an input topic deleted and recreated with more records than the
                        checkpointed offset is refused as data loss (never read from its
                        middle); on.data.loss=skip goes on at the checkpointed offset,
                        the records below it counted as skipped
  topic-recreated-running  the same while lockstep runs: it stops when the topic
                        comes back
  record-too-large      an output topic whose max.message.bytes is 100 kB: five 30 kB
                        records are delivered (never packed into one rejected batch); a
                        150 kB record stops the application naming the topic and the setting
  txn-timeout-above-max kafka.transaction.timeout.ms above the broker's
                        transaction.max.timeout.ms stops at start with a clear message
  group-zombie          group.mode=consumer, two processes on a 2-partition input fed
                        while they run: one is frozen (SIGSTOP) while delivering, past
                        group.session.timeout.ms; the other takes over its task (its
                        init_transactions fences the frozen one) and carries on; woken
                        (SIGCONT), the zombie writes nothing visible and either stops
                        (fenced or its assignment lost) or rejoins the group; the
                        read_committed output holds every line once
  group-refusal         group.mode=consumer with input topics of different partition
                        counts is refused at start naming each topic and its count;
                        nothing is created: no checkpoint.dir, no progress topic, no output
  group-changelog-policy  group.mode=consumer (the built-in wordcount) with its changelog
                        topic made beforehand with cleanup.policy=delete, then
                        compact,delete: refused at start naming the topic, its policy and
                        the kafka-configs.sh fix; nothing is created and the policy is left
                        as it was; made compact, the check runs (DescribeConfigs) and the
                        group joins
  group-repartition     group.mode=consumer, the pipeline map -> lk_repartition "by-key" ->
                        Kafka (--repartition-plugin: tests/mock/plugins/repartition_copy.c)
                        in two processes fed while they run: lockstep creates
                        <app.id>.by-key.repartition (2 partitions, cleanup.policy=delete,
                        retention.ms = repartition.retention.ms) and both progress topics
                        (2 partitions, compacted), checked with DescribeConfigs; each
                        process is SIGKILLed (the other takes its tasks over) while a
                        stage-1 transaction is held open on the repartition topic, then a
                        graceful move; the read_committed repartition topic holds every
                        line once in its key's murmur2 partition, read_uncommitted also
                        aborted stage-1 records (required: else the test proves nothing),
                        and the read_committed output every line once, none made from an
                        aborted stage-1 attempt (its copied provenance header)
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kt import App, Cluster, Failure, check, expect_exactly_once, log, values, wait_for  # noqa: E402
from confluent_kafka import Producer, TopicPartition  # noqa: E402


class Scenario:
    def __init__(self, args, name):
        self.lockstep = args.lockstep
        self.kafka = Cluster(args.bootstrap)
        self.bootstrap = args.bootstrap
        self.repartition_plugin = args.repartition_plugin
        self.tag = f"{name}-{random.randrange(16**6):06x}"
        self.work = tempfile.mkdtemp(prefix=f"lockstep-kt-{name}.")
        self.apps = []

    def topic(self, what, partitions=1, config=None):
        name = f"{self.tag}.{what}"
        self.kafka.create_topic(name, partitions, config)
        return name

    def app(self, suffix, props):
        a = App(self.lockstep, self.work, f"{self.tag}-{suffix}", self.bootstrap, props)
        self.apps.append(a)
        return a

    def copy_app(self, suffix, src, dst, **props):
        p = {"pipeline": "copy", "input.topics": src, "output.topic": dst,
             "output.partition": "keep"}
        p.update({k.replace("_", "."): str(v) for k, v in props.items()})
        return self.app(suffix, p)

    def close(self, ok):
        for a in self.apps:
            a.kill()
        if ok:
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            for a in self.apps:
                print(f"---- {a.stderr_path}\n{a.tail(40)}")
            log(f"work directory kept: {self.work}")


def free_port():
    """A loopback port nothing listens on now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port):
    """lockstep's /metrics as {series: value} ({} while it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def records(prefix, n, partitions=1, size=0):
    """n records spread over partitions: (partition, key, value), values unique."""
    pad = b"." * size
    return [(i % partitions, f"k{i}".encode(), f"{prefix}-{i}".encode() + pad)
            for i in range(n)]


# ---------------------------------------------------------------------------------------

def open_transaction(s):
    src, dst = s.topic("in"), s.topic("out")
    before = records("before", 10)
    s.kafka.produce(src, before)
    txn = s.kafka.produce(src, records("open-txn", 5), transactional_id=f"{s.tag}-hang",
                          commit=None)
    after = records("after", 10)
    s.kafka.produce(src, after)
    lo, hi = s.kafka.watermarks(src, 0)
    check(hi == 25, f"{src}: high watermark {hi}, 25 expected")
    port = free_port()
    app = s.copy_app("copy", src, dst, metrics_listen=f"127.0.0.1:{port}",
                     health_stall_ms=1000)
    app.start()
    # the last stable offset is 10 (the open transaction's first record)
    app.wait_caught_up(src, {0: 10})
    expect_exactly_once("output while the input transaction is open",
                        values(s.kafka.read(dst)), before)
    # Several batches later (batch.interval.ms=100) nothing past the LSO has been read.
    time.sleep(2)
    check(app.offsets(src).get(0) == 10,
          f"read past the last stable offset: {app.offsets(src)}")
    # The metrics tell it: no lag (everything readable is read), but the 15 records from
    # the open transaction's first one to the high watermark are held back behind it.
    lag = f'lockstep_consumer_lag_records{{app="{app.name}",topic="{src}",partition="0"}}'
    held = f'lockstep_consumer_held_back_records{{app="{app.name}",topic="{src}",partition="0"}}'
    wait_for("held back 15 in /metrics",
             lambda: scrape(port).get(held) == 15 and scrape(port).get(lag) == 0, timeout=30)
    # and the log, once the hold lasts longer than health.stall.ms
    wait_for("the held-back warning", lambda: f"{src}[0]: 15 records held back behind an "
             "open transaction" in app.stderr(), timeout=30)
    txn.commit_transaction(30)
    app.wait_caught_up(src, {0: 26})  # 25 records + the commit marker
    wait_for("held back 0 in /metrics after the commit",
             lambda: scrape(port).get(held) == 0 and scrape(port).get(lag) == 0, timeout=30)
    check(f"{src}[0]: no longer held back by an open transaction" in app.stderr(),
          "the end of the hold is not logged")
    app.stop()
    expect_exactly_once("output after the commit", values(s.kafka.read(dst)),
                        before + records("open-txn", 5) + after)


def markers_aborted(s, pad=0, **props):
    src, dst = s.topic("in", 2), s.topic("out", 2)
    want, n = [], 0

    def batch(kind, count):
        nonlocal n
        recs = [(i % 2, f"k{n + i}".encode(), f"{kind}-{n + i}".encode() + b"." * pad)
                for i in range(count)]
        n += count
        return recs

    plan = [("plain", 3), ("commit", 4), ("abort", 4), ("plain", 2), ("commit", 7),
            ("abort", 3), ("abort", 5), ("commit", 1), ("abort", 6)]  # ends with an abort
    for i, (kind, count) in enumerate(plan):
        recs = batch(kind, count * 2)
        if kind == "plain":
            s.kafka.produce(src, recs)
        else:
            s.kafka.produce(src, recs, transactional_id=f"{s.tag}-p", commit=kind == "commit")
        if kind != "abort":
            want += recs
    ends = {p: s.kafka.watermarks(src, p)[1] for p in (0, 1)}
    # small ranges: batches end inside aborted runs and at markers
    app = s.copy_app("copy", src, dst, **(props or {"max_records_per_partition": 3}))
    app.start()
    app.wait_caught_up(src, ends)
    app.stop()
    got = s.kafka.read(dst)
    expect_exactly_once("read_committed output", values(got), want)
    aborted_input = [m for m in s.kafka.read(dst, "read_uncommitted")
                     if m.value().startswith(b"abort-")]
    check(not aborted_input, f"aborted input reached the output: {values(aborted_input)[:3]}")


def markers_aborted_bytecap(s):
    # max.bytes.per.batch ends ranges where fetching stopped: a range cut by the byte cap
    # just before a run of aborted records must end at the first record it could not
    # take, even when the end of the partition is reported in the same breath
    markers_aborted(s, pad=300, max_bytes_per_batch=1024)


def zombie_fenced(s):
    src, dst = s.topic("in"), s.topic("out")
    want = records("r", 600)
    s.kafka.produce(src, want)
    a = s.copy_app("copy", src, dst, max_records_per_partition=20, batch_interval_ms=50)
    a.start()
    wait_for("the first instance to deliver 100 records",
             lambda: a.offsets(src).get(0, 0) >= 100 and a.proc.poll() is None, 60)
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        # A second instance on a copy of the checkpoint (a restore on another machine):
        # same app.id, same checkpoint, same transactional.id.
        copy = os.path.join(s.work, "copy-of-checkpoint")
        os.mkdir(copy)
        # mdb_copy takes a reader slot under LMDB's reader-table mutex: if the SIGSTOP
        # caught the first instance holding it (beginning a read transaction), the copy
        # waits for a process that cannot run (seen once, under ASan). Let it run a
        # moment and stop it again, then copy again.
        for attempt in range(10):
            try:
                subprocess.run(["mdb_copy", a.dir, copy], check=True, timeout=10)
                break
            except subprocess.TimeoutExpired:
                os.kill(a.proc.pid, signal.SIGCONT)
                time.sleep(0.05)
                os.kill(a.proc.pid, signal.SIGSTOP)
        else:
            raise Failure("mdb_copy of the stopped instance's checkpoint never finished")
        b = s.copy_app("copy", src, dst, max_records_per_partition=20, batch_interval_ms=50)
        b.dir = copy
        b.props["checkpoint.dir"] = copy
        b.stderr_path += ".second"
        b.start()
        b.wait_caught_up(src, {0: 600})
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    rc = a.wait_exit(90)
    err = a.stderr()
    check(rc != 0, f"the zombie exited {rc} after being fenced; {a.tail()}")
    check("fenced" in err.lower(), f"the zombie's log does not say it was fenced; {a.tail()}")
    check(s.tag in err, f"the zombie's message does not name the transactional.id; {a.tail()}")
    b.stop()
    expect_exactly_once("output", values(s.kafka.read(dst)), want)


def orphan_timeout(s):
    src, dst = s.topic("in"), s.topic("out")
    want = records("r", 100)
    s.kafka.produce(src, want)
    app = s.copy_app("copy", src, dst, kafka_transaction_timeout_ms=6000)
    app.start(env={"LOCKSTEP_FAULTPOINT": "before-sink-commit"})
    rc = app.wait_exit(60)
    check(rc == -signal.SIGKILL, f"expected death at before-sink-commit, got {rc}; {app.tail()}")
    unc = s.kafka.read(dst, "read_uncommitted")
    check(len(unc) == 100, f"the killed attempt left {len(unc)} records, 100 expected")
    check(not s.kafka.read(dst, settle=False),
          "read_committed sees records of an open transaction")
    # The broker aborts the orphan by itself once transaction.timeout.ms has passed: the
    # abort marker is the one more offset.
    wait_for("the broker to abort the orphaned transaction",
             lambda: s.kafka.watermarks(dst, 0)[1] == 101, 60, 0.5)
    check(not s.kafka.read(dst), "read_committed sees records of an aborted transaction")
    app.start()
    app.wait_caught_up(src, {0: 100})
    app.stop()
    expect_exactly_once("output", values(s.kafka.read(dst)), want)
    unc = s.kafka.read(dst, "read_uncommitted")
    check(len(unc) == 200, f"read_uncommitted: {len(unc)} records, 200 expected "
                           f"(100 aborted + 100 committed)")


def compacted_input(s):
    src = s.topic("in", 1, {"cleanup.policy": "compact", "segment.ms": "100",
                            "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "100",
                            "min.compaction.lag.ms": "0"})
    dst = s.topic("out")
    produced = []
    for wave in range(4):
        recs = [(0, f"k{i}".encode(), f"w{wave}-{i}".encode()) for i in range(20)]
        s.kafka.produce(src, recs)
        produced += recs
        time.sleep(0.3)  # past segment.ms: the next append rolls a new segment
    lo, hi = s.kafka.watermarks(src, 0)
    wait_for("the log cleaner to compact the input (offset gaps)",
             lambda: len(s.kafka.read(src, "read_uncommitted")) < hi - lo, 90, 1.0)
    app = s.copy_app("copy", src, dst, max_records_per_partition=7)
    app.start()
    app.wait_caught_up(src, {0: hi})
    app.stop()
    out = values(s.kafka.read(dst))
    present = values(s.kafka.read(src, "read_uncommitted"))
    check(len(out) == len(set(out)), "a record was copied twice")
    check(set(out) <= set(produced), "the output holds records never produced")
    check(set(present) <= set(out), f"records of the compacted input are missing: "
                                    f"{sorted(set(present) - set(out))[:3]}")
    check(len(out) < len(produced), "the input had no gaps when it was read")


def partitions_added(s):
    src, dst = s.topic("in", 2), s.topic("out", 4)
    first = records("a", 100, 2)
    s.kafka.produce(src, first)
    app = s.copy_app("copy", src, dst)
    app.start()
    app.wait_caught_up(src, {0: 50, 1: 50})
    s.kafka.add_partitions(src, 4)
    second = records("b", 200, 4)
    s.kafka.produce(src, second)
    app.wait_caught_up(src, {0: 100, 1: 100, 2: 50, 3: 50}, 120)
    app.stop()
    expect_exactly_once("output", values(s.kafka.read(dst)), first + second)


def topic_recreated(s):
    src, dst = s.topic("in"), s.topic("out")
    old = records("old", 20)
    s.kafka.produce(src, old)
    app = s.copy_app("copy", src, dst)
    app.start()
    app.wait_caught_up(src, {0: 20})
    app.stop()
    s.kafka.delete_topic(src)
    s.kafka.create_topic(src, 1)
    new = records("new", 30)
    s.kafka.produce(src, new)
    app.start()
    rc = app.wait_exit(90)
    err = app.stderr().split("---- start")[-1]
    check(rc != 0, f"a recreated input topic was read on (exit {rc}); {app.tail()}")
    check(f"{src}" in err and "on.data.loss" in err,
          f"the refusal does not name the partition and on.data.loss; {app.tail()}")
    expect_exactly_once("output after the refusal", values(s.kafka.read(dst)), old)
    # on.data.loss=skip continues at the checkpointed offset, the new topic's records
    # below it counted as skipped (checkpoint reset-offsets is the way to read them)
    app.start({"on.data.loss": "skip"})
    app.wait_caught_up(src, {0: 30})
    app.stop()
    expect_exactly_once("output after on.data.loss=skip", values(s.kafka.read(dst)),
                        old + new[20:])
    acc = app.inspect()["accumulators"].get("lockstep.data.loss.skipped")
    check(acc == 20, f"lockstep.data.loss.skipped is {acc}, 20 expected")


def topic_recreated_running(s):
    src, dst = s.topic("in"), s.topic("out")
    old = records("old", 20)
    s.kafka.produce(src, old)
    app = s.copy_app("copy", src, dst)
    app.start()
    app.wait_caught_up(src, {0: 20})
    s.kafka.delete_topic(src)
    # the recreated topic comes back only after lockstep has seen it gone (a topic
    # recreated between two plans looks the same as the old one to librdkafka 2.0.2,
    # which shows no topic ids)
    wait_for("lockstep to notice the input topic is gone",
             lambda: f"input topic {src}" in app.stderr(), 60)
    s.kafka.create_topic(src, 1)
    s.kafka.produce(src, records("new", 30))
    rc = app.wait_exit(90)
    check(rc != 0, f"a recreated input topic was read on while running (exit {rc}); "
                   f"{app.tail()}")
    # refused as data loss whichever the planner saw first: the topic back but empty
    # (offset beyond the log end) or back with records (the fingerprint differs)
    check("recreated" in app.stderr() and f"{src}[0]" in app.stderr(),
          f"the refusal does not name the partition and say it was recreated; {app.tail()}")
    expect_exactly_once("output", values(s.kafka.read(dst)), old)


def record_too_large(s):
    src = s.topic("in")
    dst = s.topic("out", 1, {"max.message.bytes": "100000"})
    fits = records("fits", 5, size=30000)
    s.kafka.produce(src, fits)
    app = s.copy_app("copy", src, dst)
    app.start()
    app.wait_caught_up(src, {0: 5})
    expect_exactly_once("output", values(s.kafka.read(dst)), fits)
    big = records("big", 1, size=150000)
    s.kafka.produce(src, big)
    rc = app.wait_exit(90)
    err = app.stderr()
    check(rc != 0, f"exit {rc} after a record the topic rejects")
    check(dst in err and "max.message.bytes" in err,
          f"the error names neither the topic nor max.message.bytes; {app.tail()}")
    check(re.search(re.escape(src) + r"\[0\] offsets? 5\b", err),
          f"the error does not name the input record ({src} offset 5); {app.tail()}")
    expect_exactly_once("output", values(s.kafka.read(dst)), fits)


def txn_timeout_above_max(s):
    src, dst = s.topic("in"), s.topic("out")
    s.kafka.produce(src, records("r", 10))
    app = s.copy_app("copy", src, dst, kafka_transaction_timeout_ms=1000000)
    app.start()
    rc = app.wait_exit(60)
    check(rc != 0, f"exit {rc}")
    check("set kafka.transaction.timeout.ms" in app.stderr(),
          f"the error does not name lockstep's setting kafka.transaction.timeout.ms; "
          f"{app.tail()}")
    check(not s.kafka.read(dst), "output written despite the refusal")


class Feeder(threading.Thread):
    """Produces unique lines to topic (round robin over its partitions) at a steady rate
    until stopped; sent holds every (partition, key, value) produced."""

    def __init__(self, kafka, topic, partitions, per_s):
        super().__init__(daemon=True)
        self.kafka, self.topic, self.partitions, self.per_s = kafka, topic, partitions, per_s
        self.sent, self.error = [], None
        self.stopping = threading.Event()

    def run(self):
        try:
            p = Producer({"bootstrap.servers": self.kafka.bootstrap, "linger.ms": 5,
                          "enable.idempotence": True, "log_level": 0})
            start = time.monotonic()
            while not self.stopping.is_set():
                due = int((time.monotonic() - start) * self.per_s)
                for i in range(len(self.sent), due):
                    rec = (i % self.partitions, f"k{i}".encode(), f"line-{i}".encode())
                    p.produce(self.topic, key=rec[1], value=rec[2], partition=rec[0])
                    self.sent.append(rec)
                p.poll(0)
                time.sleep(0.02)
            if p.flush(30):
                self.error = "input records left unsent"
        except Exception as e:  # reported by the scenario
            self.error = repr(e)

    def finish(self):
        self.stopping.set()
        self.join()
        check(not self.error, f"input producer: {self.error}")
        return self.sent


def group_member(s, app_id, member, props):
    """One process of group app_id (group.mode=consumer) with a checkpoint.dir and log of
    its own (member names them)."""
    a = s.app(member, props)
    a.name = app_id
    a.props["app.id"] = app_id
    a.props["group.mode"] = "consumer"
    return a


def log_after(a, mark, needle):
    """Whether needle is in a's log after the first occurrence of mark."""
    text = a.stderr()
    i = text.find(mark)
    return i >= 0 and needle in text[i:]


def assigned(a, since=0):
    """The task lists of a's 'assigned tasks [...]' lines in its log from offset since."""
    return [m.group(1).split() for m in
            re.finditer(r"assigned tasks \[([0-9 ]*)\]", a.stderr()[since:])]


def progress_until(s, app_id, topic):
    """{partition: until} of the last committed progress records of app_id (task p's
    record in progress partition p)."""
    until = {}
    for m in s.kafka.read(f"{app_id}.progress"):
        d = json.loads(m.value())
        for o in d.get("offsets", []):
            if o["topic"] == topic:
                until[o["partition"]] = max(until.get(o["partition"], 0), o["until"])
    return until


def group_zombie(s):
    src, dst = s.topic("in", 2), s.topic("out", 2)
    app_id = f"{s.tag}-g"
    props = {"pipeline": "copy", "input.topics": src, "output.topic": dst,
             "output.partition": "keep", "group.session.timeout.ms": "6000",
             "max.records.per.partition": "20",
             "batch.interval.ms": "50", "shutdown.timeout.ms": "20000"}
    feeder = Feeder(s.kafka, src, 2, 100)
    feeder.start()
    a = group_member(s, app_id, "a", props)
    b = group_member(s, app_id, "b", props)
    phase = os.path.join(s.work, "a.phase")
    with open(phase, "wb") as f:
        f.write(bytes(128))
    try:
        a.start(env={"LOCKSTEP_PHASE_FILE": phase})
        wait_for("a to run both tasks", lambda: ["0", "1"] in assigned(a), 60)
        b.start()
        wait_for("the group to give each process one task",
                 lambda: any(len(t) == 1 for t in assigned(a)) and
                 any(len(t) == 1 for t in assigned(b)), 90)
        mine = next(t for t in reversed(assigned(a)) if len(t) == 1)[0]
        # freeze a while its transaction is open with records in the output (a delivery
        # sent but not committed): stopped right after it reports delivering, kept
        # stopped if the output's last stable offset then stands before its high
        # watermark, else woken and tried again (well within the session timeout)
        dp = int(mine)
        for attempt in range(80):
            wait_phase(phase, PHASE_DELIVERING, 10)
            time.sleep(random.uniform(0.001, 0.004))
            os.kill(a.proc.pid, signal.SIGSTOP)
            # a moment for the markers of a commit a already sent (the coordinator writes
            # them without a): what is still open then is a's
            time.sleep(0.5)
            if open_transaction_in(s, dst, dp):
                break
            os.kill(a.proc.pid, signal.SIGCONT)
            time.sleep(random.uniform(0.05, 0.3))
        else:
            raise Failure(f"a was never caught with a transaction open on {dst}[{dp}] "
                          f"in 80 tries")
        frozen_at = len(b.stderr())
        words = open(phase, "rb").read(64)[16:64].decode(errors="replace").split()
        log(f"a frozen (it ran task {mine}) with a transaction open on {dst}[{dp}], "
            f"try {attempt + 1}; phases {words}")
        # past the session timeout the group gives b both tasks; b's task `mine` starts
        # with init_transactions on <app.id>.<mine>, fencing a
        wait_for("b to take over a's task", lambda: any(
            sorted(t) == ["0", "1"] for t in assigned(b, frozen_at)), 90)
        before = progress_until(s, app_id, src).get(int(mine), 0)
        wait_for(f"b to deliver task {mine}",
                 lambda: progress_until(s, app_id, src).get(int(mine), 0) > before, 60)
    finally:
        woken_at = len(a.stderr())  # frozen: nothing written until SIGCONT
        if a.proc and a.proc.poll() is None:
            os.kill(a.proc.pid, signal.SIGCONT)
    # a wakes to find its session gone: it stops (fenced, or its assignment lost) or
    # rejoins the group
    rejoined = stopped = False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (rejoined or stopped):
        stopped = a.proc.poll() is not None
        rejoined = any(assigned(a, woken_at))
        time.sleep(0.2)
    check(rejoined or stopped, f"the woken zombie neither stopped nor rejoined in 90 s; "
                               f"{a.tail()}")
    said = a.stderr()[woken_at:]
    if stopped:
        rc = a.proc.returncode
        check(rc not in (0, -signal.SIGSEGV, -signal.SIGABRT),
              f"the zombie exited {rc}; {a.tail()}")
        check("fenced" in said.lower() or "assignment lost" in said,
              f"the zombie stopped (exit {rc}) without saying it was fenced or lost its "
              f"tasks; {a.tail()}")
        log(f"the zombie stopped: exit {rc}: {said.strip().splitlines()[-1]!r}")
    else:
        check("revoked" in said or "fenced" in said.lower(),
              f"the zombie rejoined without saying it lost its tasks or was fenced; "
              f"{a.tail()}")
        log(f"the zombie rejoined the group: {assigned(a, woken_at)}")
    for line in said.splitlines():
        if any(w in line for w in ("revoked", "fenced", "Fenced", "lost", "assigned",
                                   "continuing after")):
            log(f"  zombie: {line.strip()}")
    # more input, then everything delivered and every process stopped gracefully
    time.sleep(2)
    want = feeder.finish()
    ends = {p: s.kafka.watermarks(src, p)[1] for p in (0, 1)}
    wait_for("the group to deliver all input", lambda: all(
        progress_until(s, app_id, src).get(p, 0) >= ends[p] for p in (0, 1)), 120, 0.5)
    b.stop()
    if a.proc.poll() is None:
        a.stop()
    expect_exactly_once("read_committed output", values(s.kafka.read(dst)), want)
    unc = len(s.kafka.read(dst, "read_uncommitted"))
    log(f"{len(want)} lines, each once; read_uncommitted holds {unc} records "
        f"({unc - len(want)} of aborted attempts)")
    check(unc > len(want), "no aborted records in the output: the zombie's open "
                           "transaction was committed or never sent")


def open_transaction_in(s, topic, p):
    """Whether topic[p] has an open transaction: its last stable offset (what a
    read_committed consumer is told) stands before its high watermark."""
    hi = s.kafka.watermarks(topic, p)[1]
    c = s.kafka.consumer("read_committed")
    try:
        lso = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
    finally:
        c.close()
    return lso < hi


# the delivering phases of a phase file's bytes 0 (batch loop) and 1 (delivery thread):
# LK__PH_DELIVERING and LK__PH_DELIVERING_COMMIT (core/util_int.h)
PHASE_DELIVERING = (6).to_bytes(1, "little")


def wait_phase(path, phase, seconds):
    """Until the process's phase file (2 bytes: the loop's and the delivery's phase)
    shows phase, polled every 0.2 ms (a delivery lasts milliseconds), at most seconds."""
    fd = os.open(path, os.O_RDONLY)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and phase not in os.pread(fd, 2, 0):
            time.sleep(0.0002)
    finally:
        os.close(fd)


def group_refusal(s):
    in2, in3, dst = s.topic("in2", 2), s.topic("in3", 3), s.topic("out", 2)
    s.kafka.produce(in2, records("r", 10, 2))
    s.kafka.produce(in3, records("r", 9, 3))
    app_id = f"{s.tag}-g"
    a = group_member(s, app_id, "a", {"pipeline": "copy", "input.topics": f"{in2},{in3}",
                                      "output.topic": dst})
    a.start()
    rc = a.wait_exit(60)
    err = a.stderr().split("---- start")[-1]
    check(rc in (1, 2), f"exit {rc} for input topics of 2 and 3 partitions; {a.tail()}")
    check(f"{in2} has 2" in err and f"{in3} has 3" in err,
          f"the refusal does not name each topic with its partition count; {a.tail()}")
    check("Sanitizer" not in err and "runtime error" not in err, a.tail())
    check(not os.path.exists(a.dir), f"checkpoint.dir {a.dir} was created: "
                                     f"{os.listdir(a.dir) if os.path.isdir(a.dir) else ''}")
    topics = s.kafka.admin.list_topics(timeout=10).topics
    check(f"{app_id}.progress" not in topics, f"{app_id}.progress was created")
    check(not s.kafka.read(dst), "output written despite the refusal")


def group_changelog_policy(s):
    src, dst = s.topic("in", 2), s.topic("out", 2)
    s.kafka.produce(src, records("r", 10, 2))
    app_id = f"{s.tag}-g"
    changelog = f"{app_id}.word-counts.changelog"  # the built-in wordcount's state
    s.kafka.create_topic(changelog, 2, {"cleanup.policy": "delete"})
    a = group_member(s, app_id, "a", {"pipeline": "wordcount", "input.topics": src,
                                      "output.topic": dst})
    made = [f"{app_id}.progress", f"{app_id}.by-word.progress",
            f"{app_id}.by-word.repartition"]
    for policy in ("delete", "compact,delete"):
        if policy != "delete":
            s.kafka.alter_topic_config(changelog, {"cleanup.policy": policy})
        a.start()
        rc = a.wait_exit(60)
        err = a.stderr().split("---- start")[-1]
        check(rc in (1, 2), f"exit {rc} for a changelog topic of cleanup.policy={policy}; "
                            f"{a.tail()}")
        check(f"changelog topic {changelog} has cleanup.policy={policy}, not compact" in err
              and f"--entity-name {changelog} --add-config cleanup.policy=compact" in err
              and "kafka-configs.sh" in err,
              f"the refusal does not name the topic, its policy and the fix; {a.tail()}")
        check("Sanitizer" not in err and "runtime error" not in err, a.tail())
        check(not os.path.exists(a.dir), f"checkpoint.dir {a.dir} was created")
        topics = s.kafka.admin.list_topics(timeout=10).topics
        check(not [t for t in made if t in topics],
              f"created despite the refusal: {[t for t in made if t in topics]}")
        check(s.kafka.topic_config(changelog, "cleanup.policy") == policy,
              f"{changelog}'s cleanup.policy was modified")
        check(not s.kafka.read(dst), "output written despite the refusal")
    # the fix the message names: the check runs on the broker (not "could not be
    # checked") and passes, and the start goes on. The stage-1 progress topic (compact,
    # checked in the same request) and the repartition topic are made beforehand: a
    # first start that creates the repartition topic itself can be assigned before its
    # consumer sees that topic and refuse the assignment (a start race not checked here)
    s.kafka.alter_topic_config(changelog, {"cleanup.policy": "compact"})
    s.kafka.create_topic(made[0], 2, {"cleanup.policy": "compact"})
    s.kafka.create_topic(made[2], 2, {"cleanup.policy": "delete"})
    mark = len(a.stderr())
    a.start()
    wait_for("the group joined", lambda: "joining group" in a.stderr()[mark:], 60)
    err = a.stderr()[mark:]
    check("could not be checked" not in err and "not compact" not in err,
          f"the policy check did not run or refused compacted topics; {a.tail()}")
    check(made[1] in s.kafka.admin.list_topics(timeout=10).topics,
          f"{made[1]} was not created; {a.tail()}")
    a.stop()


def murmur2(key):
    """The Java client's Utils.murmur2 of key (bytes), as an unsigned 32-bit value."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    h = (0x9747B28C ^ len(key)) & mask
    i = 0
    while len(key) - i >= 4:
        k = int.from_bytes(key[i:i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
        i += 4
    rest = len(key) - i
    if rest == 3:
        h ^= key[i + 2] << 16
    if rest >= 2:
        h ^= key[i + 1] << 8
    if rest >= 1:
        h ^= key[i]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def murmur2_partition(key, n):
    """Kafka's default partitioner of a non-NULL key (the Java client's, librdkafka's
    murmur2_random): (murmur2(key) & 0x7fffffff) % n."""
    return (murmur2(key) & 0x7FFFFFFF) % n


def provenances(m):
    """The (batch, attempt) of every `lockstep` provenance header of m, in order: the
    sink's own first, then any copied from the input (sink/provenance_int.h: the value is
    "v1 <batch> <attempt> <app.id> <sink uid>")."""
    out = []
    for name, v in m.headers() or []:
        if name == "lockstep":
            f = v.decode(errors="replace").split(" ", 4)
            check(len(f) == 5 and f[0] == "v1", f"malformed provenance header {v!r}")
            out.append((int(f[1]), f[2], f[4]))
    return out


def stuck_transaction(s, topic, nparts, readers):
    """Whether a transaction on topic stays open: some partition's last stable offset
    stands before its high watermark and has not moved 0.3 s later (a running member
    commits its transactions within milliseconds; a stopped one never does)."""
    rc, ru = readers

    def lso_hw():
        return [(rc.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1],
                 ru.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
                for p in range(nparts)]
    first = lso_hw()
    time.sleep(0.3)
    second = lso_hw()
    return any(a[0] < a[1] and a[0] == b[0] for a, b in zip(first, second))


def group_repartition(s):
    check(s.repartition_plugin and os.path.exists(s.repartition_plugin),
          f"group-repartition needs --repartition-plugin (the lk_repartition_copy module "
          f"of tests/mock/plugins/repartition_copy.c), not {s.repartition_plugin!r}")
    src, dst = s.topic("in", 2), s.topic("out", 2)
    app_id = f"{s.tag}-g"
    rep, rprog, prog = (f"{app_id}.by-key.repartition", f"{app_id}.by-key.progress",
                        f"{app_id}.progress")
    retention = "5400000"  # 90 min: not the broker's default (7 days)
    props = {"pipeline.plugin": s.repartition_plugin, "input.topics": src,
             "output.topic": dst, "group.session.timeout.ms": "6000",
             "max.records.per.partition": "20", "batch.interval.ms": "50",
             "shutdown.timeout.ms": "20000", "repartition.retention.ms": retention}
    feeder = Feeder(s.kafka, src, 2, 100)
    feeder.start()
    a = group_member(s, app_id, "a", props)
    b = group_member(s, app_id, "b", props)
    readers = (s.kafka.consumer("read_committed"), s.kafka.consumer("read_uncommitted"))
    phases = {who: os.path.join(s.work, f"{who}.phase") for who in ("a", "b")}
    for path in phases.values():
        with open(path, "wb") as f:
            f.write(bytes(128))
    env = {who: {"LOCKSTEP_PHASE_FILE": path} for who, path in phases.items()}
    kills = 0
    try:
        a.start(env=env["a"])
        wait_for("a to run both tasks", lambda: ["0", "1"] in assigned(a), 60)
        # lockstep made the topics of both stages, one partition per task
        for t, policy in ((rep, "delete"), (rprog, "compact"), (prog, "compact")):
            n = len(s.kafka.partitions(t))
            check(n == 2, f"{t} has {n} partitions, not one per task (2)")
            got = s.kafka.topic_config(t, "cleanup.policy")
            check(got == policy, f"{t} has cleanup.policy={got}, not {policy}")
        got = s.kafka.topic_config(rep, "retention.ms")
        check(got == retention, f"{rep} has retention.ms={got}, not "
                                f"repartition.retention.ms={retention}")
        log(f"created: {rep} (2 partitions, delete, retention.ms={retention}); {rprog} and "
            f"{prog} (2 partitions, compact)")
        b.start(env=env["b"])

        def split(since_a=0, since_b=0):
            return lambda: any(len(t) == 1 for t in assigned(a, since_a)) and \
                any(len(t) == 1 for t in assigned(b, since_b))
        wait_for("the group to give each process one task", split(), 90)

        def kill_in_transaction(victim, who, other):
            """SIGKILL victim while a transaction of its stage 1 is open on the repartition
            topic (stopped while delivering until one is seen held open), then wait until
            other runs every task."""
            nonlocal kills
            for attempt in range(100):
                # stopped right after one of its tasks reports delivering (the phase
                # file: process-wide, so a stage-1 or a stage-2 task)
                wait_phase(phases[who], PHASE_DELIVERING, 5)
                time.sleep(random.uniform(0.002, 0.02))
                os.kill(victim.proc.pid, signal.SIGSTOP)
                if stuck_transaction(s, rep, 2, readers):
                    break
                os.kill(victim.proc.pid, signal.SIGCONT)
            else:
                raise Failure(f"{who} was never caught with a transaction open on "
                              f"{rep} in 100 tries")
            mark = len(other.stderr())
            victim.kill()
            kills += 1
            log(f"SIGKILL {who} with a stage-1 "
                f"transaction open on {rep} (try {attempt + 1})")
            wait_for("the survivor to take both tasks over", lambda: any(
                sorted(t) == ["0", "1"] for t in assigned(other, mark)), 90)

        kill_in_transaction(a, "a", b)
        marks = len(a.stderr()), len(b.stderr())
        a.start(env=env["a"])
        wait_for("a to rejoin", split(*marks), 90)
        kill_in_transaction(b, "b", a)
        marks = len(a.stderr()), len(b.stderr())
        b.start(env=env["b"])
        wait_for("b to rejoin", split(*marks), 90)
        # a graceful move: a's tasks (both stages) go to b
        mark = len(b.stderr())
        a.stop()
        wait_for("b to run both tasks", lambda: any(
            sorted(t) == ["0", "1"] for t in assigned(b, mark)), 90)
        time.sleep(1)
        want = feeder.finish()
        ends = {p: s.kafka.watermarks(src, p)[1] for p in (0, 1)}
        wait_for("stage 1 to deliver all input", lambda: all(
            progress_until(s, app_id, src).get(p, 0) >= ends[p] for p in (0, 1)), 60, 0.5)
        rends = {p: s.kafka.watermarks(rep, p)[1] for p in (0, 1)}
        wait_for("stage 2 to deliver the repartition topic", lambda: all(
            progress_until(s, f"{app_id}.by-key", rep).get(p, 0) >= rends[p]
            for p in (0, 1)), 60, 0.5)
        b.stop()
    finally:
        for r in readers:
            r.close()
    # the repartition topic: every line once (read_committed), in its key's partition;
    # read_uncommitted also shows the records of stage-1 attempts that were aborted
    committed = s.kafka.read(rep)
    everything = s.kafka.read(rep, "read_uncommitted")
    lines = [(k, v) for _, k, v in want]
    expect_exactly_once("read_committed repartition topic",
                        [(m.key(), m.value()) for m in committed], lines)
    wrong = [m for m in committed if m.partition() != murmur2_partition(m.key(), 2)]
    check(not wrong, f"{len(wrong)} repartition records not in their key's murmur2 "
                     f"partition, e.g. {[(m.partition(), m.key()) for m in wrong[:3]]}")
    kept = {(m.partition(), m.offset()) for m in committed}
    aborted = [m for m in everything if (m.partition(), m.offset()) not in kept]
    aborted_attempts = {provenances(m)[0][:2] for m in aborted}
    committed_attempts = {provenances(m)[0][:2] for m in committed}
    check(aborted, "no aborted stage-1 records in the repartition topic: the kills never "
                   "caught stage 1 with a transaction open, so the test proves nothing")
    check(not aborted_attempts & committed_attempts,
          f"attempts both aborted and committed: {sorted(aborted_attempts & committed_attempts)[:3]}")
    # the output: every line once, none made from an aborted stage-1 attempt (its second
    # provenance header is the repartition record's, copied through stage 2)
    out = s.kafka.read(dst)
    from_aborted = [m for m in out if len(provenances(m)) < 2 or
                    provenances(m)[1][2] != "by-key" or
                    provenances(m)[1][:2] in aborted_attempts]
    check(not from_aborted, f"{len(from_aborted)} output records made from aborted stage-1 "
                            f"attempts (or without stage 1's provenance), e.g. "
                            f"{[(m.value(), provenances(m)) for m in from_aborted[:3]]}")
    expect_exactly_once("read_committed output", [(m.key(), m.value()) for m in out], lines)
    unknown = [m for m in out if provenances(m)[1][:2] not in committed_attempts]
    check(not unknown, f"{len(unknown)} output records whose stage-1 attempt is not in the "
                       f"committed repartition topic")
    log(f"{len(want)} lines through two stages, each once; {kills} SIGKILLs left "
        f"{len(aborted)} aborted stage-1 records ({len(aborted_attempts)} attempts) in "
        f"{rep}, none read by stage 2")


SCENARIOS = {
    "open-transaction": open_transaction,
    "markers-aborted": markers_aborted,
    "markers-aborted-bytecap": markers_aborted_bytecap,
    "zombie-fenced": zombie_fenced,
    "orphan-timeout": orphan_timeout,
    "compacted-input": compacted_input,
    "partitions-added": partitions_added,
    "topic-recreated": topic_recreated,
    "topic-recreated-running": topic_recreated_running,
    "record-too-large": record_too_large,
    "txn-timeout-above-max": txn_timeout_above_max,
    "group-zombie": group_zombie,
    "group-refusal": group_refusal,
    "group-changelog-policy": group_changelog_policy,
    "group-repartition": group_repartition,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lockstep", help="path of the lockstep binary")
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP"),
                    help="bootstrap.servers of the real broker (default $KAFKA_BOOTSTRAP)")
    ap.add_argument("--bootstrap-file", help="read bootstrap.servers from this file "
                    "(tests/kafka/broker.sh writes DIR/bootstrap)")
    ap.add_argument("--repartition-plugin", help="the module of tests/mock/plugins/"
                    "repartition_copy.c (group-repartition runs it)")
    ap.add_argument("--list", action="store_true", help="list the scenarios")
    ap.add_argument("scenarios", nargs="*")
    args = ap.parse_args()
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    if args.bootstrap_file:
        with open(args.bootstrap_file) as f:
            args.bootstrap = f.read().strip()
    if not args.lockstep or not args.bootstrap or not args.scenarios:
        ap.error("--lockstep, --bootstrap (or --bootstrap-file) and a scenario are required")
    unknown = [n for n in args.scenarios if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; --list shows them")
    failed = 0
    for name in args.scenarios:
        s = Scenario(args, name)
        t0 = time.monotonic()
        ok = False
        try:
            SCENARIOS[name](s)
            ok = True
            log(f"{name}: ok ({time.monotonic() - t0:.1f}s)")
        except Failure as e:
            log(f"{name}: FAILED: {e}")
        except Exception:  # an error of the scenario itself
            log(f"{name}: ERROR:\n{traceback.format_exc()}")
        finally:
            s.close(ok)
        failed += not ok
    print(f"{len(args.scenarios) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
