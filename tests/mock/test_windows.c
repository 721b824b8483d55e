/*
 * test_windows.c — reduce_by_key_and_window through the real driver on the mock
 * cluster: windows close on time with no input (idle batches run), the result survives
 * a restart, a window that does not fit batch.interval.ms is refused naming the
 * operator, and a changed window definition (batch or event time, or one to the other)
 * is refused naming both; an event-time window's watermark waits for a partition whose
 * records the plan left unread before it sent any (the driver records it with the plan).
 */
#define _GNU_SOURCE
#include "lockstep.h"
#include "mockutil.h"
#include "testutil.h"
#include "core/util_int.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mu_cluster_t cl;
static char dir[256];

static void setup(void) {
    mu_start(&cl, 1);
    tu_tmpdir(dir, sizeof dir);
    mu_topic(&cl, "in", 1);
}
static void teardown(void) {
    mu_stop(&cl);
    tu_rmrf(dir);
}
TestSuite(windows_driver, .init = setup, .fini = teardown, .timeout = 120);

typedef struct {
    int64_t window, slide;
    int inverse;
    int event;        /* an event-time window instead (tumbling, size = window) */
    int64_t grace;
    char out[4096]; /* "key=count;" / "key=-;" per record, "|" after each batch with output */
} win_t;

static void one(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    int64_t v = 1;
    lk_emit(b, in->key, in->key_len, &v, 8);
}

static void sum(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *a, const lk_bytes_t *v,
                lk_bytes_t *out, void *opaque) {
    (void)key, (void)opaque;
    int64_t x, y;
    memcpy(&x, a->data, 8);
    memcpy(&y, v->data, 8);
    x += y;
    void *o = lk_alloc(b, 8);
    memcpy(o, &x, 8);
    *out = (lk_bytes_t){o, 8};
}

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

static void observe(lk_batch_t *b, const lk_record_t *recs, size_t n, void *opaque) {
    (void)b;
    win_t *w = opaque;
    for (size_t i = 0; i < n; i++) {
        char line[128];
        int64_t v = 0;
        if (recs[i].value)
            memcpy(&v, recs[i].value, 8);
        if (recs[i].value)
            snprintf(line, sizeof line, "%.*s=%lld;", (int)recs[i].key_len,
                     (const char *)recs[i].key, (long long)v);
        else
            snprintf(line, sizeof line, "%.*s=-;", (int)recs[i].key_len,
                     (const char *)recs[i].key);
        strncat(w->out, line, sizeof w->out - strlen(w->out) - 1);
        cr_assert_eq(recs[i].timestamp_ms % w->slide, 0, "a window's end is a boundary");
    }
    if (n)
        strncat(w->out, "|", sizeof w->out - strlen(w->out) - 1);
}

static void define(lk_pipeline_t *p, void *opaque) {
    win_t *w = opaque;
    lk_stream_t *in = lk_kafka_stream(p, "in");
    lk_stream_t *ones = lk_map(in, "ones", one, NULL);
    lk_window_spec_t spec = {.kind = LK_WINDOW_TUMBLING, .size_ms = w->window,
                             .grace_ms = w->grace};
    lk_stream_t *win = w->event ? lk_window_by_event_time(ones, "w", 1, &spec, sum, NULL)
                                : lk_reduce_by_key_and_window(ones, "w", 1, w->window, w->slide,
                                                              sum, w->inverse ? sub : NULL,
                                                              NULL, NULL);
    lk_foreach_batch(win, "observe", observe, w);
}

/* Run batches until out contains want (or 10 s pass: then fail). */
static void run_until(lk_context_t *ctx, win_t *w, const char *want) {
    int64_t end = lk__mono_ms() + 10000;
    while (!strstr(w->out, want)) {
        cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
        cr_assert_lt(lk__mono_ms(), end, "waited 10 s for '%s'; output so far '%s'", want,
                     w->out);
    }
}

