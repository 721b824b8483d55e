/*
 * pipeline_batch.c — executing one batch through a defined pipeline (pipeline.c), inside
 * the batch's one LMDB write transaction (DESIGN.md, The batch protocol, item 4: the
 * fetched → committed step of A batch's life). Records are pushed depth-first from the
 * sources; keyed stages (reduce_by_key, update_state_by_key) and foreach_batch collect
 * during the batch and flush at its end, in definition order, so a stage's output reaches
 * stages defined after it before they flush. Also the batch's arena and the per-key
 * table the keyed stages collect in, and state TTL expiry.
 */
#define _GNU_SOURCE
#include "pipeline_priv.h"
#include "window_int.h"
#include "../core/util_int.h"
#include "../sink/sink_int.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- arena ---- */

struct lk__arena_chunk {
    lk__arena_chunk_t *next;
    size_t used, cap;
    max_align_t data[];
};

void *lk__arena_alloc(lk__arena_t *a, size_t n) {
    n = (n + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1);
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = 64 * 1024;
        while (cap < n)
            cap *= 2;
        lk__arena_chunk_t *c = malloc(sizeof *c + cap);
        if (!c)
            return NULL;
        c->cap = cap;
        c->used = 0;
        c->next = a->head;
        a->head = c;
        a->total += cap;
    }
    void *p = (char *)a->head->data + a->head->used;
    a->head->used += n;
    return p;
}

void lk__arena_reset(lk__arena_t *a) {
    /* keep the newest chunk for the next batch, free the rest */
    if (!a->head)
        return;
    lk__arena_chunk_t *c = a->head->next;
    while (c) {
        lk__arena_chunk_t *n = c->next;
        a->total -= c->cap;
        free(c);
        c = n;
    }
    a->head->next = NULL;
    a->head->used = 0;
}

void lk__arena_free(lk__arena_t *a) {
    lk__arena_reset(a);
    free(a->head);
    a->head = NULL;
    a->total = 0;
}

/* ---- key -> values table ---- */

static uint64_t hash_bytes(const void *p, size_t n) {
    const unsigned char *c = p;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= c[i];
        h *= 1099511628211ULL;
    }
    /* FNV's low bits, which pick the slot, mix poorly: finish like murmur3's fmix64 */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    return h ^ (h >> 33);
}

static void kv_clear(lk__kv_t *kv) {
    if (kv->slots)
        memset(kv->slots, 0, kv->cap * sizeof *kv->slots);
    kv->count = 0;
    kv->norder = 0;
}

void lk__kv_free(lk__kv_t *kv) {
    free(kv->slots);
    free(kv->order);
    memset(kv, 0, sizeof *kv);
}

static int kv_grow(lk__kv_t *kv) {
    size_t cap = kv->cap ? kv->cap * 2 : 1024;
    lk__kv_slot_t *s = calloc(cap, sizeof *s);
    if (!s)
        return -1;
    for (size_t i = 0; i < kv->norder; i++) {
        lk__kv_entry_t *e = kv->order[i];
        size_t j = e->hash & (cap - 1);
        while (s[j].e)
            j = (j + 1) & (cap - 1);
        s[j] = (lk__kv_slot_t){e->hash, e};
    }
    free(kv->slots);
    kv->slots = s;
    kv->cap = cap;
    return 0;
}

/* The slot of key (hash h): its entry, or the empty slot where it would go. */
static lk__kv_slot_t *kv_slot(const lk__kv_t *kv, const void *key, size_t klen, uint64_t h) {
    size_t j = h & (kv->cap - 1);
    for (;;) {
        lk__kv_slot_t *sl = &kv->slots[j];
        if (!sl->e || (sl->hash == h && sl->e->key.len == klen &&
                       !memcmp(sl->e->key.data, key, klen)))
            return sl;
        j = (j + 1) & (kv->cap - 1);
    }
}

/* Find or create the entry of key; key bytes copied into the arena. */
static lk__kv_entry_t *kv_get(lk__kv_t *kv, lk__arena_t *a, const void *key, size_t klen,
                              int *created) {
    if ((kv->count + 1) * 2 > kv->cap && kv_grow(kv))
        return NULL;
    uint64_t h = hash_bytes(key, klen);
    lk__kv_slot_t *sl = kv_slot(kv, key, klen, h);
    if (sl->e) {
        *created = 0;
        return sl->e;
    }
    lk__kv_entry_t *e = lk__arena_alloc(a, sizeof *e);
    void *kc = lk__arena_alloc(a, klen ? klen : 1);
    if (!e || !kc)
        return NULL;
    memcpy(kc, key, klen);
    memset(e, 0, sizeof *e);
    e->key = (lk_bytes_t){kc, klen};
    e->hash = h;
    lk__kv_entry_t **o = lk__vec_reserve(kv->order, &kv->caporder, kv->norder + 1, sizeof *o, 1024);
    if (!o)
        return NULL;
    kv->order = o;
    kv->order[kv->norder++] = e;
    *sl = (lk__kv_slot_t){h, e};
    kv->count++;
    *created = 1;
    return e;
}

