/*
 * window.c — windowed aggregation over batch time (Spark's reduceByKeyAndWindow), exact
 * across crashes: slices, running values and the last closed slide live in the
 * operator's checkpoint database and are written only inside the batch's transaction,
 * and a batch's time comes from its recorded plan. So a batch processed again after a
 * crash reads the same state, falls in the same slide and emits the same records; one
 * that committed never emits again.
 *
 * Model: slide s holds the batches with time in [s*slide, (s+1)*slide); the window
 * ending at boundary k (time k*slide) is slides [k-n, k-1], n = window / slide. During a
 * batch the records are reduced per (slide, key) in the engine's per-batch table; at the
 * end of the batch (lk__window_flush) every boundary passed since the last batch is
 * closed in order (only boundaries where a slide enters or leaves: others change
 * nothing), then the batch's aggregates are added to its slide. Closing boundary k
 * touches only the keys of the slide entering (k-1) and of the one leaving (k-1-n), so
 * its cost is proportional to those slides, not to the whole state; the leaving slide is
 * then range-deleted.
 */
#define _GNU_SOURCE
#include "window_int.h"
#include "../core/util_int.h"

#include <stdlib.h>
#include <string.h>

#define LK__EVENT_TIME_LIMIT (INT64_C(1) << 61) /* far beyond any real time; no overflow */

static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b) && ((a < 0) != (b < 0)))
        q--;
    return q;
}

/* the operator's name in messages and in the topology */
static const char *op_name(const lk_stream_t *s) {
    return s->win && s->win->domain == LK__WIN_EVENT_TIME ? "window_by_event_time"
                                                          : "reduce_by_key_and_window";
}

const char *lk__window_kind(const lk_stream_t *s) { return op_name(s); }

int lk__window_needs_time(const lk_stream_t *s) {
    return s->win->domain == LK__WIN_BATCH_TIME || s->win->idle_ms > 0;
}

int lk__window_is_kind(const char *kind) {
    return !strcmp(kind, "reduce_by_key_and_window") || !strcmp(kind, "window_by_event_time");
}

void lk__window_free(lk__window_t *w) {
    if (w)
        free(w->parts);
    free(w);
}

void lk__window_reset(lk_stream_t *s) {
    s->win->wm_loaded = 0;
    s->win->nparts = 0;
}

lk_stream_t *lk_reduce_by_key_and_window(lk_stream_t *in, const char *uid,
                                         int schema_version, int64_t window_ms,
                                         int64_t slide_ms, lk_reduce_fn *reduce,
                                         lk_reduce_fn *inv_reduce,
                                         lk_window_filter_fn *filter, void *opaque) {
    if (!in)
        return NULL;
    const char *u = uid ? uid : "";
    if (schema_version < 1) {
        lk_pipeline_fail(in->p, "%s '%s': schema_version must be >= 1", "reduce_by_key_and_window", u);
        return NULL;
    }
    if (slide_ms <= 0 || window_ms <= 0 || window_ms % slide_ms) {
        lk_pipeline_fail(in->p,
                         "%s '%s': window %lld ms and slide %lld ms: both must be > 0 and "
                         "the window a multiple of the slide",
                         "reduce_by_key_and_window", u, (long long)window_ms, (long long)slide_ms);
        return NULL;
    }
    lk__window_t *w = calloc(1, sizeof *w);
    char *params = NULL;
    if (!w || asprintf(&params, "time=batch,window.ms=%lld,slide.ms=%lld,inverse=%s",
                           (long long)window_ms, (long long)slide_ms,
                           inv_reduce ? "yes" : "no") < 0) {
        free(w);
        lk_pipeline_fail(in->p, "out of memory");
        return NULL;
    }
    lk_stream_t *s = lk__stage_derive(in, LK__ST_WINDOW, uid, (const void *)reduce, opaque,
                                      "reduce_by_key_and_window");
    if (!s) {
        free(w);
        free(params);
        return NULL;
    }
    *w = (lk__window_t){.domain = LK__WIN_BATCH_TIME,
                        .size_ms = window_ms,
                        .slide_ms = slide_ms,
                        .reduce = reduce,
                        .inv = inv_reduce,
                        .filter = filter};
    s->win = w;
    s->fn.reduce = reduce;
    s->schema_version = schema_version;
    free(s->params);
    s->params = params;
    return s;
}

/* ---- conveniences over reduce_by_key_and_window ---- */

/* count_by_window: (key, int64 1) per record; a tombstone stays one (the window counts it
 * in <uid>.tombstones, as it does for any input) */
static void count_one(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    int64_t one = 1;
    lk_emit(b, in->key, in->key_len, in->value ? &one : NULL, in->value ? sizeof one : 0);
}

static void count_add(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *a,
                      const lk_bytes_t *v, lk_bytes_t *out, void *opaque) {
    (void)key;
    int64_t x, y, *r = lk_alloc(b, sizeof *r);
    if (!r)
        return; /* the batch has failed (out of memory) */
    if (a->len != sizeof x || v->len != sizeof y) { /* only this file makes them */
        lk_batch_fail(b, "a count of %zu or %zu bytes, not 8: the window state is damaged",
                      a->len, v->len);
        return;
    }
    memcpy(&x, a->data, sizeof x);
    memcpy(&y, v->data, sizeof y);
    *r = opaque ? x - y : x + y; /* opaque: the inverse */
    *out = (lk_bytes_t){r, sizeof *r};
}

static void count_sub(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *a,
                      const lk_bytes_t *v, lk_bytes_t *out, void *opaque) {
    (void)opaque;
    count_add(b, key, a, v, out, (void *)1);
}

lk_stream_t *lk_count_by_window(lk_stream_t *in, const char *uid, int64_t window_ms,
                                int64_t slide_ms) {
    if (!in)
        return NULL;
    char mid[256];
    lk__fmt(mid, sizeof mid, "%s.ones", uid ? uid : "");
    lk_stream_t *ones = lk_map(in, mid, count_one, NULL);
    return lk_reduce_by_key_and_window(ones, uid, 1, window_ms, slide_ms, count_add, count_sub,
                                       NULL, NULL);
}

/* reduce_by_window: every record under the one key LK_REDUCE_BY_WINDOW_KEY */
static void all_key(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    lk_emit(b, LK_REDUCE_BY_WINDOW_KEY, sizeof LK_REDUCE_BY_WINDOW_KEY - 1, in->value,
            in->value_len);
}

lk_stream_t *lk_reduce_by_window(lk_stream_t *in, const char *uid, int schema_version,
                                 int64_t window_ms, int64_t slide_ms, lk_reduce_fn *reduce,
                                 lk_reduce_fn *inv_reduce, void *opaque) {
    if (!in)
        return NULL;
    char mid[256];
    lk__fmt(mid, sizeof mid, "%s.all", uid ? uid : "");
    lk_stream_t *all = lk_map(in, mid, all_key, NULL);
    return lk_reduce_by_key_and_window(all, uid, schema_version, window_ms, slide_ms, reduce,
                                       inv_reduce, NULL, opaque);
}

