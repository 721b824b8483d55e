/*
 * window_event.c — windows over event time (tumbling and hopping; sessions are
 * window_session.c's) and the watermark they share with sessions: a record's event time
 * and slice (or its lateness, sent to the side output), the per-partition maxima, the
 * watermark's advance (held by idle-free partitions with records unread in the plan), and
 * the end-of-batch emission on update and on close, then expiry. DESIGN.md, Windows
 * (event time).
 */
#define _GNU_SOURCE
#include "window_priv.h"

/* The watermark committed before this batch (read once per batch). */
int lk__wload_wm(lk_batch_t *b, lk_stream_t *s) {
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
int lk__wevent_slice(lk_batch_t *b, lk_stream_t *s, const lk_record_t *r, int64_t *slice) {
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
            lk__wpart_t *n = lk__vec_reserve(w->parts, &w->capparts, w->nparts + 1, sizeof *n, 8);
            if (!n) {
                lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
                return 0;
            }
            w->parts = n;
            w->parts[w->nparts++] = (lk__wpart_t){b->input->topic, b->input->partition, et};
        } else if (et > w->parts[i].max) {
            w->parts[i].max = et;
        }
    }
    if (!lk__wload_wm(b, s))
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
    void *v = lk__wframe(b, start, end, 0, r->value, r->value_len);
    if (!v) {
        lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
        return 0;
    }
    lk_record_t late = {r->key, r->key_len, v, 17 + r->value_len, et, NULL, -1, -1};
    lk__stage_deliver(b, s, &late, 1);
    return 0;
}

static int cmp_wkey(const void *a, const void *b) {
    const lk__wkey_t *x = a, *y = b;
    if (x->k != y->k)
        return (x->k > y->k) - (x->k < y->k);
    size_t n = x->key.len < y->key.len ? x->key.len : y->key.len;
    int c = memcmp(x->key.data, y->key.data, n);
    return c ? c : (x->key.len > y->key.len) - (x->key.len < y->key.len);
}

int lk__wkeys_add(lk__wkeys_t *l, int64_t k, lk_bytes_t key) {
    lk__wkey_t *n = lk__vec_reserve(l->v, &l->cap, l->n + 1, sizeof *n, 64);
    if (!n)
        return -1;
    l->v = n;
    l->v[l->n++] = (lk__wkey_t){k, key};
    return 0;
}

/* sort and drop duplicates */
void lk__wkeys_unique(lk__wkeys_t *l) {
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
static void emit_window(lk__wctx_t *c, const lk_bytes_t *key, int64_t k, int final) {
    lk_batch_t *b = c->b;
    lk_stream_t *s = c->s;
    const lk__window_t *w = s->win;
    int64_t n = w->size_ms / w->slide_ms;
    c->lo = k;
    c->hi = k + n - 1;
    if (lk__wfold_slices(c, key) || !c->have)
        return;
    int64_t start = k * w->slide_ms, end = start + w->size_ms;
    void *v = lk__wframe(b, start, end, final, c->acc.data, c->acc.len);
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
    lk__wctx_t *c;
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
int lk__wadvance_wm(lk__wctx_t *c, int64_t wm_old, int64_t *wm_new) {
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

void lk__wflush_event(lk__wctx_t *c) {
    lk_batch_t *b = c->b;
    lk_stream_t *s = c->s;
    lk__window_t *w = s->win;
    int64_t n = w->size_ms / w->slide_ms;
    if (!lk__wload_wm(b, s))
        return;
    int64_t wm_old = w->wm;
    lk__wadd_collected(c);
    if (b->err)
        return;
    /* the live slices, with this batch's: results are folded from them */
    lk_err_t e = lk__wstore_slices(b->txn, s->db, INT64_MIN, lk__wadd_live, c);
    if (e || c->oom) {
        lk__batch_failf(b, e ? e : LK_ERR_NOMEM, "%s '%s': reading live slices: %s",
                        op_name(s), s->uid, lk_err_str(e ? e : LK_ERR_NOMEM));
        return;
    }
    int64_t wm_new;
    if (lk__wadvance_wm(c, wm_old, &wm_new))
        return;
    lk__wkeys_t l = {0};
    /* on update: this batch's changes to windows that stay open */
    for (size_t i = 0; w->emit == LK_WINDOW_EMIT_ON_UPDATE && i < s->kv.norder; i++) {
        lk__kv_entry_t *ent = s->kv.order[i];
        int64_t j = get_slice(ent->key.data);
        lk_bytes_t key = {(const char *)ent->key.data + LK__WIN_KV_PREFIX,
                          ent->key.len - LK__WIN_KV_PREFIX};
        for (int64_t k = j - n + 1; k <= j; k++)
            if (k * w->slide_ms + w->size_ms > wm_new && lk__wkeys_add(&l, k, key))
                goto oom;
    }
    lk__wkeys_unique(&l);
    for (size_t i = 0; i < l.n && !b->err; i++)
        emit_window(c, &l.v[i].key, l.v[i].k, 0);
    l.n = 0;
    /* on close (both modes): the windows whose end the watermark passed in this batch */
    if (!b->err && wm_new > wm_old) {
        lk__wkeys_t ks = {0};
        for (size_t i = 0; i < c->n; i++)
            for (int64_t k = c->slices[i] - n + 1; k <= c->slices[i]; k++) {
                int64_t end = k * w->slide_ms + w->size_ms;
                if (end > wm_old && end <= wm_new && lk__wkeys_add(&ks, k, (lk_bytes_t){"", 0})) {
                    free(ks.v);
                    goto oom;
                }
            }
        lk__wkeys_unique(&ks);
        /* the keys of each closing window: those of its live slices */
        for (size_t i = 0; i < ks.n && !b->err; i++) {
            for (int64_t j = ks.v[i].k; j < ks.v[i].k + n; j++) {
                if (!lk__whas_slice(c, j))
                    continue;
                c->nkeys = 0;
                if ((e = lk__wstore_slice_keys(b->txn, s->db, j, lk__wadd_key, c)) || c->oom) {
                    free(ks.v);
                    lk__batch_failf(b, e ? e : LK_ERR_NOMEM,
                                    "%s '%s': reading the keys of a slice: %s", op_name(s),
                                    s->uid, lk_err_str(e ? e : LK_ERR_NOMEM));
                    goto out;
                }
                for (size_t m = 0; m < c->nkeys; m++)
                    if (lk__wkeys_add(&l, ks.v[i].k, c->keys[m])) {
                        free(ks.v);
                        goto oom;
                    }
            }
        }
        free(ks.v);
        lk__wkeys_unique(&l);
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
