/*
 * test_driver.c — the receiver and the batch driver against the mock cluster: exact and
 * capped ranges, resume at committed offsets with state intact, state exact across
 * many restarts, topology checks, accumulators across restarts.
 */
#define _GNU_SOURCE
#include "lockstep.h"
#include "wc_ops.h"
#include "mockutil.h"
#include "state/store_int.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static mu_cluster_t cl;
static char dir[256], outdir[256];

static void setup(void) {
    mu_start(&cl, 1);
    tu_tmpdir(dir, sizeof dir);
    tu_tmpdir(outdir, sizeof outdir);
}
static void teardown(void) {
    mu_stop(&cl);
    tu_rmrf(dir);
    tu_rmrf(outdir);
}
TestSuite(driver, .init = setup, .fini = teardown, .timeout = 120);

/* ---- a word count, with everything the tests observe ---- */

typedef struct {
    uint64_t seen;      /* records reaching foreach_batch (input records) */
    uint64_t batches;   /* foreach_batch calls */
    int schema_version; /* of the counts operator */
    int extra_operator; /* adds a new stateful operator (upgrade) */
    int drop_counts;    /* removes the counts operator */
} wc_t;

static void count_input(lk_batch_t *b, const lk_record_t *recs, size_t n, void *opaque) {
    (void)b;
    (void)recs;
    wc_t *wc = opaque;
    wc->seen += n;
    wc->batches++;
}

static void define_wc(lk_pipeline_t *p, void *opaque) {
    wc_t *wc = opaque;
    lk_stream_t *lines = lk_kafka_stream(p, "lines");
    lk_foreach_batch(lines, "observe-input", count_input, wc);
    lk_stream_t *words = lk_flat_map(lines, "split-words", wc_split_words, NULL);
    if (!wc->drop_counts) {
        lk_stream_t *counts = lk_update_state_by_key(
            words, "word-counts", wc->schema_version ? wc->schema_version : 1, wc_add_counts, NULL);
        lk_to_files(counts, "counts-out", outdir, "jsonl");
    }
    if (wc->extra_operator)
        lk_update_state_by_key(words, "word-counts-v2", 1, wc_add_counts, NULL);
}

static lk_context_t *open_wc(lk_conf_t *conf, wc_t *wc) {
    char err[1024];
    lk_context_t *ctx = lk_context_get_or_create(conf, define_wc, wc, err, sizeof err);
    cr_assert_not_null(ctx, "get_or_create: %s", err);
    return ctx;
}

/* Read word-counts state directly from the checkpoint. */
static int64_t state_count(const char *word) {
    lk__store_opts_t o = {.dir = dir, .readonly = 1};
    lk__store_t *s;
    char err[512];
    cr_assert_eq(lk__store_open(&s, &o, err, sizeof err), LK_OK, "%s", err);
    lk__state_db_t db;
    cr_assert_eq(lk__store_state_open(s, "word-counts", &db, err, sizeof err), LK_OK, "%s", err);
    lk__store_txn_t *t;
    cr_assert_eq(lk__store_txn_begin(s, 0, &t, err, sizeof err), LK_OK);
    const void *v;
    size_t vl;
    int64_t c = 0;
    if (lk__store_state_get(t, db, word, strlen(word), &v, &vl, NULL) == LK_OK) {
        cr_assert_eq(vl, sizeof c);
        memcpy(&c, v, sizeof c);
    }
    lk__store_txn_abort(t);
    lk__store_close(s);
    return c;
}

static lk__batch_rec_t last_batch(lk__store_t **sp, lk__store_txn_t **tp) {
    lk__store_opts_t o = {.dir = dir, .readonly = 1};
    char err[512];
    cr_assert_eq(lk__store_open(sp, &o, err, sizeof err), LK_OK, "%s", err);
    cr_assert_eq(lk__store_txn_begin(*sp, 0, tp, err, sizeof err), LK_OK);
    lk__batch_rec_t b;
    cr_assert_eq(lk__store_batch_last(*tp, &b), LK_OK);
    return b;
}