lk_stream_t *lk_window_by_event_time(lk_stream_t *in, const char *uid, int schema_version,
                                     const lk_window_spec_t *spec, lk_reduce_fn *reduce,
                                     void *opaque) {
    if (!in)
        return NULL;
    const char *u = uid ? uid : "", *what = "window_by_event_time";
    if (schema_version < 1) {
        lk_pipeline_fail(in->p, "%s '%s': schema_version must be >= 1", what, u);
        return NULL;
    }
    if (!spec) {
        lk_pipeline_fail(in->p, "%s '%s': no window spec given", what, u);
        return NULL;
    }
    int64_t adv = spec->kind == LK_WINDOW_TUMBLING ? spec->size_ms : spec->advance_ms;
    const char *kind = spec->kind == LK_WINDOW_TUMBLING  ? "tumbling"
                       : spec->kind == LK_WINDOW_HOPPING ? "hopping"
                       : spec->kind == LK_WINDOW_SESSION ? "session"
                                                         : NULL;
    int session = spec->kind == LK_WINDOW_SESSION;
    const char *bad = NULL;
    if (!kind)
        bad = "kind must be LK_WINDOW_TUMBLING, LK_WINDOW_HOPPING or LK_WINDOW_SESSION";
    else if (session && (spec->gap_ms <= 0 || spec->gap_ms >= LK__EVENT_TIME_LIMIT))
        bad = "a session window needs gap_ms > 0 (and below 2^61)";
    else if (session && (spec->size_ms || spec->advance_ms))
        bad = "a session window has no size: leave size_ms and advance_ms 0";
    else if (!session && spec->gap_ms)
        bad = "gap_ms is for session windows only: leave it 0";
    else if (!session && spec->size_ms <= 0)
        bad = "size_ms must be > 0";
    else if (spec->kind == LK_WINDOW_TUMBLING && spec->advance_ms &&
             spec->advance_ms != spec->size_ms)
        bad = "a tumbling window advances by its size: leave advance_ms 0";
    else if (spec->kind == LK_WINDOW_HOPPING && (adv <= 0 || spec->size_ms % adv))
        bad = "a hopping window's advance_ms must be > 0 and divide size_ms";
    else if (spec->grace_ms < 0 || spec->idle_ms < 0)
        bad = "grace_ms and idle_ms must be >= 0";
    else if (spec->size_ms >= LK__EVENT_TIME_LIMIT || spec->grace_ms >= LK__EVENT_TIME_LIMIT)
        bad = "size_ms and grace_ms must be below 2^61";
    else if (spec->emit != LK_WINDOW_EMIT_ON_CLOSE && spec->emit != LK_WINDOW_EMIT_ON_UPDATE)
        bad = "emit must be LK_WINDOW_EMIT_ON_CLOSE or LK_WINDOW_EMIT_ON_UPDATE";
    if (bad) {
        lk_pipeline_fail(in->p, "%s '%s': %s", what, u, bad);
        return NULL;
    }
    lk__window_t *w = calloc(1, sizeof *w);
    char *params = NULL;
    int n = session ? asprintf(&params,
                               "time=event,kind=session,gap.ms=%lld,grace.ms=%lld,emit=%s,"
                               "event.time=%s",
                               (long long)spec->gap_ms, (long long)spec->grace_ms,
                               spec->emit == LK_WINDOW_EMIT_ON_CLOSE ? "close" : "update",
                               spec->event_time ? "function" : "kafka")
                    : asprintf(&params,
                               "time=event,kind=%s,size.ms=%lld,advance.ms=%lld,grace.ms=%lld,"
                               "emit=%s,event.time=%s",
                               kind, (long long)spec->size_ms, (long long)adv,
                               (long long)spec->grace_ms,
                               spec->emit == LK_WINDOW_EMIT_ON_CLOSE ? "close" : "update",
                               spec->event_time ? "function" : "kafka");
    if (!w || n < 0) {
        free(w);
        lk_pipeline_fail(in->p, "out of memory");
        return NULL;
    }
    lk_stream_t *s = lk__stage_derive(in, LK__ST_WINDOW, uid, (const void *)reduce, opaque, what);
    if (!s) {
        free(w);
        free(params);
        return NULL;
    }
    *w = (lk__window_t){.domain = LK__WIN_EVENT_TIME,
                        .size_ms = session ? 1 : spec->size_ms, /* unused by sessions */
                        .slide_ms = session ? 1 : adv,
                        .session = session,
                        .gap_ms = spec->gap_ms,
                        .reduce = reduce,
                        .grace_ms = spec->grace_ms,
                        .idle_ms = spec->idle_ms,
                        .emit = spec->emit,
                        .event_time = spec->event_time};
    s->win = w;
    s->fn.reduce = reduce;
    s->schema_version = schema_version;
    free(s->params);
    s->params = params;
    return s;
}

lk_stream_t *lk_window_late(lk_stream_t *window, const char *uid) {
    if (!window)
        return NULL;
    if (window->kind != LK__ST_WINDOW || window->win->domain != LK__WIN_EVENT_TIME) {
        lk_pipeline_fail(window->p, "lk_window_late('%s'): '%s' is not an event-time window",
                         uid ? uid : "", window->uid);
        return NULL;
    }
    /* a side output has no function: the window stage is passed as the non-NULL one */
    return lk__stage_derive(window, LK__ST_SIDE, uid, window, NULL, "window_late");
}

enum { LK__FRAME_UPDATE = 0, LK__FRAME_FINAL = 1, LK__FRAME_DELETION = 2 };

lk_err_t lk_window_result_parse(const void *value, size_t len, lk_window_result_t *out) {
    if (!value || len < 17 || !out)
        return LK_ERR_INVALID_ARG;
    const unsigned char *p = value;
    out->start_ms = (int64_t)lk__get_be64(p);
    out->end_ms = (int64_t)lk__get_be64(p + 8);
    if (p[16] > LK__FRAME_DELETION)
        return LK_ERR_INVALID_ARG;
    out->final = p[16] == LK__FRAME_FINAL;
    out->value = p[16] == LK__FRAME_DELETION ? NULL : p + 17;
    out->value_len = p[16] == LK__FRAME_DELETION ? 0 : len - 17;
    return LK_OK;
}

/* The value of an event-time window's record: be64 start, be64 end, u8 kind (0 update,
 * 1 final, 2 deletion: no bytes follow), bytes. */
static void *frame(lk_batch_t *b, int64_t start, int64_t end, int kind, const void *v,
                   size_t vlen) {
    unsigned char *p = lk_alloc(b, 17 + vlen);
    if (!p)
        return NULL;
    lk__put_be64(p, (uint64_t)start);
    lk__put_be64(p + 8, (uint64_t)end);
    p[16] = (unsigned char)kind;
    if (vlen)
        memcpy(p + 17, v, vlen);
    return p;
}

lk_err_t lk__window_check_conf(const lk_pipeline_t *p, int64_t interval, char *errstr,
                               size_t errstr_size) {
    for (size_t i = 0; i < p->nstages; i++) {
        const lk_stream_t *s = p->stages[i];
        if (s->kind != LK__ST_WINDOW || s->win->domain != LK__WIN_BATCH_TIME || interval <= 0)
            continue;
        if (s->win->size_ms % interval || s->win->slide_ms % interval)
            return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                           "%s '%s': window %lld ms and slide %lld ms must be multiples of "
                           "batch.interval.ms (%lld)",
                           op_name(s), s->uid, (long long)s->win->size_ms,
                           (long long)s->win->slide_ms, (long long)interval);
    }
    return LK_OK;
}