static int64_t stage_ttl(const lk_stream_t *s, int64_t def) {
    return s->ttl_set ? s->ttl_ms : def;
}

int lk__pipeline_has_ttl(const lk_pipeline_t *p, int64_t def) {
    for (size_t i = 0; i < p->nstages; i++)
        if ((p->stages[i]->kind == LK__ST_UPDATE && stage_ttl(p->stages[i], def) > 0) ||
            (p->stages[i]->kind == LK__ST_WINDOW && lk__window_needs_time(p->stages[i])))
            return 1;
    return 0;
}

/* ---- execution ---- */

static void process(lk_batch_t *b, lk_stream_t *s, const lk_record_t *r);

static void deliver(lk_batch_t *b, lk_stream_t *s, const lk_record_t *r) {
    for (size_t i = 0; i < s->nchildren && !b->err; i++)
        process(b, s->children[i], r);
}

void lk__stage_deliver(lk_batch_t *b, lk_stream_t *s, const lk_record_t *r, int side) {
    lk_stream_t *saved = b->cur;
    b->cur = s;
    for (size_t i = 0; i < s->nchildren && !b->err; i++)
        if ((s->children[i]->kind == LK__ST_SIDE) == !!side)
            process(b, s->children[i], r);
    b->cur = saved;
}

void lk__batch_failf(lk_batch_t *b, lk_err_t e, const char *fmt, ...) {
    if (b->err)
        return;
    b->err = e;
    va_list ap;
    va_start(ap, fmt);
    lk__vfmt(b->errstr, sizeof b->errstr, fmt, ap);
    va_end(ap);
}

static void *copy_bytes(lk_batch_t *b, const void *p, size_t n) {
    static char empty[1]; /* every empty value (a word count's "1" is one) shares it */
    if (!p)
        return NULL;
    if (!n)
        return empty;
    void *c = lk__arena_alloc(&b->arena, n);
    if (c)
        memcpy(c, p, n);
    return c;
}

void *lk__batch_copy(lk_batch_t *b, const void *p, size_t n) {
    return copy_bytes(b, p, n);
}

int lk__batch_keys_push(lk_batch_t *b, lk_bytes_t **keys, size_t *n, size_t *cap,
                        const void *key, size_t klen) {
    lk_bytes_t *v = lk__vec_reserve(*keys, cap, *n + 1, sizeof *v, 64);
    if (!v)
        return -1;
    *keys = v;
    void *k = copy_bytes(b, key, klen);
    if (!k)
        return -1;
    v[(*n)++] = (lk_bytes_t){k, klen};
    return 0;
}

