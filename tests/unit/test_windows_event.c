/*
 * test_windows_event.c — event-time windows (tumbling and hopping, emit on close and on
 * update) driven through the batch engine directly, so that batch times, event times
 * and partitions are chosen by the test:
 *  - spelled-out cases: the watermark (lowest partition maximum minus grace), idle
 *    partitions, partitions the plan left records unread in (they hold it before their
 *    first record), one final per window, late records counted and side-output;
 *  - a model check: random input over three partitions (some idle, some late) gives
 *    exactly the results of a brute-force model of the watermark and windows;
 *  - crash determinism: batches aborted before their commit and restarts from the
 *    checkpoint change nothing (results, late records, the late counter);
 *  - bounded state: after 1,000 closed windows only the open window's entries remain.
 */
#define _GNU_SOURCE
#include "testwin.h"
#include "connector/window_int.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char dirbuf[4096];
static const char *dir;

static void setup(void) { dir = tu_tmpdir(dirbuf, sizeof dirbuf); }
static void teardown(void) { tu_rmrf(dir); }

TestSuite(windows_event, .init = setup, .fini = teardown, .timeout = 300);

/* ---- output capture ---- */

/* "[start,end)key=sum F|U" for results, "late[start,end)key=value" for late records */
static char *fmt_result(const lk_record_t *r, int late) {
    lk_window_result_t wr;
    cr_assert_eq(lk_window_result_parse(r->value, r->value_len, &wr), LK_OK);
    char *line;
    if (!wr.value) { /* a deletion: a session window that is no more */
        cr_assert(!late && !wr.final);
        cr_assert(asprintf(&line, "[%lld,%lld)%.*s=- D", (long long)wr.start_ms,
                           (long long)wr.end_ms, (int)r->key_len, (const char *)r->key) > 0);
        return line;
    }
    cr_assert_eq(wr.value_len, 8);
    int64_t v;
    memcpy(&v, wr.value, 8);
    if (!late)
        cr_assert_eq(r->timestamp_ms, wr.end_ms, "a result's timestamp is its window's end");
    cr_assert(asprintf(&line, "%s[%lld,%lld)%.*s=%lld%s", late ? "late" : "",
                       (long long)wr.start_ms, (long long)wr.end_ms, (int)r->key_len,
                       (const char *)r->key, (long long)v,
                       late ? "" : wr.final ? " F" : " U") > 0);
    return line;
}

#define NPARTS_MAX 8
#define NOPS 4 /* tumbling/close, hopping/close, hopping/update, tumbling/update */

typedef struct {
    lines_t staged[2 * NOPS], committed[2 * NOPS]; /* results then late, per operator */
} cap_t;

typedef struct {
    cap_t *cap;
    int which; /* < NOPS: results of op which; else late records of op which - NOPS */
} sink_t;

static void capture(lk_batch_t *b, const lk_record_t *recs, size_t n, void *opaque) {
    (void)b;
    sink_t *s = opaque;
    for (size_t i = 0; i < n; i++)
        lines_add(&s->cap->staged[s->which], fmt_result(&recs[i], s->which >= NOPS));
}

typedef struct {
    lk_window_spec_t specs[NOPS];
    int nops;
    cap_t cap;
    sink_t sinks[2 * NOPS];
    lk_pipeline_t *p;
    lk__store_t *st;
    lk_batch_t b;
    uint64_t id;
} h_t;

static const char *const uids[NOPS] = {"tc", "hc", "hu", "tu"};

static void h_open(h_t *h) {
    h->p = lk__pipeline_new();
    lk_stream_t *in = lk_kafka_stream(h->p, "in");
    for (int i = 0; i < h->nops; i++) {
        h->sinks[i] = (sink_t){&h->cap, i};
        h->sinks[NOPS + i] = (sink_t){&h->cap, NOPS + i};
        lk_stream_t *w = lk_window_by_event_time(in, uids[i], 1, &h->specs[i], sum, NULL);
        char uid[64];
        snprintf(uid, sizeof uid, "cap-%s", uids[i]);
        lk_foreach_batch(w, uid, capture, &h->sinks[i]);
        snprintf(uid, sizeof uid, "late-%s", uids[i]);
        lk_stream_t *late = lk_window_late(w, uid);
        snprintf(uid, sizeof uid, "cap-late-%s", uids[i]);
        lk_foreach_batch(late, uid, capture, &h->sinks[NOPS + i]);
    }
    tw_open(h->p, dir, &h->st, &h->b, &h->id);
}

static void h_close(h_t *h) { tw_close(h->p, h->st, &h->b); }

static void h_free(h_t *h) {
    for (int i = 0; i < 2 * NOPS; i++) {
        lines_free(&h->cap.staged[i]);
        lines_free(&h->cap.committed[i]);
    }
}

typedef struct {
    int part;
    int64_t et;
    int key;
    int64_t val;
} erec_t;