int lk__window_wants_plan(const lk_pipeline_t *p) {
    for (size_t i = 0; i < p->nstages; i++)
        if (p->stages[i]->kind == LK__ST_WINDOW && p->stages[i]->win->domain == LK__WIN_EVENT_TIME)
            return 1;
    return 0;
}

/* whether topic is read by the source s descends from */
static int reads_topic(const lk_stream_t *s, const char *topic) {
    while (s && s->kind != LK__ST_SOURCE)
        s = s->parent;
    for (size_t i = 0; s && i < s->ntopics; i++)
        if (!strcmp(s->topics[i], topic))
            return 1;
    return 0;
}

lk_err_t lk__window_record_plan(const lk_pipeline_t *p, lk_store_txn_t *t, uint64_t batch_id,
                                int64_t now_ms, const lk__wunread_t *unread, size_t n,
                                char *errstr, size_t errstr_size) {
    lk__wunread_t *mine = malloc((n ? n : 1) * sizeof *mine);
    if (!mine)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    lk_err_t e = LK_OK;
    for (size_t i = 0; i < p->nstages && !e; i++) {
        const lk_stream_t *s = p->stages[i];
        if (s->kind != LK__ST_WINDOW || s->win->domain != LK__WIN_EVENT_TIME)
            continue;
        size_t m = 0;
        for (size_t j = 0; j < n; j++)
            if (reads_topic(s, unread[j].topic))
                mine[m++] = unread[j];
        char err[400];
        if ((e = lk__wstore_unread_put(t, s->db, batch_id, mine, m, now_ms, err, sizeof err)))
            lk__err(e, errstr, errstr_size, "%s '%s': recording the batch plan: %s",
                    op_name(s), s->uid, err);
    }
    free(mine);
    return e;
}

/* slice numbers in the collected keys: sign bit flipped, big-endian (as in the store) */
static void put_slice(unsigned char *p, int64_t s) {
    lk__put_be64(p, (uint64_t)s ^ (UINT64_C(1) << 63));
}
static int64_t get_slice(const unsigned char *p) {
    return (int64_t)(lk__get_be64(p) ^ (UINT64_C(1) << 63));
}

/* The watermark committed before this batch (read once per batch). */
static int load_wm(lk_batch_t *b, lk_stream_t *s) {
    lk__window_t *w = s->win;
    if (w->wm_loaded)
        return 1;
    lk_err_t e = lk__wstore_meta_get(b->txn, s->db, "wm", &w->wm);
    if (e == LK_ERR_NOT_FOUND) {
        w->wm = INT64_MIN;
    } else if (e) {
        lk__batch_failf(b, e, "%s '%s': reading the watermark: %s", op_name(s), s->uid,
                        lk_err_str(e));
        return 0;
    }
    w->wm_loaded = 1;
    return 1;
}


/* Event time: the record's slice (1), or 0 when it is late (counted, sent to the side
 * output) or an error was recorded. */
static int event_slice(lk_batch_t *b, lk_stream_t *s, const lk_record_t *r, int64_t *slice) {
    lk__window_t *w = s->win;
    int64_t et;
    if (w->event_time) {
        lk_stream_t *saved = b->cur;
        b->cur = s;
        et = w->event_time(b, r, s->opaque);
        b->cur = saved;
        if (b->err)
            return 0;
    } else {
        et = b->input ? b->input->timestamp_ms : r->timestamp_ms;
    }
    if (et <= -LK__EVENT_TIME_LIMIT || et >= LK__EVENT_TIME_LIMIT) {
        lk__batch_failf(b, LK_ERR_INVALID_ARG,
                        "%s '%s': event time %lld ms is out of range (|t| < 2^61)",
                        op_name(s), s->uid, (long long)et);
        return 0;
    }
    /* the input partition's highest event time in this batch */
    if (b->input && b->input->topic) {
        size_t i;
        for (i = 0; i < w->nparts; i++)
            if (w->parts[i].partition == b->input->partition &&
                !strcmp(w->parts[i].topic, b->input->topic))
                break;
        if (i == w->nparts) {
            if (w->nparts == w->capparts) {
                size_t cap = w->capparts ? w->capparts * 2 : 8;
                lk__wpart_t *n = realloc(w->parts, cap * sizeof *n);
                if (!n) {
                    lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
                    return 0;
                }
                w->parts = n;
                w->capparts = cap;
            }
            w->parts[w->nparts++] = (lk__wpart_t){b->input->topic, b->input->partition, et};
        } else if (et > w->parts[i].max) {
            w->parts[i].max = et;
        }
    }
    if (!load_wm(b, s))
        return 0;
    /* a session's "slice" is the event time itself; its own session is [et, et + gap) */
    *slice = w->session ? et : floor_div(et, w->slide_ms);
    int64_t start = w->session ? et : *slice * w->slide_ms;
    int64_t end = start + (w->session ? w->gap_ms : w->size_ms);
    if (end > w->wm)
        return 1;
    /* late: every window holding et has closed. Never silent. */
    char name[256];
    lk__fmt(name, sizeof name, "%s.late", s->uid);
    if (lk_accumulator_add(b, name, 1))
        return 0;
    void *v = frame(b, start, end, 0, r->value, r->value_len);
    if (!v) {
        lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
        return 0;
    }
    lk_record_t late = {r->key, r->key_len, v, 17 + r->value_len, et, NULL, -1, -1};
    lk__stage_deliver(b, s, &late, 1);
    return 0;
}

size_t lk__window_kv_key(lk_batch_t *b, lk_stream_t *s, const lk_record_t *r,
                         unsigned char *buf) {
    if (!r->key) {
        lk__batch_failf(b, LK_ERR_INVALID_ARG,
                        "%s '%s' received a record without a key; key the records (e.g. "
                        "with a map) before the window",
                        op_name(s), s->uid);
        return 0;
    }
    if (r->key_len == 0 || r->key_len > LK__WIN_MAX_KEY) {
        lk__batch_failf(b, LK_ERR_TOO_LARGE,
                        "%s '%s' received a key of %zu bytes (1..%d allowed); shorten the "
                        "keys (e.g. hash them) before the window",
                        op_name(s), s->uid, r->key_len, LK__WIN_MAX_KEY);
        return 0;
    }
    if (!r->value) { /* nothing to reduce; counted, never silent */
        char name[256];
        lk__fmt(name, sizeof name, "%s.tombstones", s->uid);
        lk_accumulator_add(b, name, 1);
        return 0;
    }
    int64_t slice;
    if (s->win->domain == LK__WIN_BATCH_TIME) {
        slice = floor_div(b->time_ms, s->win->slide_ms);
    } else if (!event_slice(b, s, r, &slice)) {
        return 0;
    }
    put_slice(buf, slice);
    memcpy(buf + LK__WIN_KV_PREFIX, r->key, r->key_len);
    return LK__WIN_KV_PREFIX + r->key_len;
}

/* ---- closing boundaries ---- */