Test(windows_driver, windows_close_on_time_and_survive_a_restart) {
    win_t w = {.window = 1000, .slide = 500, .inverse = 1};
    lk_conf_t *conf = mu_conf(&cl, "win", dir);
    char err[1024];
    lk_context_t *ctx = lk_context_get_or_create(conf, define, &w, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    mu_produce(&cl, "in", 0, "a", "x");
    mu_produce(&cl, "in", 0, "b", "x");
    mu_produce(&cl, "in", 0, "a", "x");
    mu_flush(&cl);
    /* the batch reading them emits nothing: its slide has not ended */
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(lk_context_last_batch(ctx), 1);
    cr_assert_str_eq(w.out, "");
    /* idle batches close it: one emission for the window holding the records */
    run_until(ctx, &w, "|");
    cr_assert_str_eq(w.out, "a=2;b=1;|");
    lk_context_destroy(ctx);
    /* a restart continues from the checkpoint: the records leave the window once */
    win_t w2 = {.window = 1000, .slide = 500, .inverse = 1};
    ctx = lk_context_get_or_create(conf, define, &w2, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    run_until(ctx, &w2, "|");
    cr_assert_str_eq(w2.out, "a=-;b=-;|");
    /* and nothing more, however long it runs */
    int64_t until = lk__mono_ms() + 1200;
    while (lk__mono_ms() < until)
        cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_str_eq(w2.out, "a=-;b=-;|");
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

Test(windows_driver, window_must_fit_the_batch_interval) {
    win_t w = {.window = 10000, .slide = 5000, .inverse = 1};
    lk_conf_t *conf = mu_conf(&cl, "win", dir);
    mu_set(conf, "batch.interval.ms", "3000");
    char err[1024];
    cr_assert_null(lk_context_get_or_create(conf, define, &w, err, sizeof err));
    cr_assert_str_eq(err, "reduce_by_key_and_window 'w': window 10000 ms and slide 5000 ms "
                          "must be multiples of batch.interval.ms (3000)");
    mu_set(conf, "batch.interval.ms", "2500");
    lk_context_t *ctx = lk_context_get_or_create(conf, define, &w, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

Test(windows_driver, changed_definition_refused) {
    win_t w = {.window = 3000, .slide = 1000, .inverse = 1};
    lk_conf_t *conf = mu_conf(&cl, "win", dir);
    char err[1024];
    lk_context_t *ctx = lk_context_get_or_create(conf, define, &w, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    lk_context_destroy(ctx);
    win_t longer = {.window = 4000, .slide = 1000, .inverse = 1};
    cr_assert_null(lk_context_get_or_create(conf, define, &longer, err, sizeof err));
    cr_assert_str_eq(err, "operator 'w' (reduce_by_key_and_window): window definition changed "
                          "from time=batch,window.ms=3000,slide.ms=1000,inverse=yes to "
                          "time=batch,window.ms=4000,slide.ms=1000,inverse=yes; keep the old "
                          "definition, or give the new window a new uid (it starts empty)");
    win_t noinv = {.window = 3000, .slide = 1000, .inverse = 0};
    cr_assert_null(lk_context_get_or_create(conf, define, &noinv, err, sizeof err));
    cr_assert(strstr(err, "inverse=yes to time=batch,window.ms=3000,slide.ms=1000,inverse=no"),
              "%s", err);
    /* batch time to event time: another kind of operator */
    win_t ev = {.window = 3000, .event = 1};
    cr_assert_null(lk_context_get_or_create(conf, define, &ev, err, sizeof err));
    cr_assert_str_eq(err, "operator 'w' was a reduce_by_key_and_window and is now a "
                          "window_by_event_time; give the new operator a new uid");
    /* the same definition starts */
    ctx = lk_context_get_or_create(conf, define, &w, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

Test(windows_driver, changed_event_time_definition_refused) {
    win_t w = {.window = 3000, .event = 1, .grace = 500};
    lk_conf_t *conf = mu_conf(&cl, "win", dir);
    char err[1024];
    lk_context_t *ctx = lk_context_get_or_create(conf, define, &w, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    lk_context_destroy(ctx);
    win_t more_grace = {.window = 3000, .event = 1, .grace = 1000};
    cr_assert_null(lk_context_get_or_create(conf, define, &more_grace, err, sizeof err));
    cr_assert_str_eq(err, "operator 'w' (window_by_event_time): window definition changed "
                          "from time=event,kind=tumbling,size.ms=3000,advance.ms=3000,"
                          "grace.ms=500,emit=close,event.time=kafka to time=event,"
                          "kind=tumbling,size.ms=3000,advance.ms=3000,grace.ms=1000,"
                          "emit=close,event.time=kafka; keep the old definition, or give the "
                          "new window a new uid (it starts empty)");
    lk_conf_destroy(conf);
}

/* ---- event time: a partition with records unread holds the watermark ---- */

static void produce_at(mu_cluster_t *c, const char *topic, int partition, const char *key,
                       const char *value, int64_t ts) {
    rd_kafka_resp_err_t e = rd_kafka_producev(
        c->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
        RD_KAFKA_V_KEY(key, strlen(key)), RD_KAFKA_V_VALUE((void *)value, strlen(value)),
        RD_KAFKA_V_TIMESTAMP(ts), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    cr_assert_eq(e, 0, "produce: %s", rd_kafka_err2str(e));
}

/* (key, int64 1), except the records whose value is "skip": they never reach the window */
static void one_unless_skip(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    if (in->value_len == 4 && !memcmp(in->value, "skip", 4))
        return;
    int64_t v = 1;
    lk_emit(b, in->key, in->key_len, &v, 8);
}

typedef struct {
    char out[1024]; /* "[start,end)key=count;" per final result */
    size_t late;
} ev_t;

static void observe_event(lk_batch_t *b, const lk_record_t *recs, size_t n, void *opaque) {
    (void)b;
    ev_t *w = opaque;
    for (size_t i = 0; i < n; i++) {
        lk_window_result_t wr;
        cr_assert_eq(lk_window_result_parse(recs[i].value, recs[i].value_len, &wr), LK_OK);
        int64_t v;
        memcpy(&v, wr.value, 8);
        char line[128];
        snprintf(line, sizeof line, "[%lld,%lld)%.*s=%lld;", (long long)wr.start_ms,
                 (long long)wr.end_ms, (int)recs[i].key_len, (const char *)recs[i].key,
                 (long long)v);
        strncat(w->out, line, sizeof w->out - strlen(w->out) - 1);
    }
}

static void count_late(lk_batch_t *b, const lk_record_t *recs, size_t n, void *opaque) {
    (void)b, (void)recs;
    ((ev_t *)opaque)->late += n;
}

static void define_event(lk_pipeline_t *p, void *opaque) {
    ev_t *w = opaque;
    lk_stream_t *in = lk_kafka_stream(p, "ev");
    lk_stream_t *ones = lk_flat_map(in, "ones", one_unless_skip, NULL);
    lk_window_spec_t spec = {.kind = LK_WINDOW_TUMBLING, .size_ms = 1000};
    lk_stream_t *win = lk_window_by_event_time(ones, "w", 1, &spec, sum, NULL);
    lk_foreach_batch(win, "observe", observe_event, w);
    lk_foreach_batch(lk_window_late(win, "late"), "observe-late", count_late, w);
}

/* One record per partition and batch: in batch 1 partition 1 sends nothing to the window
 * (its record is dropped before it) while its next record, older than partition 0's, is
 * still unread. The driver records that with the plan, so the watermark holds and that
 * record is counted in its window; before, the watermark jumped to partition 0's time
 * and the record was late. */
Test(windows_driver, unread_partition_holds_the_event_time_watermark) {
    mu_topic(&cl, "ev", 2);
    produce_at(&cl, "ev", 0, "a", "x", 5000);
    produce_at(&cl, "ev", 0, "a", "x", 5100);
    produce_at(&cl, "ev", 1, "b", "skip", 50);
    produce_at(&cl, "ev", 1, "b", "x", 100);
    for (int p = 0; p < 2; p++) /* closes every window above */
        produce_at(&cl, "ev", p, "z", "x", 20000);
    mu_flush(&cl);
    ev_t w = {{0}, 0};
    lk_conf_t *conf = mu_conf(&cl, "wev", dir);
    mu_set(conf, "max.records.per.partition", "1");
    char err[1024];
    lk_context_t *ctx = lk_context_get_or_create(conf, define_event, &w, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(lk_context_last_batch(ctx), 3);
    cr_assert_str_eq(w.out, "[0,1000)b=1;[5000,6000)a=2;");
    cr_assert_eq(w.late, 0, "late records: %zu", w.late);
    int64_t late = -1;
    lk_err_t e = lk_context_accumulator(ctx, "w.late", &late);
    cr_assert(e == LK_ERR_NOT_FOUND || (e == LK_OK && late == 0), "w.late = %lld",
              (long long)late);
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}
