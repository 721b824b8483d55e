/*
 * window.c — windowed aggregation operators (window_int.h): their definitions (the public
 * constructors lk_reduce_by_key_and_window, lk_window_by_event_time and the conveniences
 * over them), the checks of a definition against the configuration, the recorded batch
 * plan of event-time windows, the record framing of window results (lk_window_result_parse),
 * the admission of a record into a slice during a batch, and the end-of-batch flush that
 * hands each window to its domain: window_batch.c (batch time), window_event.c (event time
 * and the watermark), window_session.c (sessions); window_slice.c holds the slice table
 * they share, window_priv.h what these files share. DESIGN.md, Windows.
 *
 * Exact across crashes: slices, running values, watermarks and the last closed slide live
 * in the operator's checkpoint database and are written only inside the batch's
 * transaction, and a batch's time comes from its recorded plan. So a batch processed again
 * after a crash reads the same state, falls in the same slide and emits the same records;
 * one that committed never emits again.
 */
#define _GNU_SOURCE
#include "window_priv.h"

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

/* The window stage over in, defined by def (copied) and params (taken; NULL: asprintf
 * failed), named what in errors: the tail of both constructors. */
static lk_stream_t *window_stage(lk_stream_t *in, const char *uid, int schema_version,
                                 const lk__window_t *def, char *params, void *opaque,
                                 const char *what) {
    lk__window_t *w = params ? malloc(sizeof *w) : NULL;
    if (!w) {
        free(params);
        lk_pipeline_fail(in->p, "out of memory");
        return NULL;
    }
    lk_stream_t *s =
        lk__stage_derive(in, LK__ST_WINDOW, uid, (const void *)def->reduce, opaque, what);
    if (!s) {
        free(w);
        free(params);
        return NULL;
    }
    *w = *def;
    s->win = w;
    s->fn.reduce = def->reduce;
    s->schema_version = schema_version;
    free(s->params);
    s->params = params;
    return s;
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
        lk_pipeline_fail(in->p, "%s '%s': schema_version must be >= 1",
                         "reduce_by_key_and_window", u);
        return NULL;
    }
    if (slide_ms <= 0 || window_ms <= 0 || window_ms % slide_ms) {
        lk_pipeline_fail(in->p,
                         "%s '%s': window %lld ms and slide %lld ms: both must be > 0 and "
                         "the window a multiple of the slide",
                         "reduce_by_key_and_window", u, (long long)window_ms, (long long)slide_ms);
        return NULL;
    }
    char *params = NULL;
    if (asprintf(&params, "time=batch,window.ms=%lld,slide.ms=%lld,inverse=%s",
                 (long long)window_ms, (long long)slide_ms, inv_reduce ? "yes" : "no") < 0)
        params = NULL;
    lk__window_t w = {.domain = LK__WIN_BATCH_TIME,
                      .size_ms = window_ms,
                      .slide_ms = slide_ms,
                      .reduce = reduce,
                      .inv = inv_reduce,
                      .filter = filter};
    return window_stage(in, uid, schema_version, &w, params, opaque,
                        "reduce_by_key_and_window");
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
    if (n < 0)
        params = NULL;
    lk__window_t w = {.domain = LK__WIN_EVENT_TIME,
                      .size_ms = session ? 1 : spec->size_ms, /* unused by sessions */
                      .slide_ms = session ? 1 : adv,
                      .session = session,
                      .gap_ms = spec->gap_ms,
                      .reduce = reduce,
                      .grace_ms = spec->grace_ms,
                      .idle_ms = spec->idle_ms,
                      .emit = spec->emit,
                      .event_time = spec->event_time};
    return window_stage(in, uid, schema_version, &w, params, opaque, what);
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
void *lk__wframe(lk_batch_t *b, int64_t start, int64_t end, int kind, const void *v,
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

lk_err_t lk__window_record_plan(const lk_pipeline_t *p, lk__store_txn_t *t, uint64_t batch_id,
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

size_t lk__window_kv_key(lk_batch_t *b, lk_stream_t *s, const lk_record_t *r,
                         unsigned char *buf) {
    if (!r->key) {
        lk__batch_failf(b, LK_ERR_INVALID_ARG,
                        "%s '%s' received a record without a key; key the records (e.g. "
                        "with a map) before the window",
                        op_name(s), s->uid);
        return 0;
    }
    if (r->key_len == 0 || r->key_len > LK_WINDOW_KEY_MAX) {
        lk__batch_failf(b, LK_ERR_TOO_LARGE,
                        "%s '%s' received a key of %zu bytes (1..%d allowed); shorten the "
                        "keys (e.g. hash them) before the window",
                        op_name(s), s->uid, r->key_len, LK_WINDOW_KEY_MAX);
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
    } else if (!lk__wevent_slice(b, s, r, &slice)) {
        return 0;
    }
    put_slice(buf, slice);
    memcpy(buf + LK__WIN_KV_PREFIX, r->key, r->key_len);
    return LK__WIN_KV_PREFIX + r->key_len;
}

void lk__window_flush(lk_batch_t *b, lk_stream_t *s) {
    const lk__window_t *w = s->win;
    lk__wctx_t c = {.b = b, .s = s};
    if (w->domain == LK__WIN_EVENT_TIME && w->session)
        lk__wflush_session(&c);
    else if (w->domain == LK__WIN_EVENT_TIME)
        lk__wflush_event(&c);
    else
        lk__wflush_batch(&c);
    free(c.slices);
    free(c.keys);
}
