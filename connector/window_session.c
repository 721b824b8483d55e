/*
 * window_session.c — session windows over event time: merging each batch's records into
 * the key's open sessions (a record's own session is [t, t + gap)), emitting on update
 * what the merging changed (deletions of absorbed sessions, then current values), and
 * closing the sessions whose end the watermark (window_event.c) reached. DESIGN.md,
 * Windows (event time, sessions).
 */
#define _GNU_SOURCE
#include "window_priv.h"

typedef struct {
    int64_t start, end;
    lk_bytes_t val; /* copied into the arena */
} wsess_t;

typedef struct {
    lk__wctx_t *c;
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
    wsess_t *n = lk__vec_reserve(x->v, &x->cap, x->n + 1, sizeof *n, 4);
    if (!n)
        return x->oom = 1;
    x->v = n;
    void *copy = lk__batch_copy(x->c->b, val, vlen);
    if (!copy && vlen)
        return x->oom = 1;
    x->v[x->n++] = (wsess_t){start, end, {copy ? copy : "", vlen}};
    return 0;
}

typedef struct {
    lk__wctx_t *c;
    lk__wkeys_t keys; /* k = the session's start; end in ends[] */
    int64_t *ends;
    size_t cap;
    int oom;
} ending_t;

static int add_ending(int64_t end, const void *key, size_t klen, int64_t start, void *o) {
    ending_t *x = o;
    void *k = lk__batch_copy(x->c->b, key, klen);
    if (!k || lk__wkeys_add(&x->keys, start, (lk_bytes_t){k, klen}))
        return x->oom = 1;
    int64_t *n = lk__vec_reserve(x->ends, &x->cap, x->keys.n, sizeof *n, 64);
    if (!n)
        return x->oom = 1;
    x->ends = n;
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
    sess_op_t *n = lk__vec_reserve(o->v, &o->cap, o->n + 1, sizeof *n, 64);
    if (!n)
        return -1;
    o->v = n;
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
static void emit_session_updates(lk__wctx_t *c, sess_ops_t *o, int64_t wm) {
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
            void *v = lk__wframe(b, first->start, first->end,
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
void lk__wflush_session(lk__wctx_t *c) {
    lk_batch_t *b = c->b;
    lk_stream_t *s = c->s;
    lk__window_t *w = s->win;
    if (!lk__wload_wm(b, s))
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
            acc = lk__wcall_reduce(b, s, w->reduce, &key, &x.v[j].val, &acc);
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
        lk__wadvance_wm(c, wm_old, &wm_new);
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
        void *v = lk__wframe(b, start, end, 1, val, vlen);
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
