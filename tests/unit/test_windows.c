/*
 * test_windows.c — reduce_by_key_and_window over batch time, driven through the batch
 * engine directly (no broker), so that batch times are chosen by the test:
 *  - property: for random inputs and batch times (several batches per slide, idle gaps
 *    longer than the window), the incremental form (inv_reduce) and the recomputation
 *    from slices emit exactly what a brute-force model of the windows says, at every
 *    boundary, with and without a filter;
 *  - crash determinism: batches aborted before their commit (a crash) and processed
 *    again, and restarts from the checkpoint, emit exactly what an uninterrupted run does;
 *  - bounded state: after 1,000 closed windows the operator's database holds exactly the
 *    entries of the open slides;
 *  - bad input and bad definitions are refused naming the operator;
 *  - the conveniences lk_count_by_window and lk_reduce_by_window over it.
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

TestSuite(windows, .init = setup, .fini = teardown, .timeout = 300);

#define SLIDE 1000
#define NSLIDES 3 /* window = 3 slides */
#define NKEYS 6

/* ---- int64 sums ---- */

static void sub(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *a, const lk_bytes_t *v,
                lk_bytes_t *out, void *opaque) {
    (void)key, (void)opaque;
    int64_t x, y;
    memcpy(&x, a->data, 8);
    memcpy(&y, v->data, 8);
    x -= y;
    void *o = lk_alloc(b, 8);
    memcpy(o, &x, 8);
    *out = (lk_bytes_t){o, 8};
}

static int nonzero(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *v, void *opaque) {
    (void)b, (void)key, (void)opaque;
    int64_t x;
    memcpy(&x, v->data, 8);
    return x != 0;
}

/* ---- output capture: what a batch emitted, kept only if the batch commits ---- */

enum { OUT_INC, OUT_RE, OUT_FINC, OUT_FRE, OUT_CNT, OUT_ALL, NOUT };

typedef struct {
    lines_t staged[NOUT];    /* this batch */
    lines_t committed[NOUT]; /* per output, the records of committed batches, each batch
                              * closed by a "|" line */
} cap_t;

typedef struct {
    cap_t *cap;
    int which;
} sink_t;

static void capture(lk_batch_t *b, const lk_record_t *recs, size_t n, void *opaque) {
    (void)b;
    sink_t *s = opaque;
    for (size_t i = 0; i < n; i++) {
        char *line;
        int64_t v = 0;
        if (recs[i].value) {
            cr_assert_eq(recs[i].value_len, 8);
            memcpy(&v, recs[i].value, 8);
            cr_assert(asprintf(&line, "%lld:%.*s=%lld", (long long)recs[i].timestamp_ms,
                               (int)recs[i].key_len, (const char *)recs[i].key,
                               (long long)v) > 0);
        } else {
            cr_assert(asprintf(&line, "%lld:%.*s=-", (long long)recs[i].timestamp_ms,
                               (int)recs[i].key_len, (const char *)recs[i].key) > 0);
        }
        lines_add(&s->cap->staged[s->which], line);
    }
}

/* ---- the harness: a pipeline and its checkpoint, batches at chosen times ---- */

typedef struct {
    int with_filter;
    int conveniences; /* also lk_count_by_window and lk_reduce_by_window */
    cap_t cap;
    sink_t sinks[NOUT];
    lk_pipeline_t *p;
    lk__store_t *st;
    lk_batch_t b;
    uint64_t id;
} h_t;