typedef struct {
    lk_batch_t *b;
    lk_stream_t *s;
    int64_t *slices; /* live slices (malloc'ed) */
    size_t n, cap;
    lk_bytes_t *keys; /* keys of one slice, bytes in the arena */
    size_t nkeys, capkeys;
    int64_t lo, hi; /* recomputation: the window's slices [lo, hi] */
    lk_bytes_t acc;
    int have;
    uint32_t count;
    int64_t marked[8]; /* slices marked live by this flush (a few per batch) */
    size_t nmarked;
    int oom;
    char err[400]; /* a store call's message, before it becomes the batch's */
} wctx_t;

static int add_live(int64_t slice, void *o) {
    wctx_t *c = o;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 16;
        int64_t *n = realloc(c->slices, cap * sizeof *n);
        if (!n)
            return c->oom = 1;
        c->slices = n;
        c->cap = cap;
    }
    c->slices[c->n++] = slice;
    return 0;
}

static int add_key(const void *key, size_t klen, void *o) {
    wctx_t *c = o;
    if (c->nkeys == c->capkeys) {
        size_t cap = c->capkeys ? c->capkeys * 2 : 64;
        lk_bytes_t *n = realloc(c->keys, cap * sizeof *n);
        if (!n)
            return c->oom = 1;
        c->keys = n;
        c->capkeys = cap;
    }
    void *k = lk__batch_copy(c->b, key, klen);
    if (!k)
        return c->oom = 1;
    c->keys[c->nkeys++] = (lk_bytes_t){k, klen};
    return 0;
}

