#!/usr/bin/python3
"""chaos.py — exactly-once, proven the way users will doubt it.

Runs real `lockstep run` processes against a broker (KAFKA_BOOTSTRAP, or a
`lockstep mock-broker` started here), kills them with SIGKILL at random instants and
once at every named fault point, restarts them, lets them drain, and then checks with
an independent reader (this file's own Kafka consumer, read_committed, and a scan of
the output files) that every expected output exists exactly once. Prints
`lost=0 duplicated=0 kills=N` and exits 0, or names what is wrong and exits 1.

Applications under test (one checkpoint each):
  wc    wordcount: topic lines -> topic counts (Kafka transactions) and files
  cp    copy: topic lines -> topic copy-out, same partition, key and value
  kv    count-by-key: topic events (JSON, some malformed) -> topic kv-counts; malformed
        records -> topic dlq

The mock broker does not hide aborted transactions: records of an aborted delivery
attempt are visible there. Every record names its attempt (header lockstep.attempt)
and each batch's progress record names the attempt that committed, so the reader
counts only committed attempts. On a real broker, records of other attempts must not
be visible at all; the checker asserts that when KAFKA_BOOTSTRAP is given.
"""

import argparse
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

# (fault point, application): every named point once; during-file-rename needs files
FAULT_POINTS = [
    ("after-plan", "wc"), ("mid-processing", "cp"), ("after-checkpoint-commit", "kv"),
    ("before-sink-produce", "wc"), ("after-sink-produce", "cp"), ("after-sink-commit", "kv"),
    ("during-file-rename", "wc"), ("during-graceful-stop", "cp"),
]
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota",
         "kappa", "lambda", "mu"]


def log(msg):
    print(f"chaos: {msg}", flush=True)


def watermarks(consumer, tp, timeout=30):
    """(low, high) of tp; retried while a just-created topic has no leader yet (a real
    broker answers NOT_LEADER_FOR_PARTITION until its metadata has propagated)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=10)
        except Exception as e:  # KafkaException
            err = e.args[0] if e.args else None
            retriable = isinstance(err, KafkaError) and err.code() in (
                KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION,
                KafkaError._UNKNOWN_TOPIC)
            if not retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def graceful_stop(proc, timeout=60):
    """SIGTERM, then proc's exit status, or "timeout" (proc is then killed)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "timeout"