static void define(lk_pipeline_t *p, h_t *h) {
    lk_stream_t *in = lk_kafka_stream(p, "in");
    for (int i = 0; i < NOUT; i++)
        h->sinks[i] = (sink_t){&h->cap, i};
    static const char *const uids[] = {"w-inc", "w-re", "w-finc", "w-fre"};
    for (int i = 0; i < (h->with_filter ? 4 : 2); i++) {
        lk_stream_t *w = lk_reduce_by_key_and_window(
            in, uids[i], 1, NSLIDES * SLIDE, SLIDE, sum, (i % 2) == 0 ? sub : NULL,
            i >= 2 ? nonzero : NULL, NULL);
        char uid[64];
        snprintf(uid, sizeof uid, "cap-%d", i);
        lk_foreach_batch(w, uid, capture, &h->sinks[i]);
    }
    if (h->conveniences) {
        lk_stream_t *c = lk_count_by_window(in, "cnt", NSLIDES * SLIDE, SLIDE);
        lk_foreach_batch(c, "cap-cnt", capture, &h->sinks[OUT_CNT]);
        lk_stream_t *a = lk_reduce_by_window(in, "all", 1, NSLIDES * SLIDE, SLIDE, sum, sub, NULL);
        lk_foreach_batch(a, "cap-all", capture, &h->sinks[OUT_ALL]);
    }
}

static void h_open(h_t *h) {
    h->p = lk__pipeline_new();
    define(h->p, h);
    tw_open(h->p, dir, &h->st, &h->b, &h->id);
}

static void h_close(h_t *h) {
    tw_close(h->p, h->st, &h->b);
    h->p = NULL;
    h->st = NULL;
}

static void h_free(h_t *h) {
    for (int i = 0; i < NOUT; i++) {
        lines_free(&h->cap.staged[i]);
        lines_free(&h->cap.committed[i]);
    }
}

typedef struct {
    int key;
    int64_t val;
} rec_t;

/* One batch at time `time`; commit or abort it (a crash before the commit). */
static void h_batch(h_t *h, int64_t time, const rec_t *recs, size_t n, int commit) {
    char(*keys)[8] = calloc(n + 1, sizeof *keys);
    lk_record_t *rs = calloc(n + 1, sizeof *rs);
    for (size_t i = 0; i < n; i++) {
        int kl = snprintf(keys[i], sizeof keys[i], "k%d", recs[i].key);
        rs[i] = (lk_record_t){keys[i], (size_t)kl, &recs[i].val, 8, time, "in", 0, (int64_t)i};
    }
    tw_batch(h->p, h->st, &h->b, &h->id, time, rs, n, commit);
    tw_settle(h->cap.staged, h->cap.committed, NOUT, commit);
    free(rs);
    free(keys);
}

/* ---- the model: windows recomputed from every record, at every boundary ---- */

typedef struct {
    int64_t time;
    rec_t *recs;
    size_t n;
} mbatch_t;

/* the window ending at boundary k: per key, present and sum */
static void model_window(const mbatch_t *bs, size_t nb, int64_t k, int present[NKEYS],
                         int64_t sums[NKEYS]) {
    memset(present, 0, NKEYS * sizeof *present);
    memset(sums, 0, NKEYS * sizeof *sums);
    for (size_t i = 0; i < nb; i++) {
        int64_t s = tw_fdiv(bs[i].time, SLIDE);
        if (s < k - NSLIDES || s > k - 1)
            continue;
        for (size_t j = 0; j < bs[i].n; j++) {
            present[bs[i].recs[j].key] = 1;
            sums[bs[i].recs[j].key] += bs[i].recs[j].val;
        }
    }
}

