/*
 * bench/raw_consume.c — the ceiling for bench/run: a bare librdkafka consumer that reads
 * every partition of a topic from offset 0 to the high watermark and does nothing with
 * the records. No group membership (assign), no offset commits, read_committed like
 * lockstep's receiver. It prints one JSON line:
 *
 *   {"records":N,"bytes":B,"warmup_records":W,"steady_seconds":S,"total_seconds":T}
 *
 * steady_seconds is measured from the moment the first W records (--warmup) have
 * arrived to the last record, so librdkafka 2.0.2's ~1 s stall on a client's first
 * fetch is excluded, as it is for every case of bench/run.
 *
 *   bench_raw_consume --bootstrap HOST:PORT --topic T [--warmup W] [--timeout-ms MS]
 *                     [-X librdkafka.property=value]...
 *
 * bench/run passes -X queued.min.messages=10000000: with the default (100000) a consumer
 * whose application reads slower than one fetch delivers (every consumer here: one mock
 * fetch brings ~170k of these records) stops fetching at the threshold, and librdkafka
 * 2.0.2 looks at the partition again only at its next one-second wakeup. The ceiling is
 * measured without that stall; the row with librdkafka's defaults is printed beside it.
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
        fprintf(stderr, "bench_raw_consume: %s=%s: %s\n", k, v, err);
        exit(2);
    }
}

int main(int argc, char **argv) {
    const char *bootstrap = NULL, *topic = NULL;
    long long warmup = 0, timeout_ms = 120000;
    const char *extra[32];
    int nextra = 0;
    static const struct option lopts[] = {{"bootstrap", required_argument, NULL, 'b'},
                                          {"topic", required_argument, NULL, 't'},
                                          {"warmup", required_argument, NULL, 'w'},
                                          {"timeout-ms", required_argument, NULL, 'T'},
                                          {"set", required_argument, NULL, 'X'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "hX:", lopts, NULL)) != -1) {
        switch (c) {
        case 'b': bootstrap = optarg; break;
        case 't': topic = optarg; break;
        case 'w': warmup = atoll(optarg); break;
        case 'T': timeout_ms = atoll(optarg); break;
        case 'X':
            if (nextra == (int)(sizeof extra / sizeof *extra) || !strchr(optarg, '=')) {
                fprintf(stderr, "bench_raw_consume: -X takes key=value (at most 32)\n");
                return 2;
            }
            extra[nextra++] = optarg;
            break;
        case 'h':
            printf("usage: %s --bootstrap HOST:PORT --topic T [--warmup W] [--timeout-ms MS]"
                   " [-X librdkafka.key=value]...\n",
                   argv[0]);
            return 0;
        default: return 2;
        }
    }
    if (!bootstrap || !topic) {
        fprintf(stderr, "bench_raw_consume: --bootstrap and --topic are required\n");
        return 2;
    }
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    set(conf, "bootstrap.servers", bootstrap);
    set(conf, "group.id", "bench-raw-consume"); /* assign() needs one; never joined */
    set(conf, "enable.auto.commit", "false");
    set(conf, "enable.auto.offset.store", "false");
    set(conf, "isolation.level", "read_committed");
    set(conf, "enable.partition.eof", "false");
    set(conf, "log_level", "3");
    for (int i = 0; i < nextra; i++) {
        char kv[512];
        snprintf(kv, sizeof kv, "%s", extra[i]);
        char *eq = strchr(kv, '=');
        *eq = 0;
        set(conf, kv, eq + 1);
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "bench_raw_consume: %s\n", err);
        return 1;
    }
    double t0 = now_s();
    const rd_kafka_metadata_t *md;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    rd_kafka_resp_err_t ke = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
    rd_kafka_topic_destroy(rkt);
    if (ke || md->topic_cnt != 1 || md->topics[0].err) {
        fprintf(stderr, "bench_raw_consume: metadata of %s: %s\n", topic,
                rd_kafka_err2str(ke ? ke : md->topics[0].err));
        return 1;
    }
    int np = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    int64_t *hi = calloc((size_t)np, sizeof *hi);
    long long expected = 0;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(np);
    for (int p = 0; p < np; p++) {
        int64_t lo;
        if ((ke = rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi[p], 10000))) {
            fprintf(stderr, "bench_raw_consume: watermarks: %s\n", rd_kafka_err2str(ke));
            return 1;
        }
        expected += hi[p] - lo;
        rd_kafka_topic_partition_list_add(l, topic, p)->offset = lo;
    }
    if ((ke = rd_kafka_assign(rk, l))) {
        fprintf(stderr, "bench_raw_consume: assign: %s\n", rd_kafka_err2str(ke));
        return 1;
    }
    rd_kafka_topic_partition_list_destroy(l);
    long long n = 0, bytes = 0;
    double tw = 0, tlast = 0, deadline = t0 + (double)timeout_ms / 1000.0;
    int left = np;
    int *done = calloc((size_t)np, sizeof *done);
    for (int p = 0; p < np; p++)
        if (hi[p] == 0) {
            done[p] = 1;
            left--;
        }
    while (left > 0) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m) {
            if (now_s() > deadline) {
                fprintf(stderr, "bench_raw_consume: timed out after %lld of %lld records\n", n,
                        expected);
                return 1;
            }
            continue;
        }
        if (m->err) {
            fprintf(stderr, "bench_raw_consume: %s\n", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        n++;
        bytes += (long long)m->len;
        if (n == warmup)
            tw = now_s();
        int p = m->partition;
        if (p >= 0 && p < np && !done[p] && m->offset + 1 >= hi[p]) {
            done[p] = 1;
            left--;
        }
        rd_kafka_message_destroy(m);
    }
    tlast = now_s();
    if (warmup <= 0)
        tw = t0;
    printf("{\"records\":%lld,\"bytes\":%lld,\"warmup_records\":%lld,\"steady_seconds\":%.6f,"
           "\"total_seconds\":%.6f}\n",
           n, bytes, warmup > 0 ? warmup : 0, tlast - tw, tlast - t0);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    free(hi);
    free(done);
    return 0;
}
