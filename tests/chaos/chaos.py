#!/usr/bin/python3
"""chaos.py — exactly-once, proven the way users will doubt it.

Runs real `lockstep run` processes against a broker (--bootstrap / KAFKA_BOOTSTRAP, or a
`lockstep mock-broker` started here) while a producer thread feeds their input at a
steady rate, so a batch is always in flight; kills them with SIGKILL (at random instants,
and at instants chosen from the phase they report), once at every named fault point, and
makes instrumented operations fail (error injection); restarts them, lets them drain, and
then checks with an independent reader (this file's own Kafka consumer and a scan of the
output files) that every expected output exists exactly once. Prints
`lost=0 duplicated=0 kills=N`, the phase histogram of the kills and the records of
aborted delivery attempts per application, and exits 0; or names what is wrong and exits 1.

Where the kills landed: every process runs with LOCKSTEP_PHASE_FILE, a 64-byte file in
which lockstep keeps its phase (byte 0: the batch loop, byte 1: the delivery thread; see
lk__phase in core/util_int.h), and the delivery attempt it is sending. The page outlives
the process, so the runner reads the phase after the SIGKILL: the phase the process died
in. A run fails unless, for each application, at least 10% of its kills died in each of
processing, committing and delivering (the loop or the delivery thread sending records
or the commit), and killed deliveries left records of aborted attempts in the output
topics (records of an attempt no progress record names, or of an attempt a kill
interrupted; counted per application, required over the run). Half of the kills are purely random instants; the other half wait
until the process reports the phase wanted (processing, committing, delivering in turn)
and then kill. Both histograms are printed.

Applications under test (one checkpoint each):
  wc    wordcount: topic lines -> topic counts (Kafka transactions) and files;
        checkpoint.sync=batch, delivery not overlapped (sink.overlap=false)
  cp    copy: topic lines -> topic copy-out, same partition, key and value;
        checkpoint.sync=interval (group commit), overlapped delivery
  kv    count-by-key: topic events (JSON, some malformed) -> topic kv-counts; malformed
        records -> topic dlq; overlapped delivery
  ov    wordcount: topic lines -> topic ov-counts; checkpoint.sync=interval every 50 ms
        with overlapped delivery (several durable batches per delivery)
  ttl   count-by-key on the field item: topic events -> topic ttl-counts with
        state.ttl.ms: idle keys expire (a tombstone) and count again from zero
  mx    count-by-key on the field user: topic events -> topic mx-counts, malformed
        records -> topic mx-dlq (two Kafka sinks, one transaction per batch) and the
        counts also to files (a third sink, its own fence); overlapped delivery. In the
        first round its checkpoint is deleted mid-run (after a kill, batches possibly
        in flight) and recreated: the first start must refuse, naming both checkpoint
        ids and checkpoint.adopt.output; with it the new checkpoint reads the input again
        from the start. The old checkpoint's output stays as it was (its files are never
        replaced), the new one's is complete and exactly once.

The mock broker does not hide aborted transactions: records of an aborted delivery
attempt are visible there. Every record names its batch and attempt (the provenance
header `lockstep`, read by provenance() below) and each batch's progress record names
the attempt that committed, so the reader counts only committed attempts (and checks
that each record names its application and sink). On a real broker, records of other
attempts must not be visible to read_committed at all, and must be visible to
read_uncommitted (a killed delivery left them there): the checker counts both when
--bootstrap is given.
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
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

APPS = ["wc", "cp", "kv", "ov", "ttl", "mx"]
# (fault point, application): every named kill point once; during-file-rename needs files
FAULT_POINTS = [
    ("after-plan", "wc"), ("mid-processing", "cp"), ("after-checkpoint-commit", "kv"),
    ("before-sink-produce", "wc"), ("after-sink-produce", "cp"), ("after-sink-commit", "kv"),
    ("during-file-rename", "wc"), ("during-graceful-stop", "cp"),
    ("fsync@3", "wc"), ("mdb_txn_commit@5", "ttl"), ("commit_transaction@2", "ov"),
    ("after-sink-produce", "mx"), ("during-file-rename", "mx"),
    # the batch's records flushed to the broker, its transaction open: on a real broker
    # the restart's init_transactions aborts them, so at least one aborted attempt's
    # records are in an output topic (report_aborted) however the random kills fall
    ("before-sink-commit", "cp"),
]
# (spec, application, what the application must say): every instrumented operation
# fails once while input flows; the application stops (sticky fatal) or retries, and
# after a restart without the fault the final check proves nothing was lost or doubled
ERROR_FAULTS = [
    ("write=ENOSPC@2", "wc", "cannot write"),
    ("fsync=EIO@2", "wc", "cannot fsync"),
    ("rename=EIO@2", "wc", "cannot rename"),
    ("fsync-dir=EIO@3", "wc", "cannot fsync"),
    ("mdb_txn_commit=ENOSPC@6", "cp", "committing"),
    ("mdb_env_sync=EIO@2", "ov", "syncing"),
    ("init_transactions=_FAIL", "kv", "init_transactions"),
    ("begin_transaction=_FAIL@2", "kv", "begin_transaction"),
    ("produce=_TRANSPORT@5", "cp", "producing to"),
    ("commit_transaction=_FAIL@2", "ttl", "commit_transaction"),
    ("abort_transaction=_FAIL,produce=_FAIL@3", "ov", "producing to"),
    ("rename=EIO@2", "mx", "cannot rename"),
]
PHASES = ["none", "starting", "planning", "fetching", "processing", "committing",
          "delivering", "delivering-commit", "acknowledging", "idle", "recovering",
          "stopping", "awaiting-delivery"]
DELIVERING = {PHASES.index("delivering"), PHASES.index("delivering-commit")}
WANTED = ["processing", "committing", "delivering"]
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


def read_topic(bootstrap, topic, isolation="read_committed"):
    """Every record of topic, read_committed (or isolation), from its start to its end.

    The end is the high watermark from a read_uncommitted query: a read_committed consumer
    is answered with the last stable offset instead, and right after a transaction commit
    (its markers not yet written) that can still stand before the committed records. The
    read is repeated (up to 30 s) until it ends at the high watermark."""
    deadline = time.monotonic() + 30
    while True:
        out, settled = read_topic_once(bootstrap, topic, isolation)
        if settled or isolation != "read_committed" or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def read_topic_once(bootstrap, topic, isolation):
    conf = {"bootstrap.servers": bootstrap, "group.id": "chaos-checker",
            "enable.auto.commit": False, "enable.partition.eof": True,
            "fetch.wait.max.ms": 10}
    wm = Consumer(dict(conf, **{"isolation.level": "read_uncommitted"}))
    md = wm.list_topics(topic, timeout=10)
    parts = list(md.topics[topic].partitions.keys())
    tps, highs = [], {}
    for p in parts:
        lo, hi = watermarks(wm, TopicPartition(topic, p))
        if hi > lo:
            tps.append(TopicPartition(topic, p, lo))
            highs[p] = hi
    wm.close()
    if not tps:
        return [], True
    c = Consumer(dict(conf, **{"isolation.level": isolation}))
    c.assign(tps)
    pending = {tp.partition for tp in tps}
    out, settled = [], True
    deadline = time.time() + 60  # moved on while records arrive
    while pending and time.time() < deadline:
        msgs = c.consume(1000, 0.2)
        if msgs:
            deadline = time.time() + 60
        for m in msgs:
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(m.partition())
                    settled &= m.offset() >= highs[m.partition()]
                    continue
                raise SystemExit(f"chaos: reading {topic}: {m.error()}")
            out.append(m)
    if pending:
        at = {tp.partition: tp.offset for tp in
              c.position([TopicPartition(topic, p) for p in sorted(pending)])}
        c.close()
        raise SystemExit(f"chaos: could not read {topic} to its end: partitions "
                         f"{sorted(pending)} at offsets {at}, high watermarks "
                         f"{ {p: highs[p] for p in sorted(pending)} }")
    c.close()
    return out, settled


Provenance = collections.namedtuple("Provenance", "batch attempt app sink old_format")
OLD_PROVENANCE = ("lockstep.app", "lockstep.sink", "lockstep.batch", "lockstep.attempt")


def parse_provenance(value):
    """A provenance header's value (bytes) as Provenance; ValueError naming it if it is
    not a well-formed v1 value. The format (sink/provenance_int.h, the one definition):
    `v1 <batch> <attempt> <app.id> <sink uid>`, single spaces, the batch decimal, the
    attempt 16 lower-case hex digits, app.id never holding a space, and the sink uid the
    whole rest (any characters, empty on a progress record): split at the first four
    spaces only."""
    parts = (value or b"").split(b" ", 4)
    if (len(parts) != 5 or parts[0] != b"v1" or not parts[1].isdigit()
            or int(parts[1]) >= 2**64 or len(parts[2]) != 16
            or parts[2].strip(b"0123456789abcdef") or not parts[3]):
        raise ValueError(f"malformed provenance header 'lockstep': {value!r}")
    return Provenance(int(parts[1]), parts[2].decode(), parts[3].decode(),
                      parts[4].decode("utf-8", "replace"), False)


def provenance(msg):
    """The provenance of a record lockstep's Kafka sink produced: Provenance(batch,
    attempt, app, sink, old_format), or None if the record has none. The one reader of it
    for every checker here (chaos, windows, upgrade, operator_faults).

    The sink's header is the FIRST one named `lockstep` (a pipeline that copies its
    input's headers puts the input's after it). Records of versions before that header
    carry four (lockstep.app, .sink, .batch, .attempt): an output topic written across an
    upgrade holds both, so those are read too (old_format True). ValueError if what is
    there is malformed or incomplete."""
    headers = msg.headers() or []
    for name, value in headers:
        if name == "lockstep":
            return parse_provenance(value)
    old = {}
    for name, value in headers:
        if name in OLD_PROVENANCE and name not in old:
            old[name] = value or b""
    if not old:
        return None
    batch, attempt = old.get("lockstep.batch", b""), old.get("lockstep.attempt", b"")
    if (len(old) != 4 or not batch.isdigit() or len(attempt) != 16
            or attempt.strip(b"0123456789abcdef")):
        raise ValueError(f"malformed or incomplete provenance headers of an older "
                         f"version: {old}")
    return Provenance(int(batch), attempt.decode(), old["lockstep.app"].decode(),
                      old["lockstep.sink"].decode("utf-8", "replace"), True)


def phase_of(raw):
    """(loop phase, delivery thread phase) as indexes of PHASES, from the phase file."""
    loop = raw[0] if len(raw) > 0 and raw[0] < len(PHASES) else 0
    dl = raw[1] if len(raw) > 1 and raw[1] < len(PHASES) else 0
    return loop, dl


def attempt_of(raw):
    """The delivery attempt a process died sending (the delivery thread's if it was
    delivering, else the loop's), or None."""
    loop, dl = phase_of(raw)
    for slot, phase in ((1, dl), (0, loop)):
        a = raw[64 + 16 * slot:80 + 16 * slot].rstrip(b"\0")
        if phase in DELIVERING and a:
            return a.decode(errors="replace")
    return None


def landed(loop, dl):
    """The wanted phases a kill in (loop, dl) counts for."""
    got = set()
    if PHASES[loop] in ("processing", "committing"):
        got.add(PHASES[loop])
    if loop in DELIVERING or dl in DELIVERING:
        got.add("delivering")
    return got


def start_mock_broker(lockstep, topics, brokers=1):
    """`lockstep mock-broker` with topics ["name:partitions", ...]: (the process, its
    bootstrap.servers). Its stdin takes fault commands (Runner.broker_command); SIGTERM
    stops it."""
    cmd = [lockstep, "mock-broker"] + sum((["--topic", t] for t in topics), [])
    if brokers != 1:
        cmd += ["--brokers", str(brokers)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("bootstrap.servers="):
        proc.kill()
        proc.wait()
        raise SystemExit(f"chaos: mock-broker did not start: {line!r}")
    return proc, line.split("=", 1)[1]


class InputFeeder(threading.Thread):
    """Produces lines and events at a steady rate until stopped: input flows during the
    whole kill phase, so kills find batches in flight."""

    def __init__(self, runner, lines_per_s, events_per_s):
        super().__init__(daemon=True)
        self.r = runner
        self.lines_per_s = lines_per_s
        self.events_per_s = events_per_s
        self.stopping = threading.Event()
        self.error = None

    def run(self):
        try:
            p = Producer({"bootstrap.servers": self.r.bootstrap, "linger.ms": 5,
                          "enable.idempotence": True})
            # Ten bursts a second: input still arrives all through the kill phase (a
            # batch, max.records.per.partition=200, is always in flight), in message
            # sets of ~10 records per partition. The mock broker finds a fetch's message
            # set by a scan from the partition's first one, so reading a partition costs
            # the square of its message sets: with 50 ticks a second (~2 records a set)
            # the drain and the checker's reads took two thirds of the run.
            tick = 0.1
            start = time.time()
            sent_l = sent_e = 0
            while not self.stopping.is_set():
                due = time.time() - start
                nl = int(due * self.lines_per_s) - sent_l
                ne = int(due * self.events_per_s) - sent_e
                self.r.produce_with(p, nl, ne)
                sent_l += nl
                sent_e += ne
                p.poll(0)
                time.sleep(tick)
            left = p.flush(60)
            if left:
                self.error = f"{left} input records not delivered to the broker"
        except Exception as e:  # reported by the main thread
            self.error = repr(e)


class Runner:
    def __init__(self, args):
        self.args = args
        self.lockstep = args.lockstep
        self.real_broker = bool(args.bootstrap)
        parts = self.REAL_TOPICS if self.real_broker else \
            dict(self.REAL_TOPICS, **self.MOCK_PARTITIONS)
        self.line_parts, self.event_parts = parts["lines"], parts["events"]
        self.lost = self.dup = 0
        self.kept = []
        self.new_round()
        self.rng = random.Random(args.seed)          # input (the feeder thread)
        self.kill_rng = random.Random(args.seed + 1)  # kill instants (the main thread)
        self.lock = threading.Lock()
        self.kills = 0
        self.problems = []
        # per application: [(mode, loop phase, delivery phase)] of every kill
        self.kill_log = collections.defaultdict(list)
        self.aborted = {}          # app -> records of aborted attempts (read_committed)
        self.aborted_uncommitted = {}  # app -> the same, read_uncommitted (real broker)
        # app -> attempts a kill interrupted while sending (this round), and the records
        # of those attempts found in the output: read_committed, read_uncommitted
        self.killed_attempts = collections.defaultdict(set)
        self.killed_seen = collections.Counter()
        self.killed_seen_uncommitted = collections.Counter()
        self.adopted = collections.Counter()  # see adopted_batches
        self.adopted_expired = 0  # ttl keys whose tombstone an adopted batch may have lost

    def new_round(self):
        """A fresh broker (the mock), work directory and checkpoints."""
        self.work = tempfile.mkdtemp(prefix="lockstep-chaos.")
        self.broker = None
        self.bootstrap = self.args.bootstrap
        self.expected_lines = []   # (partition, key, value)
        self.expected_events = []  # (partition, value)
        self.duplicated_batches = 0
        self.recreated = None  # mx: (old checkpoint id, new id, old files {name: bytes})

    # ---- broker and input ----

    def start_broker(self):
        if self.bootstrap:
            log(f"using the broker at {self.bootstrap}")
            self.prepare_real_topics()
            return
        parts = dict(self.REAL_TOPICS, **self.MOCK_PARTITIONS)
        topics = [f"{t}:{n}" for t, n in parts.items()] + [f"{a}.progress:1" for a in APPS]
        # One broker. A delivery's progress record can still reach the broker before
        # some of the batch's records (librdkafka sends each partition's records in its
        # own request): a kill then leaves the progress record of an aborted attempt
        # without all its records, which the mock shows as committed (it keeps no
        # transaction markers) and recovery takes as the batch's fence: output lost on
        # the mock only (a real broker hides the aborted progress record). Several
        # brokers make it more likely; adopted_batches() excuses exactly those batches.
        self.broker, self.bootstrap = start_mock_broker(self.lockstep, topics)
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
        proc = self.start(app)
        time.sleep(1.5)
        self.broker_command("down")
        log(f"{app}: broker down")
        time.sleep(3)
        self.broker_command("up")
        log(f"{app}: broker up")
        time.sleep(3)
        self.broker_command("error 26 15 5")   # EndTxn: COORDINATOR_NOT_AVAILABLE x5
        self.broker_command("error 24 51 3")   # AddPartitionsToTxn: CONCURRENT_TRANSACTIONS
        time.sleep(3)
        self.broker_command("clear")
        rc = graceful_stop(proc)
        if rc != 0:
            self.problems.append(f"{app}: after the broker faults, the graceful stop exited "
                                 f"{rc} (see {self.work}/{app}.stderr)")

    # Real broker only (--bootstrap; the mock path above is the same). Creates the topics
    # the mock gets from `mock-broker --topic` (minus <app>.progress, which lockstep creates
    # itself, compacted, as in production) with the same partition counts: the producer
    # writes lines to explicit partitions 0..3 and cp checks output.partition=keep, so a
    # broker-auto-created topic (one partition) would not do. Refuses topics that already
    # hold records or have other partition counts: the checker counts everything it reads,
    # and a stale <app>.progress record would be taken as a sink fence by the fresh
    # checkpoints. Start from an empty broker (docker compose down -v).
    REAL_TOPICS = {"lines": 4, "events": 3, "counts": 4, "copy-out": 4, "kv-counts": 3,
                   "dlq": 1, "ov-counts": 4, "ttl-counts": 3, "mx-counts": 3, "mx-dlq": 1}
    # The mock keeps ~5 MiB per partition (older records are deleted, which the check
    # would count as lost): more partitions for the big topics there, and a budget of
    # records per partition per round (BUDGET), which the feeder does not exceed.
    MOCK_PARTITIONS = {"lines": 16, "copy-out": 16, "events": 6, "ttl-counts": 6}
    BUDGET = 25000

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
        for t in list(self.REAL_TOPICS) + [f"{a}.progress" for a in APPS]:
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


    def produce_with(self, p, nlines, nevents):
        """Produce nlines lines and nevents events with producer p (no flush)."""
        with self.lock:
            if not self.real_broker:  # see BUDGET
                nlines = min(nlines, self.BUDGET * self.line_parts - len(self.expected_lines))
                nevents = min(nevents, self.BUDGET * self.event_parts -
                              len(self.expected_events))
            for _ in range(nlines):
                # skew: half of the words are the first three
                n = self.rng.randint(1, 6)
                words = [self.rng.choice(WORDS[:3] if self.rng.random() < 0.5 else WORDS)
                         for _ in range(n)]
                part = self.rng.randrange(self.line_parts)
                value = " ".join(words)
                key = f"k{self.rng.randrange(1000)}"
                p.produce("lines", value=value.encode(), key=key.encode(), partition=part)
                self.expected_lines.append((part, key, value))
            for _ in range(nevents):
                part = self.rng.randrange(self.event_parts)
                r = self.rng.random()
                if r < 0.05:
                    value = "{not json"            # malformed: bad JSON
                elif r < 0.08:
                    value = json.dumps({"other": 1})  # malformed: missing fields
                else:
                    # item: many keys, each seen rarely, so state.ttl.ms expires them
                    value = json.dumps({"user": f"u{self.rng.randrange(20)}",
                                        "item": f"i{self.rng.randrange(3000)}",
                                        "n": len(self.expected_events)})
                p.produce("events", value=value.encode(), partition=part)
                self.expected_events.append((part, value))
                if len(self.expected_events) % 1000 == 0:
                    p.poll(0)

    def produce(self, nlines, nevents):
        p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5,
                      "enable.idempotence": True})
        self.produce_with(p, nlines, nevents)
        left = p.flush(30)
        if left:
            raise SystemExit(f"chaos: {left} input records not delivered to the broker")

    # ---- applications ----

    def app_args(self, app):
        base = [f"app.id={app}", f"checkpoint.dir={self.work}/{app}",
                f"kafka.bootstrap.servers={self.bootstrap}", "kafka.fetch.wait.max.ms=10",
                "kafka.log_level=3", "batch.interval.ms=0", "max.records.per.partition=200",
                "log.level=warning", "sink.kafka.timeout.ms=10000",
                "kafka.reconnect.backoff.ms=10", "kafka.reconnect.backoff.max.ms=200",
                # records leave at once: a kill while they are sent leaves some behind
                "kafka.linger.ms=0",
                "retry.backoff.ms=50", "retry.backoff.max.ms=500"]
        if app == "wc":
            base += ["pipeline=wordcount", "input.topics=lines", "output.topic=counts",
                     f"output.dir={self.work}/wc-files", "sink.overlap=false"]
        elif app == "cp":
            # group commit: the delivery thread then delivers several durable batches
            # per run, acknowledged together
            base += ["pipeline=copy", "input.topics=lines", "output.topic=copy-out",
                     "output.partition=keep", "checkpoint.sync=interval",
                     "checkpoint.sync.interval.ms=100", "sink.overlap=true"]
        elif app == "kv":
            base += ["pipeline=count-by-key", "input.topics=events", "key.field=user",
                     "output.topic=kv-counts", "errors.deadletter=dlq", "sink.overlap=true"]
        elif app == "ov":
            base += ["pipeline=wordcount", "input.topics=lines", "output.topic=ov-counts",
                     "checkpoint.sync=interval", "checkpoint.sync.interval.ms=50",
                     "sink.overlap=true"]
        elif app == "mx":
            base += ["pipeline=count-by-key", "input.topics=events", "key.field=user",
                     "output.topic=mx-counts", "errors.deadletter=mx-dlq",
                     f"output.dir={self.work}/mx-files", "sink.overlap=true"]
            if self.recreated:
                base += ["checkpoint.adopt.output=true"]
        else:  # ttl
            base += ["pipeline=count-by-key", "input.topics=events", "key.field=item",
                     "output.topic=ttl-counts", f"state.ttl.ms={self.args.ttl_ms}"]
        return [self.lockstep, "run"] + sum((["-X", a] for a in base), [])

    def phase_file(self, app):
        return f"{self.work}/{app}.phase"

    def read_phase(self, app):
        """(loop phase, delivery phase, attempt being sent or None) at death."""
        with open(self.phase_file(app), "rb") as f:
            raw = f.read(128)
        return phase_of(raw) + (attempt_of(raw),)

    def start(self, app, fault=None):
        env = dict(os.environ)
        env.pop("LOCKSTEP_FAULTPOINT", None)
        if fault:
            env["LOCKSTEP_FAULTPOINT"] = fault
        with open(self.phase_file(app), "wb") as f:  # "none" until the process says
            f.write(bytes(128))
        env["LOCKSTEP_PHASE_FILE"] = self.phase_file(app)
        errlog = open(f"{self.work}/{app}.stderr", "a")
        errlog.write(f"---- start{' with ' + fault if fault else ''}\n")
        errlog.flush()
        return subprocess.Popen(self.app_args(app), env=env, stdout=subprocess.DEVNULL,
                                stderr=errlog)

    def kill(self, app, mode):
        """One SIGKILL: at a random instant (mode "random"), or as soon as the process
        reports the phase mode. Records the phase the process died in; returns whether
        an aimed kill died in the phase it aimed at (a phase of microseconds, such as a
        group commit's, is often over before the signal lands)."""
        proc = self.start(app)
        if mode == "random":
            time.sleep(self.kill_rng.uniform(0.05, 1.2))
        else:
            # delivering: while the records are being sent, before the progress record
            # and the commit, so that the kill leaves records of an aborted attempt; not
            # in a process's first delivery, whose records wait for the transaction
            # coordinator to be found and so never leave before the kill
            want = PHASES.index("delivering")
            nth = self.kill_rng.randint(2, 4)
            seen, was = 0, False
            fd = os.open(self.phase_file(app), os.O_RDONLY)
            deadline = time.time() + 10
            try:
                while time.time() < deadline and proc.poll() is None:
                    loop, dl = phase_of(os.pread(fd, 2, 0))
                    now = want in (loop, dl)
                    seen += now and not was
                    was = now
                    if mode == "delivering" and now and seen >= nth:
                        # some records are on their way: kill within the next few ms
                        time.sleep(self.kill_rng.uniform(0, 0.004))
                        break
                    if mode != "delivering" and mode in landed(loop, dl):
                        break
                    time.sleep(0.0003)
            finally:
                os.close(fd)
        if proc.poll() is not None:
            self.problems.append(f"{app} exited by itself with {proc.returncode} "
                                 f"(see {self.work}/{app}.stderr)")
            return True
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        loop, dl, attempt = self.read_phase(app)
        self.kill_log[app].append((mode, loop, dl))
        if attempt:
            self.killed_attempts[app].add(attempt)
        self.kills += 1
        return mode == "random" or mode in landed(loop, dl)

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
        attempt = self.read_phase(app)[2]
        if attempt:
            self.killed_attempts[app].add(attempt)
        self.kills += 1

    def fail_at_fault_point(self, app, spec, says):
        """Error injection: the operation fails; the application either stops with an
        error naming it (sticky fatal) or logs it and retries (then it is stopped
        gracefully). Either way its stderr names the operation."""
        errfile = f"{self.work}/{app}.stderr"
        before = os.path.getsize(errfile) if os.path.exists(errfile) else 0
        proc = self.start(app, spec)
        deadline = time.time() + 20
        while proc.poll() is None and time.time() < deadline:
            with open(errfile, errors="replace") as f:
                f.seek(before)
                if "failing with" in f.read():
                    break
            time.sleep(0.05)
        try:
            rc = proc.wait(timeout=2)  # a sticky fatal error stops it at once
        except subprocess.TimeoutExpired:
            rc = graceful_stop(proc)   # a retriable one: it retries until stopped
        with open(errfile, errors="replace") as f:
            f.seek(before)
            text = f.read()
        fired = [ln for ln in text.splitlines() if "fault point" in ln and "failing" in ln]
        if not fired:
            self.problems.append(f"{app}: injected fault {spec} never fired ({errfile})")
            return None
        if says not in text:
            self.problems.append(f"{app}: after {spec} the log does not say '{says}' "
                                 f"({errfile})")
        return rc

    def recreate_checkpoint(self, app):
        """The usual advice after an incompatible upgrade: delete the checkpoint and start
        again, here under the same app.id, right after a kill. The first start must be
        refused (another checkpoint's output is in the progress topic) naming both ids and
        the way on; then it runs with checkpoint.adopt.output=true."""
        # the old checkpoint must have delivered to Kafka (else there is nothing to
        # refuse): run it until it has, then kill it with its next batches in flight
        proc = self.start(app)
        deadline = time.time() + 60
        doc = None
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            doc = self.inspect(app)
            if doc and any(f["sink"] == "to-kafka" and f["batch"] > 0
                           for f in doc.get("fences") or []):
                break
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        doc = self.inspect(app)
        if not doc or not doc.get("checkpoint_id") or not any(
                f["sink"] == "to-kafka" and f["batch"] > 0 for f in doc.get("fences") or []):
            self.problems.append(f"{app}: no Kafka output within 60 s, nothing to recreate "
                                 f"the checkpoint after (see {self.work}/{app}.stderr)")
            return
        old = doc["checkpoint_id"]
        files = self.files_of(app)
        shutil.rmtree(f"{self.work}/{app}")
        errfile = f"{self.work}/{app}.stderr"
        before = os.path.getsize(errfile)
        proc = self.start(app)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = "still running after 60 s"
        doc = self.inspect(app)
        new = doc.get("checkpoint_id") if doc else None
        with open(errfile, errors="replace") as f:
            f.seek(before)
            said = f.read()
        if rc in (0, "still running after 60 s") or not new or old not in said or \
                new not in said or "checkpoint.adopt.output" not in said:
            self.problems.append(f"{app}: a recreated checkpoint was not refused naming both "
                                 f"ids ({old}, {new}) and checkpoint.adopt.output: exit {rc}, "
                                 f"said {said.strip()[-300:]!r}")
        self.recreated = (old, new, files)
        log(f"{app}: checkpoint {old} deleted; {new} refused ({rc}), then adopts the output")

    def files_of(self, app):
        """{relative path: content} of app's output files."""
        out, top = {}, f"{self.work}/{app}-files"
        for d, _, names in os.walk(top):
            for n in names:
                with open(os.path.join(d, n), "rb") as f:
                    out[os.path.relpath(os.path.join(d, n), top)] = f.read()
        return out

    def inspect(self, app):
        out = subprocess.run([self.lockstep, "checkpoint", "inspect", f"{self.work}/{app}",
                              "--json"], capture_output=True, text=True)
        if out.returncode:
            return None
        return json.loads(out.stdout)

    def drain(self, targets):
        """Run every application of targets [(app, input topic, records per partition)]
        at once until its offsets reach the input's end and its outbox is empty."""
        procs = {app: self.start(app) for app, _, _ in targets}
        pending = {app: (topic, want) for app, topic, want in targets}
        deadline = time.time() + 600
        while pending and time.time() < deadline:
            time.sleep(0.5)
            for app, (topic, want) in list(pending.items()):
                if procs[app].poll() is not None:
                    self.problems.append(f"{app} exited during the drain with "
                                         f"{procs[app].returncode} (see {self.work}/{app}.stderr)")
                    del pending[app]
                    continue
                doc = self.inspect(app)
                if not doc:
                    continue
                offs = {o["partition"]: o["offset"] for o in doc["offsets"]
                        if o["topic"] == topic}
                if all(offs.get(p, -1) >= n for p, n in want.items()) and not doc["outbox"]:
                    del pending[app]
        for app, proc in procs.items():
            if proc.poll() is not None:
                continue
            rc = graceful_stop(proc)
            if rc != 0:
                self.problems.append(f"{app}: graceful stop after the drain exited {rc}")
            doc = self.inspect(app)
            if not doc or doc["outbox"]:
                self.problems.append(f"{app}: outbox not empty after the drain")

    # ---- the independent reader ----

    def read_topic(self, topic, isolation="read_committed"):
        return read_topic(self.bootstrap, topic, isolation)

    def committed_records(self, app, topic, sink):
        """Records of the attempts that committed, per batch; the count of others; the
        number of batches missing; and the progress record of each batch."""
        # Exactly one progress record per batch, on either kind of broker: a real one
        # hides aborted attempts; on the mock an aborted attempt's progress record is
        # visible, but then recovery reads it as the fence and never delivers the batch
        # again. A second progress record for a batch is a batch delivered twice.
        committed, progress, per_batch = {}, {}, collections.Counter()
        for m in self.read_topic(f"{app}.progress"):
            d = json.loads(m.value())
            if d["app"] == app and (sink in d.get("sinks", {}) or d.get("sink") == sink):
                committed[d["batch"]] = d["attempt"]
                progress[d["batch"]] = d
                per_batch[d["batch"]] += 1
        twice = {b: n for b, n in per_batch.items() if n > 1}
        if twice:
            self.problems.append(f"{app} sink {sink}: batches delivered more than once: "
                                 f"{sorted(twice)[:10]}")
            self.duplicated_batches += sum(n - 1 for n in twice.values())

        killed = self.killed_attempts[app]

        def split(msgs):
            recs, foreign, of_killed, strangers = [], 0, 0, []
            for m in msgs:
                try:
                    p = provenance(m)
                except ValueError as e:
                    self.problems.append(f"{topic}: {e}")
                    continue
                if p is None:
                    self.problems.append(f"{topic}: a record without a provenance header")
                    continue
                if (p.app, p.sink) != (app, sink):
                    strangers.append(p)
                batch, attempt = p.batch, p.attempt
                of_killed += attempt in killed
                if committed.get(batch) == attempt:
                    recs.append((batch, m))
                else:
                    foreign += 1
            if strangers:
                self.problems.append(f"{topic}: {len(strangers)} records name another app or "
                                     f"sink than {app!r} {sink!r}, e.g. {strangers[0]}")
            return recs, foreign, of_killed

        records, foreign, of_killed = split(self.read_topic(topic))
        self.aborted[app] = self.aborted.get(app, 0) + foreign
        self.killed_seen[app] += of_killed
        if self.real_broker:
            _, seen, of_killed = split(self.read_topic(topic, "read_uncommitted"))
            self.aborted_uncommitted[app] = self.aborted_uncommitted.get(app, 0) + seen
            self.killed_seen_uncommitted[app] += of_killed
        batches = sorted(committed)
        gaps = (batches[-1] - batches[0] + 1 - len(batches)) if batches else 0
        return records, foreign, gaps, progress

    def adopted_batches(self, app, progress):
        """On the mock only: batches whose committed attempt is one a kill interrupted.
        The mock keeps no transaction markers, so such an attempt looks committed, and
        its progress record may have reached the broker before all its records did;
        recovery then takes the batch as delivered (its fence). A real broker hides the
        aborted progress record and the batch is delivered again. The output of these
        batches cannot be checked on the mock: they are counted and reported, and their
        missing records are not counted as lost."""
        if self.real_broker:
            return set()
        killed = self.killed_attempts[app]
        got = {b for b, d in progress.items() if d["attempt"] in killed}
        self.adopted[app] += len(got)
        return got

    @staticmethod
    def ranges(progress, topic):
        """batch -> [(partition, from, until)] of topic, from the progress records."""
        until, out = collections.Counter(), {}
        for batch in sorted(progress):
            out[batch] = []
            for o in progress[batch]["offsets"]:
                if o["topic"] == topic:
                    p = o["partition"]
                    out[batch].append((p, until[p], max(until[p], o["until"])))
                    until[p] = max(until[p], o["until"])
        return out

    def check_foreign(self, name, foreign):
        if foreign and self.real_broker:
            self.problems.append(f"{name}: {foreign} records of uncommitted attempts are "
                                 f"visible to read_committed")

    def check_wordcount(self, app, topic):
        """Latest count per word in topic == the words of the input."""
        lost = dup = 0
        expected = collections.Counter()
        for _, _, v in self.expected_lines:
            expected.update(v.split())
        recs, foreign, gaps, _ = self.committed_records(app, topic, "to-kafka")
        self.check_foreign(app, foreign)
        if gaps:
            self.problems.append(f"{app}: {gaps} batches missing from the progress topic")
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
                self.problems.append(f"{app} Kafka: '{w}' counted {got}, input has {n}")
                lost += max(0, n - got)
                dup += max(0, got - n)
        return lost, dup, expected

    def check_ttl(self):
        """Per key, in batch order: a count is the previous one (0 after a tombstone)
        plus the key's valid events in the batch's input range, which the progress
        records give; a tombstone only for an idle key that had a count."""
        lost = dup = 0
        recs, foreign, _, progress = self.committed_records("ttl", "ttl-counts", "to-kafka")
        self.check_foreign("ttl", foreign)
        by_offset = {}  # partition -> [item or None], in offset order (read back)
        for m in sorted(self.read_topic("events"), key=lambda m: (m.partition(), m.offset())):
            try:
                d = json.loads(m.value())
                item = d["item"] if "user" in d and "item" in d else None
            except ValueError:
                item = None
            by_offset.setdefault(m.partition(), {})[m.offset()] = item
        out = collections.defaultdict(list)
        for batch, m in recs:
            out[batch].append(m)
        until = collections.Counter()
        prev = collections.Counter()
        unknown = set()  # keys whose count an adopted batch left unknown
        # keys an adopted batch may have expired: the tombstone of an idle key is one of
        # the records a killed delivery may not have sent before the mock showed its
        # progress record; the next count is then either prev + n or n (from zero)
        maybe_expired = set()
        adopted = self.adopted_batches("ttl", progress)
        expired = 0
        for batch in sorted(progress):
            n = collections.Counter()
            for o in progress[batch]["offsets"]:
                if o["topic"] != "events":
                    continue
                p = o["partition"]
                for off in range(until[p], o["until"]):
                    item = by_offset.get(p, {}).get(off)
                    if item:
                        n[item] += 1
                until[p] = max(until[p], o["until"])
            got = {}
            for m in out.get(batch, []):
                k = m.key().decode()
                if k in got:
                    dup += 1
                    self.problems.append(f"ttl batch {batch}: '{k}' written twice")
                got[k] = None if m.value() is None else int(m.value())
            if batch in adopted:  # not checkable on the mock: take what it shows
                for k in n:
                    if k not in got:
                        unknown.add(k)
                for k, v in got.items():
                    prev[k] = v or 0
                    unknown.discard(k)
                    maybe_expired.discard(k)
                maybe_expired.update(k for k in prev if prev[k] and k not in got
                                     and k not in n)
                continue
            for k, v in got.items():
                if k in unknown:  # the first count after an adopted batch: a new base
                    prev[k] = v or 0
                    unknown.discard(k)
                    continue
                if k in maybe_expired:
                    maybe_expired.discard(k)
                    if v is not None and v == n[k] and v != prev[k] + n[k]:
                        self.adopted_expired += 1  # expired in the adopted batch
                        prev[k] = v
                        continue
                if v is None:
                    if n[k] or not prev[k]:
                        self.problems.append(f"ttl batch {batch}: '{k}' expired while "
                                             f"active or never counted")
                    expired += 1
                    prev[k] = 0
                elif v != prev[k] + n[k]:
                    self.problems.append(f"ttl batch {batch}: '{k}' counted {v}, expected "
                                         f"{prev[k]} + {n[k]}")
                    lost += max(0, prev[k] + n[k] - v)
                    dup += max(0, v - prev[k] - n[k])
                    prev[k] = v
                else:
                    prev[k] = v
            for k in n:
                if k not in got and k not in unknown:
                    self.problems.append(f"ttl batch {batch}: '{k}' has {n[k]} events but "
                                         f"no count")
                    lost += n[k]
        total = collections.Counter(p for p, _ in self.expected_events)
        for p, n in total.items():
            if until[p] < n:
                self.problems.append(f"ttl: events[{p}] read up to {until[p]} of {n}")
                lost += n - until[p]
        if not expired:
            self.problems.append("ttl: no key expired: state.ttl.ms was not exercised")
        log(f"ttl: {expired} keys expired and counted again from zero")
        return lost, dup

    def check(self):
        lost = dup = 0
        # wordcount: latest count per word, in Kafka and in files
        l, d, expected = self.check_wordcount("wc", "counts")
        lost, dup = lost + l, dup + d
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
        l, d, _ = self.check_wordcount("ov", "ov-counts")
        lost, dup = lost + l, dup + d
        # copy: every input record exactly once, same partition, key and value
        want = collections.Counter(self.expected_lines)
        recs, foreign, gaps, progress = self.committed_records("cp", "copy-out", "to-kafka")
        self.check_foreign("cp", foreign)
        got = collections.Counter((m.partition(), m.key().decode(), m.value().decode())
                                  for _, m in recs)
        missing, extra = want - got, got - want
        adopted = self.adopted_batches("cp", progress)
        if adopted and missing:
            ranges = self.ranges(progress, "lines")
            unverifiable = collections.Counter(
                self.line_at[(p, o)] for b in adopted for p, lo, hi in ranges[b]
                for o in range(lo, hi) if (p, o) in self.line_at)
            log(f"cp: {sum((missing & unverifiable).values())} records of batches the mock "
                f"shows adopted not found (see adopted_batches)")
            missing -= unverifiable
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
        l, d = self.check_ttl()
        lost, dup = lost + l, dup + d
        l, d = self.check_mx(good, bad)
        lost, dup = lost + l, dup + d
        return lost, dup + self.duplicated_batches

    def check_mx(self, good, bad):
        """Two Kafka sinks and files, across a recreated checkpoint: the new checkpoint's
        output alone is complete and exactly once (it read the input again from the
        start); the old one's is a part of it, never doubled, and its files untouched."""
        lost = dup = 0
        old, new, old_files = self.recreated or (None, None, {})
        recs, foreign, gaps, progress = self.committed_records("mx", "mx-counts", "to-kafka")
        self.check_foreign("mx", foreign)
        if gaps:
            self.problems.append(f"mx: {gaps} batches missing from the progress topic")
            lost += gaps
        owner = {b: d.get("checkpoint") for b, d in progress.items()}
        if self.recreated:
            ids = set(owner.values())
            if ids - {old, new} or new not in ids:
                self.problems.append(f"mx: progress records of checkpoints {sorted(ids)}, "
                                     f"expected {old} then {new}")
            last_old = max((b for b, c in owner.items() if c == old), default=0)
            first_new = min((b for b, c in owner.items() if c == new), default=0)
            if first_new <= last_old:
                self.problems.append(f"mx: the new checkpoint's batches start at {first_new}, "
                                     f"not after the old one's last ({last_old})")
        mine = new if self.recreated else next(iter(set(owner.values())), None)
        # on the mock: batches of this checkpoint whose killed delivery looks committed
        # there (see adopted_batches); what they did not send cannot be checked
        adopted = self.adopted_batches("mx", {b: d for b, d in progress.items()
                                              if owner[b] == mine})
        ranges = self.ranges({b: d for b, d in progress.items() if owner[b] == mine},
                             "events")
        unverifiable = collections.Counter(
            self.event_at[(p, o)] for b in adopted for p, lo, hi in ranges[b]
            for o in range(lo, hi) if (p, o) in self.event_at)
        latest = {}
        for batch, m in recs:
            k = m.key().decode()
            if k not in latest or batch >= latest[k][0]:
                latest[k] = (batch, int(m.value()))
        for k, n in good.items():
            got = latest.get(k, (0, 0))[1]
            if got != n and any(b > latest.get(k, (0, 0))[0] for b in adopted):
                log(f"mx: '{k}' counted {got}, input has {n}: its last count was in a "
                    f"batch the mock shows adopted (not checkable there)")
            elif got != n:
                self.problems.append(f"mx: '{k}' counted {got}, input has {n}")
                lost += max(0, n - got)
                dup += max(0, got - n)
        recs, foreign, _, _ = self.committed_records("mx", "mx-dlq", "deadletter")
        self.check_foreign("mx dead letters", foreign)
        runs = collections.defaultdict(collections.Counter)  # checkpoint -> dead letters
        for b, m in recs:
            runs[owner.get(b)][m.value().decode()] += 1
        for ckpt, got in runs.items():
            missing, extra = bad - got, got - bad
            if ckpt == mine and missing & unverifiable:
                log(f"mx: {sum((missing & unverifiable).values())} dead letters of batches "
                    f"the mock shows adopted not found (see adopted_batches)")
                missing -= unverifiable
            if ckpt == mine and missing or extra:
                self.problems.append(f"mx dead letters of checkpoint {ckpt}: "
                                     f"{sum(missing.values()) if ckpt == mine else 0} "
                                     f"missing, {sum(extra.values())} extra")
            lost += sum(missing.values()) if ckpt == mine else 0
            dup += sum(extra.values())
        if mine not in runs and bad:
            self.problems.append(f"mx: no dead letters from checkpoint {mine}")
            lost += sum(bad.values())
        # files: the old checkpoint's exactly as they were; the latest count per key of
        # this checkpoint's files (named <app>+<sink>+<checkpoint id>-<batch>) is the input's
        files = self.files_of("mx")
        for name, content in old_files.items():
            if name.endswith(".tmp"):
                continue
            if files.get(name) != content:
                self.problems.append(f"mx files: {name} of the old checkpoint was "
                                     f"{'removed' if name not in files else 'changed'}")
                lost += 1
        counts, by_ckpt = {}, collections.Counter()
        for name in sorted(files, key=lambda n: os.path.basename(n).rsplit("-", 1)[-1]):
            base = os.path.basename(name)
            if base.endswith(".tmp"):
                if name not in old_files:
                    self.problems.append(f"mx files: leftover temporary file {name}")
                continue
            ckpt = base.split("+")[2].rsplit("-", 1)[0] if base.count("+") == 2 else None
            by_ckpt[ckpt] += 1
            if mine and ckpt != mine:
                continue
            for line in files[name].decode().splitlines():
                d = json.loads(line)
                counts[d["key"]] = int(d["value"])
        for k, n in good.items():
            if counts.get(k) != n:
                self.problems.append(f"mx files: '{k}' counted {counts.get(k)}, input has {n}")
                lost += 1
        log(f"mx: output files per checkpoint: {dict(by_ckpt)}; dead letters per "
            f"checkpoint: { {c: sum(v.values()) for c, v in runs.items()} }")
        return lost, dup

    # ---- where the kills landed ----

    def report_phases(self):
        """Print the histograms; a problem per application whose kills missed a phase."""
        for mode in ("random", "targeted"):
            log(f"phase at death, {mode} kills (loop phase; +dl: delivery thread "
                f"delivering at the same time):")
            for app in APPS:
                kills = [(lp, dl) for m, lp, dl in self.kill_log[app]
                         if (m == "random") == (mode == "random")]
                h = collections.Counter(PHASES[lp] for lp, _ in kills)
                both = sum(1 for lp, dl in kills if dl in DELIVERING)
                cells = " ".join(f"{p}={h[p]}" for p in PHASES if h[p])
                log(f"  {app:4} {len(kills):3} kills: {cells} +dl={both}")
        for app in APPS:
            kills = self.kill_log[app]
            if not kills:
                continue
            share = {w: sum(1 for _, lp, dl in kills if w in landed(lp, dl)) / len(kills)
                     for w in WANTED}
            rnd = [(lp, dl) for m, lp, dl in kills if m == "random"]
            rshare = {w: (sum(1 for lp, dl in rnd if w in landed(lp, dl)) / len(rnd)
                          if rnd else 0) for w in WANTED}
            log(f"  {app:4} all kills: " +
                " ".join(f"{w} {100 * share[w]:.0f}%" for w in WANTED) +
                "; random only: " + " ".join(f"{w} {100 * rshare[w]:.0f}%" for w in WANTED))
            for w in WANTED:
                if share[w] < 0.10:
                    self.problems.append(f"{app}: only {100 * share[w]:.0f}% of the kills "
                                         f"landed in {w} (10% needed)")

    def report_aborted(self):
        """Records of aborted delivery attempts: of attempts no progress record names, and
        of the attempts a kill interrupted while they were being sent (read from the
        phase file). On a real broker init_transactions aborts an interrupted attempt:
        its records must be visible to read_uncommitted only. The mock keeps no
        transaction markers: there an interrupted attempt whose progress record reached
        the broker looks committed, and recovery takes it as delivered (its fence), so
        its records are the batch's output; they are counted, not doubled."""
        if not self.real_broker:
            log("batches whose killed delivery the mock shows as committed (not checkable "
                "there, see adopted_batches): " +
                " ".join(f"{a}={self.adopted[a]}" for a in APPS) +
                f"; ttl keys that restarted from zero after one of them (their tombstone "
                f"not sent): {self.adopted_expired}")
        log("records of aborted delivery attempts in the output topics:")
        total = 0
        for app in APPS:
            n, k = self.aborted.get(app, 0), self.killed_seen[app]
            if self.real_broker:
                u = self.aborted_uncommitted.get(app, 0)
                ku = self.killed_seen_uncommitted[app]
                # a delivery killed after the coordinator took its commit is committed:
                # the aborted attempts are those without a committed progress record
                log(f"  {app:4} without a progress record: read_committed {n}, "
                    f"read_uncommitted {u}; of deliveries killed while sending: "
                    f"read_committed {k}, read_uncommitted {ku}")
                total += u
            else:
                log(f"  {app:4} without a progress record: {n} (visible: the mock does not "
                    f"hide aborted transactions; not counted as output); of deliveries "
                    f"killed while sending: {k}")
                total += n + k
        # Over the run, not per application: the word counts write at most a dozen
        # records per batch, which leave together with the progress record, so a kill
        # rarely catches one of their deliveries half sent.
        if not total:
            self.problems.append("no killed delivery left records of an aborted attempt "
                                 "in an output topic" +
                                 (" (read_uncommitted)" if self.real_broker else ""))

    def run_round(self, nkills, faults):
        """One round: nkills kills (and, with faults, every fault point, every error
        injection and the broker faults), then the drain and the check."""
        self.start_broker()
        feeder = InputFeeder(self, self.args.lines_per_s, self.args.events_per_s)
        feeder.start()
        time.sleep(1)  # a backlog, so that the first starts find work
        # per application in turn: a random kill, then one aimed at a phase, ...
        plan = ["random", "processing", "random", "committing", "random", "delivering"]
        for i in range(nkills):
            app = APPS[i % len(APPS)]
            mode = plan[(i // len(APPS)) % len(plan)]
            # an aimed kill that died past its phase is aimed again (up to 3 more kills,
            # each counted as what it was): the histograms show the misses
            for _ in range(4):
                if self.kill(app, mode):
                    break
            if faults and i == nkills // 2:
                self.recreate_checkpoint("mx")
            if (i + 1) % 25 == 0:
                log(f"{self.kills} kills so far")
        if faults:
            for fault, app in FAULT_POINTS:
                self.kill_at_fault_point(app, fault)
            for spec, app, says in ERROR_FAULTS:
                rc = self.fail_at_fault_point(app, spec, says)
                log(f"{app}: injected {spec}: exit {rc}")
            for app in ["wc", "cp", "kv"]:
                self.broker_faults(app)
        feeder.stopping.set()
        feeder.join()
        if feeder.error:
            raise SystemExit(f"chaos: input producer: {feeder.error}")
        # The input is what the topics hold, read back: an idempotent producer may still
        # write a record twice across the mock's broker restarts, and a duplicated input
        # record is input like any other.
        produced = len(self.expected_lines), len(self.expected_events)
        self.line_at = {(m.partition(), m.offset()):
                        (m.partition(), m.key().decode(), m.value().decode())
                        for m in self.read_topic("lines")}
        self.expected_lines = list(self.line_at.values())
        self.event_at = {(m.partition(), m.offset()): m.value().decode()
                         for m in self.read_topic("events")}
        self.expected_events = [(p, v) for (p, _), v in self.event_at.items()]
        if produced != (len(self.expected_lines), len(self.expected_events)):
            log(f"the input topics hold {len(self.expected_lines)} lines and "
                f"{len(self.expected_events)} events, {produced[0]} and {produced[1]} were "
                f"produced (the producer wrote some twice); the topics are the input")
        log(f"{self.kills} kills; {len(self.expected_lines)} lines and "
            f"{len(self.expected_events)} events; draining")
        lines_per_part = collections.Counter(p for p, _, _ in self.expected_lines)
        events_per_part = collections.Counter(p for p, _ in self.expected_events)
        self.drain([(app, "events", events_per_part) if app in ("kv", "ttl", "mx") else
                    (app, "lines", lines_per_part) for app in APPS])
        problems = len(self.problems)
        lost, dup = self.check()
        self.lost += lost
        self.dup += dup
        log(f"round: lost={lost} duplicated={dup}")
        self.close(self.args.keep or lost or dup or len(self.problems) > problems)

    def run(self):
        # A real broker keeps everything: one round. The mock keeps ~5 MiB per partition:
        # rounds of at most --round-kills kills, each with a fresh broker and checkpoints
        # (the fault points, error injections and broker faults in the first).
        per = self.args.kills if self.real_broker else max(1, self.args.round_kills)
        rounds = max(1, -(-self.args.kills // per))
        for r in range(rounds):
            if r:
                self.new_round()
            n = min(per, self.args.kills - r * per)
            log(f"round {r + 1}/{rounds}: {n} kills")
            self.run_round(n, r == 0)
        self.report_phases()
        self.report_aborted()
        for p in self.problems:
            log(f"PROBLEM: {p}")
        for w in self.kept:
            log(f"work directory kept: {w}")
        print(f"lost={self.lost} duplicated={self.dup} kills={self.kills}", flush=True)
        ok = not self.lost and not self.dup and not self.problems and \
            self.kills >= self.args.kills
        if not ok and self.kills < self.args.kills:
            log(f"only {self.kills} kills, {self.args.kills} asked")
        return 0 if ok else 1

    def close(self, keep):
        if self.broker:
            self.broker.send_signal(signal.SIGTERM)
            self.broker.wait()
            self.broker = None
        if keep:
            self.kept.append(self.work)
        elif os.path.isdir(self.work):
            shutil.rmtree(self.work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lockstep", required=True, help="path of the lockstep binary")
    ap.add_argument("--kills", type=int, default=100,
                    help="SIGKILLs, half random, half aimed at a phase (default 100)")
    ap.add_argument("--round-kills", type=int, default=200,
                    help="on the mock: kills per round (fresh broker; default 200)")
    ap.add_argument("--lines-per-s", type=int, default=1500,
                    help="input lines produced per second while killing (default 1500)")
    ap.add_argument("--events-per-s", type=int, default=500,
                    help="input events produced per second while killing (default 500)")
    ap.add_argument("--ttl-ms", type=int, default=2000,
                    help="state.ttl.ms of the ttl application (default 2000)")
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
        if r.broker:  # interrupted in a round
            r.close(True)
        if r.kept and rc:
            log(f"work directory kept: {r.kept[-1]}")
    sys.exit(rc)


if __name__ == "__main__":
    main()