static const char *const vocab[] = {"alpha", "beta", "gamma", "delta", "epsilon",
                                    "zeta",  "eta",  "theta", "iota",  "kappa"};

/* Produce n lines over `parts` partitions; adds the words to expected[]. */
static void produce_lines(int n, int parts, int64_t expected[10], unsigned *seed) {
    for (int i = 0; i < n; i++) {
        char line[128] = "";
        int words = 1 + (int)(rand_r(seed) % 4);
        for (int w = 0; w < words; w++) {
            int k = (int)(rand_r(seed) % 10);
            /* skew: a third of the words are "alpha" */
            if (rand_r(seed) % 3 == 0)
                k = 0;
            expected[k]++;
            strcat(line, vocab[k]);
            strcat(line, " ");
        }
        mu_produce(&cl, "lines", i % parts, NULL, line);
    }
    mu_flush(&cl);
}

Test(driver, ranges_are_exact_and_capped) {
    mu_topic(&cl, "lines", 2);
    int64_t expected[10] = {0};
    unsigned seed = 1;
    produce_lines(500, 2, expected, &seed); /* 250 per partition */
    lk_conf_t *conf = mu_conf(&cl, "ranges", dir);
    mu_set(conf, "max.records.per.partition", "100");
    wc_t wc = {0};
    lk_context_t *ctx = open_wc(conf, &wc);
    int64_t want_until[] = {100, 200, 250};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
        cr_assert_eq(lk_context_last_batch(ctx), (uint64_t)i + 1);
        lk__store_t *s;
        lk__store_txn_t *t;
        lk__batch_rec_t b = last_batch(&s, &t);
        cr_assert_eq(b.nranges, 2);
        for (size_t r = 0; r < 2; r++) {
            cr_assert_str_eq(b.ranges[r].topic, "lines");
            cr_assert_eq(b.ranges[r].partition, (int32_t)r);
            cr_assert_eq(b.ranges[r].from, i ? want_until[i - 1] : 0);
            cr_assert_eq(b.ranges[r].until, want_until[i], "batch %d partition %zu until %" PRId64,
                         i + 1, r, b.ranges[r].until);
            int64_t off;
            cr_assert_eq(lk__store_offset_get(t, "lines", (int32_t)r, &off), LK_OK);
            cr_assert_eq(off, want_until[i]);
        }
        cr_assert_eq(b.records_in, (uint64_t)(want_until[i] - (i ? want_until[i - 1] : 0)) * 2);
        lk__store_txn_abort(t);
        lk__store_close(s);
    }
    cr_assert_eq(wc.seen, 500);
    /* nothing new: an idle batch commits nothing */
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(lk_context_last_batch(ctx), 3);
    cr_assert_eq(wc.seen, 500);
    for (int k = 0; k < 10; k++)
        cr_assert_eq(state_count(vocab[k]), expected[k], "%s", vocab[k]);
    int64_t lines;
    cr_assert_eq(lk_context_accumulator(ctx, "lines", &lines), LK_OK);
    cr_assert_eq(lines, 500);
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

Test(driver, state_exact_across_20_restarts) {
    mu_topic(&cl, "lines", 3);
    int64_t expected[10] = {0};
    unsigned seed = 7;
    lk_conf_t *conf = mu_conf(&cl, "restarts", dir);
    mu_set(conf, "max.records.per.partition", "37");
    uint64_t last = 0;
    for (int round = 0; round < 20; round++) {
        produce_lines(60 + round * 7, 3, expected, &seed);
        wc_t wc = {0};
        lk_context_t *ctx = open_wc(conf, &wc);
        cr_assert_eq(lk_context_last_batch(ctx), last, "resumes at the committed batch");
        /* run part of the backlog only: restarts happen mid-stream */
        int batches = 1 + round % 3;
        for (int i = 0; i < batches; i++)
            cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
        last = lk_context_last_batch(ctx);
        lk_context_destroy(ctx);
    }
    /* drain */
    wc_t wc = {0};
    lk_context_t *ctx = open_wc(conf, &wc);
    for (int i = 0; i < 200 && lk_context_last_batch(ctx) != last + 0 + (uint64_t)-1; i++) {
        uint64_t before = lk_context_last_batch(ctx);
        cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
        if (lk_context_last_batch(ctx) == before)
            break; /* idle: everything read */
    }
    int64_t lines;
    cr_assert_eq(lk_context_accumulator(ctx, "lines", &lines), LK_OK);
    int64_t total_lines = 0;
    for (int r = 0; r < 20; r++)
        total_lines += 60 + r * 7;
    cr_assert_eq(lines, total_lines, "accumulator exact across restarts");
    lk_context_destroy(ctx);
    for (int k = 0; k < 10; k++)
        cr_assert_eq(state_count(vocab[k]), expected[k], "%s: state %" PRId64 " expected %" PRId64,
                     vocab[k], state_count(vocab[k]), expected[k]);
    lk_conf_destroy(conf);
}

