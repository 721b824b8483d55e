#!/usr/bin/python3
"""wait_ready.py BOOTSTRAP N TIMEOUT_S PIDFILE — wait until a Kafka cluster started by
broker.sh serves: metadata names N brokers, and a transactional producer completes
InitProducerId (which makes the broker create __transaction_state, the slow part of a
first transaction). Exits 1 when a broker process dies or the time runs out."""
import os
import sys
import time

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

bootstrap, want, timeout, pidfile = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + timeout


def alive():
    for pid in open(pidfile).read().split():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            print(f"wait_ready: broker process {pid} exited", file=sys.stderr)
            return False
    return True


admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
while True:
    if not alive():
        sys.exit(1)
    if time.monotonic() > deadline:
        print(f"wait_ready: no cluster of {want} broker(s) at {bootstrap} after {timeout}s",
              file=sys.stderr)
        sys.exit(1)
    try:
        md = admin.list_topics(timeout=2)
        if len(md.brokers) >= want and md.controller_id >= 0:
            break
    except KafkaException:
        pass
    time.sleep(0.2)

p = Producer({"bootstrap.servers": bootstrap, "transactional.id": "lockstep-wait-ready",
              "log_level": 0})
while True:
    if not alive():
        sys.exit(1)
    left = deadline - time.monotonic()
    if left <= 0:
        print("wait_ready: the transaction coordinator did not answer in time", file=sys.stderr)
        sys.exit(1)
    try:
        p.init_transactions(min(left, 30))
        break
    except KafkaException as e:
        if not e.args[0].retriable():
            print(f"wait_ready: init_transactions: {e}", file=sys.stderr)
            sys.exit(1)
        time.sleep(0.5)
sys.exit(0)