static int has_slice(const wctx_t *c, int64_t slice) {
    for (size_t i = 0; i < c->n; i++)
        if (c->slices[i] == slice)
            return 1;
    return 0;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* reduce (or inverse-reduce) a and v with the user's function, as the stage */
static lk_bytes_t call_reduce(lk_batch_t *b, lk_stream_t *s, lk_reduce_fn *fn,
                              const lk_bytes_t *key, const lk_bytes_t *a, const lk_bytes_t *v) {
    lk_bytes_t out = {NULL, 0};
    lk_stream_t *saved = b->cur;
    b->cur = s;
    fn(b, key, a, v, &out, s->opaque);
    b->cur = saved;
    return out;
}

/* a copy of key's aggregate in slice (LMDB's bytes change with the next write) */
static int slice_value(wctx_t *c, const lk_bytes_t *key, int64_t slice, lk_bytes_t *out) {
    const void *v;
    size_t vlen;
    lk_err_t e = lk__wstore_slice_get(c->b->txn, c->s->db, key->data, key->len, slice, &v, &vlen);
    if (e == LK_ERR_NOT_FOUND)
        return 0;
    if (e) {
        lk__batch_failf(c->b, e, "%s '%s': reading a slice: %s", op_name(c->s), c->s->uid,
                        lk_err_str(e));
        return -1;
    }
    out->data = lk__batch_copy(c->b, v, vlen);
    out->len = vlen;
    if (!out->data) {
        lk__batch_failf(c->b, LK_ERR_NOMEM, "out of memory in '%s'", c->s->uid);
        return -1;
    }
    return 1;
}

/* Reduce key's aggregates in the live slices [c->lo, c->hi], in slice order, into
 * c->acc (c->have: any; c->count: how many). 0, or -1 with the batch failed. */
static int fold_slices(wctx_t *c, const lk_bytes_t *key) {
    c->have = 0;
    c->count = 0;
    for (size_t i = 0; i < c->n && !c->b->err; i++) {
        if (c->slices[i] < c->lo || c->slices[i] > c->hi)
            continue;
        lk_bytes_t v;
        int r = slice_value(c, key, c->slices[i], &v);
        if (r < 0)
            return -1;
        if (!r)
            continue;
        c->count++;
        if (!c->have) {
            c->acc = v;
            c->have = 1;
        } else {
            c->acc = call_reduce(c->b, c->s, c->s->win->reduce, key, &c->acc, &v);
        }
    }
    return c->b->err ? -1 : 0;
}

/* The new windowed value of key at boundary k; emit what changed and keep it. */
static void update_key(wctx_t *c, const lk_bytes_t *key, int64_t k, int entered, int left) {
    lk_batch_t *b = c->b;
    lk_stream_t *s = c->s;
    const lk__window_t *w = s->win;
    int64_t n = w->size_ms / w->slide_ms;
    lk__wvalue_t old;
    lk_err_t e = lk__wstore_value_get(b->txn, s->db, key->data, key->len, &old);
    if (e && e != LK_ERR_NOT_FOUND) {
        lk__batch_failf(b, e, "%s '%s': reading a window value: %s", op_name(s), s->uid,
                        lk_err_str(e));
        return;
    }
    int found = e == LK_OK;
    lk_bytes_t prev = {NULL, 0};
    if (found) {
        prev.data = lk__batch_copy(b, old.val, old.len);
        prev.len = old.len;
        if (!prev.data && old.len) {
            lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
            return;
        }
        if (!prev.data)
            prev.data = "";
    }
    lk_bytes_t run = {NULL, 0};
    uint32_t nslices = 0;
    if (w->inv) {
        /* Spark's incremental form: old + entering - leaving */
        if (found) {
            run = prev;
            nslices = old.nslices;
        }
        lk_bytes_t v;
        if (entered) {
            if (slice_value(c, key, k - 1, &v) != 1)
                goto lost;
            run = found && nslices ? call_reduce(b, s, w->reduce, key, &run, &v) : v;
            nslices++;
        }
        if (left) {
            if (!found || !nslices || slice_value(c, key, k - 1 - n, &v) != 1)
                goto lost;
            run = call_reduce(b, s, w->inv, key, &run, &v);
            nslices--;
        }
    } else {
        /* recomputation from the live slices of the window */
        c->lo = k - n;
        c->hi = k - 1;
        if (fold_slices(c, key))
            return;
        run = c->acc;
        nslices = c->count;
    }
    if (b->err)
        return;
    int was_visible = found && old.visible;
    lk_record_t r = {key->data, key->len, NULL, 0, k * w->slide_ms, NULL, -1, -1};
    if (!nslices) {
        /* the window of key became empty */
        if (found && (e = lk__wstore_value_del(b->txn, s->db, key->data, key->len, b->errstr,
                                               sizeof b->errstr))) {
            lk__batch_failf(b, e, "%s '%s': %s", op_name(s), s->uid, c->err);
            return;
        }
        if (was_visible)
            lk__stage_deliver(b, s, &r, 0);
        return;
    }
    if (!run.data)
        run.data = "";
    int visible = 1;
    if (w->filter) {
        lk_stream_t *saved = b->cur;
        b->cur = s;
        visible = w->filter(b, key, &run, s->opaque) != 0;
        b->cur = saved;
        if (b->err)
            return;
    }
    int changed = visible != was_visible ||
                  (visible && (prev.len != run.len || memcmp(prev.data, run.data, run.len)));
    if (changed || !found || old.nslices != nslices || prev.len != run.len ||
        memcmp(prev.data, run.data, run.len)) {
        void *scratch = lk_alloc(b, 5 + run.len);
        if (!scratch) {
            lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
            return;
        }
        lk__wvalue_t nv = {nslices, visible, run.data, run.len};
        if ((e = lk__wstore_value_put(b->txn, s->db, key->data, key->len, &nv, scratch,
                                      b->time_ms, c->err, sizeof c->err))) {
            lk__batch_failf(b, e, "%s '%s': %s", op_name(s), s->uid, c->err);
            return;
        }
    }
    if (!changed)
        return;
    if (visible) {
        r.value = run.data;
        r.value_len = run.len;
    }
    lk__stage_deliver(b, s, &r, 0);
    return;
lost:
    if (!b->err)
        lk__batch_failf(b, LK_ERR_CORRUPT,
                        "%s '%s': the window state of a key is inconsistent (a slice or its "
                        "running value is missing); the checkpoint is damaged",
                        op_name(s), s->uid);
}

static void close_boundary(wctx_t *c, int64_t k) {
    lk_batch_t *b = c->b;
    lk_stream_t *s = c->s;
    int64_t n = s->win->size_ms / s->win->slide_ms;
    int64_t enter = k - 1, leave = k - 1 - n;
    int has_enter = has_slice(c, enter), has_leave = has_slice(c, leave);
    lk_err_t e;
    size_t nenter = 0;
    c->nkeys = 0;
    if (has_enter) {
        if ((e = lk__wstore_slice_keys(b->txn, s->db, enter, add_key, c)) || c->oom)
            goto fail;
        nenter = c->nkeys;
    }
    if (has_leave && ((e = lk__wstore_slice_keys(b->txn, s->db, leave, add_key, c)) || c->oom))
        goto fail;
    for (size_t i = 0; i < c->nkeys && !b->err; i++) {
        lk_bytes_t key = c->keys[i];
        lk_bytes_t v;
        if (i < nenter) {
            int l = has_leave ? slice_value(c, &key, leave, &v) : 0;
            if (l >= 0)
                update_key(c, &key, k, 1, l);
        } else {
            /* leaving only; keys also entering were handled above */
            int en = has_enter ? slice_value(c, &key, enter, &v) : 0;
            if (en == 0)
                update_key(c, &key, k, 0, 1);
        }
    }
    if (!b->err && has_leave &&
        (e = lk__wstore_expire(b->txn, s->db, leave, NULL, c->err, sizeof c->err)))
        lk__batch_failf(b, e, "%s '%s': %s", op_name(s), s->uid, c->err);
    return;
fail:
    e = e ? e : LK_ERR_NOMEM;
    lk__batch_failf(b, e, "%s '%s': reading the keys of a slice: %s", op_name(s), s->uid,
                    lk_err_str(e));
}

static void close_until(wctx_t *c, int64_t closed, int64_t now) {
    lk_batch_t *b = c->b;
    lk_stream_t *s = c->s;
    int64_t n = s->win->size_ms / s->win->slide_ms;
    lk_err_t e = lk__wstore_slices(b->txn, s->db, INT64_MIN, add_live, c);
    if (e || c->oom) {
        lk__batch_failf(b, e ? e : LK_ERR_NOMEM, "%s '%s': reading live slices: %s",
                        op_name(s), s->uid, lk_err_str(e ? e : LK_ERR_NOMEM));
        return;
    }
    /* the boundaries where something changes: a live slice enters (j+1) or leaves
     * (j+1+n); any other boundary changes no window */
    int64_t *ks = malloc((2 * c->n + 1) * sizeof *ks);
    if (!ks) {
        lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
        return;
    }
    size_t nk = 0;
    for (size_t i = 0; i < c->n; i++) {
        int64_t cand[2] = {c->slices[i] + 1, c->slices[i] + 1 + n};
        for (int j = 0; j < 2; j++)
            if (cand[j] > closed && cand[j] <= now)
                ks[nk++] = cand[j];
    }
    if (nk)
        qsort(ks, nk, sizeof *ks, cmp_i64);
    for (size_t i = 0; i < nk && !b->err; i++)
        if (i == 0 || ks[i] != ks[i - 1])
            close_boundary(c, ks[i]);
    free(ks);
}

/* Whether this flush marked slice live already; if not, it is noted as marked (the
 * caller marks it). Past the small table, marking again is merely redundant. */
static int marked(wctx_t *c, int64_t slice) {
    for (size_t i = 0; i < c->nmarked; i++)
        if (c->marked[i] == slice)
            return 1;
    if (c->nmarked < sizeof c->marked / sizeof *c->marked)
        c->marked[c->nmarked++] = slice;
    return 0;
}

/* Add the batch's aggregates, collected per (slice, key), to the slices. */
static void add_collected(wctx_t *c) {
    lk_batch_t *b = c->b;
    lk_stream_t *s = c->s;
    for (size_t i = 0; i < s->kv.norder && !b->err; i++) {
        lk__kv_entry_t *ent = s->kv.order[i];
        int64_t slice = get_slice(ent->key.data);
        lk_bytes_t key = {(const char *)ent->key.data + LK__WIN_KV_PREFIX,
                          ent->key.len - LK__WIN_KV_PREFIX};
        lk_bytes_t old, val = ent->acc;
        int have = slice_value(c, &key, slice, &old);
        if (have < 0)
            return;
        if (have)
            val = call_reduce(b, s, s->win->reduce, &key, &old, &ent->acc);
        if (b->err)
            return;
        lk_err_t e = lk__wstore_slice_put(b->txn, s->db, key.data, key.len, slice,
                                          val.data ? val.data : "", val.len, b->time_ms,
                                          c->err, sizeof c->err);
        if (!e && !have && !marked(c, slice))
            e = lk__wstore_slice_mark(b->txn, s->db, slice, b->time_ms, c->err, sizeof c->err);
        if (e)
            lk__batch_failf(b, e, "%s '%s': %s", op_name(s), s->uid, c->err);
    }
}

/* ---- event time ---- */

typedef struct {
    int64_t k; /* window index: [k*advance, k*advance + size) */
    lk_bytes_t key;
} wkey_t;

static int cmp_wkey(const void *a, const void *b) {
    const wkey_t *x = a, *y = b;
    if (x->k != y->k)
        return (x->k > y->k) - (x->k < y->k);
    size_t n = x->key.len < y->key.len ? x->key.len : y->key.len;
    int c = memcmp(x->key.data, y->key.data, n);
    return c ? c : (x->key.len > y->key.len) - (x->key.len < y->key.len);
}

typedef struct {
    wkey_t *v;
    size_t n, cap;
} wkeys_t;

static int wkeys_add(wkeys_t *l, int64_t k, lk_bytes_t key) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        wkey_t *n = realloc(l->v, cap * sizeof *n);
        if (!n)
            return -1;
        l->v = n;
        l->cap = cap;
    }
    l->v[l->n++] = (wkey_t){k, key};
    return 0;
}

/* sort and drop duplicates */
static void wkeys_unique(wkeys_t *l) {
    if (!l->n)
        return;
    qsort(l->v, l->n, sizeof *l->v, cmp_wkey);
    size_t o = 0;
    for (size_t i = 0; i < l->n; i++)
        if (!o || cmp_wkey(&l->v[o - 1], &l->v[i]))
            l->v[o++] = l->v[i];
    l->n = o;
}

