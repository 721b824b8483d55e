"""kt.py — the small toolkit of the `kafka` tier's scenarios (tests/kafka/scenarios.py).

Topics are made with the Admin API and waited on until they have leaders; input is written
by confluent-kafka producers (plain or transactional, committed or aborted on purpose);
lockstep runs as a real `lockstep run` process; output is read back by an independent
consumer, read_committed or read_uncommitted, from the log start to the end (for
read_committed the end is the last stable offset). Nothing here knows lockstep's internals
beyond `lockstep checkpoint inspect --json`.
"""

import collections
import json
import os
import signal
import subprocess
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic


class Failure(Exception):
    """A scenario's assertion failed; the message says what was expected and what was seen."""


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def log(msg):
    print(f"kafka-tier: {msg}", flush=True)


def wait_for(what, pred, timeout=60.0, interval=0.2):
    """Poll pred() until it returns a true value (returned) or fail naming what."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise Failure(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Cluster:
    def __init__(self, bootstrap):
        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})

    # ---- topics ----

    def create_topic(self, name, partitions=1, config=None):
        fs = self.admin.create_topics([NewTopic(name, partitions, 1, config=config or {})])
        fs[name].result(30)
        self.wait_leaders(name, partitions)

    def delete_topic(self, name):
        self.admin.delete_topics([name])[name].result(30)
        wait_for(f"topic {name} deleted",
                 lambda: name not in self.admin.list_topics(timeout=10).topics)

    def add_partitions(self, name, total):
        self.admin.create_partitions([NewPartitions(name, total)])[name].result(30)
        self.wait_leaders(name, total)

    def wait_leaders(self, name, partitions):
        c = self.consumer("read_uncommitted")
        try:
            for p in range(partitions):
                wait_for(f"a leader for {name}[{p}]",
                         lambda: self._watermarks_or_none(c, name, p) is not None, 30)
        finally:
            c.close()

    def topic_config(self, name, key):
        res = ConfigResource(ConfigResource.Type.TOPIC, name)
        cfg = self.admin.describe_configs([res])[res].result(30)
        return cfg[key].value

    def alter_topic_config(self, name, config):
        res = ConfigResource(ConfigResource.Type.TOPIC, name, set_config=config)
        self.admin.alter_configs([res])[res].result(30)

    # ---- reading ----

    def consumer(self, isolation):
        return Consumer({"bootstrap.servers": self.bootstrap, "group.id": "kafka-tier-reader",
                         "isolation.level": isolation, "enable.auto.commit": False,
                         "enable.partition.eof": True, "fetch.wait.max.ms": 10,
                         "log_level": 0})

    @staticmethod
    def _watermarks_or_none(c, topic, p):
        try:
            return c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
        except KafkaException as e:
            if e.args[0].code() in (KafkaError.NOT_LEADER_FOR_PARTITION,
                                    KafkaError.LEADER_NOT_AVAILABLE,
                                    KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TIMED_OUT,
                                    KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC):
                return None
            raise

    def watermarks(self, topic, p):
        c = self.consumer("read_uncommitted")
        try:
            return wait_for(f"watermarks of {topic}[{p}]",
                            lambda: self._watermarks_or_none(c, topic, p), 30)
        finally:
            c.close()

    def partitions(self, topic):
        return sorted(self.admin.list_topics(topic, timeout=10).topics[topic].partitions)

    def read(self, topic, isolation="read_committed", timeout=60, settle=True):
        """Every record of topic visible at this isolation level, in partition order.

        read_committed ends at the last stable offset. A transaction's commit markers are
        written by the coordinator after it answers EndTxn, so right after a commit the
        last stable offset can still stand before the committed records: with settle, the
        read is repeated (up to 30 s) until every partition's last stable offset reaches
        the high watermark seen at the start, i.e. nothing is open or pending there. A
        scenario that leaves a transaction open on purpose reads with settle=False."""
        deadline = time.monotonic() + 30
        while True:
            out, settled = self._read_once(topic, isolation, timeout)
            if settled or not settle or isolation != "read_committed" or \
                    time.monotonic() > deadline:
                return out
            time.sleep(0.2)

    def _read_once(self, topic, isolation, timeout):
        # The high watermark comes from a read_uncommitted query: asked by a read_committed
        # consumer, ListOffsets answers with the last stable offset instead, which right
        # after a commit (markers not yet written) can still stand at the start of the
        # committed records -- the partition would look empty and count as settled.
        tps, highs = [], {}
        for p in self.partitions(topic):
            lo, hi = self.watermarks(topic, p)
            if hi > lo:
                tps.append(TopicPartition(topic, p, lo))
                highs[p] = hi
        if not tps:
            return [], True
        c = self.consumer(isolation)
        try:
            c.assign(tps)
            pending, out, settled = {tp.partition for tp in tps}, [], True
            deadline = time.monotonic() + timeout
            while pending:
                if time.monotonic() > deadline:
                    raise Failure(f"reading {topic} ({isolation}) did not reach the end "
                                  f"of partitions {sorted(pending)}")
                m = c.poll(0.5)
                if m is None:
                    continue
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition())
                        settled &= m.offset() >= highs[m.partition()]
                        continue
                    raise Failure(f"reading {topic}: {m.error()}")
                out.append(m)
            out.sort(key=lambda m: (m.partition(), m.offset()))
            return out, settled
        finally:
            c.close()

    # ---- writing ----

    def produce(self, topic, records, transactional_id=None, commit=True, flush=True):
        """records: (partition, key, value) tuples. With transactional_id, all go in one
        transaction, committed or (commit=False) aborted; commit=None leaves it open and
        returns the producer (the caller keeps it alive)."""
        conf = {"bootstrap.servers": self.bootstrap, "linger.ms": 5, "log_level": 0}
        if transactional_id:
            conf["transactional.id"] = transactional_id
        p = Producer(conf)
        if transactional_id:
            p.init_transactions(30)
            p.begin_transaction()
        for part, key, value in records:
            p.produce(topic, value=value, key=key, partition=part)
            p.poll(0)
        if flush:
            check(p.flush(30) == 0, f"producing to {topic}: records left unsent")
        if transactional_id:
            if commit is None:
                return p
            if commit:
                p.commit_transaction(30)
            else:
                p.abort_transaction(30)
        return None


class App:
    """One lockstep application: a checkpoint directory and `lockstep run` processes."""

    def __init__(self, lockstep, work, name, bootstrap, props):
        self.lockstep, self.name = lockstep, name
        self.dir = os.path.join(work, name)
        self.stderr_path = os.path.join(work, f"{name}.stderr")
        self.props = {"app.id": name, "checkpoint.dir": self.dir,
                      "kafka.bootstrap.servers": bootstrap, "kafka.fetch.wait.max.ms": "10",
                      "kafka.log_level": "3", "batch.interval.ms": "100",
                      "log.level": "info", "sink.kafka.timeout.ms": "10000"}
        self.props.update(props)
        self.proc = None

    def args(self, extra=None):
        props = dict(self.props)
        props.update(extra or {})
        return [self.lockstep, "run"] + sum((["-X", f"{k}={v}"] for k, v in props.items()), [])

    def start(self, extra=None, env=None):
        check(self.proc is None or self.proc.poll() is not None,
              f"{self.name}: already running")
        e = dict(os.environ)
        e.pop("LOCKSTEP_FAULTPOINT", None)
        e.update(env or {})
        with open(self.stderr_path, "a") as err:
            err.write(f"---- start {' '.join(self.args(extra)[1:])}\n")
            err.flush()
            self.proc = subprocess.Popen(self.args(extra), env=e, stdout=subprocess.DEVNULL,
                                         stderr=err, stdin=subprocess.DEVNULL)
        return self.proc

    def stop(self, timeout=60):
        """Graceful stop (SIGTERM); its exit status must be 0."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Failure(f"{self.name}: no exit {timeout}s after SIGTERM")
        check(rc == 0, f"{self.name}: graceful stop exited {rc}; {self.tail()}")

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def wait_exit(self, timeout=60):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Failure(f"{self.name}: still running {timeout}s later; {self.tail()}")

    def stderr(self):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def tail(self, n=15):
        lines = self.stderr().splitlines()
        return "its log ends:\n    " + "\n    ".join(lines[-n:])

    def inspect(self):
        out = subprocess.run([self.lockstep, "checkpoint", "inspect", self.dir, "--json"],
                             capture_output=True, text=True)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def offsets(self, topic):
        doc = self.inspect()
        if not doc:
            return {}
        return {o["partition"]: o["offset"] for o in doc["offsets"] if o["topic"] == topic}

    def wait_caught_up(self, topic, ends, timeout=90):
        """Wait until the checkpoint's offsets of topic reach ends {partition: offset} and
        the outbox is empty (everything delivered)."""
        def done():
            if self.proc is not None and self.proc.poll() is not None:
                raise Failure(f"{self.name} exited with {self.proc.returncode}; {self.tail()}")
            doc = self.inspect()
            if not doc:
                return False
            offs = {o["partition"]: o["offset"] for o in doc["offsets"] if o["topic"] == topic}
            return all(offs.get(p, -1) >= n for p, n in ends.items()) and not doc["outbox"]
        wait_for(f"{self.name} to reach {topic} {ends} with an empty outbox", done, timeout)


def values(msgs):
    return [(m.partition(), m.key(), m.value()) for m in msgs]


def expect_exactly_once(what, got, want):
    """got, want: lists of hashable records; each wanted record exactly once, nothing else."""
    g, w = collections.Counter(got), collections.Counter(want)
    missing = w - g
    extra = g - w
    dup = {k: n for k, n in g.items() if n > 1 and k in w}
    check(not missing and not extra,
          f"{what}: {sum(missing.values())} missing (e.g. {list(missing)[:3]}), "
          f"{sum(extra.values())} unexpected or duplicated (e.g. {list(extra)[:3]}, "
          f"duplicates {list(dup.items())[:3]})")
