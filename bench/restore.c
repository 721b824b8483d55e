/*
 * bench/restore.c — how long does a task's restore of keyed state take (docs/DESIGN.md,
 * Scale-out, the changelog), and does it grow with what it reads only? The real restore
 * (lk__kafka_restore: the Kafka sink's read_committed reader, lk__store_state_apply into
 * one checkpoint transaction, its commit) against an in-process librdkafka mock cluster
 * holding one changelog partition written as the capture writes it (key, envelope
 * [1, updated_ms, 8-byte value], the provenance header, 100 records a batch). Cases, in
 * one run, interleaved round by round (--rounds, medians):
 *   full SMALL   a new checkpoint: state cleared, the partition of SMALL keys read whole
 *   full LARGE   the same with LARGE keys
 *   tail 1000    a checkpoint at batch B of the LARGE partition whose fence recorded the
 *                position of B's end: reads and applies the last 1000 records only
 * Printed: records per second of each, the ratio of the large full restore's rate to the
 * small one's (1.0: linear in the records read) and the tail's time over the large full
 * restore's. The mock keeps about 5 MiB per partition (docs/DESIGN.md, "The mock
 * cluster's limits"): LARGE defaults to 50000 keys; the direction's 1M keys need a real
 * broker (--bootstrap, a topic made by the caller is not needed: this program writes
 * `<app>.counts.changelog` partition 0 and reads it).
 * --json adds one last line for bench/run: {"summary":true, the medians (seconds), the
 * records of each case, "rate_ratio" (large full rate / small full rate), "tail_ratio" (tail
 * time / large full time), "broker"}.
 * --set KEY=VALUE (repeatable) sets a lockstep property of the restoring sink (e.g.
 * kafka.queued.min.messages=10000000 for its reader), for A/B runs.
 *   usage: bench_restore [--small N] [--large N] [--tail N] [--rounds N] [--bootstrap B]
 *                        [--json] [--set KEY=VALUE]...
 */
#define _GNU_SOURCE
#include "lockstep.h"
#include "core/util_int.h"
#include "sink/kafka_priv.h"
#include "state/store_int.h"

#include <ftw.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_ROUNDS 32

/* As cli/mock_broker.c does: librdkafka 2.0.2's mock broker leaves Nagle's algorithm on
 * for the connections it accepts, so a small response waits for the client's delayed ACK
 * (40 ms on Linux) where a real broker (socket.tcp.no.delay) answers at once: every round
 * trip of the restore (offsets, the first fetch) paid it. Interposed on librdkafka's
 * accept() in this executable only. */
