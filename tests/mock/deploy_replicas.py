#!/usr/bin/python3
"""deploy_replicas.py — docker-compose.yml's scale-out service (lockstep-copy, the
replicas of `docker compose up --scale lockstep-copy=3`) run as Compose would run its
replicas, without Docker: its entrypoint and command taken from docker-compose.yml, the
container paths of its bind mounts mapped back to the repository (deploy/replica.sh,
deploy/copy.properties), its named volume one directory shared by every replica, and
processes on a `lockstep mock-broker` holding the topics the topics service creates.

It checks what --scale needs of the service (no fixed host port, no container_name, a
restart policy, a stop period longer than a graceful stop) and then, with three replicas
started at once: each claims its own slot (checkpoint.dir and group.instance.id), is
lockstep itself after the exec (so SIGTERM reaches it) and serves its tasks' metrics
(here each on a port of its own: on one machine the replicas share the network, which
containers do not); every input record reaches the output exactly once while a replica
stops gracefully, a new one takes the freed slot, a replica is SIGKILLed and its slot is
taken again at once; every graceful stop exits 0.

The mock shows records of aborted attempts to read_committed readers, so a record counts
when its provenance (batch, attempt) is that of the last progress record of its batch in
its task's partition (as tests/mock/test_group.c counts). The mock cannot create topics
through the Admin API (it names no controller), so <app.id>.progress is made with the
broker; lockstep then checks its partition count as on a real broker.

With --bootstrap-file (the kafka tier's broker, tests/kafka/broker.sh) the same runs on
a real Apache Kafka, with names made unique per run; there the output is read
read_committed and every record must be of a committed attempt, lockstep creates
<app.id>.progress itself, and static membership is checked as deploy/lockstep@.service
and the README describe it: a replica stopped gracefully and replaced within
group.session.timeout.ms gets its tasks back with no rebalance of the others (the mock
cluster does not implement static membership).

Run by ctest as mock_deploy_replicas and kafka_deploy_replicas; prints
`deploy_replicas: ok` or fails naming what.
"""
import argparse
import collections
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "chaos"))
from chaos import graceful_stop, provenance  # noqa: E402

SERVICE = "lockstep-copy"
SESSION_MS = 6000  # the broker's minimum; the file's 15 s would only make this slower


def fail(msg):
    raise SystemExit(f"deploy_replicas: FAILED: {msg}")


def properties(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                k, _, v = line.partition("=")
                out[k.strip()] = v.strip()
    return out


def parse_duration(s):
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(s))
    if not m:
        fail(f"stop_grace_period {s!r}: expected e.g. 90s")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


class Compose:
    """The service's command with container paths mapped to this machine."""

    def __init__(self, source, volume_dir):
        with open(os.path.join(source, "docker-compose.yml")) as f:
            self.doc = yaml.safe_load(f)
        services = self.doc["services"]
        if SERVICE not in services:
            fail(f"docker-compose.yml has no service {SERVICE}")
        self.svc = services[SERVICE]
        self.mounts = []  # (container path, local path), longest first
        for v in self.svc.get("volumes", []):
            src, dst = v.split(":")[:2]
            if src.startswith("./"):
                local = os.path.join(source, src[2:])
            elif src in (self.doc.get("volumes") or {}):
                local = volume_dir
            else:
                fail(f"{SERVICE}: volume {v!r} is neither a bind mount of the repository "
                     f"nor a named volume")
            self.mounts.append((dst, local))
        self.mounts.sort(key=lambda m: -len(m[0]))
        self.topics_command = " ".join(services["topics"]["command"])

    def local(self, arg):
        for dst, local in self.mounts:
            if arg == dst or arg.startswith(dst + "/"):
                return local + arg[len(dst):]
        return arg

    def argv(self):
        ep, cmd = self.svc.get("entrypoint"), self.svc.get("command")
        if not isinstance(ep, list) or not isinstance(cmd, list):
            fail(f"{SERVICE}: entrypoint and command must be lists (exec form)")
        return [self.local(a) for a in ep + cmd]

    def check_scalable(self, props):
        """What `docker compose up --scale` and a graceful stop need of the service."""
        for key in ("ports", "container_name", "hostname"):
            if key in self.svc:
                fail(f"{SERVICE}: '{key}' cannot be the same for several replicas")
        if self.svc.get("restart") != "unless-stopped":
            fail(f"{SERVICE}: restart: unless-stopped expected")
        if props.get("group.mode") != "consumer":
            fail("copy.properties: group.mode=consumer expected")
        grace = parse_duration(self.svc.get("stop_grace_period", "10s"))
        stop = 2 * int(props.get("shutdown.timeout.ms", "30000")) / 1000
        if grace <= stop:
            fail(f"{SERVICE}: stop_grace_period {grace:g} s is not above 2 x "
                 f"shutdown.timeout.ms ({stop:g} s): a graceful stop would become SIGKILL")

    def partitions(self, topic):
        m = re.search(rf"(?<![\w.-]){re.escape(topic)}:(\d+)", self.topics_command)
        if not m:
            fail(f"the topics service does not create {topic}")
        return int(m.group(1))