/* Expected output lines (same format as capture, batch-closed by "|") for all batches. */
static lines_t model(const mbatch_t *bs, size_t nb, int filter) {
    lines_t out = {0};
    int vis[NKEYS] = {0};
    int64_t last[NKEYS] = {0};
    for (size_t i = 0; i < nb; i++) {
        lines_t batch = {0};
        if (i > 0) {
            /* only the records of batches before this one exist at its boundaries */
            for (int64_t k = tw_fdiv(bs[i - 1].time, SLIDE) + 1; k <= tw_fdiv(bs[i].time, SLIDE);
                 k++) {
                int present[NKEYS];
                int64_t sums[NKEYS];
                model_window(bs, i, k, present, sums);
                for (int key = 0; key < NKEYS; key++) {
                    int v = present[key] && (!filter || sums[key] != 0);
                    char *line = NULL;
                    if (v && (!vis[key] || last[key] != sums[key]))
                        cr_assert(asprintf(&line, "%lld:k%d=%lld", (long long)(k * SLIDE), key,
                                           (long long)sums[key]) > 0);
                    else if (!v && vis[key])
                        cr_assert(asprintf(&line, "%lld:k%d=-", (long long)(k * SLIDE),
                                           key) > 0);
                    if (line)
                        lines_add(&batch, line);
                    vis[key] = v;
                    last[key] = sums[key];
                }
            }
        }
        if (batch.n)
            qsort(batch.recs, batch.n, sizeof *batch.recs, cmp_str);
        for (size_t j = 0; j < batch.n; j++)
            lines_add(&out, batch.recs[j]);
        free(batch.recs);
        lines_add(&out, strdup("|"));
    }
    return out;
}

/* Random batches: times advance by less than a slide (several batches per slide), a few
 * slides, or now and then more than a whole window (everything leaves at once). */
static mbatch_t *random_batches(unsigned seed, size_t nb) {
    srand(seed);
    mbatch_t *bs = calloc(nb, sizeof *bs);
    int64_t t = 1700000000000LL + rand() % 5000;
    for (size_t i = 0; i < nb; i++) {
        int r = rand() % 20;
        t += r < 8 ? 1 + rand() % 400 : r < 18 ? rand() % (3 * SLIDE) : (NSLIDES + 2) * SLIDE;
        bs[i].time = t;
        bs[i].n = (size_t)(rand() % 5); /* empty batches too: they close windows */
        bs[i].recs = calloc(bs[i].n + 1, sizeof *bs[i].recs);
        for (size_t j = 0; j < bs[i].n; j++)
            bs[i].recs[j] = (rec_t){rand() % NKEYS, (int64_t)(rand() % 7) - 3};
    }
    return bs;
}

static void free_batches(mbatch_t *bs, size_t nb) {
    for (size_t i = 0; i < nb; i++)
        free(bs[i].recs);
    free(bs);
}

Test(windows, incremental_equals_recomputation_and_model) {
    for (unsigned seed = 1; seed <= 12; seed++) {
        size_t nb = 150;
        mbatch_t *bs = random_batches(seed, nb);
        h_t h = {.with_filter = 1};
        h_open(&h);
        for (size_t i = 0; i < nb; i++)
            h_batch(&h, bs[i].time, bs[i].recs, bs[i].n, 1);
        lines_t want = model(bs, nb, 0), wantf = model(bs, nb, 1);
        /* not vacuous: many emissions, deletions among them, the filter changes things */
        size_t dels = 0;
        for (size_t i = 0; i < want.n; i++)
            dels += strstr(want.recs[i], "=-") != NULL;
        cr_assert_gt(want.n - nb, 100, "seed %u: %zu records", seed, want.n - nb);
        cr_assert_gt(dels, 5, "seed %u: %zu deletions", seed, dels);
        cr_assert_neq(want.n, wantf.n, "seed %u: the filter changed nothing", seed);
        assert_lines_eq(&h.cap.committed[OUT_INC], &want, "incremental", seed);
        assert_lines_eq(&h.cap.committed[OUT_RE], &want, "recomputed", seed);
        assert_lines_eq(&h.cap.committed[OUT_FINC], &wantf, "incremental+filter", seed);
        assert_lines_eq(&h.cap.committed[OUT_FRE], &wantf, "recomputed+filter", seed);
        lines_free(&want);
        lines_free(&wantf);
        h_close(&h);
        h_free(&h);
        free_batches(bs, nb);
        tu_rmrf(dir);
    }
}