static void process(lk_batch_t *b, lk_stream_t *s, const lk_record_t *r) {
    lk_stream_t *saved = b->cur;
    switch (s->kind) {
    case LK__ST_SOURCE:
        break;
    case LK__ST_SIDE:
    case LK__ST_REPARTITION: /* one context holds every key: nothing to move */
        b->cur = s;
        deliver(b, s, r);
        b->cur = saved;
        break;
    case LK__ST_MAP:
    case LK__ST_FLAT_MAP: {
        size_t saved_emitted = s->emitted;
        s->emitted = 0;
        b->cur = s;
        s->fn.map(b, r, s->opaque);
        b->cur = saved;
        if (s->kind == LK__ST_MAP && s->emitted != 1 && !b->err)
            lk__batch_failf(b, LK_ERR_STATE,
                            "map '%s' emitted %zu records for one input; a map emits exactly one "
                            "(use flat_map for zero or more)",
                            s->uid, s->emitted);
        s->emitted = saved_emitted;
        break;
    }
    case LK__ST_FILTER:
        b->cur = s;
        if (s->fn.filter(b, r, s->opaque))
            deliver(b, s, r);
        b->cur = saved;
        break;
    case LK__ST_WINDOW:
    case LK__ST_REDUCE:
    case LK__ST_UPDATE: {
        unsigned char wkey[LK__WIN_KV_PREFIX + LK_WINDOW_KEY_MAX];
        lk_record_t wr;
        size_t skip = 0; /* window stages collect under (slice, key): the key starts here */
        if (s->kind == LK__ST_WINDOW) {
            size_t n = lk__window_kv_key(b, s, r, wkey);
            if (!n)
                break;
            wr = *r;
            wr.key = wkey;
            wr.key_len = n;
            r = &wr;
            skip = LK__WIN_KV_PREFIX;
        }
        if (!r->key) {
            lk__batch_failf(b, LK_ERR_INVALID_ARG, "%s '%s' received a record without a key",
                            lk__stage_kind_name(s->kind), s->uid);
            break;
        }
        int created;
        lk__kv_entry_t *e = kv_get(&s->kv, &b->arena, r->key, r->key_len, &created);
        if (!e) {
            lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
            break;
        }
        lk_bytes_t v = {r->value ? copy_bytes(b, r->value, r->value_len) : NULL, r->value_len};
        if (r->value && !v.data) {
            lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
            break;
        }
        if (s->kind != LK__ST_UPDATE) {
            if (created) {
                e->acc = v;
            } else {
                lk_bytes_t out = {NULL, 0};
                lk_bytes_t key = {(const char *)e->key.data + skip, e->key.len - skip};
                b->cur = s;
                s->fn.reduce(b, &key, &e->acc, &v, &out, s->opaque);
                b->cur = saved;
                e->acc = out;
            }
        } else {
            if (e->nvals == e->capvals) {
                size_t cap = e->capvals ? e->capvals * 2 : 4;
                lk_bytes_t *nv = lk__arena_alloc(&b->arena, cap * sizeof *nv);
                if (!nv) {
                    lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
                    break;
                }
                if (e->nvals)
                    memcpy(nv, e->vals, e->nvals * sizeof *nv);
                e->vals = nv;
                e->capvals = cap;
            }
            e->vals[e->nvals++] = v;
        }
        break;
    }
    case LK__ST_FOREACH: {
        if (s->nrecs == s->caprecs) {
            size_t cap = s->caprecs ? s->caprecs * 2 : 256;
            lk_record_t *n = realloc(s->recs, cap * sizeof *n);
            if (!n) {
                lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
                break;
            }
            s->recs = n;
            s->caprecs = cap;
        }
        lk_record_t *kept = &s->recs[s->nrecs];
        *kept = *r; /* input records' bytes live until the batch ends; emitted ones may not */
        if ((r->key && !(kept->key = copy_bytes(b, r->key, r->key_len))) ||
            (r->value && !(kept->value = copy_bytes(b, r->value, r->value_len)))) {
            lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
            break;
        }
        s->nrecs++;
        break;
    }
    case LK__ST_OUTBOX: {
        lk__out_record_t o = {s->keep_partition ? r->partition : -1, r->key, r->key_len,
                             r->value, r->value_len, r->timestamp_ms, 0, NULL};
        if (s->repart_n) /* a repartition topic: the key's task, as Kafka would choose */
            o.partition = lk__repartition_partition(r->key, r->key_len, s->repart_n,
                                                    s->repart_task);
        if (r->nheaders) { /* the input's headers go out with it (copy, dead letters) */
            lk__header_t *hs = lk__arena_alloc(&b->arena, r->nheaders * sizeof *hs);
            if (!hs) {
                lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
                break;
            }
            for (size_t i = 0; i < r->nheaders; i++)
                hs[i] = (lk__header_t){r->headers[i].name, r->headers[i].value,
                                      r->headers[i].value_len};
            o.headers = hs;
            o.nheaders = r->nheaders;
        }
        lk_err_t e = lk__store_outbox_append(b->txn, s->uid, b->id, &o, b->errstr,
                                             sizeof b->errstr);
        if (e && !b->err)
            b->err = e;
        b->records_out++;
        break;
    }
    }
}

lk_err_t lk_emit(lk_batch_t *b, const void *key, size_t key_len, const void *value,
                 size_t value_len) {
    if (!b || !b->cur)
        return LK_ERR_STATE;
    if (b->err)
        return b->err;
    /* no copy: downstream runs before this returns, and every stage that keeps bytes
     * past that (reduce, update, foreach, the outbox) copies them itself */
    lk_record_t r = {key, key_len, value, value_len, b->time_ms, NULL, -1, -1};
    b->cur->emitted++;
    deliver(b, b->cur, &r);
    return b->err;
}

void lk_batch_fail(lk_batch_t *b, const char *fmt, ...) {
    if (!b || b->err)
        return;
    /* "uid: " of the operator at work, then the application's message */
    lk__batch_failf(b, LK_ERR_INVALID_ARG, "%s%s", b->cur ? b->cur->uid : "",
                    b->cur ? ": " : "");
    size_t n = strlen(b->errstr);
    va_list ap;
    va_start(ap, fmt);
    lk__vfmt(b->errstr + n, sizeof b->errstr - n, fmt, ap);
    va_end(ap);
}