class Reader:
    """One consumer reading whole topics again and again: read_committed on a real broker;
    read_uncommitted on the mock, which shows aborted attempts to read_committed readers
    too and has no last stable offset (see the file's comment)."""

    def __init__(self, bootstrap, isolation):
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": "deploy-replicas",
                           "log_level": 3,
                           "enable.auto.commit": False, "enable.partition.eof": True,
                           "isolation.level": isolation, "fetch.wait.max.ms": 10})

    def read(self, topic, nparts):
        highs, tps = {}, []
        for p in range(nparts):
            # read_committed: the last stable offset, where the fetch's EOF is too (records
            # of transactions still open come in a later read: wait_output reads again)
            lo, hi = self.c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > lo:
                highs[p] = hi
                tps.append(TopicPartition(topic, p, lo))
        self.c.assign(tps)
        out, pending, last = [], set(highs), {}
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for m in self.c.consume(1000, 0.2):
                if not m.error():
                    out.append(m)
                    last[m.partition()] = m.offset()
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    if m.offset() >= highs[m.partition()]:
                        pending.discard(m.partition())
                else:
                    fail(f"reading {topic}: {m.error()}")
        self.c.unassign()
        if pending:
            fail(f"could not read {topic} to its end in 30 s: partitions {sorted(pending)}, "
                 f"high watermarks {highs}, last offsets read {last}")
        return out

    def close(self):
        self.c.close()