/* A known case, spelled out: window 3 s, slide 1 s. */
Test(windows, spelled_out) {
    h_t h = {0};
    h_open(&h);
    int64_t t0 = 1700000000000LL; /* a slide boundary */
    rec_t a1[] = {{0, 5}, {1, 1}};
    h_batch(&h, t0 + 100, a1, 2, 1);     /* slide 0 */
    rec_t a2[] = {{0, 2}};
    h_batch(&h, t0 + 900, a2, 1, 1);     /* slide 0 again */
    h_batch(&h, t0 + 1100, NULL, 0, 1);  /* boundary 1: k0=7, k1=1 */
    rec_t a3[] = {{1, 4}};
    h_batch(&h, t0 + 2500, a3, 1, 1);    /* boundary 2: nothing changed */
    h_batch(&h, t0 + 3000, NULL, 0, 1);  /* boundary 3: k1=5 */
    h_batch(&h, t0 + 4000, NULL, 0, 1);  /* boundary 4: slide 0 leaves: k0 gone, k1=4 */
    h_batch(&h, t0 + 9000, NULL, 0, 1);  /* boundaries 5..9: slide 2 leaves at 6 */
    const char *want = "|;|;1700000001000:k0=7;1700000001000:k1=1;|;|;1700000003000:k1=5;|;"
                       "1700000004000:k0=-;1700000004000:k1=4;|;1700000006000:k1=-;|;";
    for (int o = OUT_INC; o <= OUT_RE; o++) {
        char got[1024] = "";
        for (size_t i = 0; i < h.cap.committed[o].n; i++) {
            strcat(got, h.cap.committed[o].recs[i]);
            strcat(got, ";");
        }
        cr_assert_str_eq(got, want, "output %d", o);
    }
    h_close(&h);
    h_free(&h);
}

/* The conveniences over the same input as spelled_out: counts per key and window, and
 * the sum over all keys (under LK_REDUCE_BY_WINDOW_KEY), with their deletions. */
Test(windows, count_by_window_and_reduce_by_window) {
    h_t h = {.conveniences = 1};
    h_open(&h);
    int64_t t0 = 1700000000000LL;
    rec_t a1[] = {{0, 5}, {1, 1}};
    h_batch(&h, t0 + 100, a1, 2, 1);
    rec_t a2[] = {{0, 2}};
    h_batch(&h, t0 + 900, a2, 1, 1);
    h_batch(&h, t0 + 1100, NULL, 0, 1);
    rec_t a3[] = {{1, 4}};
    h_batch(&h, t0 + 2500, a3, 1, 0); /* a crash: the replay counts it once */
    h_batch(&h, t0 + 2500, a3, 1, 1);
    h_batch(&h, t0 + 3000, NULL, 0, 1);
    h_batch(&h, t0 + 4000, NULL, 0, 1);
    h_batch(&h, t0 + 9000, NULL, 0, 1);
    const char *want[2] = {
        "|;|;1700000001000:k0=2;1700000001000:k1=1;|;|;1700000003000:k1=2;|;"
        "1700000004000:k0=-;1700000004000:k1=1;|;1700000006000:k1=-;|;",
        "|;|;1700000001000:*=8;|;|;1700000003000:*=12;|;1700000004000:*=4;|;"
        "1700000006000:*=-;|;"};
    for (int o = OUT_CNT; o <= OUT_ALL; o++) {
        char got[1024] = "";
        for (size_t i = 0; i < h.cap.committed[o].n; i++) {
            strcat(got, h.cap.committed[o].recs[i]);
            strcat(got, ";");
        }
        cr_assert_str_eq(got, want[o - OUT_CNT], "output %d", o);
    }
    /* each adds its map and its window to the topology */
    const char *names[] = {"cnt.ones", "cnt", "all.all", "all"};
    for (size_t i = 0; i < 4; i++) {
        int found = 0;
        for (size_t j = 0; j < h.p->nstages; j++)
            found |= !strcmp(h.p->stages[j]->uid, names[i]);
        cr_assert(found, "no operator '%s'", names[i]);
    }
    h_close(&h);
    h_free(&h);
    /* bad definitions are refused naming the window */
    lk_pipeline_t *p = lk__pipeline_new();
    cr_assert_null(lk_count_by_window(lk_kafka_stream(p, "in"), "c", 1000, 300));
    cr_assert(strstr(p->err, "reduce_by_key_and_window 'c': window 1000 ms and slide 300 ms"),
              "%s", p->err);
    lk__pipeline_destroy(p);
}