void *lk_alloc(lk_batch_t *b, size_t size) {
    return b ? lk__arena_alloc(&b->arena, size) : NULL;
}

uint64_t lk_batch_id(const lk_batch_t *b) { return b->id; }
int64_t lk_batch_time_ms(const lk_batch_t *b) { return b->time_ms; }
int lk_batch_state_expiring(const lk_batch_t *b) { return b->expiring; }

lk_err_t lk_accumulator_add(lk_batch_t *b, const char *name, int64_t delta) {
    if (!b || !name || !name[0])
        return LK_ERR_INVALID_ARG;
    lk_err_t e = lk__store_acc_add(b->txn, name, delta, b->errstr, sizeof b->errstr);
    if (e && !b->err)
        b->err = e;
    return e;
}

void lk__batch_begin(lk_batch_t *b, lk_pipeline_t *p, uint64_t id, int64_t time_ms,
                     lk__store_txn_t *txn, int64_t default_ttl_ms) {
    (void)p;
    b->id = id;
    b->time_ms = time_ms;
    b->txn = txn;
    b->cur = NULL;
    b->input = NULL;
    b->err = LK_OK;
    b->errstr[0] = 0;
    b->records_out = 0;
    b->expiring = 0;
    b->default_ttl_ms = default_ttl_ms;
}

void lk__batch_push_input(lk_batch_t *b, lk_pipeline_t *p, const lk_record_t *r) {
    for (size_t i = 0; i < p->nstages && !b->err; i++) {
        lk_stream_t *s = p->stages[i];
        if (s->kind != LK__ST_SOURCE)
            continue;
        for (size_t t = 0; t < s->ntopics; t++)
            if (!strcmp(s->topics[t], r->topic)) {
                b->cur = s;
                b->input = r;
                deliver(b, s, r);
                b->input = NULL;
                b->cur = NULL;
                break;
            }
    }
}

/* Write the update's result for one key and emit it downstream. */
static void apply_update(lk_batch_t *b, lk_stream_t *s, const lk_bytes_t *key,
                         const lk_bytes_t *vals, size_t nvals) {
    const void *old;
    size_t oldlen;
    int64_t upd;
    lk_err_t e = lk__store_state_get(b->txn, s->db, key->data, key->len, &old, &oldlen, &upd);
    if (e && e != LK_ERR_NOT_FOUND) {
        lk__batch_failf(b, e, "update_state_by_key '%s': reading state: %s", s->uid, lk_err_str(e));
        return;
    }
    lk_bytes_t state = {NULL, 0}, *statep = NULL;
    if (e == LK_OK) {
        /* the state value lives in an LMDB page, valid only until the next write */
        state.data = copy_bytes(b, old, oldlen);
        state.len = oldlen;
        statep = &state;
    }
    lk_bytes_t next = {NULL, 0};
    lk_stream_t *saved = b->cur;
    b->cur = s;
    s->fn.update(b, key, vals, nvals, statep, &next, s->opaque);
    b->cur = saved;
    if (b->err)
        return;
    if (b->expiring || !next.data) {
        e = lk__store_state_del(b->txn, s->db, key->data, key->len, b->errstr, sizeof b->errstr);
        next.data = NULL;
        next.len = 0;
    } else {
        e = lk__store_state_put(b->txn, s->db, key->data, key->len, next.data, next.len,
                                b->time_ms, b->errstr, sizeof b->errstr);
    }
    if (e) {
        if (!b->err)
            b->err = e;
        return;
    }
    if (!statep && !next.data)
        return; /* nothing existed and nothing does: no change to report */
    lk_record_t r = {key->data, key->len, next.data, next.len, b->time_ms, NULL, -1, -1};
    deliver(b, s, &r);
}

typedef struct {
    lk_bytes_t *keys;
    size_t n, cap;
    int oom;
    lk_batch_t *b;
    int64_t cutoff;
    lk__kv_t *fresh;
    void *last;
    size_t lastlen;
} expiry_scan_t;

#define LK__TTL_SCAN_PER_BATCH 10000

static int expiry_cb(const void *key, size_t klen, const void *val, size_t vlen, int64_t upd,
                     void *o) {
    (void)val;
    (void)vlen;
    expiry_scan_t *x = o;
    x->last = (void *)key;
    x->lastlen = klen;
    if (upd < x->cutoff && lk__batch_keys_push(x->b, &x->keys, &x->n, &x->cap, key, klen))
        return x->oom = 1;
    return 0;
}

