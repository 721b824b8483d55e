#!/bin/sh
# deploy/replica.sh DIR [lockstep run arguments]... — one replica of a scaled-out
# application (group.mode=consumer, README "Scaling out") whose replicas are identical:
# the containers of docker-compose.yml's lockstep-copy service after
# `docker compose up --scale lockstep-copy=3`. It claims the lowest free slot N under DIR
# and becomes (exec, so that lockstep gets the signals and a stop stays graceful)
#
#   lockstep run ARGS... -X checkpoint.dir=DIR/slot-N -X group.instance.id=slot-N
#
# Why slots: the replicas share one command and one volume, and nothing inside a container
# tells them apart for good (Compose passes no replica index, and the hostname is the
# container id, a new one whenever `docker compose up` recreates the container). Yet each
# process needs its own checkpoint.dir (a task checkpoint has one owner at a time) and its
# own group.instance.id (two live members with one id fence each other in turn).
#
# A slot is held by flock(1) on DIR/slot-N.lock through descriptor 9, which lockstep
# inherits: the lock lasts exactly as long as the lockstep process, however it ends
# (SIGKILL included), and a paused process keeps it. So a restarted or recreated container
# takes a free slot, usually its old one (static membership: if that is within
# group.session.timeout.ms its tasks come back without a rebalance), and never the slot of
# a replica that is still there. Taking another replica's old slot is safe too: a task
# whose local checkpoint did not deliver the task's last batch continues from the task's
# last progress record and drops what that checkpoint had not delivered.
#
# Slots of replicas scaled away stay on the volume (small; reused when scaled up again).
# Needs a POSIX sh and flock(1), of util-linux: Essential in Debian, so in the runtime
# image (bookworm-slim) without a package of its own. LOCKSTEP names the binary (default:
# lockstep on PATH), for the tests.
set -eu

if [ $# -lt 1 ] || [ -z "$1" ]; then
    echo "usage: replica.sh DIR [lockstep run arguments]..." >&2
    exit 2
fi
dir=$1
shift
umask 077 # lockstep refuses a checkpoint.dir others can write (dir.allow.shared)
mkdir -p "$dir"

n=0
while :; do
    exec 9>"$dir/slot-$n.lock"
    # -E 75: "held by another replica", told apart from a failure to lock at all (a
    # filesystem without locks), which must stop here rather than claim slot after slot
    if flock -n -E 75 9; then
        break
    else
        rc=$?
    fi
    if [ "$rc" -ne 75 ]; then
        echo "replica.sh: cannot lock $dir/slot-$n.lock (flock exit status $rc)" >&2
        exit 1
    fi
    n=$((n + 1))
    if [ "$n" -ge 1000 ]; then
        echo "replica.sh: the 1000 slots of $dir are all held; is DIR shared by more" \
             "replicas than that?" >&2
        exit 1
    fi
done

echo "replica.sh: slot $n: checkpoint.dir=$dir/slot-$n group.instance.id=slot-$n" >&2
exec "${LOCKSTEP:-lockstep}" run "$@" -X "checkpoint.dir=$dir/slot-$n" \
    -X "group.instance.id=slot-$n"