Test(windows, crashes_and_restarts_change_nothing) {
    for (unsigned seed = 100; seed < 106; seed++) {
        size_t nb = 120;
        mbatch_t *bs = random_batches(seed, nb);
        h_t ref = {.with_filter = 1};
        h_open(&ref);
        for (size_t i = 0; i < nb; i++)
            h_batch(&ref, bs[i].time, bs[i].recs, bs[i].n, 1);
        h_close(&ref);
        tu_rmrf(dir);

        h_t h = {.with_filter = 1};
        h_open(&h);
        srand(seed * 7919);
        for (size_t i = 0; i < nb; i++) {
            /* crash before the commit (the batch is processed again with its recorded
             * time), sometimes twice; sometimes a restart from the checkpoint */
            int crashes = rand() % 3 == 0 ? 1 + rand() % 2 : 0;
            for (int c = 0; c < crashes; c++)
                h_batch(&h, bs[i].time, bs[i].recs, bs[i].n, 0);
            if (rand() % 10 == 0) {
                h_close(&h);
                h_open(&h);
            }
            h_batch(&h, bs[i].time, bs[i].recs, bs[i].n, 1);
        }
        for (int o = 0; o < NOUT; o++)
            assert_lines_eq(&h.cap.committed[o], &ref.cap.committed[o], "with crashes", seed);
        h_close(&h);
        h_free(&h);
        h_free(&ref);
        free_batches(bs, nb);
        tu_rmrf(dir);
    }
}

static int stat_entries(const lk__state_stat_t *st, void *o) {
    if (!strcmp(st->uid, "w-inc"))
        *(uint64_t *)o = st->entries;
    return 0;
}

Test(windows, state_bounded_by_open_slides) {
    h_t h = {0};
    h_open(&h);
    enum { KEYS = 50 };
    int64_t t0 = 1700000000000LL;
    rec_t recs[KEYS];
    for (int i = 0; i < KEYS; i++)
        recs[i] = (rec_t){i % NKEYS, 1};
    /* one batch per slide for 1,000 slides; keys k0..k5 each slide */
    for (int s = 0; s < 1000; s++)
        h_batch(&h, t0 + s * SLIDE + 10, recs, KEYS, 1);
    uint64_t entries = 0;
    lk__store_txn_t *t = tu_begin(h.st, 0);
    cr_assert_eq(lk__store_state_stats(t, stat_entries, &entries), LK_OK);
    lk__store_txn_abort(t);
    /* open slides: the last one (just added) and the NSLIDES before it, each with an
     * aggregate per key and a live-slice entry; a running value per key; the last
     * closed boundary */
    uint64_t want = (uint64_t)(NSLIDES + 1) * (NKEYS + 1) + NKEYS + 1;
    cr_assert_eq(entries, want, "state entries %llu, expected %llu",
                 (unsigned long long)entries, (unsigned long long)want);
    /* and the last window is exact: each key 50/6 records per slide x 3 slides */
    const lines_t *out = &h.cap.committed[OUT_INC];
    cr_assert_str_eq(out->recs[out->n - 1], "|");
    /* the window sums stay constant after the first NSLIDES boundaries: no emission */
    cr_assert_str_eq(out->recs[out->n - 2], "|");
    h_close(&h);
    h_free(&h);
}

/* ---- refusals ---- */

static void key_fn(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)in;
    int which = *(int *)opaque;
    static char big[600];
    int64_t one = 1;
    if (which == 0)
        lk_emit(b, NULL, 0, &one, 8);
    else if (which == 1)
        lk_emit(b, big, sizeof big, &one, 8);
    else
        lk_emit(b, "k", 1, NULL, 0);
}