/* Emit key's result in window k (recomputed from its slices there). */
static void emit_window(wctx_t *c, const lk_bytes_t *key, int64_t k, int final) {
    lk_batch_t *b = c->b;
    lk_stream_t *s = c->s;
    const lk__window_t *w = s->win;
    int64_t n = w->size_ms / w->slide_ms;
    c->lo = k;
    c->hi = k + n - 1;
    if (fold_slices(c, key) || !c->have)
        return;
    int64_t start = k * w->slide_ms, end = start + w->size_ms;
    void *v = frame(b, start, end, final, c->acc.data, c->acc.len);
    if (!v) {
        lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
        return;
    }
    lk_record_t r = {key->data, key->len, v, 17 + c->acc.len, end, NULL, -1, -1};
    lk__stage_deliver(b, s, &r, 0);
}

typedef struct {
    int64_t now, idle;
    int any, any_active;
    int64_t min_active, max_all;
} wm_scan_t;

static int each_part_max(int64_t max, int64_t seen, void *o) {
    wm_scan_t *x = o;
    if (!x->any || max > x->max_all)
        x->max_all = max;
    x->any = 1;
    if (x->idle > 0 && x->now - seen >= x->idle)
        return 0; /* idle: does not hold the watermark back */
    if (!x->any_active || max < x->min_active)
        x->min_active = max;
    x->any_active = 1;
    return 0;
}

typedef struct {
    wctx_t *c;
    int held;
    lk_err_t err;
} unread_scan_t;

/* a partition with records unread: does it hold the watermark (never sent records)? */
static int unread_holds(const char *topic, size_t tlen, int32_t partition, void *o) {
    unread_scan_t *u = o;
    char name[256];
    if (tlen >= sizeof name) {
        u->err = LK_ERR_CORRUPT;
        return 1;
    }
    memcpy(name, topic, tlen);
    name[tlen] = 0;
    int64_t max, seen;
    lk_err_t e = lk__wstore_part_get(u->c->b->txn, u->c->s->db, name, partition, &max, &seen);
    if (e == LK_ERR_NOT_FOUND)
        return u->held = 1;
    if (e)
        u->err = e;
    return e != LK_OK;
}

/* Commit this batch's per-partition maxima and compute the new watermark (never lower
 * than wm_old; held at wm_old while a partition of the plan with records left unread has
 * never sent any). 0, or -1 with the batch failed. */
static int advance_wm(wctx_t *c, int64_t wm_old, int64_t *wm_new) {
    lk_batch_t *b = c->b;
    lk_stream_t *s = c->s;
    lk__window_t *w = s->win;
    lk_err_t e;
    for (size_t i = 0; i < w->nparts && !b->err; i++) {
        int64_t max, seen;
        e = lk__wstore_part_get(b->txn, s->db, w->parts[i].topic, w->parts[i].partition, &max,
                                &seen);
        if (e == LK_ERR_NOT_FOUND || (!e && w->parts[i].max > max)) {
            max = w->parts[i].max;
        } else if (e) {
            lk__batch_failf(b, e, "%s '%s': reading the event-time maxima: %s", op_name(s),
                            s->uid, lk_err_str(e));
            return -1;
        }
        if ((e = lk__wstore_part_put(b->txn, s->db, w->parts[i].topic, w->parts[i].partition,
                                     max, b->time_ms, c->err, sizeof c->err)))
            lk__batch_failf(b, e, "%s '%s': %s", op_name(s), s->uid, c->err);
    }
    if (b->err)
        return -1;
    wm_scan_t x = {.now = b->time_ms, .idle = w->idle_ms};
    if ((e = lk__wstore_parts(b->txn, s->db, each_part_max, &x))) {
        lk__batch_failf(b, e, "%s '%s': reading the event-time maxima: %s", op_name(s), s->uid,
                        lk_err_str(e));
        return -1;
    }
    *wm_new = wm_old;
    /* A partition of the plan that left records unread and has never sent any holds the
     * watermark where it is: its records may be older than everything seen so far (on a
     * real broker the first fetches can bring some partitions' records only). From the
     * record written with the plan, so a batch processed again decides the same. */
    unread_scan_t u = {.c = c};
    uint64_t planned;
    e = lk__wstore_unread_get(b->txn, s->db, &planned, NULL, NULL);
    if (!e && planned == b->id)
        e = lk__wstore_unread_get(b->txn, s->db, &planned, unread_holds, &u);
    if (!e && !u.err)
        e = lk__wstore_unread_del(b->txn, s->db, c->err, sizeof c->err);
    else if (e == LK_ERR_NOT_FOUND)
        e = LK_OK;
    if (e || u.err) {
        lk__batch_failf(b, e ? e : u.err, "%s '%s': reading the batch plan's unread partitions: %s",
                        op_name(s), s->uid, lk_err_str(e ? e : u.err));
        return -1;
    }
    if (u.held)
        return 0;
    if (x.any) {
        int64_t cand = (x.any_active ? x.min_active : x.max_all) - w->grace_ms;
        if (cand > *wm_new)
            *wm_new = cand;
    }
    return 0;
}

/* ---- sessions ---- */

typedef struct {
    int64_t start, end;
    lk_bytes_t val; /* copied into the arena */
} wsess_t;

typedef struct {
    wctx_t *c;
    int64_t lo, hi; /* the new record's session [lo, hi) */
    wsess_t *v;
    size_t n, cap;
    int oom;
} sess_scan_t;

/* the key's open sessions overlapping [lo, hi) */
static int overlapping(int64_t start, int64_t end, const void *val, size_t vlen, void *o) {
    sess_scan_t *x = o;
    if (start >= x->hi)
        return 1; /* by start: none further overlaps */
    if (end <= x->lo)
        return 0;
    if (x->n == x->cap) {
        size_t cap = x->cap ? x->cap * 2 : 4;
        wsess_t *n = realloc(x->v, cap * sizeof *n);
        if (!n)
            return x->oom = 1;
        x->v = n;
        x->cap = cap;
    }
    void *copy = lk__batch_copy(x->c->b, val, vlen);
    if (!copy && vlen)
        return x->oom = 1;
    x->v[x->n++] = (wsess_t){start, end, {copy ? copy : "", vlen}};
    return 0;
}

typedef struct {
    wctx_t *c;
    wkeys_t keys; /* k = the session's start; end in ends[] */
    int64_t *ends;
    size_t cap;
    int oom;
} ending_t;

static int add_ending(int64_t end, const void *key, size_t klen, int64_t start, void *o) {
    ending_t *x = o;
    void *k = lk__batch_copy(x->c->b, key, klen);
    if (!k || wkeys_add(&x->keys, start, (lk_bytes_t){k, klen}))
        return x->oom = 1;
    if (x->keys.n > x->cap) {
        size_t cap = x->cap ? x->cap * 2 : 64;
        while (cap < x->keys.n)
            cap *= 2;
        int64_t *n = realloc(x->ends, cap * sizeof *n);
        if (!n)
            return x->oom = 1;
        x->ends = n;
        x->cap = cap;
    }
    x->ends[x->keys.n - 1] = end;
    return 0;
}

/* Emit on update: what the merging did to the key's sessions, in order, so that the end
 * of the batch can tell a session that existed before it (its first operation is a
 * delete) from one made in it, and one still there (its last operation is a put). */
typedef struct {
    lk_bytes_t key; /* the batch's collected key: valid during the flush */
    int64_t start, end;
    size_t seq;
    int put;
} sess_op_t;