Test(driver, topology_changes) {
    mu_topic(&cl, "lines", 1);
    int64_t expected[10] = {0};
    unsigned seed = 3;
    produce_lines(20, 1, expected, &seed);
    lk_conf_t *conf = mu_conf(&cl, "topo", dir);
    wc_t wc = {0};
    lk_context_t *ctx = open_wc(conf, &wc);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    lk_context_destroy(ctx);
    uint64_t digest = tu_dir_digest(dir);

    char err[1024];
    wc_t v2 = {.schema_version = 2};
    cr_assert_null(lk_context_get_or_create(conf, define_wc, &v2, err, sizeof err));
    cr_assert(strstr(err, "'word-counts'") && strstr(err, "v1 to v2"), "%s", err);

    wc_t gone = {.drop_counts = 1};
    cr_assert_null(lk_context_get_or_create(conf, define_wc, &gone, err, sizeof err));
    cr_assert(strstr(err, "'word-counts'") && strstr(err, "topology.allow.state.drop"), "%s", err);
    cr_assert_eq(tu_dir_digest(dir), digest, "a refused start leaves the checkpoint untouched");

    /* a new operator is fine and starts empty; the old state is kept */
    wc_t up = {.extra_operator = 1};
    ctx = open_wc(conf, &up);
    produce_lines(5, 1, expected, &seed);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    lk_context_destroy(ctx);
    for (int k = 0; k < 10; k++)
        cr_assert_eq(state_count(vocab[k]), expected[k]);
    lk_conf_destroy(conf);
}