def assignments(log):
    """(wall time in s, tasks) of each 'assigned tasks [...]' line of a replica's log."""
    out = []
    for m in re.finditer(r"^(\S+Z) \S+ lockstep: group \S+: assigned tasks \[([\d ]*)\]", log,
                         re.M):
        t = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ")
        out.append((t.replace(tzinfo=datetime.timezone.utc).timestamp(), m.group(2).split()))
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    def __init__(self, argv, env, errfile):
        self.errfile = errfile
        self.err = open(errfile, "ab")
        self.port = free_port()
        argv = argv + ["-X", f"metrics.listen=127.0.0.1:{self.port}"]
        # a session of its own: if the script ever ran lockstep as a child instead of
        # exec'ing it (check_exec fails then), killing the group leaves no orphan behind
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.err,
                                     start_new_session=True)
        self.slot = self.wait_slot()

    def log(self):
        with open(self.errfile, errors="replace") as f:
            return f.read()

    def wait_slot(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = re.search(r"replica\.sh: slot (\d+): checkpoint\.dir=(\S+) "
                          r"group\.instance\.id=(\S+)", self.log())
            if m:
                break
            if self.proc.poll() is not None:
                fail(f"a replica exited with {self.proc.returncode}: {self.log()}")
            time.sleep(0.05)
        else:
            fail(f"a replica named no slot in 30 s: {self.log()}")
        slot, ckpt, member = int(m.group(1)), m.group(2), m.group(3)
        if not ckpt.endswith(f"/slot-{slot}") or member != f"slot-{slot}":
            fail(f"slot {slot}: checkpoint.dir {ckpt}, group.instance.id {member}")
        return slot

    def check_metrics(self):
        """Its endpoint answers, /healthz 200 and /metrics with samples of its tasks."""
        url = f"http://127.0.0.1:{self.port}"
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=10) as r:
                if r.status != 200:
                    fail(f"slot {self.slot}: /healthz answered {r.status}")
            with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
                text = r.read().decode()
        except OSError as e:
            fail(f"slot {self.slot}: metrics endpoint {url}: {e}\n{self.log()}")
        if 'task="' not in text:
            fail(f"slot {self.slot}: /metrics has no sample labelled with a task")

    def check_exec(self, lockstep):
        """The container's main process is lockstep itself: signals reach it."""
        deadline = time.monotonic() + 10
        want = os.path.realpath(lockstep)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                fail(f"the replica of slot {self.slot} exited with status "
                     f"{self.proc.returncode}:\n{self.log()}")
            try:
                if os.path.realpath(f"/proc/{self.proc.pid}/exe") == want:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        fail(f"replica of slot {self.slot}: its process is not {want} (no exec?)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lockstep", required=True)
    ap.add_argument("--source", required=True, help="the repository")
    ap.add_argument("--bootstrap-file",
                    help="run on this real broker (the file tests/kafka/broker.sh writes) "
                         "instead of a lockstep mock-broker")
    args = ap.parse_args()
    real = args.bootstrap_file is not None
    tmp = tempfile.mkdtemp(prefix="deploy-replicas-")
    volume = os.path.join(tmp, "volume")
    os.mkdir(volume, 0o700)
    compose = Compose(args.source, volume)
    argv = compose.argv()
    # -c FILE: the properties the service mounts
    conf = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-c"), None)
    if not conf:
        fail(f"{SERVICE}: no -c FILE in its command {argv}")
    props = properties(conf)
    compose.check_scalable(props)
    app, src, dst = props["app.id"], props["input.topics"], props["output.topic"]
    nparts, ndst = compose.partitions(src), compose.partitions(dst)
    if ndst < nparts:
        fail(f"{dst} has fewer partitions than {src} (output.partition=keep)")

    broker, names = None, []
    if real:
        with open(args.bootstrap_file) as f:
            bootstrap = f.read().strip()
        # a broker shared by the tier and by earlier runs: names of this run only
        run_id = f"{os.getpid()}-{int(time.time())}"
        app, src, dst = f"{app}-{run_id}", f"{src}-{run_id}", f"{dst}-{run_id}"
        names = ["-X", f"app.id={app}", "-X", f"input.topics={src}", "-X", f"output.topic={dst}"]
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for t, f in admin.create_topics([NewTopic(src, nparts, 1),
                                         NewTopic(dst, ndst, 1)]).items():
            f.result(30)
    else:
        broker = subprocess.Popen(
            [args.lockstep, "mock-broker", "--topic", f"{src}:{nparts}",
             "--topic", f"{dst}:{ndst}",
             "--topic", f"{app}.progress:{nparts}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    replicas, reader, producer = [], None, None
    try:
        if broker:
            line = broker.stdout.readline().strip()
            if not line.startswith("bootstrap.servers="):
                fail(f"mock-broker said {line!r}")
            bootstrap = line.split("=", 1)[1]
        env = dict(os.environ, LOCKSTEP=args.lockstep)
        run = argv + names + ["-X", f"kafka.bootstrap.servers={bootstrap}",
                      "-X", f"group.session.timeout.ms={SESSION_MS}",
                      "-X", "log.level=notice", "-X", "kafka.log_level=3"]
        n = 0

        def start():
            nonlocal n
            n += 1
            return Replica(run, env, os.path.join(tmp, f"replica-{n}.err"))

        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "log_level": 3})
        reader = Reader(bootstrap, "read_committed" if real else "read_uncommitted")
        produced = 0

        def produce(count):
            nonlocal produced
            for _ in range(count):
                producer.produce(src, f"rec {produced}".encode(), partition=produced % nparts)
                produced += 1
            if producer.flush(30):
                fail("could not produce the input")

        def counts():
            committed = {}
            for m in reader.read(f"{app}.progress", nparts):
                d = json.loads(m.value())
                committed[(m.partition(), d["batch"])] = d["attempt"]  # the last attempt
            seen, foreign = collections.Counter(), []
            for m in reader.read(dst, nparts):
                p = provenance(m)
                if p is None or p.app != app:
                    foreign.append(m.value())
                    continue
                if committed.get((m.partition(), p.batch)) != p.attempt:
                    if real:  # read_committed must show committed attempts only
                        foreign.append(m.value())
                    continue  # an aborted attempt, visible on the mock
                v = re.fullmatch(rb"rec (\d+)", m.value() or b"")
                if not v or int(v.group(1)) % nparts != m.partition():
                    foreign.append(m.value())
                    continue
                seen[int(v.group(1))] += 1
            return seen, foreign

        def wait_output(what, seconds=90):
            deadline = time.monotonic() + seconds
            while True:
                for r in replicas:
                    if r.proc.poll() is not None:
                        fail(f"{what}: the replica of slot {r.slot} exited with status "
                             f"{r.proc.returncode}:\n{r.log()}")
                seen, foreign = counts()
                missing = produced - sum(1 for i in range(produced) if seen[i])
                if not missing or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            logs = "\n".join(f"--- slot {r.slot}:\n{r.log()}" for r in replicas)
            if missing:
                fail(f"{what}: {missing} of {produced} records missing after {seconds} s\n"
                     f"{logs}")
            dup = [i for i, c in seen.items() if c > 1]
            if dup:
                fail(f"{what}: {len(dup)} records duplicated, e.g. rec {dup[0]}")
            if foreign:
                fail(f"{what}: {len(foreign)} output records that are no input record, "
                     f"e.g. {foreign[0]!r}")
            print(f"deploy_replicas: {what}: {produced} records, each once", flush=True)

        def stop(r):
            rc = graceful_stop(r.proc, timeout=90)
            replicas.remove(r)
            log = r.log()
            if rc != 0:
                fail(f"slot {r.slot}: exit status {rc} after SIGTERM: {log}")
            if "Sanitizer" in log or "runtime error" in log:
                fail(f"slot {r.slot}: {log}")

        # `docker compose up --scale lockstep-copy=3`: three replicas at once
        replicas.extend(start() for _ in range(3))
        slots = sorted(r.slot for r in replicas)
        if slots != [0, 1, 2]:
            fail(f"three replicas claimed slots {slots}, not one each of 0, 1, 2")
        for r in replicas:
            r.check_exec(args.lockstep)
        produce(600)
        wait_output("three replicas")
        for r in replicas:
            r.check_metrics()

        # a graceful stop (docker compose stop / scale down): its tasks move to the others
        # after the session timeout (a static member does not leave the group)
        gone = next(r for r in replicas if r.slot == 1)
        gone_tasks = set(assignments(gone.log())[-1][1])
        stopped_at = time.time()
        stop(gone)
        produce(600)
        wait_output("slot 1 stopped")
        # when the others took its tasks over
        taken = min((t for r in replicas for t, tasks in assignments(r.log())
                     if t > stopped_at and gone_tasks & set(tasks)), default=None)
        if taken is None:
            fail(f"slot 1's tasks {sorted(gone_tasks)} were never assigned to another replica")
        print(f"deploy_replicas: slot 1's tasks taken over {taken - stopped_at:.1f} s after "
              f"its SIGTERM (group.session.timeout.ms {SESSION_MS / 1000:g} s)", flush=True)
        if real and taken - stopped_at < SESSION_MS / 1000 * 0.8:
            fail("a static member's tasks moved before the session timeout: it left the group")

        # a new replica (scaled up again, or the container recreated) takes the freed slot
        r = start()
        replicas.append(r)
        if r.slot != 1:
            fail(f"a new replica claimed slot {r.slot} while slot 1 was free")
        produce(600)
        wait_output("slot 1 back")

        # SIGKILL (the container killed): the lock dies with the process, so the restarted
        # container (restart: unless-stopped) claims the same slot at once
        killed = next(r for r in replicas if r.slot == 0)
        produce(300)
        killed.proc.kill()
        killed.proc.wait()
        replicas.remove(killed)
        r = start()
        replicas.append(r)
        if r.slot != 0:
            fail(f"the replica restarted after a SIGKILL claimed slot {r.slot}, not 0")
        produce(300)
        wait_output("slot 0 killed and restarted")

        if real:
            # static membership: a replica stopped gracefully and replaced within the
            # session timeout gets its tasks back, and the others see no rebalance
            quiet = time.monotonic() + SESSION_MS / 1000 + 3
            while time.monotonic() < quiet:  # the group settled after the restart above
                time.sleep(0.5)
            others = [r for r in replicas if r.slot != 2]
            revoked = {r.slot: r.log().count("tasks revoked") for r in others}
            leaving = next(r for r in replicas if r.slot == 2)
            tasks = re.findall(r"assigned tasks \[([\d ]*)\]", leaving.log())[-1]
            stop(leaving)
            r = start()
            replicas.append(r)
            if r.slot != 2:
                fail(f"the replacement of slot 2 claimed slot {r.slot}")
            produce(600)
            wait_output("slot 2 replaced within the session timeout")
            time.sleep(SESSION_MS / 1000 + 2)  # past the session timeout: no late rebalance
            got = re.findall(r"assigned tasks \[([\d ]*)\]", r.log())
            if got != [tasks]:
                fail(f"slot 2 had tasks [{tasks}]; its replacement was assigned {got}")
            again = {o.slot: o.log().count("tasks revoked") for o in others}
            if again != revoked:
                fail(f"replacing static member slot-2 rebalanced the others (tasks revoked "
                     f"per slot: {revoked} before, {again} after)")
            print(f"deploy_replicas: slot 2 replaced: same tasks [{tasks}], no rebalance",
                  flush=True)

        for r in list(replicas):
            stop(r)
        wait_output("every replica stopped", seconds=30)
        logs = "".join(open(os.path.join(tmp, f"replica-{i}.err"), errors="replace").read()
                       for i in range(1, n + 1))
        if "continuing after batch" not in logs:
            fail("no task was ever taken over from another replica's checkpoint")
        shutil.rmtree(tmp)
        print("deploy_replicas: ok")
    except BaseException:
        print(f"deploy_replicas: the replicas' stderr is kept in {tmp}", file=sys.stderr)
        raise
    finally:
        for r in replicas:
            try:
                os.killpg(r.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            r.proc.wait()
        if reader:
            reader.close()
        producer = None  # its threads end before the broker goes
        if broker:
            broker.send_signal(signal.SIGTERM)
            try:
                broker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                broker.kill()
                broker.wait()


if __name__ == "__main__":
    main()
