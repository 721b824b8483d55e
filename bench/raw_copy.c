/*
 * bench/raw_copy.c — the "raw copy" baseline of bench/run: a bare librdkafka consume ->
 * produce loop without transactions, at-least-once, the way a user would copy a topic
 * without lockstep. lockstep copy's ratio to it is the price of exactly-once (issue 18).
 *
 * Consumer: like bench_raw_consume (assign every partition of --input from its low
 * watermark, no group membership, read_committed), tuned with -X (bench/run passes
 * queued.min.messages=10000000, see raw_consume.c). Producer: librdkafka's defaults
 * (acks=all, linger.ms=5), no idempotence, no transactions; each record goes to the same
 * partition of --output as it came from (modulo the output's partition count), value
 * copied as lockstep's sink copies it, no headers. At-least-once: a record's input
 * offset is committed for group --group only after its delivery report said it was
 * delivered (per partition the reports come in order), asynchronously, once a second —
 * as Kafka Connect commits offsets after flushing. A crash repeats what was delivered
 * after the last commit; nothing is lost.
 *
 * It prints one JSON line:
 *
 *   {"records":N,"delivered":D,"warmup_records":W,"steady_seconds":S,"total_seconds":T}
 *
 * steady_seconds runs from the moment the first W records (--warmup) were consumed to the
 * last delivery report, so librdkafka 2.0.2's ~1 s stall on a client's first fetch is
 * excluded, as for every case of bench/run. Exit status 1 when a record was not delivered.
 *
 *   bench_raw_copy --bootstrap HOST:PORT --input T --output T [--warmup W] [--group G]
 *                  [--timeout-ms MS] [-X consumer.property=value]...
 */
#define _GNU_SOURCE
#include <librdkafka/rdkafka.h>

#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void set(rd_kafka_conf_t *c, const char *k, const char *v) {
    char err[512];
    if (rd_kafka_conf_set(c, k, v, err, sizeof err) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "bench_raw_copy: %s=%s: %s\n", k, v, err);
        exit(2);
    }
}

/* Delivery bookkeeping, on the thread that polls the producer (this one). */
static struct {
    long long delivered, failed;
    int np;             /* input partitions */
    int64_t *done_next; /* per input partition: the offset after the last delivered record */
    int dirty;          /* done_next moved since the last commit */
    char first_err[256];
    double t_last;
} dr;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    (void)opaque;
    /* the input partition and offset ride in the message's opaque: partition in the low
     * 8 bits (bench topics have at most 256 partitions), offset above */
    uintptr_t o = (uintptr_t)m->_private;
    int p = (int)(o & 0xff);
    int64_t off = (int64_t)(o >> 8);
    if (m->err) {
        if (!dr.failed++)
            snprintf(dr.first_err, sizeof dr.first_err, "%s", rd_kafka_err2str(m->err));
        return;
    }
    dr.delivered++;
    dr.t_last = now_s();
    if (p < dr.np && off + 1 > dr.done_next[p]) {
        dr.done_next[p] = off + 1;
        dr.dirty = 1;
    }
}

/* Commit the delivered input offsets (asynchronously: at-least-once needs no wait). */
static void commit_delivered(rd_kafka_t *consumer, const char *topic) {
    if (!dr.dirty)
        return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(dr.np);
    for (int p = 0; p < dr.np; p++)
        if (dr.done_next[p] > 0)
            rd_kafka_topic_partition_list_add(l, topic, p)->offset = dr.done_next[p];
    (void)rd_kafka_commit(consumer, l, 1);
    rd_kafka_topic_partition_list_destroy(l);
    dr.dirty = 0;
}