Test(driver, bytes_cap_ends_ranges_where_fetching_stopped) {
    mu_topic(&cl, "lines", 2);
    static char v[200];
    memset(v, 'b', sizeof v - 1);
    for (int i = 0; i < 40; i++)
        mu_produce(&cl, "lines", i % 2, NULL, v);
    mu_flush(&cl);
    lk_conf_t *conf = mu_conf(&cl, "bytes", dir);
    mu_set(conf, "max.bytes.per.batch", "2K"); /* ~10 records of 199 bytes */
    wc_t wc = {0};
    lk_context_t *ctx = open_wc(conf, &wc);
    uint64_t prev_seen = 0;
    int batches = 0;
    while (wc.seen < 40 && batches < 40) {
        cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
        batches++;
        uint64_t n = wc.seen - prev_seen;
        prev_seen = wc.seen;
        /* the batch stops once the cap is reached: at most one record beyond it per
         * partition can be in flight when the cap is crossed */
        cr_assert(n >= 1 && n <= 12, "batch %d read %llu records", batches, (unsigned long long)n);
        lk__store_t *s;
        lk__store_txn_t *t;
        lk__batch_rec_t b = last_batch(&s, &t);
        cr_assert_eq(b.records_in, n, "recorded ranges hold exactly what was processed");
        uint64_t span = 0;
        for (size_t r = 0; r < b.nranges; r++)
            span += (uint64_t)(b.ranges[r].until - b.ranges[r].from);
        cr_assert_eq(span, n);
        lk__store_txn_abort(t);
        lk__store_close(s);
    }
    cr_assert_eq(wc.seen, 40, "everything read exactly once");
    cr_assert_geq(batches, 4);
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

Test(driver, crashed_batch_is_replayed_with_its_recorded_plan) {
    const char *runner = getenv("LK_WC_RUNNER");
    cr_assert_not_null(runner, "LK_WC_RUNNER is not set (run through ctest)");
    mu_topic(&cl, "lines", 2);
    int64_t expected[10] = {0};
    unsigned seed = 11;
    produce_lines(60, 2, expected, &seed); /* the runner reads 20 per partition per batch */
    /* batch 1 commits; batch 2 is killed mid-processing, after its plan was recorded */
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "LOCKSTEP_FAULTPOINT=mid-processing@2 '%s' '%s' '%s' 0 >/dev/null 2>&1", runner,
             cl.bootstraps, dir);
    int st = system(cmd);
    cr_assert(WIFSIGNALED(st) || (WIFEXITED(st) && WEXITSTATUS(st) == 128 + 9) ||
                  (WIFEXITED(st) && WEXITSTATUS(st) == 137),
              "runner should die at the fault point (status %d)", st);
    lk__store_opts_t o = {.dir = dir, .readonly = 1};
    lk__store_t *s;
    lk__store_txn_t *t;
    char err[512];
    cr_assert_eq(lk__store_open(&s, &o, err, sizeof err), LK_OK, "%s", err);
    cr_assert_eq(lk__store_txn_begin(s, 0, &t, err, sizeof err), LK_OK);
    lk__batch_rec_t plan, last;
    cr_assert_eq(lk__store_batch_last(t, &last), LK_OK);
    cr_assert_eq(last.id, 1);
    cr_assert_eq(lk__store_plan_get(t, &plan), LK_OK, "the killed batch left its plan");
    cr_assert_eq(plan.id, 2);
    int64_t plan_time = plan.batch_time_ms;
    lk__range_t ranges[8];
    size_t nranges = plan.nranges;
    for (size_t i = 0; i < nranges; i++)
        ranges[i] = plan.ranges[i];
    char topics[8][64];
    for (size_t i = 0; i < nranges; i++) {
        snprintf(topics[i], sizeof topics[i], "%s", plan.ranges[i].topic);
        ranges[i].topic = topics[i];
    }
    lk__store_txn_abort(t);
    lk__store_close(s);
    /* more input arrives: the replayed batch must still read exactly its plan */
    produce_lines(30, 2, expected, &seed);

    lk_conf_t *conf = mu_conf(&cl, "wc", dir);
    mu_set(conf, "max.records.per.partition", "20");
    wc_t wc = {0};
    lk_context_t *ctx = open_wc(conf, &wc);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(lk_context_last_batch(ctx), 2);
    lk__batch_rec_t b = last_batch(&s, &t);
    cr_assert_eq(b.batch_time_ms, plan_time, "same batch time on replay");
    cr_assert_eq(b.nranges, nranges);
    for (size_t i = 0; i < nranges; i++) {
        cr_assert_str_eq(b.ranges[i].topic, ranges[i].topic);
        cr_assert_eq(b.ranges[i].partition, ranges[i].partition);
        cr_assert_eq(b.ranges[i].from, ranges[i].from);
        cr_assert_eq(b.ranges[i].until, ranges[i].until, "same ranges on replay");
    }
    cr_assert_eq(lk__store_plan_get(t, &plan), LK_ERR_NOT_FOUND, "the commit clears the plan");
    lk__store_txn_abort(t);
    lk__store_close(s);
    /* drain and compare with the independent count */
    for (int i = 0; i < 50; i++) {
        uint64_t before = lk_context_last_batch(ctx);
        cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
        if (lk_context_last_batch(ctx) == before)
            break; /* idle: all input read */
    }
    cr_assert_eq(wc.seen, 20 + 30, "batch 2 again, then the rest, each once");
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
    for (int k = 0; k < 10; k++)
        cr_assert_eq(state_count(vocab[k]), expected[k], "%s", vocab[k]);
}