typedef struct {
    sess_op_t *v;
    size_t n, cap;
} sess_ops_t;

static int sess_op(sess_ops_t *o, const lk_bytes_t *key, int64_t start, int64_t end, int put) {
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 64;
        sess_op_t *n = realloc(o->v, cap * sizeof *n);
        if (!n)
            return -1;
        o->v = n;
        o->cap = cap;
    }
    o->v[o->n] = (sess_op_t){*key, start, end, o->n, put};
    o->n++;
    return 0;
}

/* the same session window (key, start, end), whatever the sequence */
static int cmp_sess_op_window(const sess_op_t *x, const sess_op_t *y) {
    if (x->key.len != y->key.len || x->start != y->start || x->end != y->end)
        return 1;
    return memcmp(x->key.data, y->key.data, x->key.len) != 0;
}

static int cmp_sess_op(const void *a, const void *b) {
    const sess_op_t *x = a, *y = b;
    size_t n = x->key.len < y->key.len ? x->key.len : y->key.len;
    int c = memcmp(x->key.data, y->key.data, n);
    if (c)
        return c;
    if (x->key.len != y->key.len)
        return (x->key.len > y->key.len) - (x->key.len < y->key.len);
    if (x->start != y->start)
        return (x->start > y->start) - (x->start < y->start);
    if (x->end != y->end)
        return (x->end > y->end) - (x->end < y->end);
    return (x->seq > y->seq) - (x->seq < y->seq);
}

/* Emit on update, after the merging and before the closing: a deletion for each session
 * of before the batch that is gone (absorbed by a merge, or grown into other bounds: as
 * Kafka Streams forwards a tombstone for the old session window), then the current value
 * (final = 0) of each session the batch made or changed that the watermark leaves open
 * (one it closes gets its final result only). In (key, start) order. */
static void emit_session_updates(wctx_t *c, sess_ops_t *o, int64_t wm) {
    lk_batch_t *b = c->b;
    lk_stream_t *s = c->s;
    if (o->n)
        qsort(o->v, o->n, sizeof *o->v, cmp_sess_op);
    for (int pass = 0; pass < 2; pass++) { /* deletions, then values */
        for (size_t i = 0; i < o->n && !b->err;) {
            size_t j = i;
            while (j + 1 < o->n && !cmp_sess_op_window(&o->v[i], &o->v[j + 1]))
                j++;
            const sess_op_t *first = &o->v[i], *last = &o->v[j];
            i = j + 1;
            int before = !first->put, after = last->put;
            const void *val = NULL;
            size_t vlen = 0;
            if (pass == 0 && before && !after) {
                /* gone: its bounds are no longer a session of the key */
            } else if (pass == 1 && after && first->end > wm) {
                lk_err_t e = lk__wstore_session_get(b->txn, s->db, first->key.data,
                                                    first->key.len, first->start, &val, &vlen);
                if (e) {
                    lk__batch_failf(b, e == LK_ERR_NOT_FOUND ? LK_ERR_CORRUPT : e,
                                    "%s '%s': a session just written is missing: %s",
                                    op_name(s), s->uid, lk_err_str(e));
                    return;
                }
            } else {
                continue;
            }
            void *v = frame(b, first->start, first->end,
                            pass == 0 ? LK__FRAME_DELETION : LK__FRAME_UPDATE, val, vlen);
            if (!v) {
                lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
                return;
            }
            lk_record_t r = {first->key.data, first->key.len, v, 17 + vlen, first->end, NULL,
                             -1, -1};
            lk__stage_deliver(b, s, &r, 0);
        }
    }
}

/* Sessions: merge the batch's records into the open sessions, then close (emit once,
 * delete) the sessions whose end the watermark reached. */
static void flush_session(wctx_t *c) {
    lk_batch_t *b = c->b;
    lk_stream_t *s = c->s;
    lk__window_t *w = s->win;
    if (!load_wm(b, s))
        return;
    int64_t wm_old = w->wm;
    lk_err_t e = LK_OK;
    sess_scan_t x = {.c = c};
    int upd = w->emit == LK_WINDOW_EMIT_ON_UPDATE;
    sess_ops_t ops = {0};
    for (size_t i = 0; i < s->kv.norder && !b->err; i++) {
        lk__kv_entry_t *ent = s->kv.order[i];
        int64_t et = get_slice(ent->key.data);
        lk_bytes_t key = {(const char *)ent->key.data + LK__WIN_KV_PREFIX,
                          ent->key.len - LK__WIN_KV_PREFIX};
        x.lo = et;
        x.hi = et + w->gap_ms;
        x.n = 0;
        if ((e = lk__wstore_sessions(b->txn, s->db, key.data, key.len, overlapping, &x)) ||
            x.oom) {
            lk__batch_failf(b, e ? e : LK_ERR_NOMEM, "%s '%s': reading sessions: %s",
                            op_name(s), s->uid, lk_err_str(e ? e : LK_ERR_NOMEM));
            break;
        }
        /* the record's session, and every open one it overlaps, become one */
        int64_t start = x.lo, end = x.hi;
        lk_bytes_t acc = ent->acc;
        for (size_t j = 0; j < x.n && !b->err; j++) {
            if (x.v[j].start < start)
                start = x.v[j].start;
            if (x.v[j].end > end)
                end = x.v[j].end;
            acc = call_reduce(b, s, w->reduce, &key, &x.v[j].val, &acc);
            if (!b->err && (e = lk__wstore_session_del(b->txn, s->db, key.data, key.len,
                                                       x.v[j].start, x.v[j].end, c->err,
                                                       sizeof c->err)))
                lk__batch_failf(b, e, "%s '%s': %s", op_name(s), s->uid, c->err);
            if (!b->err && upd && sess_op(&ops, &key, x.v[j].start, x.v[j].end, 0))
                lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
        }
        if (!b->err && (e = lk__wstore_session_put(b->txn, s->db, key.data, key.len, start, end,
                                                   acc.data, acc.len, b->time_ms, c->err,
                                                   sizeof c->err)))
            lk__batch_failf(b, e, "%s '%s': %s", op_name(s), s->uid, c->err);
        if (!b->err && upd && sess_op(&ops, &key, start, end, 1))
            lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
    }
    free(x.v);
    int64_t wm_new = wm_old;
    if (!b->err)
        advance_wm(c, wm_old, &wm_new);
    if (!b->err && upd)
        emit_session_updates(c, &ops, wm_new);
    free(ops.v);
    if (b->err || wm_new <= wm_old)
        return;
    /* close: every open session ending at or before the watermark, by end */
    ending_t en = {.c = c};
    if ((e = lk__wstore_sessions_ending(b->txn, s->db, wm_new, add_ending, &en)) || en.oom) {
        lk__batch_failf(b, e ? e : LK_ERR_NOMEM, "%s '%s': reading sessions: %s", op_name(s),
                        s->uid, lk_err_str(e ? e : LK_ERR_NOMEM));
        goto out;
    }
    for (size_t i = 0; i < en.keys.n && !b->err; i++) {
        const lk_bytes_t *key = &en.keys.v[i].key;
        int64_t start = en.keys.v[i].k, end = en.ends[i];
        const void *val;
        size_t vlen;
        if ((e = lk__wstore_session_get(b->txn, s->db, key->data, key->len, start, &val,
                                        &vlen))) {
            lk__batch_failf(b, e == LK_ERR_NOT_FOUND ? LK_ERR_CORRUPT : e,
                            "%s '%s': a session in the by-end index is missing: %s",
                            op_name(s), s->uid, lk_err_str(e));
            break;
        }
        void *v = frame(b, start, end, 1, val, vlen);
        if (!v) {
            lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
            break;
        }
        if ((e = lk__wstore_session_del(b->txn, s->db, key->data, key->len, start, end, c->err,
                                        sizeof c->err))) {
            lk__batch_failf(b, e, "%s '%s': %s", op_name(s), s->uid, c->err);
            break;
        }
        lk_record_t r = {key->data, key->len, v, 17 + vlen, end, NULL, -1, -1};
        lk__stage_deliver(b, s, &r, 0);
    }
    if (!b->err && (e = lk__wstore_meta_put(b->txn, s->db, "wm", wm_new, b->time_ms, c->err,
                                            sizeof c->err)))
        lk__batch_failf(b, e, "%s '%s': %s", op_name(s), s->uid, c->err);
out:
    free(en.keys.v);
    free(en.ends);
}

