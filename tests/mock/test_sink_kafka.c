/*
 * test_sink_kafka.c — the Kafka sink on the mock cluster: exactly-once output checked by
 * an independent read_committed reader (eos.c), provenance headers, progress records,
 * and delivery resuming from the progress topic after a restart.
 */
#define _GNU_SOURCE
#include "eos.h"
#include "lockstep.h"
#include "mockutil.h"
#include "state/store_int.h"
#include "testutil.h"
#include "wc_ops.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mu_cluster_t cl;
static char dir[256];

static void setup(void) {
    mu_start(&cl, 1);
    tu_tmpdir(dir, sizeof dir);
    mu_topic(&cl, "lines", 2);
    mu_topic(&cl, "counts", 3);
    mu_topic(&cl, "wc.progress", 1);
}
static void teardown(void) {
    mu_stop(&cl);
    tu_rmrf(dir);
}
TestSuite(sink_kafka, .init = setup, .fini = teardown, .timeout = 180);

static void define(lk_pipeline_t *p, void *o) {
    (void)o;
    lk_stream_t *words = lk_flat_map(lk_kafka_stream(p, "lines"), "split-words", wc_split_words, NULL);
    lk_stream_t *counts = lk_update_state_by_key(words, "word-counts", 1, wc_add_counts, NULL);
    lk_to_kafka(counts, "counts-out", "counts");
}

static const char *const vocab[] = {"ant", "bee", "cat", "dog", "eel", "fox"};

static void produce(int n, int64_t expected[6], unsigned *seed) {
    for (int i = 0; i < n; i++) {
        char line[64] = "";
        for (int w = 0; w < 3; w++) {
            int k = (int)(rand_r(seed) % 6);
            expected[k]++;
            strcat(line, vocab[k]);
            strcat(line, " ");
        }
        mu_produce(&cl, "lines", i % 2, NULL, line);
    }
    mu_flush(&cl);
}

static lk_conf_t *conf_for(void) {
    lk_conf_t *conf = mu_conf(&cl, "wc", dir);
    mu_set(conf, "max.records.per.partition", "10");
    mu_set(conf, "sink.kafka.timeout.ms", "10000");
    return conf;
}

static void check(const int64_t expected[6], uint64_t batches) {
    eos_report_t r;
    eos_read(cl.bootstraps, "wc", "counts-out", "counts", &r);
    cr_assert_eq(r.no_provenance, 0);
    cr_assert_eq(r.batches, batches, "progress records for %llu batches, expected %llu",
                 (unsigned long long)r.batches, (unsigned long long)batches);
    cr_assert_eq(r.first, 1);
    cr_assert_eq(r.gaps, 0, "no batch lost");
    cr_assert_eq(r.dup_keys, 0, "no key twice in a batch");
    for (int k = 0; k < 6; k++)
        cr_assert_eq(eos_value(&r, vocab[k]), expected[k], "%s: output %lld, input says %lld",
                     vocab[k], (long long)eos_value(&r, vocab[k]), (long long)expected[k]);
}

Test(sink_kafka, delivers_each_batch_once_with_provenance) {
    int64_t expected[6] = {0};
    unsigned seed = 5;
    produce(60, expected, &seed); /* 30 per partition: 3 batches of 10 + 10 */
    lk_conf_t *conf = conf_for();
    char err[1024];
    lk_context_t *ctx = lk_context_get_or_create(conf, define, NULL, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(lk_context_last_batch(ctx), 3);
    lk_context_destroy(ctx);
    check(expected, 3);
    /* the outbox is empty and every batch is fenced */
    lk_store_opts_t o = {.dir = dir, .readonly = 1};
    lk_store_t *s;
    lk_store_txn_t *t;
    cr_assert_eq(lk__store_open(&s, &o, err, sizeof err), LK_OK, "%s", err);
    cr_assert_eq(lk__store_txn_begin(s, 0, &t, err, sizeof err), LK_OK);
    uint64_t first, fence;
    cr_assert_eq(lk__store_outbox_first_batch(t, "counts-out", &first), LK_ERR_NOT_FOUND);
    cr_assert_eq(lk__store_fence_get(t, "counts-out", &fence), LK_OK);
    cr_assert_eq(fence, 3);
    lk__store_txn_abort(t);
    lk__store_close(s);

    /* a restart resumes after the progress topic's last batch */
    produce(20, expected, &seed);
    ctx = lk_context_get_or_create(conf, define, NULL, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    lk_context_destroy(ctx);
    check(expected, 4);
    lk_conf_destroy(conf);
}
