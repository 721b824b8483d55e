/*
 * window_batch.c — windows over batch time (Spark's reduceByKeyAndWindow): closing the
 * boundaries a batch passed, then adding the batch's aggregates to its slide. DESIGN.md,
 * Windows (batch time).
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
#include "window_priv.h"

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The new windowed value of key at boundary k; emit what changed and keep it. */
static void update_key(lk__wctx_t *c, const lk_bytes_t *key, int64_t k, int entered, int left) {
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
            if (lk__wslice_value(c, key, k - 1, &v) != 1)
                goto lost;
            run = found && nslices ? lk__wcall_reduce(b, s, w->reduce, key, &run, &v) : v;
            nslices++;
        }
        if (left) {
            if (!found || !nslices || lk__wslice_value(c, key, k - 1 - n, &v) != 1)
                goto lost;
            run = lk__wcall_reduce(b, s, w->inv, key, &run, &v);
            nslices--;
        }
    } else {
        /* recomputation from the live slices of the window */
        c->lo = k - n;
        c->hi = k - 1;
        if (lk__wfold_slices(c, key))
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

static void close_boundary(lk__wctx_t *c, int64_t k) {
    lk_batch_t *b = c->b;
    lk_stream_t *s = c->s;
    int64_t n = s->win->size_ms / s->win->slide_ms;
    int64_t enter = k - 1, leave = k - 1 - n;
    int has_enter = lk__whas_slice(c, enter), has_leave = lk__whas_slice(c, leave);
    lk_err_t e;
    size_t nenter = 0;
    c->nkeys = 0;
    if (has_enter) {
        if ((e = lk__wstore_slice_keys(b->txn, s->db, enter, lk__wadd_key, c)) || c->oom)
            goto fail;
        nenter = c->nkeys;
    }
    if (has_leave && ((e = lk__wstore_slice_keys(b->txn, s->db, leave, lk__wadd_key, c)) || c->oom))
        goto fail;
    for (size_t i = 0; i < c->nkeys && !b->err; i++) {
        lk_bytes_t key = c->keys[i];
        lk_bytes_t v;
        if (i < nenter) {
            int l = has_leave ? lk__wslice_value(c, &key, leave, &v) : 0;
            if (l >= 0)
                update_key(c, &key, k, 1, l);
        } else {
            /* leaving only; keys also entering were handled above */
            int en = has_enter ? lk__wslice_value(c, &key, enter, &v) : 0;
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

static void close_until(lk__wctx_t *c, int64_t closed, int64_t now) {
    lk_batch_t *b = c->b;
    lk_stream_t *s = c->s;
    int64_t n = s->win->size_ms / s->win->slide_ms;
    lk_err_t e = lk__wstore_slices(b->txn, s->db, INT64_MIN, lk__wadd_live, c);
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

void lk__wflush_batch(lk__wctx_t *c) {
    lk_batch_t *b = c->b;
    lk_stream_t *s = c->s;
    const lk__window_t *w = s->win;
    int64_t now = floor_div(b->time_ms, w->slide_ms);
    int64_t closed;
    lk_err_t e = lk__wstore_meta_get(b->txn, s->db, "closed", &closed);
    if (e == LK_ERR_NOT_FOUND) {
        closed = now; /* the first batch: no window ended before it */
        e = lk__wstore_meta_put(b->txn, s->db, "closed", now, b->time_ms, c->err,
                                sizeof c->err);
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
            (e = lk__wstore_meta_put(b->txn, s->db, "closed", now, b->time_ms, c->err,
                                     sizeof c->err)))
            lk__batch_failf(b, e, "%s '%s': %s", op_name(s), s->uid, c->err);
    }
    if (!b->err)
        lk__wadd_collected(c);
}
