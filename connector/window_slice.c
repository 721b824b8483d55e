/*
 * window_slice.c — the slice table shared by batch-time and event-time windows: the live
 * slices and the keys of a slice read from the operator's store (state/window_store.c),
 * a key's aggregate in one slice, the fold of a key's aggregates over a window's slices,
 * and the end-of-batch addition of the batch's collected (slice, key) aggregates to their
 * slices. Everything runs inside the batch's checkpoint transaction. DESIGN.md, Windows.
 */
#define _GNU_SOURCE
#include "window_priv.h"

int lk__wadd_live(int64_t slice, void *o) {
    lk__wctx_t *c = o;
    int64_t *n = lk__vec_reserve(c->slices, &c->cap, c->n + 1, sizeof *n, 16);
    if (!n)
        return c->oom = 1;
    c->slices = n;
    c->slices[c->n++] = slice;
    return 0;
}

int lk__wadd_key(const void *key, size_t klen, void *o) {
    lk__wctx_t *c = o;
    if (lk__batch_keys_push(c->b, &c->keys, &c->nkeys, &c->capkeys, key, klen))
        return c->oom = 1;
    return 0;
}

int lk__whas_slice(const lk__wctx_t *c, int64_t slice) {
    for (size_t i = 0; i < c->n; i++)
        if (c->slices[i] == slice)
            return 1;
    return 0;
}

/* reduce (or inverse-reduce) a and v with the user's function, as the stage */
lk_bytes_t lk__wcall_reduce(lk_batch_t *b, lk_stream_t *s, lk_reduce_fn *fn,
                              const lk_bytes_t *key, const lk_bytes_t *a, const lk_bytes_t *v) {
    lk_bytes_t out = {NULL, 0};
    lk_stream_t *saved = b->cur;
    b->cur = s;
    fn(b, key, a, v, &out, s->opaque);
    b->cur = saved;
    return out;
}

/* a copy of key's aggregate in slice (LMDB's bytes change with the next write) */
int lk__wslice_value(lk__wctx_t *c, const lk_bytes_t *key, int64_t slice, lk_bytes_t *out) {
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
int lk__wfold_slices(lk__wctx_t *c, const lk_bytes_t *key) {
    c->have = 0;
    c->count = 0;
    for (size_t i = 0; i < c->n && !c->b->err; i++) {
        if (c->slices[i] < c->lo || c->slices[i] > c->hi)
            continue;
        lk_bytes_t v;
        int r = lk__wslice_value(c, key, c->slices[i], &v);
        if (r < 0)
            return -1;
        if (!r)
            continue;
        c->count++;
        if (!c->have) {
            c->acc = v;
            c->have = 1;
        } else {
            c->acc = lk__wcall_reduce(c->b, c->s, c->s->win->reduce, key, &c->acc, &v);
        }
    }
    return c->b->err ? -1 : 0;
}

/* Whether this flush marked slice live already; if not, it is noted as marked (the
 * caller marks it). Past the small table, marking again is merely redundant. */
static int marked(lk__wctx_t *c, int64_t slice) {
    for (size_t i = 0; i < c->nmarked; i++)
        if (c->marked[i] == slice)
            return 1;
    if (c->nmarked < sizeof c->marked / sizeof *c->marked)
        c->marked[c->nmarked++] = slice;
    return 0;
}

/* Add the batch's aggregates, collected per (slice, key), to the slices. */
void lk__wadd_collected(lk__wctx_t *c) {
    lk_batch_t *b = c->b;
    lk_stream_t *s = c->s;
    for (size_t i = 0; i < s->kv.norder && !b->err; i++) {
        lk__kv_entry_t *ent = s->kv.order[i];
        int64_t slice = get_slice(ent->key.data);
        lk_bytes_t key = {(const char *)ent->key.data + LK__WIN_KV_PREFIX,
                          ent->key.len - LK__WIN_KV_PREFIX};
        lk_bytes_t old, val = ent->acc;
        int have = lk__wslice_value(c, &key, slice, &old);
        if (have < 0)
            return;
        if (have)
            val = lk__wcall_reduce(b, s, s->win->reduce, &key, &old, &ent->acc);
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
