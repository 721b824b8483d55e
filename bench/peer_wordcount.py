#!/usr/bin/python3
"""peer_wordcount.py — the peer of `lockstep run pipeline=wordcount` in bench/run: the
same exactly-once word count written the way a user would without lockstep, with
confluent_kafka (Debian's python3-confluent-kafka, librdkafka 2.0.2).

  consumer   isolation.level=read_committed, enable.auto.commit=false, assigned every
             partition of the input topic from offset 0 (the mock cluster does not store
             group offsets anyway, see docs/DESIGN.md, "The mock cluster's limits")
  producer   transactional.id, one transaction per batch of --batch messages:
             produce the updated count of every word the batch touched, then
             send_offsets_to_transaction(positions, group metadata), commit
  state      a dict word -> count, in memory

Its recovery story is weaker than lockstep's, and the benchmark does not charge it for
that: the state lives only in this process's memory. Output and input offsets are
committed together (so Kafka never holds half a batch), but after a crash the dict is
gone; the restarted process resumes at the committed offsets with empty counts and
publishes wrong (too small) totals, unless it first rebuilds the dict from a changelog
topic — which it does not have (it would need a compacted changelog written in the same
transaction and replayed on start: the work of a stream processor). lockstep keeps the
state in its checkpoint, committed with the offsets, and recovers it by opening a file.

For bench/run's end-to-end latency case (the input produced live at a fixed rate) three
flags change what it does, none of them by default:
  --commit-ms MS  also end a transaction MS milliseconds after its batch began (like Kafka
                  Streams' commit.interval.ms; 100 under exactly-once), whatever its size
  --copy          forward every input record (key, value, headers) to the output instead of
                  counting words: the same work as `lockstep run pipeline=copy`, whose output
                  records carry the input's value, so that a produce time stamped in the
                  value can be read back from the output of either
  --records N     stop after N records instead of the input's end offsets at start

Prints one JSON line: records, batches, steady_seconds (from the end of the first
batch's commit to the end of the last: librdkafka 2.0.2's ~1 s stall on the first
fetch and first transaction is excluded, as for every case of bench/run), total_seconds.
"""

import argparse
import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--batch", type=int, default=20000, help="messages per transaction")
    ap.add_argument("--txn-id", default="peer-wordcount")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--commit-ms", type=float, default=0,
                    help="also commit a transaction this many ms after its batch began "
                         "(default 0: only by --batch)")
    ap.add_argument("--copy", action="store_true",
                    help="forward each record (key, value, headers) instead of counting")
    ap.add_argument("--records", type=int, default=0,
                    help="stop after this many records (default: the input's end offsets "
                         "at start)")
    ap.add_argument("-X", dest="consumer_conf", action="append", default=[],
                    metavar="KEY=VALUE", help="extra librdkafka property for the consumer")
    a = ap.parse_args()
    extra = {}
    for kv in a.consumer_conf:
        k, sep, v = kv.partition("=")
        if not sep:
            sys.exit(f"peer_wordcount: -X takes KEY=VALUE, not {kv!r}")
        extra[k] = v

    group = a.txn_id
    consumer = Consumer({
        "bootstrap.servers": a.bootstrap,
        "group.id": group,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "log_level": 3,
        **extra,
    })
    producer = Producer({
        "bootstrap.servers": a.bootstrap,
        "transactional.id": a.txn_id,
        "linger.ms": 5,
        "log_level": 3,
    })
    t0 = time.monotonic()
    md = consumer.list_topics(a.input, timeout=10)
    parts = sorted(md.topics[a.input].partitions)
    high = {}
    for p in parts:
        lo, hi = consumer.get_watermark_offsets(TopicPartition(a.input, p), timeout=10)
        high[p] = hi
    expected = a.records or sum(high.values())
    consumer.assign([TopicPartition(a.input, p, 0) for p in parts])
    producer.init_transactions(30)

    counts = {}
    seen = 0
    batches = 0
    t_first = None
    deadline = t0 + a.timeout
    while seen < expected:
        if time.monotonic() > deadline:
            sys.exit(f"peer_wordcount: timed out after {seen} of {expected} records")
        msgs = []
        # with --commit-ms the batch also ends that long after it began
        t_commit = time.monotonic() + a.commit_ms / 1000.0 if a.commit_ms > 0 else None
        while len(msgs) < a.batch and seen + len(msgs) < expected:
            wait = 0.5 if t_commit is None else min(0.5, t_commit - time.monotonic())
            if wait <= 0:
                break
            got = consumer.consume(num_messages=min(10000, a.batch - len(msgs)), timeout=wait)
            for m in got:
                if m.error():
                    raise KafkaException(m.error())
            msgs.extend(got)
            if time.monotonic() > deadline:
                break
        if not msgs:
            continue
        producer.begin_transaction()
        if a.copy:
            for m in msgs:
                produce(producer, a.output, m.key(), m.value(), m.headers())
        else:
            touched = {}
            for m in msgs:
                for w in split_words(m.value()):
                    c = counts.get(w, 0) + 1
                    counts[w] = c
                    touched[w] = c
            for w, c in touched.items():
                produce(producer, a.output, w.encode(), str(c).encode(), None)
        producer.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                             consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(30)
        seen += len(msgs)
        batches += 1
        if t_first is None:
            t_first = time.monotonic()
            first_records = len(msgs)
    t_end = time.monotonic()
    print(json.dumps({"records": seen, "batches": batches, "words": len(counts),
                      "warmup_records": first_records,
                      "steady_seconds": t_end - t_first, "total_seconds": t_end - t0}),
          flush=True)
    consumer.close()


def produce(producer, topic, key, value, headers):
    """Produce one record, waiting for room in librdkafka's queue when it is full."""
    while True:
        try:
            producer.produce(topic, key=key, value=value, headers=headers)
            return
        except BufferError:
            producer.poll(0.05)


def split_words(value):
    """The words of a line, the way a user would split them. bench/run's input is
    lower-case words separated by single spaces, for which this and lockstep's
    tokenizer (letters and digits, lower-cased) agree; a stricter tokenizer in Python
    would only make the peer slower."""
    return value.decode().split()


if __name__ == "__main__":
    main()