def read_topic(bootstrap, topic):
    """Every record of topic, read_committed, from its start to its end."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "chaos-checker",
                  "isolation.level": "read_committed", "enable.auto.commit": False,
                  "enable.partition.eof": True, "fetch.wait.max.ms": 10})
    md = c.list_topics(topic, timeout=10)
    parts = list(md.topics[topic].partitions.keys())
    tps = []
    for p in parts:
        lo, hi = watermarks(c, TopicPartition(topic, p))
        if hi > lo:
            tps.append(TopicPartition(topic, p, lo))
    c.assign(tps)
    pending = len(tps)
    out = []
    deadline = time.time() + 60
    while pending and time.time() < deadline:
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                pending -= 1
                continue
            raise SystemExit(f"chaos: reading {topic}: {m.error()}")
        out.append(m)
    c.close()
    if pending:
        raise SystemExit(f"chaos: could not read {topic} to its end")
    return out


class Runner:
    def __init__(self, args):
        self.args = args
        self.lockstep = args.lockstep
        self.work = tempfile.mkdtemp(prefix="lockstep-chaos.")
        self.broker = None
        self.real_broker = bool(args.bootstrap)
        self.bootstrap = args.bootstrap
        self.rng = random.Random(args.seed)
        self.kills = 0
        self.expected_lines = []   # (partition, value) in produce order
        self.expected_events = []  # (partition, value)
        self.problems = []
        self.duplicated_batches = 0

    # ---- broker and input ----

    def start_broker(self):
        if self.bootstrap:
            log(f"using the broker at {self.bootstrap}")
            self.prepare_real_topics()
            return
        topics = ["lines:4", "events:3", "counts:4", "copy-out:4", "kv-counts:3", "dlq:1",
                  "wc.progress:1", "cp.progress:1", "kv.progress:1"]
        cmd = [self.lockstep, "mock-broker"] + sum((["--topic", t] for t in topics), [])
        self.broker = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True)
        line = self.broker.stdout.readline().strip()
        if not line.startswith("bootstrap.servers="):
            raise SystemExit(f"chaos: mock-broker did not start: {line!r}")
        self.bootstrap = line.split("=", 1)[1]
        log(f"mock broker at {self.bootstrap}")

    def broker_command(self, cmd):
        """A fault command to the mock broker (see `lockstep mock-broker --help`)."""
        self.broker.stdin.write(cmd + "\n")
        self.broker.stdin.flush()
        answer = self.broker.stdout.readline().strip()
        if answer != "ok":
            raise SystemExit(f"chaos: mock-broker refused '{cmd}': {answer}")

    def broker_faults(self, app):
        """The broker goes away mid-run and comes back; then transaction requests fail
        for a while. The application must ride both out and stop gracefully."""
        if not self.broker:
            log("broker faults: restart the real broker while this runs "
                "(docker compose restart kafka) to test them there")
            return
        self.produce(400, 200)
        proc = self.start(app)
        time.sleep(1.5)
        self.broker_command("down")
        log(f"{app}: broker down")
        time.sleep(3)
        self.broker_command("up")
        log(f"{app}: broker up")
        time.sleep(3)
        self.produce(200, 100)
        self.broker_command("error 26 15 5")   # EndTxn: COORDINATOR_NOT_AVAILABLE x5
        self.broker_command("error 24 51 3")   # AddPartitionsToTxn: CONCURRENT_TRANSACTIONS
        time.sleep(3)
        self.broker_command("clear")
        rc = graceful_stop(proc)
        if rc != 0:
            self.problems.append(f"{app}: after the broker faults, the graceful stop exited "
                                 f"{rc} (see {self.work}/{app}.stderr)")

    # Real broker only (--bootstrap; the mock path above is unchanged). Creates the topics
    # the mock gets from `mock-broker --topic` (minus <app>.progress, which lockstep creates
    # itself, compacted, as in production) with the same partition counts: the producer
    # writes lines to explicit partitions 0..3 and cp checks output.partition=keep, so a
    # broker-auto-created topic (one partition) would not do. Refuses topics that already
    # hold records or have other partition counts: the checker counts everything it reads,
    # and a stale <app>.progress record would be taken as a sink fence by the fresh
    # checkpoints. Start from an empty broker (docker compose down -v).
    REAL_TOPICS = {"lines": 4, "events": 3, "counts": 4, "copy-out": 4, "kv-counts": 3,
                   "dlq": 1}

    def prepare_real_topics(self):
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        have = admin.list_topics(timeout=30).topics
        new = [NewTopic(t, n, 1) for t, n in self.REAL_TOPICS.items() if t not in have]
        for t, f in (admin.create_topics(new) if new else {}).items():
            try:
                f.result(30)
                log(f"created topic {t}")
            except Exception as e:  # created meanwhile (compose's topics service): checked below
                err = e.args[0] if e.args else None
                if not (isinstance(err, KafkaError) and
                        err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                    raise SystemExit(f"chaos: cannot create topic {t}: {e!r}")
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "chaos-checker"})
        md = c.list_topics(timeout=30).topics
        for t in list(self.REAL_TOPICS) + ["wc.progress", "cp.progress", "kv.progress"]:
            if t not in md:
                continue  # a progress topic lockstep has not created yet
            parts = md[t].partitions
            if t in self.REAL_TOPICS and len(parts) != self.REAL_TOPICS[t]:
                raise SystemExit(f"chaos: topic {t} has {len(parts)} partitions, "
                                 f"{self.REAL_TOPICS[t]} needed")
            for p in parts:
                if watermarks(c, TopicPartition(t, p))[1] > 0:
                    raise SystemExit(f"chaos: topic {t} already holds records (an earlier "
                                     f"run?); start from an empty broker "
                                     f"(docker compose down -v)")
        c.close()

    def produce(self, nlines, nevents):
        p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        for _ in range(nlines):
            # skew: half of the words are the first three
            n = self.rng.randint(1, 6)
            words = [self.rng.choice(WORDS[:3] if self.rng.random() < 0.5 else WORDS)
                     for _ in range(n)]
            part = self.rng.randrange(4)
            value = " ".join(words)
            key = f"k{self.rng.randrange(1000)}"
            p.produce("lines", value=value.encode(), key=key.encode(), partition=part)
            self.expected_lines.append((part, key, value))
        for i in range(nevents):
            part = self.rng.randrange(3)
            r = self.rng.random()
            if r < 0.05:
                value = "{not json"            # malformed: bad JSON
            elif r < 0.08:
                value = json.dumps({"other": 1})  # malformed: missing field
            else:
                value = json.dumps({"user": f"u{self.rng.randrange(20)}", "n": i})
            p.produce("events", value=value.encode(), partition=part)
            self.expected_events.append((part, value))
            p.poll(0)
        left = p.flush(30)
        if left:
            raise SystemExit(f"chaos: {left} input records not delivered to the broker")

    # ---- applications ----

    def app_args(self, app):
        base = [f"app.id={app}", f"checkpoint.dir={self.work}/{app}",
                f"kafka.bootstrap.servers={self.bootstrap}", "kafka.fetch.wait.max.ms=10",
                "kafka.log_level=3", "batch.interval.ms=0", "max.records.per.partition=200",
                "log.level=warning", "sink.kafka.timeout.ms=10000",
                "kafka.reconnect.backoff.ms=10", "kafka.reconnect.backoff.max.ms=200"]
        if app == "wc":
            base += ["pipeline=wordcount", "input.topics=lines", "output.topic=counts",
                     f"output.dir={self.work}/wc-files"]
        elif app == "cp":
            # group commit: the delivery thread then delivers several durable batches
            # per run, acknowledged together
            base += ["pipeline=copy", "input.topics=lines", "output.topic=copy-out",
                     "output.partition=keep", "checkpoint.sync=interval",
                     "checkpoint.sync.interval.ms=100"]
        else:
            base += ["pipeline=count-by-key", "input.topics=events", "key.field=user",
                     "output.topic=kv-counts", "errors.deadletter=dlq"]
        return [self.lockstep, "run"] + sum((["-X", a] for a in base), [])

    def start(self, app, fault=None):
        env = dict(os.environ)
        env.pop("LOCKSTEP_FAULTPOINT", None)
        if fault:
            env["LOCKSTEP_FAULTPOINT"] = fault
        errlog = open(f"{self.work}/{app}.stderr", "a")
        return subprocess.Popen(self.app_args(app), env=env, stdout=subprocess.DEVNULL,
                                stderr=errlog)

    def kill_at_random(self, app):
        proc = self.start(app)
        time.sleep(self.rng.uniform(0.05, 2.5))
        if proc.poll() is not None:
            self.problems.append(f"{app} exited by itself with {proc.returncode} "
                                 f"(see {self.work}/{app}.stderr)")
            return
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.kills += 1

    def kill_at_fault_point(self, app, fault):
        proc = self.start(app, fault)
        if fault.startswith("during-graceful-stop"):
            time.sleep(1.5)
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.problems.append(f"{app}: fault point {fault} was never reached")
            return
        if rc != -signal.SIGKILL:
            self.problems.append(f"{app}: expected death at {fault}, got exit {rc}")
            return
        self.kills += 1

    def inspect(self, app):
        out = subprocess.run([self.lockstep, "checkpoint", "inspect", f"{self.work}/{app}",
                              "--json"], capture_output=True, text=True)
        if out.returncode:
            return None
        return json.loads(out.stdout)

    def drain(self, app, topic, expected_count_by_partition):
        """Run app until its offsets reach the input's end and its outbox is empty."""
        proc = self.start(app)
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.5)
            if proc.poll() is not None:
                self.problems.append(f"{app} exited during the drain with {proc.returncode}")
                return
            doc = self.inspect(app)
            if not doc:
                continue
            offs = {o["partition"]: o["offset"] for o in doc["offsets"] if o["topic"] == topic}
            done = all(offs.get(p, -1) >= n for p, n in expected_count_by_partition.items())
            if done and not doc["outbox"]:
                break
        rc = graceful_stop(proc)
        if rc != 0:
            self.problems.append(f"{app}: graceful stop after the drain exited {rc}")
        doc = self.inspect(app)
        if not doc or doc["outbox"]:
            self.problems.append(f"{app}: outbox not empty after the drain")

    # ---- the independent reader ----

    def read_topic(self, topic):
        return read_topic(self.bootstrap, topic)

    def committed_records(self, app, topic, sink):
        """Records of the attempts that committed, per batch; and the count of others."""
        # Exactly one progress record per batch, on either kind of broker: a real one
        # hides aborted attempts; on the mock an aborted attempt's progress record is
        # visible, but then recovery reads it as the fence and never delivers the batch
        # again. A second progress record for a batch is a batch delivered twice.
        committed, per_batch = {}, collections.Counter()
        for m in self.read_topic(f"{app}.progress"):
            d = json.loads(m.value())
            if d["app"] == app and (sink in d.get("sinks", {}) or d.get("sink") == sink):
                committed[d["batch"]] = d["attempt"]
                per_batch[d["batch"]] += 1
        twice = {b: n for b, n in per_batch.items() if n > 1}
        if twice:
            self.problems.append(f"{app} sink {sink}: batches delivered more than once: "
                                 f"{sorted(twice)[:10]}")
            self.duplicated_batches += sum(n - 1 for n in twice.values())
        records, foreign = [], 0
        for m in self.read_topic(topic):
            h = dict(m.headers() or [])
            if "lockstep.batch" not in h or "lockstep.attempt" not in h:
                self.problems.append(f"{topic}: a record without provenance headers")
                continue
            batch = int(h["lockstep.batch"])
            attempt = h["lockstep.attempt"].decode()
            if committed.get(batch) == attempt:
                records.append((batch, m))
            else:
                foreign += 1
        batches = sorted(committed)
        gaps = (batches[-1] - batches[0] + 1 - len(batches)) if batches else 0
        return records, foreign, gaps, committed

    def check_foreign(self, name, foreign):
        if foreign and self.real_broker:
            self.problems.append(f"{name}: {foreign} records of uncommitted attempts are "
                                 f"visible to read_committed")
        elif foreign:
            log(f"{name}: {foreign} records of aborted attempts are visible (the mock does "
                f"not hide aborted transactions); not counted")

    def check(self):
        lost = dup = 0
        # wordcount: latest count per word, in Kafka and in files
        expected = collections.Counter()
        for _, _, v in self.expected_lines:
            expected.update(v.split())
        recs, foreign, gaps, _ = self.committed_records("wc", "counts", "to-kafka")
        self.check_foreign("wc", foreign)
        if gaps:
            self.problems.append(f"wc: {gaps} batches missing from the progress topic")
            lost += gaps
        latest = {}
        seen = collections.Counter()
        for batch, m in recs:
            w = m.key().decode()
            seen[(batch, w)] += 1
            if w not in latest or batch >= latest[w][0]:
                latest[w] = (batch, int(m.value()))
        dup += sum(n - 1 for n in seen.values() if n > 1)
        for w, n in expected.items():
            got = latest.get(w, (0, 0))[1]
            if got != n:
                self.problems.append(f"wc Kafka: '{w}' counted {got}, input has {n}")
                lost += max(0, n - got)
                dup += max(0, got - n)
        files = {}
        for p in sorted(os.listdir(f"{self.work}/wc-files")):
            for name in sorted(os.listdir(f"{self.work}/wc-files/{p}")):
                if name.endswith(".tmp"):
                    self.problems.append(f"wc files: leftover temporary file {name}")
                    continue
                with open(f"{self.work}/wc-files/{p}/{name}") as f:
                    for line in f:
                        d = json.loads(line)
                        files[d["key"]] = int(d["value"])
        for w, n in expected.items():
            if files.get(w) != n:
                self.problems.append(f"wc files: '{w}' counted {files.get(w)}, input has {n}")
                lost += 1
        # copy: every input record exactly once, same partition, key and value
        want = collections.Counter(self.expected_lines)
        recs, foreign, gaps, _ = self.committed_records("cp", "copy-out", "to-kafka")
        self.check_foreign("cp", foreign)
        got = collections.Counter((m.partition(), m.key().decode(), m.value().decode())
                                  for _, m in recs)
        missing, extra = want - got, got - want
        if missing or extra:
            self.problems.append(f"cp: {sum(missing.values())} input records missing, "
                                 f"{sum(extra.values())} extra")
        lost += sum(missing.values())
        dup += sum(extra.values())
        # count-by-key: counts of valid events; malformed ones in the dead letter topic
        good, bad = collections.Counter(), collections.Counter()
        for _, v in self.expected_events:
            try:
                d = json.loads(v)
                if "user" not in d:
                    raise ValueError
                good[d["user"]] += 1
            except ValueError:
                bad[v] += 1
        recs, foreign, gaps, _ = self.committed_records("kv", "kv-counts", "to-kafka")
        self.check_foreign("kv", foreign)
        latest = {}
        for batch, m in recs:
            k = m.key().decode()
            if k not in latest or batch >= latest[k][0]:
                latest[k] = (batch, int(m.value()))
        for k, n in good.items():
            got = latest.get(k, (0, 0))[1]
            if got != n:
                self.problems.append(f"kv: '{k}' counted {got}, input has {n}")
                lost += max(0, n - got)
                dup += max(0, got - n)
        recs, foreign, gaps, _ = self.committed_records("kv", "dlq", "deadletter")
        self.check_foreign("kv dead letters", foreign)
        got = collections.Counter(m.value().decode() for _, m in recs)
        missing, extra = bad - got, got - bad
        if missing or extra:
            self.problems.append(f"kv dead letters: {sum(missing.values())} missing, "
                                 f"{sum(extra.values())} extra")
        lost += sum(missing.values())
        dup += sum(extra.values())
        return lost, dup + self.duplicated_batches

    def run(self):
        self.start_broker()
        apps = ["wc", "cp", "kv"]
        chunks = 5
        per_kill = -(-self.args.kills // chunks)  # round up: at least --kills random kills
        for chunk in range(chunks):
            # input arrives while the applications are being killed
            self.produce(self.args.lines // chunks, self.args.events // chunks)
            for i in range(per_kill):
                self.kill_at_random(apps[(chunk * per_kill + i) % len(apps)])
            log(f"chunk {chunk + 1}/{chunks}: {self.kills} kills so far")
        for fault, app in FAULT_POINTS:
            # fresh input, so that every point is reached in this run
            self.produce(200, 100)
            self.kill_at_fault_point(app, fault)
        for app in apps:
            self.broker_faults(app)
        log(f"{self.kills} kills; draining")
        lines_per_part = collections.Counter(p for p, _, _ in self.expected_lines)
        events_per_part = collections.Counter(p for p, _ in self.expected_events)
        self.drain("wc", "lines", lines_per_part)
        self.drain("cp", "lines", lines_per_part)
        self.drain("kv", "events", events_per_part)
        lost, dup = self.check()
        for p in self.problems:
            log(f"PROBLEM: {p}")
        print(f"lost={lost} duplicated={dup} kills={self.kills}", flush=True)
        ok = lost == 0 and dup == 0 and not self.problems and self.kills >= self.args.kills
        if not ok and self.kills < self.args.kills:
            log(f"only {self.kills} kills, {self.args.kills} asked")
        return 0 if ok else 1

    def close(self, keep):
        if self.broker:
            self.broker.send_signal(signal.SIGTERM)
            self.broker.wait()
        if keep:
            log(f"work directory kept: {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lockstep", required=True, help="path of the lockstep binary")
    ap.add_argument("--kills", type=int, default=50, help="random SIGKILLs (default 50)")
    ap.add_argument("--lines", type=int, default=6000, help="input lines (default 6000)")
    ap.add_argument("--events", type=int, default=3000, help="input events (default 3000)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (printed)")
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP"),
                    help="a real broker (default: $KAFKA_BOOTSTRAP, else a mock broker)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    log(f"seed {args.seed} (--seed to replay)")
    r = Runner(args)
    rc = 1
    try:
        rc = r.run()
    finally:
        r.close(args.keep or rc != 0)
    sys.exit(rc)


if __name__ == "__main__":
    main()