Test(windows, bad_records_refused_or_counted) {
    const char *want[] = {"'w' received a record without a key",
                          "'w' received a key of 600 bytes (1..490 allowed)"};
    for (int which = 0; which < 3; which++) {
        lk_pipeline_t *p = lk__pipeline_new();
        lk_stream_t *in = lk_kafka_stream(p, "in");
        lk_stream_t *m = lk_flat_map(in, "m", key_fn, &which);
        lk_reduce_by_key_and_window(m, "w", 1, 2000, 1000, sum, sub, NULL, NULL);
        lk__store_t *st = tu_open(dir, "win");
        char err[512];
        cr_assert_eq(lk__pipeline_open_state(p, st, err, sizeof err), LK_OK, "%s", err);
        lk_batch_t b = {0};
        lk__store_txn_t *t = tu_begin(st, 1);
        lk__batch_begin(&b, p, 1, 1700000000000LL, t, 0);
        int64_t v = 1;
        lk_record_t r = {"x", 1, &v, 8, 0, "in", 0, 0};
        lk__batch_push_input(&b, p, &r);
        if (!b.err)
            lk__batch_end(&b, p);
        if (which < 2) {
            cr_assert_neq(b.err, LK_OK);
            cr_assert(strstr(b.errstr, want[which]), "%s", b.errstr);
            lk__store_txn_abort(t);
        } else {
            /* a tombstone has nothing to reduce: counted, not silent */
            cr_assert_eq(b.err, LK_OK, "%s", b.errstr);
            tu_commit(t);
            int64_t n = 0;
            t = tu_begin(st, 0);
            cr_assert_eq(lk__store_acc_get(t, "w.tombstones", &n), LK_OK);
            lk__store_txn_abort(t);
            cr_assert_eq(n, 1);
        }
        lk__batch_reset(&b, p);
        lk__batch_free(&b);
        lk__pipeline_destroy(p);
        lk__store_close(st);
        tu_rmrf(dir);
    }
}

Test(windows, definition_errors) {
    struct {
        int64_t win, slide;
        int sv;
        int no_reduce;
        const char *want;
    } cases[] = {
        {3000, 2000, 1, 0, "'w': window 3000 ms and slide 2000 ms: both must be > 0 and the "
                           "window a multiple of the slide"},
        {3000, 0, 1, 0, "'w': window 3000 ms and slide 0 ms"},
        {3000, 1000, 0, 0, "'w': schema_version must be >= 1"},
        {3000, 1000, 1, 1, "'w': no function given"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        lk_pipeline_t *p = lk__pipeline_new();
        lk_stream_t *in = lk_kafka_stream(p, "in");
        cr_assert_null(lk_reduce_by_key_and_window(in, "w", cases[i].sv, cases[i].win,
                                                   cases[i].slide,
                                                   cases[i].no_reduce ? NULL : sum, NULL,
                                                   NULL, NULL));
        cr_assert(p->failed);
        cr_assert(strstr(p->err, cases[i].want), "case %zu: %s", i, p->err);
        lk__pipeline_destroy(p);
    }
    /* multiples of batch.interval.ms */
    lk_pipeline_t *p = lk__pipeline_new();
    lk_reduce_by_key_and_window(lk_kafka_stream(p, "in"), "w", 1, 10000, 5000, sum, NULL, NULL,
                                NULL);
    char err[512];
    cr_assert_eq(lk__window_check_conf(p, 5000, err, sizeof err), LK_OK);
    cr_assert_eq(lk__window_check_conf(p, 0, err, sizeof err), LK_OK);
    cr_assert_eq(lk__window_check_conf(p, 3000, err, sizeof err), LK_ERR_CONF_INVALID);
    cr_assert_str_eq(err, "reduce_by_key_and_window 'w': window 10000 ms and slide 5000 ms "
                          "must be multiples of batch.interval.ms (3000)");
    lk__pipeline_destroy(p);
}