int accept(int fd, struct sockaddr *addr, socklen_t *addrlen) {
    int s = accept4(fd, addr, addrlen, 0);
    if (s >= 0) {
        int one = 1;
        (void)setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return s;
}

static const char *bootstraps;
#define MAX_SETS 16
static const char *sets[MAX_SETS];
static int nsets;
static char app[64];

static void die(const char *what, const char *why) {
    fprintf(stderr, "bench_restore: %s: %s\n", what, why);
    exit(1);
}

/* n records of keys k0..k(n-1) in batches of 100 to partition 0 of topic. */
static void write_changelog(const char *topic, long n) {
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "bootstrap.servers", bootstraps, err, sizeof err);
    rd_kafka_conf_set(c, "linger.ms", "5", err, sizeof err);
    rd_kafka_conf_set(c, "log_level", "3", err, sizeof err);
    rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
    if (!p)
        die("producer", err);
    for (long i = 0; i < n; i++) {
        char key[24], prov[256];
        int kl = snprintf(key, sizeof key, "k%ld", i);
        /* [1, updated_ms, bin8(8 bytes)]: 3 + 4 + 2 + 8 bytes */
        unsigned char env[17] = {0x93, 0x01, 0xce, 0, 0, 0, 1, 0xc4, 0x08};
        int64_t v = i;
        memcpy(env + 9, &v, sizeof v);
        size_t pl = lk__prov_format(prov, sizeof prov, (uint64_t)(i / 100 + 1),
                                    "0123456789abcdef", app, "counts");
        rd_kafka_headers_t *h = rd_kafka_headers_new(1);
        rd_kafka_header_add(h, LK__PROV_HEADER, -1, prov, (ssize_t)pl);
        rd_kafka_resp_err_t e;
        while ((e = rd_kafka_producev(p, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(0),
                                      RD_KAFKA_V_KEY(key, (size_t)kl),
                                      RD_KAFKA_V_VALUE(env, sizeof env), RD_KAFKA_V_HEADERS(h),
                                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                      RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(p, 10);
        if (e)
            die("produce", rd_kafka_err2str(e));
    }
    if (rd_kafka_flush(p, 60000))
        die("flush", "timed out");
    rd_kafka_destroy(p);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *f) {
    (void)st, (void)flag, (void)f;
    return remove(path);
}

/* One restore into a fresh checkpoint: full, or (tail_from >= 0) a tail after batch
 * `after` from that offset. Seconds; *applied the records applied. */
static double restore_once(const char *topic, long after, int64_t tail_from, uint64_t *applied) {
    char dir[] = "/tmp/bench_restore.XXXXXX", err[1024];
    const char *tmp = getenv("TMPDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/bench_restore.XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    char *d = mkdtemp(tmp && tmp[0] ? path : dir);
    if (!d)
        die("mkdtemp", "failed");
    lk__store_opts_t o = {.dir = d, .app_id = app, .map_size = 64 << 20, .batch_history = 10};
    lk__store_t *store;
    lk__state_db_t db;
    if (lk__store_open(&store, &o, err, sizeof err) ||
        lk__store_state_open(store, "counts", &db, err, sizeof err))
        die("store", err);
    lk__store_txn_t *t;
    if (tail_from >= 0) { /* a checkpoint exactly at its last delivered batch */
        lk__range_t r = {"in", 0, 0, 1};
        lk__batch_rec_t b = {.id = (uint64_t)after, .batch_time_ms = 1, .nranges = 1,
                             .ranges = &r};
        if (lk__store_txn_begin(store, 1, &t, err, sizeof err) ||
            lk__store_batch_put(t, &b, err, sizeof err) ||
            lk__store_fence_put_offset(t, "counts", (uint64_t)after, tail_from, err,
                                       sizeof err) ||
            lk__store_txn_commit(t, err, sizeof err))
            die("checkpoint", err);
    }
    lk_conf_t *conf = lk_conf_new();
    if (lk_conf_set(conf, "app.id", app, err, sizeof err) != LK_CONF_OK ||
        lk_conf_set(conf, "kafka.bootstrap.servers", bootstraps, err, sizeof err) !=
            LK_CONF_OK ||
        lk_conf_set(conf, "kafka.log_level", "3", err, sizeof err) != LK_CONF_OK)
        die("conf", err);
    for (int i = 0; i < nsets; i++) {
        char kv[512];
        snprintf(kv, sizeof kv, "%s", sets[i]);
        char *eq = strchr(kv, '=');
        if (!eq)
            die("--set", "KEY=VALUE expected");
        *eq = 0;
        if (lk_conf_set(conf, kv, eq + 1, err, sizeof err) != LK_CONF_OK)
            die("--set", err);
    }
    lk__sink_t *s = lk__sink_new(&lk__sink_kafka_ops, "counts", topic, NULL, app);
    if (!s || !(s->members[0].changelog_of = strdup("counts")))
        die("sink", "out of memory");
    s->task = 0;
    s->handoff_batch = UINT64_MAX;
    if (s->ops->open(s, conf, err, sizeof err))
        die("sink open", err);
    int64_t t0 = lk__mono_ns();
    if (lk__store_txn_begin(store, 1, &t, err, sizeof err) ||
        lk__kafka_restore(s, store, t, err, sizeof err) ||
        lk__store_txn_commit(t, err, sizeof err))
        die("restore", err);
    double secs = (double)(lk__mono_ns() - t0) / 1e9;
    *applied = s->restore.applied;
    lk__sink_destroy(s);
    lk_conf_destroy(conf);
    lk__store_close(store);
    nftw(d, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return secs;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv) {
    long small = 5000, large = 50000, tail = 1000;
    int rounds = 3, json = 0;
    static const struct option opts[] = {{"small", 1, 0, 's'}, {"large", 1, 0, 'l'},
                                         {"tail", 1, 0, 't'},  {"rounds", 1, 0, 'r'},
                                         {"bootstrap", 1, 0, 'b'}, {"json", 0, 0, 'j'},
                                         {"set", 1, 0, 'S'}, {0, 0, 0, 0}};
    for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        if (c == 's')
            small = atol(optarg);
        else if (c == 'l')
            large = atol(optarg);
        else if (c == 't')
            tail = atol(optarg);
        else if (c == 'r')
            rounds = atoi(optarg);
        else if (c == 'b')
            bootstraps = optarg;
        else if (c == 'j')
            json = 1;
        else if (c == 'S' && nsets < MAX_SETS)
            sets[nsets++] = optarg;
        else {
            fprintf(stderr, "usage: %s [--small N] [--large N] [--tail N] [--rounds N] "
                            "[--bootstrap B] [--json] [--set KEY=VALUE]...\n", argv[0]);
            return 2;
        }
    }
    if (small < 100 || large < small || tail < 100 || tail > large || rounds < 1 ||
        rounds > MAX_ROUNDS) {
        fprintf(stderr, "bench_restore: need 100 <= small <= large, 100 <= tail <= large, "
                        "1 <= rounds <= %d\n", MAX_ROUNDS);
        return 2;
    }
    lk__log_default_level = LK_LOG_WARNING;
    snprintf(app, sizeof app, "bench-restore-%d", (int)getpid());
    rd_kafka_t *mrk = NULL;
    rd_kafka_mock_cluster_t *mc = NULL;
    if (!bootstraps) {
        char err[512];
        rd_kafka_conf_t *c = rd_kafka_conf_new();
        rd_kafka_conf_set(c, "log_level", "3", err, sizeof err);
        if (!(mrk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err)) ||
            !(mc = rd_kafka_mock_cluster_new(mrk, 1)))
            die("mock cluster", err);
        bootstraps = rd_kafka_mock_cluster_bootstraps(mc);
    }
    char tsmall[128], tlarge[128];
    snprintf(tsmall, sizeof tsmall, "%s.counts.changelog", app);
    snprintf(tlarge, sizeof tlarge, "%s-l.counts.changelog", app);
    if (mc) {
        rd_kafka_mock_topic_create(mc, tsmall, 1, 1);
        rd_kafka_mock_topic_create(mc, tlarge, 1, 1);
    }
    write_changelog(tsmall, small);
    write_changelog(tlarge, large);
    /* the tail: a checkpoint at the batch that ends `tail` records before the end */
    long after = (large - tail) / 100;
    int64_t from = (int64_t)after * 100;
    double fs[MAX_ROUNDS], fl[MAX_ROUNDS], tl[MAX_ROUNDS];
    uint64_t as = 0, al = 0, at = 0;
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < 3; k++) /* rotating order: noise hits each case alike */
            switch ((k + r) % 3) {
            case 0: fs[r] = restore_once(tsmall, 0, -1, &as); break;
            case 1: fl[r] = restore_once(tlarge, 0, -1, &al); break;
            default: tl[r] = restore_once(tlarge, after, from, &at); break;
            }
        printf("round %d: full %ld %.3f s, full %ld %.3f s, tail %llu %.4f s\n", r + 1, small,
               fs[r], large, fl[r], (unsigned long long)at, tl[r]);
    }
    if ((long)as != small || (long)al != large || (long)at != large - from)
        die("check", "a restore applied another number of records than written");
    double ms = median(fs, rounds), ml = median(fl, rounds), mt = median(tl, rounds);
    printf("\nrestore (medians of %d rounds, %s):\n", rounds, mc ? "mock cluster" : bootstraps);
    printf("  full %-8ld %8.3f s  %10.0f records/s\n", small, ms, small / ms);
    printf("  full %-8ld %8.3f s  %10.0f records/s\n", large, ml, large / ml);
    printf("  tail %-8llu %8.4f s  %10.0f records/s\n", (unsigned long long)at, mt, at / mt);
    printf("  rate full %ld / full %ld: %.2fx (1.0: linear in the records read)\n", large,
           small, (large / ml) / (small / ms));
    printf("  time tail %llu / full %ld: %.3fx (records ratio %.3f)\n", (unsigned long long)at,
           large, mt / ml, (double)at / (double)large);
    if (json)
        printf("{\"summary\":true,\"rounds\":%d,\"small\":%ld,\"large\":%ld,\"tail\":%llu,"
               "\"small_s\":%.6f,\"large_s\":%.6f,\"tail_s\":%.6f,\"rate_ratio\":%.4f,"
               "\"tail_ratio\":%.6f,\"broker\":\"%s\"}\n",
               rounds, small, large, (unsigned long long)at, ms, ml, mt,
               (large / ml) / (small / ms), mt / ml, mc ? "mock" : "bootstrap");
    if (mc)
        rd_kafka_mock_cluster_destroy(mc);
    if (mrk)
        rd_kafka_destroy(mrk);
    return 0;
}