static void h_batch(h_t *h, int64_t time, const erec_t *recs, size_t n, int commit) {
    char(*keys)[8] = calloc(n + 1, sizeof *keys);
    lk_record_t *rs = calloc(n + 1, sizeof *rs);
    for (size_t i = 0; i < n; i++) {
        int kl = snprintf(keys[i], sizeof keys[i], "k%d", recs[i].key);
        rs[i] = (lk_record_t){keys[i], (size_t)kl, &recs[i].val, 8, recs[i].et, "in",
                              recs[i].part, (int64_t)i};
    }
    tw_batch(h->p, h->st, &h->b, &h->id, time, rs, n, commit);
    tw_settle(h->cap.staged, h->cap.committed, 2 * NOPS, commit);
    free(rs);
    free(keys);
}

static char *joined(const lines_t *l) {
    size_t len = 1;
    for (size_t i = 0; i < l->n; i++)
        len += strlen(l->recs[i]) + 1;
    char *s = calloc(1, len);
    for (size_t i = 0; i < l->n; i++) {
        strcat(s, l->recs[i]);
        strcat(s, ";");
    }
    return s;
}

static int64_t acc(h_t *h, const char *name) {
    int64_t v = 0;
    lk__store_txn_t *t = tu_begin(h->st, 0);
    lk_err_t e = lk__store_acc_get(t, name, &v);
    lk__store_txn_abort(t);
    return e == LK_OK ? v : -1;
}

#define ASSERT_OUT(h, i, want)                                                          \
    do {                                                                                \
        char *got_ = joined(&(h)->cap.committed[i]);                                    \
        cr_assert_str_eq(got_, want, "output %d: %s", i, got_);                         \
        free(got_);                                                                     \
    } while (0)

/* ---- spelled-out cases ---- */

Test(windows_event, tumbling_on_close_with_late_records) {
    h_t h = {.nops = 1};
    h.specs[0] = (lk_window_spec_t){.kind = LK_WINDOW_TUMBLING, .size_ms = 1000, .grace_ms = 200};
    h_open(&h);
    erec_t b1[] = {{0, 100, 0, 1}, {0, 900, 1, 1}, {0, 1100, 0, 5}};
    h_batch(&h, 1, b1, 3, 1); /* watermark 900: [0,1000) still open */
    erec_t b2[] = {{0, 1250, 0, 1}};
    h_batch(&h, 2, b2, 1, 1); /* watermark 1050: [0,1000) closes */
    erec_t b3[] = {{0, 999, 1, 7}, {0, 1000, 1, 2}};
    h_batch(&h, 3, b3, 2, 1); /* 999 is late (its window closed); 1000 is not */
    h_batch(&h, 4, NULL, 0, 1); /* nothing new: nothing closes */
    erec_t b5[] = {{0, 5000, 2, 1}};
    h_batch(&h, 5, b5, 1, 1); /* watermark 4800: [1000,2000) closes; no empty windows */
    ASSERT_OUT(&h, 0, "|;[0,1000)k0=1 F;[0,1000)k1=1 F;|;|;|;[1000,2000)k0=6 F;"
                      "[1000,2000)k1=2 F;|;");
    ASSERT_OUT(&h, NOPS, "|;|;late[0,1000)k1=7;|;|;|;");
    cr_assert_eq(acc(&h, "tc.late"), 1);
    h_close(&h);
    h_free(&h);
}

Test(windows_event, watermark_is_the_slowest_partition_until_it_idles) {
    h_t h = {.nops = 1};
    h.specs[0] = (lk_window_spec_t){.kind = LK_WINDOW_TUMBLING, .size_ms = 1000,
                                    .idle_ms = 5000};
    h_open(&h);
    erec_t b1[] = {{0, 500, 0, 1}, {1, 300, 0, 1}};
    h_batch(&h, 10000, b1, 2, 1);
    erec_t b2[] = {{0, 3500, 0, 1}};
    h_batch(&h, 11000, b2, 1, 1); /* partition 1 at 300 holds the watermark back */
    erec_t b3[] = {{0, 3600, 0, 1}};
    h_batch(&h, 14999, b3, 1, 1); /* partition 1 quiet for 4999 ms: not idle yet */
    h_batch(&h, 15000, NULL, 0, 1); /* 5000 ms: idle; the watermark is 3600 */
    erec_t b5[] = {{1, 1200, 0, 1}};
    h_batch(&h, 16000, b5, 1, 1); /* partition 1 is back, behind: the watermark stays */
    ASSERT_OUT(&h, 0, "|;|;|;[0,1000)k0=2 F;|;|;");
    /* 1200's window [1000,2000) closed already when partition 1 idled: late */
    ASSERT_OUT(&h, NOPS, "|;|;|;|;late[1000,2000)k0=1;|;");
    h_close(&h);
    h_free(&h);
}

/* What the driver records with the plan of the next batch: the input partitions whose
 * log end lay past the range the batch reads (in a transaction of its own). */
static void h_plan(h_t *h, int64_t time, const int *unread_parts, size_t n) {
    lk__wunread_t u[NPARTS_MAX];
    cr_assert_leq(n, NPARTS_MAX);
    for (size_t i = 0; i < n; i++)
        u[i] = (lk__wunread_t){"in", unread_parts[i]};
    lk__store_txn_t *t = tu_begin(h->st, 1);
    char err[512];
    cr_assert_eq(lk__window_record_plan(h->p, t, h->id + 1, time, u, n, err, sizeof err), LK_OK,
                 "%s", err);
    tu_commit(t);
}