static void flush_event(wctx_t *c) {
    lk_batch_t *b = c->b;
    lk_stream_t *s = c->s;
    lk__window_t *w = s->win;
    int64_t n = w->size_ms / w->slide_ms;
    if (!load_wm(b, s))
        return;
    int64_t wm_old = w->wm;
    add_collected(c);
    if (b->err)
        return;
    /* the live slices, with this batch's: results are folded from them */
    lk_err_t e = lk__wstore_slices(b->txn, s->db, INT64_MIN, add_live, c);
    if (e || c->oom) {
        lk__batch_failf(b, e ? e : LK_ERR_NOMEM, "%s '%s': reading live slices: %s",
                        op_name(s), s->uid, lk_err_str(e ? e : LK_ERR_NOMEM));
        return;
    }
    int64_t wm_new;
    if (advance_wm(c, wm_old, &wm_new))
        return;
    wkeys_t l = {0};
    /* on update: this batch's changes to windows that stay open */
    for (size_t i = 0; w->emit == LK_WINDOW_EMIT_ON_UPDATE && i < s->kv.norder; i++) {
        lk__kv_entry_t *ent = s->kv.order[i];
        int64_t j = get_slice(ent->key.data);
        lk_bytes_t key = {(const char *)ent->key.data + LK__WIN_KV_PREFIX,
                          ent->key.len - LK__WIN_KV_PREFIX};
        for (int64_t k = j - n + 1; k <= j; k++)
            if (k * w->slide_ms + w->size_ms > wm_new && wkeys_add(&l, k, key))
                goto oom;
    }
    wkeys_unique(&l);
    for (size_t i = 0; i < l.n && !b->err; i++)
        emit_window(c, &l.v[i].key, l.v[i].k, 0);
    l.n = 0;
    /* on close (both modes): the windows whose end the watermark passed in this batch */
    if (!b->err && wm_new > wm_old) {
        wkeys_t ks = {0};
        for (size_t i = 0; i < c->n; i++)
            for (int64_t k = c->slices[i] - n + 1; k <= c->slices[i]; k++) {
                int64_t end = k * w->slide_ms + w->size_ms;
                if (end > wm_old && end <= wm_new && wkeys_add(&ks, k, (lk_bytes_t){"", 0})) {
                    free(ks.v);
                    goto oom;
                }
            }
        wkeys_unique(&ks);
        /* the keys of each closing window: those of its live slices */
        for (size_t i = 0; i < ks.n && !b->err; i++) {
            for (int64_t j = ks.v[i].k; j < ks.v[i].k + n; j++) {
                if (!has_slice(c, j))
                    continue;
                c->nkeys = 0;
                if ((e = lk__wstore_slice_keys(b->txn, s->db, j, add_key, c)) || c->oom) {
                    free(ks.v);
                    lk__batch_failf(b, e ? e : LK_ERR_NOMEM,
                                    "%s '%s': reading the keys of a slice: %s", op_name(s),
                                    s->uid, lk_err_str(e ? e : LK_ERR_NOMEM));
                    goto out;
                }
                for (size_t m = 0; m < c->nkeys; m++)
                    if (wkeys_add(&l, ks.v[i].k, c->keys[m])) {
                        free(ks.v);
                        goto oom;
                    }
            }
        }
        free(ks.v);
        wkeys_unique(&l);
        for (size_t i = 0; i < l.n && !b->err; i++)
            emit_window(c, &l.v[i].key, l.v[i].k, 1);
        /* expiry: the slices no open window holds (j*advance + size <= watermark) */
        if (!b->err &&
            (e = lk__wstore_expire(b->txn, s->db, floor_div(wm_new - w->size_ms, w->slide_ms),
                                   NULL, c->err, sizeof c->err)))
            lk__batch_failf(b, e, "%s '%s': %s", op_name(s), s->uid, c->err);
        if (!b->err &&
            (e = lk__wstore_meta_put(b->txn, s->db, "wm", wm_new, b->time_ms, c->err,
                                     sizeof c->err)))
            lk__batch_failf(b, e, "%s '%s': %s", op_name(s), s->uid, c->err);
    }
out:
    free(l.v);
    return;
oom:
    free(l.v);
    lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
}

void lk__window_flush(lk_batch_t *b, lk_stream_t *s) {
    const lk__window_t *w = s->win;
    wctx_t cs = {.b = b, .s = s}, *c = &cs;
    if (w->domain == LK__WIN_EVENT_TIME) {
        if (w->session)
            flush_session(c);
        else
            flush_event(c);
        free(c->slices);
        free(c->keys);
        return;
    }
    int64_t now = floor_div(b->time_ms, w->slide_ms);
    int64_t closed;
    lk_err_t e = lk__wstore_meta_get(b->txn, s->db, "closed", &closed);
    if (e == LK_ERR_NOT_FOUND) {
        closed = now; /* the first batch: no window ended before it */
        e = lk__wstore_meta_put(b->txn, s->db, "closed", now, b->time_ms, b->errstr,
                                sizeof b->errstr);
        if (e) {
            lk__batch_failf(b, e, "%s '%s': %s", op_name(s), s->uid, c->err);
            return;
        }
    } else if (e) {
        lk__batch_failf(b, e, "%s '%s': reading its position in time: %s", op_name(s), s->uid,
                        lk_err_str(e));
        return;
    } else if (closed > now) {
        /* batch times only grow (the plan keeps them so across restarts) */
        lk__batch_failf(b, LK_ERR_STATE,
                        "%s '%s': batch time %lld ms is in slide %lld, before the last "
                        "closed slide %lld",
                        op_name(s), s->uid, (long long)b->time_ms, (long long)now,
                        (long long)closed);
        return;
    }
    if (closed < now) {
        close_until(c, closed, now);
        if (!b->err &&
            (e = lk__wstore_meta_put(b->txn, s->db, "closed", now, b->time_ms, b->errstr,
                                     sizeof b->errstr)))
            lk__batch_failf(b, e, "%s '%s': %s", op_name(s), s->uid, c->err);
    }
    if (!b->err)
        add_collected(c);
    free(c->slices);
    free(c->keys);
}
