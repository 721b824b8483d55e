#!/usr/bin/python3
"""windows.py — windowed counts stay exact across crashes.

Five `lockstep run` applications read the same JSON events (three partitions, event
times increasing per partition, then late records far behind) and count per user:
  wev   event time, hopping windows (2 s, advancing 1 s), emit on close, late records
        to the dead-letter topic wev-dead
  weu   event time, tumbling windows (1 s), emit on update
  wbt   batch time, tumbling windows (1 s)
  wses  event time, session windows (gap 500 ms)
  wsesu event time, session windows (gap 500 ms), emit on update
They are killed with SIGKILL at random instants and at named fault points while input
flows, restarted, drained; then an independent reader (read_committed, counting only the
delivery attempts the progress topic names) checks, record for record:
  - wev / weu / wses / wsesu: exactly one final result per (user, window or session),
    equal to the count computed here from the input; nothing else final; every late
    record exactly once in wev-dead and counted in the accumulator windowed-counts.late
    of each; wsesu: a session deleted (replaced by a merge or an extension) never has a
    final result, and each final session's updates before it never exceed its count;
  - wbt: at most one result per (user, window); the windowed values, as a step function
    over the windows (a value holds until the key's next result or deletion), add up to
    each user's number of events, and every user's last result is a deletion.
Prints `lost=0 duplicated=0 kills=N`, exits 0, or names what is wrong and exits 1.

Against a real broker (--bootstrap / KAFKA_BOOTSTRAP; the kafka tier runs it so) every
check is strict. On `lockstep mock-broker` (the default) one thing cannot be checked: the
mock keeps no transaction markers, so a delivery killed after its progress record reached
the broker but before all its records did looks committed there, and recovery takes the
batch as delivered (a real broker hides the aborted progress record and the batch is
delivered again). Each process runs with LOCKSTEP_PHASE_FILE, which names the delivery
attempt it died sending; a batch whose committed attempt is one of those is *adopted*.
Only what an adopted batch itself had to send is excused when missing: a dead letter whose
input offset the batch read, a final result of a window the batch could have closed (it
read an event with a time at or past the window's end while the watermark before it was
below that end), and for wbt, whose results follow batch time rather than the input, the
users whose sums do not add up once a wbt batch was adopted. They are counted and printed.
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

from confluent_kafka import Producer

from chaos import attempt_of, graceful_stop, provenance, read_topic, watermarks

APPS = ["wev", "weu", "wbt", "wses", "wsesu"]
FAULTS = ["after-plan", "mid-processing", "after-checkpoint-commit", "before-sink-produce",
          "after-sink-produce", "after-sink-commit"]
NPART = 3
BASE_TIME = 10_000_000


def log(msg):
    print(f"windows: {msg}", flush=True)


class Runner:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="lockstep-windows.")
        self.rng = random.Random(args.seed)
        self.clock = [BASE_TIME] * NPART
        self.counts = [0] * NPART  # records produced per partition
        self.events = []  # (user, event time, partition), in order
        self.late = []    # (user, event time)
        self.offsets = {}  # (partition, offset) -> (user, event time, late)
        self.killed = collections.defaultdict(set)  # app -> attempts a kill interrupted
        self.excused = collections.Counter()  # app -> missing results of adopted batches
        self.kills = 0
        self.phases = 0
        self.problems = []
        self.broker = None
        self.adopted = {}  # app -> {batch: {partition: (from, until)}}, see committed()

    TOPICS = {"ev": NPART, "wev-out": 1, "weu-out": 1, "wbt-out": 1, "wses-out": 1, "wsesu-out": 1,
              "wev-dead": 1}

    def start_broker(self):
        self.broker = None
        self.real_broker = bool(self.args.bootstrap)
        if self.real_broker:
            self.bootstrap = self.args.bootstrap
            self.prepare_real_topics()
            return
        topics = [f"{t}:{n}" for t, n in self.TOPICS.items()] + \
            [f"{a}.progress:1" for a in APPS]
        cmd = [self.args.lockstep, "mock-broker"] + sum((["--topic", t] for t in topics), [])
        self.broker = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True)
        line = self.broker.stdout.readline().strip()
        if not line.startswith("bootstrap.servers="):
            raise SystemExit(f"windows: mock-broker did not start: {line!r}")
        self.bootstrap = line.split("=", 1)[1]

    def prepare_real_topics(self):
        """The topics the mock gets from --topic (the progress topics lockstep creates
        itself); refused when they exist with records: the checker reads them whole."""
        from confluent_kafka import Consumer, TopicPartition
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        have = admin.list_topics(timeout=30).topics
        names = list(self.TOPICS) + [f"{a}.progress" for a in APPS]
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "windows-checker"})
        for t in names:
            if t in have and any(watermarks(c, TopicPartition(t, p))[1] > 0
                                 for p in have[t].partitions):
                raise SystemExit(f"windows: topic {t} already holds records: start from "
                                 f"an empty broker")
        c.close()
        # event times are in 1970: the default retention (by record timestamp) would
        # delete the input before it is read (lockstep then stops with LK_ERR_DATA_LOSS)
        new = [NewTopic(t, n, 1, config={"retention.ms": "-1"})
               for t, n in self.TOPICS.items() if t not in have]
        for t, f in (admin.create_topics(new) if new else {}).items():
            f.result(30)
        log(f"using the broker at {self.bootstrap}")

    def produce(self, n, late=0, closers=False, pause=0):
        # idempotent: event times must increase per partition as produced (a plain
        # producer's retry, e.g. while a new topic's leader is unknown, reorders records)
        p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5,
                      "enable.idempotence": True})
        recs = []
        # a pause in event time (every partition): the windows and sessions before it
        # close, so the batch has output and the sink's fault points are reached
        self.clock = [c + pause for c in self.clock]
        for _ in range(n):
            part = self.rng.randrange(NPART)
            self.clock[part] += self.rng.randrange(40)
            user = f"u{self.rng.randrange(12)}"
            recs.append((part, user, self.clock[part]))
            self.events.append((user, self.clock[part], part))
        # late: far behind every partition's clock, each event time distinct
        # (not 0: a producer takes timestamp 0 for "now", and the record is not late)
        for et in self.rng.sample(range(1, 1000), late):
            user = f"u{self.rng.randrange(12)}"
            recs.append((self.rng.randrange(NPART), user, et))
            self.late.append((user, et))
        if closers:  # one far ahead per partition: every window with data closes
            for part in range(NPART):
                recs.append((part, "closer", max(self.clock) + 100_000))
        nlate = set(range(len(recs) - late - (NPART if closers else 0),
                          len(recs) - (NPART if closers else 0)))
        failed = []

        def delivered(i, part, user, et):
            def cb(err, msg):
                if err:
                    failed.append(err)
                else:
                    self.offsets[(part, msg.offset())] = (user, et, i in nlate)
            return cb

        for i, (part, user, et) in enumerate(recs):
            p.produce("ev", value=json.dumps({"user": user}).encode(), partition=part,
                      timestamp=et, on_delivery=delivered(i, part, user, et))
            self.counts[part] += 1
            p.poll(0)
        if p.flush(30) or failed:
            raise SystemExit(f"windows: input not delivered to the broker {failed[:1]}")

    def app_args(self, app):
        a = [f"app.id={app}", f"checkpoint.dir={self.work}/{app}",
             f"kafka.bootstrap.servers={self.bootstrap}", "kafka.fetch.wait.max.ms=10",
             "kafka.log_level=3", "batch.interval.ms=0", "max.records.per.partition=100",
             "log.level=warning", "sink.kafka.timeout.ms=10000", "pipeline=count-by-key",
             "input.topics=ev", "key.field=user", f"output.topic={app}-out"]
        if app == "wev":
            a += ["window.time=event", "window.size.ms=2000", "window.slide.ms=1000",
                  "errors.deadletter=wev-dead"]
        elif app == "weu":
            a += ["window.time=event", "window.size.ms=1000", "window.emit=update"]
        elif app == "wses":
            a += ["window.time=event", "window.gap.ms=500"]
        elif app == "wsesu":
            a += ["window.time=event", "window.gap.ms=500", "window.emit=update"]
        else:
            a += ["window.time=batch", "window.size.ms=1000"]
        return [self.args.lockstep, "run"] + sum((["-X", x] for x in a), [])

    def phase_file(self, app):
        return f"{self.work}/{app}.phase"

    def start(self, app, fault=None):
        env = dict(os.environ)
        env.pop("LOCKSTEP_FAULTPOINT", None)
        if fault:
            env["LOCKSTEP_FAULTPOINT"] = fault
        with open(self.phase_file(app), "wb") as f:  # "none" until the process says
            f.write(bytes(128))
        env["LOCKSTEP_PHASE_FILE"] = self.phase_file(app)
        err = open(f"{self.work}/{app}.stderr", "a")
        return subprocess.Popen(self.app_args(app), env=env, stdout=subprocess.DEVNULL,
                                stderr=err)

    def kill_at_random(self, app):
        proc = self.start(app)
        time.sleep(self.rng.uniform(0.05, 2.0))
        if proc.poll() is not None:
            self.problems.append(f"{app} exited by itself with {proc.returncode}")
            return
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.killed_sending(app)
        self.kills += 1

    def killed_sending(self, app):
        """Notes the delivery attempt a killed process was sending (its phase file)."""
        with open(self.phase_file(app), "rb") as f:
            attempt = attempt_of(f.read(128))
        if attempt:
            self.killed[app].add(attempt)

    def kill_at_fault(self, app, fault):
        proc = self.start(app, fault)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.problems.append(f"{app}: fault point {fault} never reached")
            return
        if rc != -signal.SIGKILL:
            self.problems.append(f"{app}: expected death at {fault}, got exit {rc}")
            return
        self.killed_sending(app)
        self.kills += 1

    def inspect(self, app):
        out = subprocess.run([self.args.lockstep, "checkpoint", "inspect", f"{self.work}/{app}",
                              "--json"], capture_output=True, text=True)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def drain(self, app, settle=0.0):
        """Run until the offsets reach the input's end, then `settle` seconds more (batch
        time must pass for batch-time windows to close), until the outbox is empty."""
        proc = self.start(app)
        deadline = time.time() + 120
        reached = None
        while time.time() < deadline:
            time.sleep(0.3)
            if proc.poll() is not None:
                self.problems.append(f"{app} exited during the drain with {proc.returncode}")
                return
            doc = self.inspect(app)
            if not doc:
                continue
            offs = {o["partition"]: o["offset"] for o in doc["offsets"] if o["topic"] == "ev"}
            if all(offs.get(p, -1) >= n for p, n in enumerate(self.counts)):
                reached = reached or time.time()
                if time.time() - reached >= settle and not doc["outbox"]:
                    break
        rc = graceful_stop(proc)
        if rc != 0:
            self.problems.append(f"{app}: graceful stop after the drain exited {rc}")

    def phase(self, n, late, closers=False):
        self.phases += 1
        self.produce(n, late, closers)
        for i in range(self.args.kills // 2):
            self.kill_at_random(APPS[i % len(APPS)])
        for i, fault in enumerate(FAULTS if not closers else []):
            # fresh input, so that every point is reached (not after the closers: it
            # would all be late)
            self.produce(60, pause=1000)
            self.kill_at_fault(APPS[(i + self.phases) % len(APPS)], fault)
        for app in APPS:
            self.drain(app, settle=2.5 if app == "wbt" else 0)

    # ---- the independent reader ----

    def committed(self, app, topic, sink):
        """The records of committed attempts [(batch, record)] in batch order, the number
        of batches delivered twice; sets self.adopted[app] (see the module doc)."""
        attempts, per_batch, progress = {}, collections.Counter(), {}
        for m in read_topic(self.bootstrap, f"{app}.progress"):
            d = json.loads(m.value())
            # one progress record per batch names every Kafka sink of the app ("sinks");
            # records of older versions named one ("sink")
            if d["app"] == app and (sink in d.get("sinks", {}) or d.get("sink") == sink):
                attempts[d["batch"]] = d["attempt"]
                per_batch[d["batch"]] += 1
                progress[d["batch"]] = d
        self.adopted[app] = self.adopted_ranges(app, progress)
        twice = sum(n - 1 for n in per_batch.values() if n > 1)
        out = []
        for m in read_topic(self.bootstrap, topic):
            p = provenance(m)
            if p is None or (p.app, p.sink) != (app, sink):
                raise SystemExit(f"windows: {topic}: a record with provenance {p}, not of "
                                 f"app {app!r} sink {sink!r}")
            if attempts.get(p.batch) == p.attempt:
                out.append((p.batch, m))
        out.sort(key=lambda r: (r[0], r[1].offset()))
        return out, twice

    def adopted_ranges(self, app, progress):
        """On the mock: {batch: {partition: (from, until)}} of the input (ev) each adopted
        batch read, from consecutive progress records. Empty on a real broker."""
        if self.real_broker:
            return {}
        until, out = collections.Counter(), {}
        for b in sorted(progress):
            rng = {}
            for o in progress[b]["offsets"]:
                if o["topic"] == "ev":
                    p = o["partition"]
                    rng[p] = (until[p], max(until[p], o["until"]))
                    until[p] = rng[p][1]
            if progress[b]["attempt"] in self.killed[app]:
                out[b] = rng
        return out

    def event_time_prefix(self):
        """partition -> [highest event time of the offsets below i] (None: no record)."""
        out = {}
        for p in range(NPART):
            hi, acc = None, [None]
            for off in range(self.counts[p]):
                et = self.offsets[(p, off)][1]
                hi = et if hi is None else max(hi, et)
                acc.append(hi)
            out[p] = acc
        return out

    def closable_in(self, app, end):
        """Whether an adopted batch of app may have been the one to close a window (or
        session) ending at end: the watermark before it (at most the lowest of the
        partitions' highest event times) was below end, and it read an event at or past
        end (the watermark never passes the highest event time read)."""
        for rng in self.adopted.get(app, {}).values():
            before = [self.prefix[p][lo] for p, (lo, _) in rng.items()
                      if self.prefix[p][lo] is not None]
            after = [self.prefix[p][hi] for p, (_, hi) in rng.items()
                     if self.prefix[p][hi] is not None]
            if (not before or min(before) < end) and after and max(after) >= end:
                return True
        return False

    def read_by_adopted(self, app, part, off):
        return any(lo <= off < hi for rng in self.adopted.get(app, {}).values()
                   for p, (lo, hi) in rng.items() if p == part)

    def sessions(self, gap):
        """Per user, the union of [t, t + gap) of its events: (user, start, end) -> count.
        In-order partitions make it independent of how batches were cut: no event can
        reach a session the watermark closed."""
        by_user = collections.defaultdict(list)
        for user, et, _ in self.events:
            by_user[user].append(et)
        want = collections.Counter()
        for user, ets in by_user.items():
            ets.sort()
            start, end, n = ets[0], ets[0] + gap, 0
            for et in ets:
                if et >= end:
                    want[(user, start, end)] = n
                    start, n = et, 0
                end, n = max(end, et + gap), n + 1
            want[(user, start, end)] = n
        return want

    def check_event(self, app, size, slide, gap=0):
        want = collections.Counter()
        for user, et, _ in self.events:
            s = et // slide
            for k in range(s - size // slide + 1, s + 1):
                want[(user, k * slide, k * slide + size)] += 1
        if gap:
            want = self.sessions(gap)
        recs, twice = self.committed(app, f"{app}-out", "to-kafka")
        finals = collections.Counter()
        got, deleted, updated = {}, set(), collections.defaultdict(int)
        for _, m in recs:
            d = json.loads(m.value())
            w = (m.key().decode(), d["window_start"], d["window_end"])
            if d["final"]:
                finals[w] += 1
                got[w] = d["value"]
            elif d["value"] is None:  # a session window an update replaced
                deleted.add(w)
            else:
                updated[w] = max(updated[w], d["value"])
        if app == "wsesu" and not (deleted and updated):
            self.problems.append(f"{app}: {len(updated)} updated and {len(deleted)} deleted "
                                 f"sessions: emit on update emitted no changes")
        for w in sorted(deleted & set(got))[:5]:
            self.problems.append(f"{app}: {w} was deleted, then had a final result")
        for w, v in sorted(updated.items()):
            if w in got and got[w] is not None and v > got[w]:
                self.problems.append(f"{app}: {w} updated to {v}, final {got[w]}")
        dup = twice + sum(n - 1 for n in finals.values() if n > 1)
        lost = 0
        for w, n in want.items():
            if got.get(w) is None and self.closable_in(app, w[2]):
                self.excused[app] += 1
            elif got.get(w) != n:
                self.problems.append(f"{app}: {w} final {got.get(w)}, input has {n}")
                lost += 1
        extra = [w for w in got if w not in want]
        if extra:
            self.problems.append(f"{app}: final results for windows without input: {extra[:5]}")
            dup += len(extra)
        doc = self.inspect(app)
        nlate = doc["accumulators"].get("windowed-counts.late") if doc else None
        if nlate != len(self.late):
            self.problems.append(f"{app}: {nlate} late records counted, {len(self.late)} sent")
        return lost, dup

    def check_dead(self):
        recs, twice = self.committed("wev", "wev-dead", "late-deadletter")
        got = collections.Counter((m.key().decode(), json.loads(m.value())["event_time"])
                                  for _, m in recs)
        want = collections.Counter(self.late)
        missing, extra = want - got, got - want
        where = {(u, et): po for po, (u, et, late) in self.offsets.items() if late}
        for k in list(missing):
            if self.read_by_adopted("wev", *where[k]):
                self.excused["wev-dead"] += missing.pop(k)
        if missing or extra:
            self.problems.append(f"wev dead letters: {sum(missing.values())} missing, "
                                 f"{sum(extra.values())} extra")
        return sum(missing.values()), sum(extra.values()) + twice

    def check_batch_time(self):
        want = collections.Counter(u for u, _, _ in self.events)
        want.update(u for u, _ in self.late)
        want.update(["closer"] * NPART)
        recs, twice = self.committed("wbt", "wbt-out", "to-kafka")
        seen = collections.Counter()
        steps = collections.defaultdict(list)  # user -> [(window end, value or None)]
        for _, m in recs:
            user = m.key().decode()
            d = json.loads(m.value())
            seen[(user, d["window_end"])] += 1
            steps[user].append((d["window_end"], d["value"]))  # value None: deleted
        dup = twice + sum(n - 1 for n in seen.values() if n > 1)
        lost = 0
        for user, n in want.items():
            # a window's value holds until the key's next result (tumbling: one slide
            # per window), so the windows' values add up to the user's events
            total, prev = 0, None
            for end, value in steps.get(user, []):
                if prev is not None:
                    total += prev[1] * (end - prev[0]) // 1000
                prev = (end, value) if value is not None else None
            if (prev is not None or total != n) and self.adopted.get("wbt"):
                self.excused["wbt"] += 1
            elif prev is not None:
                self.problems.append(f"wbt: '{user}' has no final deletion")
                lost += 1
            elif total != n:
                self.problems.append(f"wbt: '{user}' windows add up to {total}, input has {n}")
                lost += max(0, n - total)
                dup += max(0, total - n)
        return lost, dup

    def run(self):
        self.start_broker()
        self.phase(self.args.events, 0)
        self.phase(self.args.events, self.args.late)
        self.phase(0, 0, closers=True)
        self.prefix = self.event_time_prefix()
        lost = dup = 0
        for app, size, slide, gap in (("wev", 2000, 1000, 0), ("weu", 1000, 1000, 0),
                                      ("wses", 1, 1, 500), ("wsesu", 1, 1, 500)):
            lo, du = self.check_event(app, size, slide, gap)
            lost, dup = lost + lo, dup + du
        lo, du = self.check_dead()
        lost, dup = lost + lo, dup + du
        lo, du = self.check_batch_time()
        lost, dup = lost + lo, dup + du
        if not self.real_broker:
            log("batches whose killed delivery the mock shows as committed: " +
                " ".join(f"{a}={len(self.adopted.get(a, {}))}" for a in APPS) +
                "; their missing results, not checkable on the mock: " +
                (" ".join(f"{a}={n}" for a, n in sorted(self.excused.items())) or "none"))
        for p in self.problems:
            log(f"PROBLEM: {p}")
        print(f"lost={lost} duplicated={dup} kills={self.kills}", flush=True)
        return 0 if lost == 0 and dup == 0 and not self.problems else 1

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
    ap.add_argument("--lockstep", required=True)
    ap.add_argument("--kills", type=int, default=18, help="random SIGKILLs per phase x2")
    ap.add_argument("--events", type=int, default=1500, help="events per phase")
    ap.add_argument("--late", type=int, default=60, help="late events")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP"),
                    help="a real broker (default: $KAFKA_BOOTSTRAP, else a mock broker)")
    ap.add_argument("--keep", action="store_true")
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