/* On a real broker the first fetch may bring partition 0's records only, while partition
 * 1 still has older ones unread: they must not become late because partition 1 had not
 * sent anything yet. Before the fix the watermark jumped to partition 0's time in batch 1
 * and partition 1's records of batch 2 were late. */
Test(windows_event, unread_partition_holds_the_watermark_before_its_first_record) {
    h_t h = {.nops = 1};
    h.specs[0] = (lk_window_spec_t){.kind = LK_WINDOW_TUMBLING, .size_ms = 1000};
    h_open(&h);
    int p1[] = {1};
    erec_t b1[] = {{0, 5000, 0, 1}, {0, 5100, 1, 1}};
    h_plan(&h, 1, p1, 1);
    h_batch(&h, 1, b1, 2, 0); /* a crash before the commit: the replay reads the same plan */
    h_batch(&h, 1, b1, 2, 1); /* partition 1 has records unread: the watermark holds */
    erec_t b2[] = {{1, 100, 0, 1}, {1, 200, 1, 1}, {1, 2600, 0, 1}};
    h_plan(&h, 2, NULL, 0);
    h_batch(&h, 2, b2, 3, 1); /* watermark 2600: [0,1000) and [1000,2000) close */
    erec_t b3[] = {{1, 6000, 0, 1}};
    h_batch(&h, 3, b3, 1, 1); /* watermark 5100: [2000,3000) closes */
    ASSERT_OUT(&h, 0, "|;[0,1000)k0=1 F;[0,1000)k1=1 F;|;[2000,3000)k0=1 F;|;");
    ASSERT_OUT(&h, NOPS, "|;|;|;");
    cr_assert_eq(acc(&h, "tc.late"), -1, "nothing was late");
    h_close(&h);
    h_free(&h);
}

/* A partition read to its end that never had records does not hold the watermark, nor
 * does a plan recorded for another batch. */
Test(windows_event, partition_read_to_its_end_does_not_hold_the_watermark) {
    h_t h = {.nops = 1};
    h.specs[0] = (lk_window_spec_t){.kind = LK_WINDOW_TUMBLING, .size_ms = 1000};
    h_open(&h);
    int p1[] = {1};
    h_plan(&h, 1, NULL, 0);
    erec_t b1[] = {{0, 5000, 0, 1}, {0, 100, 1, 1}};
    h_batch(&h, 1, b1, 2, 1); /* watermark 5000: [0,1000) closes */
    h.id++;                   /* a plan for batch 3 only */
    h_plan(&h, 3, p1, 1);
    h.id--;
    erec_t b2[] = {{0, 7000, 0, 1}};
    h_batch(&h, 2, b2, 1, 1); /* watermark 7000: [5000,6000) closes */
    ASSERT_OUT(&h, 0, "[0,1000)k1=1 F;|;[5000,6000)k0=1 F;|;");
    /* the recorded plan is gone once a batch used (or passed) it */
    lk__store_txn_t *t = tu_begin(h.st, 0);
    uint64_t id;
    cr_assert_eq(lk__wstore_unread_get(t, h.p->stages[1]->db, &id, NULL, NULL),
                 LK_ERR_NOT_FOUND);
    lk__store_txn_abort(t);
    h_close(&h);
    h_free(&h);
}

Test(windows_event, hopping_on_update_then_final) {
    h_t h = {.nops = 1};
    h.specs[0] = (lk_window_spec_t){.kind = LK_WINDOW_HOPPING, .size_ms = 2000,
                                    .advance_ms = 1000, .emit = LK_WINDOW_EMIT_ON_UPDATE};
    h_open(&h);
    erec_t b1[] = {{0, 1500, 0, 1}};
    h_batch(&h, 1, b1, 1, 1); /* in [0,2000) and [1000,3000); watermark 1500 */
    erec_t b2[] = {{0, 2500, 0, 10}};
    h_batch(&h, 2, b2, 1, 1); /* watermark 2500: [0,2000) closes */
    erec_t b3[] = {{0, 4200, 1, 3}};
    h_batch(&h, 3, b3, 1, 1); /* watermark 4200: [1000,3000) and [2000,4000) close */
    ASSERT_OUT(&h, 0, "[0,2000)k0=1 U;[1000,3000)k0=1 U;|;"
                      "[0,2000)k0=1 F;[1000,3000)k0=11 U;[2000,4000)k0=10 U;|;"
                      "[1000,3000)k0=11 F;[2000,4000)k0=10 F;[3000,5000)k1=3 U;"
                      "[4000,6000)k1=3 U;|;");
    h_close(&h);
    h_free(&h);
}