/* Expire idle keys: a bounded slice of the state per batch, resuming where the last
 * batch stopped, so the cost per batch does not grow with the state. */
static void expire_state(lk_batch_t *b, lk_stream_t *s, int64_t ttl) {
    expiry_scan_t x = {.b = b, .cutoff = b->time_ms - ttl};
    size_t visited = 0;
    lk_err_t e = lk__store_state_scan(b->txn, s->db, s->scan_key, s->scan_klen,
                                      LK__TTL_SCAN_PER_BATCH, expiry_cb, &x, &visited);
    if (e || x.oom) {
        free(x.keys);
        lk__batch_failf(b, e ? e : LK_ERR_NOMEM,
                        "update_state_by_key '%s': scanning state for expiry", s->uid);
        return;
    }
    /* The next batch resumes strictly after the last key visited, or from the start;
     * applied only if this batch commits (lk__pipeline_committed). */
    free(s->scan_next);
    s->scan_next = NULL;
    s->scan_next_len = 0;
    s->scan_pending = 1;
    if (visited == LK__TTL_SCAN_PER_BATCH && x.last) {
        s->scan_next = malloc(x.lastlen ? x.lastlen : 1);
        if (!s->scan_next) {
            free(x.keys);
            lk__batch_failf(b, LK_ERR_NOMEM, "out of memory in '%s'", s->uid);
            return;
        }
        memcpy(s->scan_next, x.last, x.lastlen);
        s->scan_next_len = x.lastlen;
    }
    b->expiring = 1;
    for (size_t i = 0; i < x.n && !b->err; i++) {
        /* keys with values in this batch were just updated: they are not idle */
        lk__kv_entry_t *fresh = NULL;
        if (s->kv.cap)
            fresh = kv_slot(&s->kv, x.keys[i].data, x.keys[i].len,
                            hash_bytes(x.keys[i].data, x.keys[i].len))
                        ->e;
        if (!fresh)
            apply_update(b, s, &x.keys[i], NULL, 0);
    }
    b->expiring = 0;
    free(x.keys);
}

lk_err_t lk__batch_end(lk_batch_t *b, lk_pipeline_t *p) {
    for (size_t i = 0; i < p->nstages && !b->err; i++) {
        lk_stream_t *s = p->stages[i];
        switch (s->kind) {
        case LK__ST_REDUCE:
            for (size_t k = 0; k < s->kv.norder && !b->err; k++) {
                lk__kv_entry_t *e = s->kv.order[k];
                lk_record_t r = {e->key.data, e->key.len, e->acc.data, e->acc.len,
                                 b->time_ms,  NULL,       -1,          -1};
                b->cur = s;
                deliver(b, s, &r);
                b->cur = NULL;
            }
            break;
        case LK__ST_UPDATE: {
            for (size_t k = 0; k < s->kv.norder && !b->err; k++) {
                lk__kv_entry_t *e = s->kv.order[k];
                apply_update(b, s, &e->key, e->vals, e->nvals);
            }
            int64_t ttl = stage_ttl(s, b->default_ttl_ms);
            if (ttl > 0 && !b->err)
                expire_state(b, s, ttl);
            break;
        }
        case LK__ST_FOREACH:
            b->cur = s;
            s->fn.foreach(b, s->recs, s->nrecs, s->opaque);
            b->cur = NULL;
            break;
        case LK__ST_WINDOW:
            lk__window_flush(b, s);
            break;
        default:
            break;
        }
    }
    return b->err;
}

void lk__pipeline_committed(lk_pipeline_t *p) {
    for (size_t i = 0; i < p->nstages; i++) {
        lk_stream_t *s = p->stages[i];
        if (!s->scan_pending)
            continue;
        free(s->scan_key);
        s->scan_key = s->scan_next;
        s->scan_klen = s->scan_next_len;
        s->scan_next = NULL;
        s->scan_next_len = 0;
        s->scan_pending = 0;
    }
}

void lk__batch_reset(lk_batch_t *b, lk_pipeline_t *p) {
    for (size_t i = 0; i < p->nstages; i++) {
        lk_stream_t *s = p->stages[i];
        kv_clear(&s->kv);
        s->nrecs = 0;
        if (s->win)
            lk__window_reset(s);
        free(s->scan_next); /* a batch that did not commit does not move the sweep */
        s->scan_next = NULL;
        s->scan_pending = 0;
    }
    lk__arena_reset(&b->arena);
    b->txn = NULL;
    b->cur = NULL;
}

void lk__batch_free(lk_batch_t *b) {
    lk__arena_free(&b->arena);
}
