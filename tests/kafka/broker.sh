#!/usr/bin/env bash
# tests/kafka/broker.sh — a real Apache Kafka (KRaft) on 127.0.0.1 for the `kafka` test tier.
#
#   broker.sh fetch                      fetch the broker (tests/kafka/pom.xml) into the cache
#   broker.sh start DIR [--brokers N] [--fresh]
#                                        format KRaft storage under DIR, start N combined
#                                        broker+controller nodes (default 1) on free loopback
#                                        ports, wait until the cluster answers (metadata and a
#                                        transactional producer's InitProducerId), then print
#                                        bootstrap.servers=... (also written to DIR/bootstrap);
#                                        --fresh first stops a cluster left under DIR and
#                                        empties DIR (what the CTest fixture does)
#   broker.sh stop DIR                   stop the nodes started under DIR (by pid: SIGTERM,
#                                        then SIGKILL after 30 s)
#   broker.sh logs DIR                   print the tail of every node's log
#
# The broker is Apache Kafka from Maven Central, run from its jars on the machine's Java 17
# (no distribution tarball: the machines reach Maven Central only). The jars are cached in
# $LK_KAFKA_CACHE (default ~/.cache/lockstep/kafka-<version>), outside the source tree.
# Settings are those a test needs: replication factor 1 for the internal topics (3 with
# --brokers 3), a log cleaner that wakes every 500 ms (topics roll segments by segment.ms) so
# compaction shows within seconds, a fast sweep of timed-out transactions, and a small heap.
set -euo pipefail
here=$(dirname "$(readlink -f "$0")")
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")
cache=${LK_KAFKA_CACHE:-$HOME/.cache/lockstep/kafka-$version}
PY=/usr/bin/python3  # Debian's python3 sees python3-confluent-kafka

die() { echo "broker.sh: $*" >&2; exit 1; }

fetch() {
  [[ -f "$cache/.complete" ]] && return 0
  command -v mvn >/dev/null || die "mvn not found: apt-get install -y maven (./lockstep.sh test does it)"
  command -v java >/dev/null || die "java not found: apt-get install -y default-jre-headless"
  mkdir -p "$cache"
  echo "broker.sh: fetching Apache Kafka $version from Maven Central into $cache" >&2
  mvn -B -q -f "$here/pom.xml" dependency:copy-dependencies -DoutputDirectory="$cache/lib" >&2 ||
    die "could not fetch org.apache.kafka:kafka_2.13:$version with Maven (see its output above)"
  touch "$cache/.complete"
}

free_ports() { # N -> N free TCP ports on 127.0.0.1
  "$PY" - "$1" <<'PYEOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PYEOF
}

# the JVM of every node: a small heap, the serial collector and the client compiler (fast
# start, little memory: the tests move megabytes, not gigabytes)
JAVA=(java -Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$here/log4j2.properties" -cp "$cache/lib/*")

start() {
  local dir=$1; shift
  local n=1 fresh=0
  while [[ $# -gt 0 ]]; do
    case $1 in
      --brokers) [[ $# -ge 2 ]] || die "--brokers needs a number"; n=$2; shift 2 ;;
      --fresh) fresh=1; shift ;;
      *) die "start: unknown option $1" ;;
    esac
  done
  [[ $n =~ ^[0-9]+$ && $n -ge 1 && $n -le 5 ]] || die "--brokers must be 1..5, not $n"
  fetch
  if [[ $fresh -eq 1 && -d "$dir" ]]; then
    stop "$dir"
    rm -rf "${dir:?}"
  fi
  mkdir -p "$dir"
  dir=$(readlink -f "$dir")
  [[ -e "$dir/pids" ]] && die "$dir already has a running cluster (broker.sh stop $dir first)"
  local ports; read -ra ports <<<"$(free_ports $((2 * n)))"
  local voters="" bootstrap="" i
  for ((i = 1; i <= n; i++)); do
    voters+="${voters:+,}$i@127.0.0.1:${ports[$((2 * i - 1))]}"
    bootstrap+="${bootstrap:+,}127.0.0.1:${ports[$((2 * i - 2))]}"
  done
  local rf=$((n >= 3 ? 3 : 1)) isr=$((n >= 3 ? 2 : 1))
  local cid; cid=$("${JAVA[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
  [[ -n "$cid" ]] || die "kafka.tools.StorageTool random-uuid failed (java: $(java -version 2>&1 | head -1))"
  for ((i = 1; i <= n; i++)); do
    local nd="$dir/node-$i"
    mkdir -p "$nd/data"
    cat > "$nd/server.properties" <<PROPS
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:${ports[$((2 * i - 2))]},CONTROLLER://127.0.0.1:${ports[$((2 * i - 1))]}
advertised.listeners=PLAINTEXT://127.0.0.1:${ports[$((2 * i - 2))]}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$nd/data
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=1
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
# timed-out transactions are aborted within a second or two (default: every 10 s)
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
# compaction within seconds: the cleaner wakes often and dirty segments are eligible at once
log.cleaner.backoff.ms=500
log.cleaner.min.compaction.lag.ms=0
log.cleaner.dedupe.buffer.size=8388608
log.retention.check.interval.ms=1000
log.segment.delete.delay.ms=100
file.delete.delay.ms=100
num.io.threads=2
num.network.threads=2
num.replica.fetchers=1
background.threads=2
PROPS
    "${JAVA[@]}" kafka.tools.StorageTool format -t "$cid" -c "$nd/server.properties" \
      >"$nd/format.log" 2>&1 || { cat "$nd/format.log" >&2; die "formatting node $i failed"; }
  done
  for ((i = 1; i <= n; i++)); do
    local nd="$dir/node-$i"
    setsid "${JAVA[@]}" kafka.Kafka "$nd/server.properties" >"$nd/broker.log" 2>&1 </dev/null &
    echo $! >>"$dir/pids"
  done
  echo "$bootstrap" >"$dir/bootstrap"
  if ! "$PY" "$here/wait_ready.py" "$bootstrap" "$n" 120 "$dir/pids"; then
    logs "$dir" >&2
    stop "$dir"
    die "the Kafka cluster under $dir did not become ready (logs above)"
  fi
  echo "bootstrap.servers=$bootstrap"
}

stop() {
  local dir=$1
  [[ -f "$dir/pids" ]] || return 0
  local pids; pids=$(cat "$dir/pids")
  kill -TERM $pids 2>/dev/null || true
  local t
  for ((t = 0; t < 300; t++)); do
    local alive=0 p
    for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
    [[ $alive -eq 0 ]] && break
    sleep 0.1
  done
  kill -KILL $pids 2>/dev/null || true
  rm -f "$dir/pids"
}

logs() {
  local dir=$1 f
  for f in "$dir"/node-*/broker.log; do
    [[ -f "$f" ]] || continue
    echo "----- $f (last 60 lines)"
    tail -n 60 "$f"
  done
}

cmd=${1:-}; [[ $# -gt 0 ]] && shift
case "$cmd" in
  fetch) fetch ;;
  start) [[ $# -ge 1 ]] || die "usage: broker.sh start DIR [--brokers N]"; start "$@" ;;
  stop) [[ $# -eq 1 ]] || die "usage: broker.sh stop DIR"; stop "$1" ;;
  logs) [[ $# -eq 1 ]] || die "usage: broker.sh logs DIR"; logs "$1" ;;
  *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