Test(windows_event, definition_errors) {
    struct {
        lk_window_spec_t spec;
        const char *want;
    } cases[] = {
        {{.kind = 9, .size_ms = 1000},
         "kind must be LK_WINDOW_TUMBLING, LK_WINDOW_HOPPING or LK_WINDOW_SESSION"},
        {{.kind = LK_WINDOW_TUMBLING, .size_ms = 0}, "size_ms must be > 0"},
        {{.kind = LK_WINDOW_TUMBLING, .size_ms = 1000, .advance_ms = 500},
         "a tumbling window advances by its size"},
        {{.kind = LK_WINDOW_HOPPING, .size_ms = 1000, .advance_ms = 300},
         "advance_ms must be > 0 and divide size_ms"},
        {{.kind = LK_WINDOW_HOPPING, .size_ms = 1000, .advance_ms = 500, .grace_ms = -1},
         "grace_ms and idle_ms must be >= 0"},
        {{.kind = LK_WINDOW_TUMBLING, .size_ms = 1000, .emit = 7}, "emit must be"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        lk_pipeline_t *p = lk__pipeline_new();
        cr_assert_null(lk_window_by_event_time(lk_kafka_stream(p, "in"), "ev", 1,
                                               &cases[i].spec, sum, NULL));
        cr_assert(strstr(p->err, "window_by_event_time 'ev': "), "%s", p->err);
        cr_assert(strstr(p->err, cases[i].want), "case %zu: %s", i, p->err);
        lk__pipeline_destroy(p);
    }
    lk_pipeline_t *p = lk__pipeline_new();
    lk_stream_t *in = lk_kafka_stream(p, "in");
    cr_assert_null(lk_window_late(in, "late"));
    cr_assert_str_eq(p->err, "lk_window_late('late'): 'kafka:in' is not an event-time window");
    lk__pipeline_destroy(p);
}

/* ---- the model ---- */

typedef struct {
    int64_t time;
    erec_t *recs;
    size_t n;
} ebatch_t;

#define NPARTS 3

/* Expected lines of one operator (results, then late records), batch-closed by "|". */
static void model(const lk_window_spec_t *sp, const ebatch_t *bs, size_t nb, lines_t *res,
                  lines_t *late, int64_t *nlate) {
    int64_t adv = sp->kind == LK_WINDOW_TUMBLING ? sp->size_ms : sp->advance_ms;
    int64_t n = sp->size_ms / adv;
    int64_t wm = INT64_MIN;
    int have[NPARTS] = {0};
    int64_t pmax[NPARTS], seen[NPARTS];
    erec_t *acc_recs = calloc(4096, sizeof *acc_recs);
    size_t nacc = 0;
    *nlate = 0;
    for (size_t i = 0; i < nb; i++) {
        lines_t out = {0}, lt = {0};
        size_t first = nacc;
        int in_batch[NPARTS] = {0};
        int64_t bmax[NPARTS];
        for (size_t j = 0; j < bs[i].n; j++) {
            const erec_t *r = &bs[i].recs[j];
            if (!in_batch[r->part] || r->et > bmax[r->part])
                bmax[r->part] = r->et;
            in_batch[r->part] = 1;
            int64_t start = tw_fdiv(r->et, adv) * adv;
            if (start + sp->size_ms <= wm) {
                char *line;
                cr_assert(asprintf(&line, "late[%lld,%lld)k%d=%lld", (long long)start,
                                   (long long)(start + sp->size_ms), r->key,
                                   (long long)r->val) > 0);
                lines_add(&lt, line);
                (*nlate)++;
            } else {
                cr_assert_lt(nacc, 4096);
                acc_recs[nacc++] = *r;
            }
        }
        for (int p = 0; p < NPARTS; p++)
            if (in_batch[p]) {
                if (!have[p] || bmax[p] > pmax[p])
                    pmax[p] = bmax[p];
                have[p] = 1;
                seen[p] = bs[i].time;
            }
        int any = 0, any_active = 0;
        int64_t min_active = 0, max_all = 0;
        for (int p = 0; p < NPARTS; p++) {
            if (!have[p])
                continue;
            if (!any || pmax[p] > max_all)
                max_all = pmax[p];
            any = 1;
            if (sp->idle_ms && bs[i].time - seen[p] >= sp->idle_ms)
                continue;
            if (!any_active || pmax[p] < min_active)
                min_active = pmax[p];
            any_active = 1;
        }
        int64_t wm_new = wm;
        if (any && (any_active ? min_active : max_all) - sp->grace_ms > wm_new)
            wm_new = (any_active ? min_active : max_all) - sp->grace_ms;
        /* windows with data: k from each accepted record; result lines deduplicated */
        for (size_t j = 0; j < nacc; j++) {
            int64_t sl = tw_fdiv(acc_recs[j].et, adv);
            for (int64_t k = sl - n + 1; k <= sl; k++) {
                int64_t start = k * adv, end = start + sp->size_ms;
                int final = end > wm && end <= wm_new;
                int update = 0;
                if (sp->emit == LK_WINDOW_EMIT_ON_UPDATE && end > wm_new)
                    for (size_t m = first; m < nacc && !update; m++) {
                        int64_t ms = tw_fdiv(acc_recs[m].et, adv);
                        update = acc_recs[m].key == acc_recs[j].key && ms >= k && ms < k + n;
                    }
                if (!final && !update)
                    continue;
                int64_t total = 0;
                for (size_t m = 0; m < nacc; m++)
                    if (acc_recs[m].key == acc_recs[j].key && acc_recs[m].et >= start &&
                        acc_recs[m].et < end)
                        total += acc_recs[m].val;
                char *line;
                cr_assert(asprintf(&line, "[%lld,%lld)k%d=%lld %s", (long long)start,
                                   (long long)end, acc_recs[j].key, (long long)total,
                                   final ? "F" : "U") > 0);
                int dup = 0;
                for (size_t m = 0; m < out.n && !dup; m++)
                    dup = !strcmp(out.recs[m], line);
                if (dup)
                    free(line);
                else
                    lines_add(&out, line);
            }
        }
        wm = wm_new;
        if (out.n)
            qsort(out.recs, out.n, sizeof *out.recs, cmp_str);
        if (lt.n)
            qsort(lt.recs, lt.n, sizeof *lt.recs, cmp_str);
        for (size_t j = 0; j < out.n; j++)
            lines_add(res, out.recs[j]);
        for (size_t j = 0; j < lt.n; j++)
            lines_add(late, lt.recs[j]);
        free(out.recs);
        free(lt.recs);
        lines_add(res, strdup("|"));
        lines_add(late, strdup("|"));
    }
    free(acc_recs);
}

/* Three partitions with their own event clocks; partition 2 goes quiet for long spells
 * (idle), records now and then far behind (late). */
static ebatch_t *random_batches(unsigned seed, size_t nb) {
    srand(seed);
    ebatch_t *bs = calloc(nb, sizeof *bs);
    int64_t t = 100000, clock[NPARTS] = {0, 0, 0};
    for (size_t i = 0; i < nb; i++) {
        t += 100 + rand() % 1500;
        bs[i].time = t;
        bs[i].n = (size_t)(rand() % 6);
        bs[i].recs = calloc(bs[i].n + 1, sizeof *bs[i].recs);
        int quiet = (i / 20) % 3 == 2; /* partition 2 quiet one spell in three */
        for (size_t j = 0; j < bs[i].n; j++) {
            int p = rand() % (quiet ? 2 : NPARTS);
            clock[p] += rand() % 700;
            int64_t et = clock[p] - (rand() % 8 == 0 ? rand() % 6000 : rand() % 300);
            bs[i].recs[j] = (erec_t){p, et, rand() % 4, 1 + rand() % 9};
        }
    }
    return bs;
}

static void free_batches(ebatch_t *bs, size_t nb) {
    for (size_t i = 0; i < nb; i++)
        free(bs[i].recs);
    free(bs);
}

static void specs4(h_t *h) {
    h->nops = NOPS;
    h->specs[0] = (lk_window_spec_t){.kind = LK_WINDOW_TUMBLING, .size_ms = 1000,
                                     .grace_ms = 300, .idle_ms = 4000};
    h->specs[1] = (lk_window_spec_t){.kind = LK_WINDOW_HOPPING, .size_ms = 3000,
                                     .advance_ms = 1000, .grace_ms = 500, .idle_ms = 4000};
    h->specs[2] = h->specs[1];
    h->specs[2].emit = LK_WINDOW_EMIT_ON_UPDATE;
    h->specs[3] = h->specs[0];
    h->specs[3].emit = LK_WINDOW_EMIT_ON_UPDATE;
}

Test(windows_event, random_input_matches_the_model) {
    for (unsigned seed = 1; seed <= 8; seed++) {
        size_t nb = 150;
        ebatch_t *bs = random_batches(seed, nb);
        h_t h = {0};
        specs4(&h);
        h_open(&h);
        for (size_t i = 0; i < nb; i++)
            h_batch(&h, bs[i].time, bs[i].recs, bs[i].n, 1);
        for (int o = 0; o < NOPS; o++) {
            lines_t res = {0}, late = {0};
            int64_t nlate;
            model(&h.specs[o], bs, nb, &res, &late, &nlate);
            /* not vacuous */
            cr_assert_gt(res.n - nb, 50, "seed %u op %d: %zu results", seed, o, res.n - nb);
            cr_assert_gt(nlate, 3, "seed %u op %d: %lld late", seed, o, (long long)nlate);
            assert_lines_eq(&h.cap.committed[o], &res, uids[o], seed);
            assert_lines_eq(&h.cap.committed[NOPS + o], &late, uids[o], seed);
            char name[32];
            snprintf(name, sizeof name, "%s.late", uids[o]);
            cr_assert_eq(acc(&h, name), nlate);
            lines_free(&res);
            lines_free(&late);
        }
        h_close(&h);
        h_free(&h);
        free_batches(bs, nb);
        tu_rmrf(dir);
    }
}

Test(windows_event, crashes_and_restarts_change_nothing) {
    for (unsigned seed = 50; seed < 55; seed++) {
        size_t nb = 120;
        ebatch_t *bs = random_batches(seed, nb);
        h_t ref = {0};
        specs4(&ref);
        h_open(&ref);
        for (size_t i = 0; i < nb; i++)
            h_batch(&ref, bs[i].time, bs[i].recs, bs[i].n, 1);
        int64_t ref_late = acc(&ref, "hc.late");
        h_close(&ref);
        tu_rmrf(dir);

        h_t h = {0};
        specs4(&h);
        h_open(&h);
        srand(seed * 31);
        for (size_t i = 0; i < nb; i++) {
            int crashes = rand() % 3 == 0 ? 1 + rand() % 2 : 0;
            for (int c = 0; c < crashes; c++)
                h_batch(&h, bs[i].time, bs[i].recs, bs[i].n, 0);
            if (rand() % 10 == 0) {
                h_close(&h);
                h_open(&h);
            }
            h_batch(&h, bs[i].time, bs[i].recs, bs[i].n, 1);
        }
        for (int o = 0; o < 2 * NOPS; o++)
            assert_lines_eq(&h.cap.committed[o], &ref.cap.committed[o], "with crashes", seed);
        cr_assert_eq(acc(&h, "hc.late"), ref_late);
        h_close(&h);
        h_free(&h);
        h_free(&ref);
        free_batches(bs, nb);
        tu_rmrf(dir);
    }
}

static int stat_entries(const lk__state_stat_t *st, void *o) {
    if (!strcmp(st->uid, "tc"))
        *(uint64_t *)o = st->entries;
    return 0;
}

Test(windows_event, state_bounded_by_open_windows) {
    h_t h = {.nops = 1};
    h.specs[0] = (lk_window_spec_t){.kind = LK_WINDOW_TUMBLING, .size_ms = 1000};
    h_open(&h);
    enum { KEYS = 6 };
    erec_t recs[KEYS];
    for (int w = 0; w < 1001; w++) {
        for (int k = 0; k < KEYS; k++)
            recs[k] = (erec_t){0, (int64_t)w * 1000 + 10, k, 1};
        h_batch(&h, w + 1, recs, KEYS, 1);
    }
    uint64_t entries = 0;
    lk__store_txn_t *t = tu_begin(h.st, 0);
    cr_assert_eq(lk__store_state_stats(t, stat_entries, &entries), LK_OK);
    lk__store_txn_abort(t);
    /* 1,000 windows closed; the open one: an aggregate per key, a live-slice entry; the
     * partition's maximum; the watermark */
    cr_assert_eq(entries, KEYS + 1 + 1 + 1, "state entries %llu",
                 (unsigned long long)entries);
    /* every closed window emitted exactly its KEYS finals */
    size_t finals = 0;
    for (size_t i = 0; i < h.cap.committed[0].n; i++)
        finals += strstr(h.cap.committed[0].recs[i], " F") != NULL;
    cr_assert_eq(finals, 1000 * KEYS);
    h_close(&h);
    h_free(&h);
}

/* ---- session windows ---- */

Test(windows_event, sessions_merge_close_once_and_count_late_records) {
    h_t h = {.nops = 1};
    h.specs[0] = (lk_window_spec_t){.kind = LK_WINDOW_SESSION, .gap_ms = 1000};
    h_open(&h);
    erec_t b1[] = {{0, 100, 0, 1}, {0, 600, 0, 1}};
    h_batch(&h, 1, b1, 2, 1); /* k0 [100,1600); watermark 600 */
    erec_t b2[] = {{0, 2000, 0, 1}};
    h_batch(&h, 2, b2, 1, 1); /* k0 [2000,3000) apart; watermark 2000 closes [100,1600) */
    erec_t b3[] = {{0, 1500, 0, 5}};
    h_batch(&h, 3, b3, 1, 1); /* [1500,2500) is not late, joins [2000,3000): [1500,3000) */
    erec_t b4[] = {{0, 900, 0, 7}};
    h_batch(&h, 4, b4, 1, 1); /* [900,1900) would have closed: late */
    erec_t b5[] = {{0, 2600, 1, 1}, {0, 10000, 3, 1}, {0, 11500, 3, 1}, {1, 3000, 4, 1}};
    h_batch(&h, 5, b5, 4, 1); /* partition 1 at 3000 holds the watermark: [1500,3000) closes;
                               * k3 has two sessions, [10000,11000) and [11500,12500) */
    erec_t b6[] = {{0, 10900, 3, 1}, {0, 12500, 2, 1}};
    h_batch(&h, 6, b6, 2, 1); /* [10900,11900) bridges k3's two sessions: [10000,12500);
                               * records exactly gap apart would not (half-open) */
    erec_t b7[] = {{0, 20000, 2, 1}, {1, 19000, 4, 1}};
    h_batch(&h, 7, b7, 2, 1); /* watermark 19000: every session but the two new ones */
    ASSERT_OUT(&h, 0, "|;[100,1600)k0=2 F;|;|;|;[1500,3000)k0=6 F;|;|;[10000,12500)k3=3 F;"
                      "[12500,13500)k2=1 F;[2600,3600)k1=1 F;[3000,4000)k4=1 F;|;");
    ASSERT_OUT(&h, NOPS, "|;|;|;late[900,1900)k0=7;|;|;|;|;");
    cr_assert_eq(acc(&h, "tc.late"), 1);
    /* bounded: the two open sessions (each with its by-end entry), the partitions'
     * maxima and the watermark remain */
    uint64_t entries = 0;
    lk__store_txn_t *t = tu_begin(h.st, 0);
    cr_assert_eq(lk__store_state_stats(t, stat_entries, &entries), LK_OK);
    lk__store_txn_abort(t);
    cr_assert_eq(entries, 2 * 2 + 2 + 1);
    h_close(&h);
    h_free(&h);
}

/* Emit on update: each change of a session (final = 0); a session whose bounds an
 * extension or a merge replaced gets a deletion (Kafka Streams' tombstone for the old
 * session window); one final result when the watermark passes its end. */
Test(windows_event, sessions_on_update_emit_changes_deletions_and_one_final) {
    h_t h = {.nops = 1};
    h.specs[0] = (lk_window_spec_t){.kind = LK_WINDOW_SESSION, .gap_ms = 1000,
                                    .emit = LK_WINDOW_EMIT_ON_UPDATE};
    h_open(&h);
    erec_t b1[] = {{0, 100, 0, 1}, {0, 600, 0, 1}};
    h_batch(&h, 1, b1, 2, 1); /* [100,1600) made: one update, not two */
    erec_t b2[] = {{0, 1500, 0, 1}};
    h_batch(&h, 2, b2, 1, 1); /* extended to [100,2500): the old bounds are deleted */
    erec_t b3[] = {{0, 3000, 0, 1}};
    h_batch(&h, 3, b3, 1, 1); /* watermark 3000: [100,2500) final; [3000,4000) made */
    erec_t b4[] = {{0, 2200, 0, 1}};
    h_batch(&h, 4, b4, 1, 1); /* [2200,3200) absorbs [3000,4000): [2200,4000) */
    erec_t b5[] = {{0, 9000, 0, 1}};
    h_batch(&h, 5, b5, 1, 1); /* watermark 9000: [2200,4000) final */
    ASSERT_OUT(&h, 0, "[100,1600)k0=2 U;|;[100,1600)k0=- D;[100,2500)k0=3 U;|;"
                      "[100,2500)k0=3 F;[3000,4000)k0=1 U;|;"
                      "[2200,4000)k0=2 U;[3000,4000)k0=- D;|;"
                      "[2200,4000)k0=2 F;[9000,10000)k0=1 U;|;");
    h_close(&h);
    h_free(&h);
}

Test(windows_event, session_definition_errors) {
    struct {
        lk_window_spec_t spec;
        const char *want;
    } cases[] = {
        {{.kind = LK_WINDOW_SESSION}, "a session window needs gap_ms > 0"},
        {{.kind = LK_WINDOW_SESSION, .gap_ms = 10, .size_ms = 5},
         "a session window has no size: leave size_ms and advance_ms 0"},
        {{.kind = LK_WINDOW_SESSION, .gap_ms = 10, .emit = 7}, "emit must be"},
        {{.kind = LK_WINDOW_TUMBLING, .size_ms = 10, .gap_ms = 10},
         "gap_ms is for session windows only"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        lk_pipeline_t *p = lk__pipeline_new();
        cr_assert_null(lk_window_by_event_time(lk_kafka_stream(p, "in"), "ev", 1,
                                               &cases[i].spec, sum, NULL));
        cr_assert(strstr(p->err, cases[i].want), "case %zu: %s", i, p->err);
        lk__pipeline_destroy(p);
    }
}

/* The model of sessions: per key, open sessions [start, end) with their sums; a batch's
 * accepted records merge with the ones they overlap; then the watermark closes. */
typedef struct {
    int key;
    int64_t start, end, sum;
    int open;
} msess_t;

/* With update: each batch also emits a deletion for every session open before it whose
 * bounds are no longer an open session's after its records merged, and the value of
 * every session it made that the watermark leaves open. */
static void model_sessions(int64_t gap, int update, const ebatch_t *bs, size_t nb,
                           lines_t *res, lines_t *late, int64_t *nlate) {
    msess_t *ss = calloc(8192, sizeof *ss);
    size_t nss = 0;
    int64_t wm = INT64_MIN;
    int have[NPARTS] = {0};
    int64_t pmax[NPARTS];
    *nlate = 0;
    for (size_t i = 0; i < nb; i++) {
        lines_t out = {0}, lt = {0};
        size_t made = nss; /* the sessions from here on were made by this batch */
        for (size_t j = 0; j < bs[i].n; j++) {
            const erec_t *r = &bs[i].recs[j];
            if (!have[r->part] || r->et > pmax[r->part])
                pmax[r->part] = r->et;
            have[r->part] = 1;
            if (r->et + gap <= wm) {
                char *line;
                cr_assert(asprintf(&line, "late[%lld,%lld)k%d=%lld", (long long)r->et,
                                   (long long)(r->et + gap), r->key, (long long)r->val) > 0);
                lines_add(&lt, line);
                (*nlate)++;
                continue;
            }
            msess_t m = {r->key, r->et, r->et + gap, r->val, 1};
            for (size_t k = 0; k < nss; k++)
                if (ss[k].open && ss[k].key == r->key && ss[k].start < m.end &&
                    ss[k].end > m.start) {
                    m.start = ss[k].start < m.start ? ss[k].start : m.start;
                    m.end = ss[k].end > m.end ? ss[k].end : m.end;
                    m.sum += ss[k].sum;
                    ss[k].open = 0;
                }
            cr_assert_lt(nss, 8192);
            ss[nss++] = m;
        }
        int64_t min = INT64_MAX;
        for (int p = 0; p < NPARTS; p++)
            if (have[p] && pmax[p] < min)
                min = pmax[p];
        if (min != INT64_MAX && min > wm)
            wm = min;
        for (size_t k = 0; update && k < nss; k++) {
            char *line = NULL;
            if (k < made && !ss[k].open && ss[k].end > INT64_MIN) {
                int still = 0; /* the same bounds open again (a record inside it) */
                for (size_t m = made; m < nss; m++)
                    still |= ss[m].open && ss[m].key == ss[k].key &&
                             ss[m].start == ss[k].start && ss[m].end == ss[k].end;
                if (!still)
                    cr_assert(asprintf(&line, "[%lld,%lld)k%d=- D", (long long)ss[k].start,
                                       (long long)ss[k].end, ss[k].key) > 0);
                ss[k].end = INT64_MIN; /* reported: gone for good */
            } else if (k >= made && ss[k].open && ss[k].end > wm) {
                cr_assert(asprintf(&line, "[%lld,%lld)k%d=%lld U", (long long)ss[k].start,
                                   (long long)ss[k].end, ss[k].key, (long long)ss[k].sum) > 0);
            } else if (k >= made && !ss[k].open) {
                ss[k].end = INT64_MIN; /* made and merged away in this batch: never seen */
            }
            if (line)
                lines_add(&out, line);
        }
        for (size_t k = 0; k < nss; k++)
            if (ss[k].open && ss[k].end <= wm) {
                char *line;
                cr_assert(asprintf(&line, "[%lld,%lld)k%d=%lld F", (long long)ss[k].start,
                                   (long long)ss[k].end, ss[k].key, (long long)ss[k].sum) > 0);
                lines_add(&out, line);
                ss[k].open = 0;
                ss[k].end = INT64_MIN; /* closed: not a deletion later */
            }
        if (out.n)
            qsort(out.recs, out.n, sizeof *out.recs, cmp_str);
        if (lt.n)
            qsort(lt.recs, lt.n, sizeof *lt.recs, cmp_str);
        for (size_t j = 0; j < out.n; j++)
            lines_add(res, out.recs[j]);
        for (size_t j = 0; j < lt.n; j++)
            lines_add(late, lt.recs[j]);
        free(out.recs);
        free(lt.recs);
        lines_add(res, strdup("|"));
        lines_add(late, strdup("|"));
    }
    free(ss);
}

static void sessions_across_crashes(lk_window_emit_t emit) {
    for (unsigned seed = 200; seed < 206; seed++) {
        size_t nb = 150;
        ebatch_t *bs = random_batches(seed, nb);
        h_t h = {.nops = 1};
        h.specs[0] = (lk_window_spec_t){.kind = LK_WINDOW_SESSION, .gap_ms = 600, .emit = emit};
        h_open(&h);
        srand(seed * 17);
        for (size_t i = 0; i < nb; i++) {
            int crashes = rand() % 3 == 0 ? 1 + rand() % 2 : 0;
            for (int c = 0; c < crashes; c++)
                h_batch(&h, bs[i].time, bs[i].recs, bs[i].n, 0);
            if (rand() % 10 == 0) {
                h_close(&h);
                h_open(&h);
            }
            h_batch(&h, bs[i].time, bs[i].recs, bs[i].n, 1);
        }
        lines_t res = {0}, late = {0};
        int64_t nlate;
        model_sessions(600, emit == LK_WINDOW_EMIT_ON_UPDATE, bs, nb, &res, &late, &nlate);
        cr_assert_gt(res.n - nb, 50, "seed %u: %zu sessions", seed, res.n - nb);
        size_t dels = 0, upds = 0;
        for (size_t i = 0; i < res.n; i++) {
            dels += strstr(res.recs[i], " D") != NULL;
            upds += strstr(res.recs[i], " U") != NULL;
        }
        if (emit == LK_WINDOW_EMIT_ON_UPDATE)
            cr_assert(dels > 10 && upds > 50, "seed %u: %zu deletions, %zu updates", seed,
                      dels, upds);
        cr_assert_gt(nlate, 3, "seed %u: %lld late", seed, (long long)nlate);
        assert_lines_eq(&h.cap.committed[0], &res, "sessions", seed);
        assert_lines_eq(&h.cap.committed[NOPS], &late, "late", seed);
        cr_assert_eq(acc(&h, "tc.late"), nlate);
        lines_free(&res);
        lines_free(&late);
        h_close(&h);
        h_free(&h);
        free_batches(bs, nb);
        tu_rmrf(dir);
    }
}


Test(windows_event, sessions_match_the_model_across_crashes) {
    sessions_across_crashes(LK_WINDOW_EMIT_ON_CLOSE);
}

/* Emit on update: every change of a session (final = 0), a deletion for a session whose
 * bounds a merge or an extension replaced, then one final result when it closes. */
Test(windows_event, sessions_on_update_match_the_model_across_crashes) {
    sessions_across_crashes(LK_WINDOW_EMIT_ON_UPDATE);
}