int main(int argc, char **argv) {
    const char *bootstrap = NULL, *in = NULL, *out = NULL, *group = "bench-raw-copy";
    long long warmup = 0, timeout_ms = 120000;
    const char *extra[32];
    int nextra = 0;
    static const struct option lopts[] = {{"bootstrap", required_argument, NULL, 'b'},
                                          {"input", required_argument, NULL, 'i'},
                                          {"output", required_argument, NULL, 'o'},
                                          {"group", required_argument, NULL, 'g'},
                                          {"warmup", required_argument, NULL, 'w'},
                                          {"timeout-ms", required_argument, NULL, 'T'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "hX:", lopts, NULL)) != -1) {
        switch (c) {
        case 'b': bootstrap = optarg; break;
        case 'i': in = optarg; break;
        case 'o': out = optarg; break;
        case 'g': group = optarg; break;
        case 'w': warmup = atoll(optarg); break;
        case 'T': timeout_ms = atoll(optarg); break;
        case 'X':
            if (nextra == (int)(sizeof extra / sizeof *extra) || !strchr(optarg, '=')) {
                fprintf(stderr, "bench_raw_copy: -X takes key=value (at most 32)\n");
                return 2;
            }
            extra[nextra++] = optarg;
            break;
        case 'h':
            printf("usage: %s --bootstrap HOST:PORT --input T --output T [--warmup W] "
                   "[--group G] [--timeout-ms MS] [-X consumer.key=value]...\n",
                   argv[0]);
            return 0;
        default: return 2;
        }
    }
    if (!bootstrap || !in || !out) {
        fprintf(stderr, "bench_raw_copy: --bootstrap, --input and --output are required\n");
        return 2;
    }
    char err[512];
    rd_kafka_conf_t *cc = rd_kafka_conf_new();
    set(cc, "bootstrap.servers", bootstrap);
    set(cc, "group.id", group); /* offsets committed for it; assign(), never joined */
    set(cc, "enable.auto.commit", "false");
    set(cc, "enable.auto.offset.store", "false");
    set(cc, "isolation.level", "read_committed");
    set(cc, "enable.partition.eof", "false");
    set(cc, "log_level", "3");
    for (int i = 0; i < nextra; i++) {
        char kv[512];
        snprintf(kv, sizeof kv, "%s", extra[i]);
        char *eq = strchr(kv, '=');
        *eq = 0;
        set(cc, kv, eq + 1);
    }
    rd_kafka_t *consumer = rd_kafka_new(RD_KAFKA_CONSUMER, cc, err, sizeof err);
    if (!consumer) {
        fprintf(stderr, "bench_raw_copy: consumer: %s\n", err);
        return 1;
    }
    rd_kafka_conf_t *pc = rd_kafka_conf_new();
    set(pc, "bootstrap.servers", bootstrap);
    set(pc, "log_level", "3");
    set(pc, "queue.buffering.max.messages", "1000000");
    rd_kafka_conf_set_dr_msg_cb(pc, on_delivery);
    rd_kafka_t *producer = rd_kafka_new(RD_KAFKA_PRODUCER, pc, err, sizeof err);
    if (!producer) {
        fprintf(stderr, "bench_raw_copy: producer: %s\n", err);
        return 1;
    }
    double t0 = now_s();
    int np = 0, nout = 0;
    for (int which = 0; which < 2; which++) {
        const char *topic = which ? out : in;
        const rd_kafka_metadata_t *md;
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(consumer, topic, NULL);
        rd_kafka_resp_err_t ke = rd_kafka_metadata(consumer, 0, rkt, &md, 10000);
        rd_kafka_topic_destroy(rkt);
        if (ke || md->topic_cnt != 1 || md->topics[0].err) {
            fprintf(stderr, "bench_raw_copy: metadata of %s: %s\n", topic,
                    rd_kafka_err2str(ke ? ke : md->topics[0].err));
            return 1;
        }
        *(which ? &nout : &np) = md->topics[0].partition_cnt;
        rd_kafka_metadata_destroy(md);
    }
    if (np > 256 || nout < 1) {
        fprintf(stderr, "bench_raw_copy: %s has %d partitions (at most 256), %s %d\n", in, np,
                out, nout);
        return 1;
    }
    dr.np = np;
    dr.done_next = calloc((size_t)np, sizeof *dr.done_next);
    int64_t *hi = calloc((size_t)np, sizeof *hi);
    int *done = calloc((size_t)np, sizeof *done);
    long long expected = 0;
    int left = np;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(np);
    for (int p = 0; p < np; p++) {
        int64_t lo;
        rd_kafka_resp_err_t ke;
        if ((ke = rd_kafka_query_watermark_offsets(consumer, in, p, &lo, &hi[p], 10000))) {
            fprintf(stderr, "bench_raw_copy: watermarks: %s\n", rd_kafka_err2str(ke));
            return 1;
        }
        expected += hi[p] - lo;
        if (hi[p] == lo) {
            done[p] = 1;
            left--;
        }
        rd_kafka_topic_partition_list_add(l, in, p)->offset = lo;
    }
    if (rd_kafka_assign(consumer, l)) {
        fprintf(stderr, "bench_raw_copy: assign failed\n");
        return 1;
    }
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_topic_t *otopic = rd_kafka_topic_new(producer, out, NULL);
    long long n = 0;
    double tw = 0, deadline = t0 + (double)timeout_ms / 1000.0, next_commit = now_s() + 1.0;
    while (left > 0) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 100);
        double t = now_s();
        (void)rd_kafka_poll(producer, 0); /* serve delivery reports */
        if (t >= next_commit) {
            commit_delivered(consumer, in);
            next_commit = t + 1.0;
        }
        if (!m) {
            if (t > deadline) {
                fprintf(stderr, "bench_raw_copy: timed out after %lld of %lld records\n", n,
                        expected);
                return 1;
            }
            continue;
        }
        if (m->err) {
            fprintf(stderr, "bench_raw_copy: %s\n", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        int p = m->partition;
        void *opaque = (void *)(((uintptr_t)m->offset << 8) | (uintptr_t)(p & 0xff));
        while (rd_kafka_produce(otopic, p % nout, RD_KAFKA_MSG_F_COPY, m->payload, m->len,
                                NULL, 0, opaque) == -1) {
            rd_kafka_resp_err_t pe = rd_kafka_last_error();
            if (pe != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                fprintf(stderr, "bench_raw_copy: produce: %s\n", rd_kafka_err2str(pe));
                return 1;
            }
            rd_kafka_poll(producer, 10);
        }
        n++;
        if (n == warmup)
            tw = now_s();
        if (p >= 0 && p < np && !done[p] && m->offset + 1 >= hi[p]) {
            done[p] = 1;
            left--;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_resp_err_t fe = rd_kafka_flush(producer, (int)timeout_ms);
    commit_delivered(consumer, in);
    if (warmup <= 0)
        tw = t0;
    printf("{\"records\":%lld,\"delivered\":%lld,\"warmup_records\":%lld,"
           "\"steady_seconds\":%.6f,\"total_seconds\":%.6f}\n",
           n, dr.delivered, warmup > 0 ? warmup : 0, dr.t_last - tw, dr.t_last - t0);
    int rc = 0;
    if (fe || dr.failed || dr.delivered != n) {
        fprintf(stderr, "bench_raw_copy: %lld of %lld records delivered, %lld failed%s%s%s\n",
                dr.delivered, n, dr.failed, dr.failed ? " (first: " : "", dr.first_err,
                dr.failed ? ")" : "");
        rc = 1;
    }
    rd_kafka_topic_destroy(otopic);
    rd_kafka_destroy(producer);
    rd_kafka_consumer_close(consumer);
    rd_kafka_destroy(consumer);
    free(hi);
    free(done);
    free(dr.done_next);
    return rc;
}
