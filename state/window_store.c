/*
 * window_store.c — a window operator's database (layout in window_store_int.h), built
 * on the store's keyed-state primitives: every write goes through lk__store_state_put /
 * _del, so it lands in the batch's transaction and in its replay log (map growth), and
 * reads are cursor range scans in key order. Nothing here knows about batches or
 * watermarks; connector/window*.c decide what to read and write.
 */
#include "window_store_int.h"
#include "../core/util_int.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* slices are signed; flipping the sign bit makes big-endian byte order numeric order */
static void put_slice(unsigned char *p, int64_t s) {
    lk__put_be64(p, (uint64_t)s ^ (UINT64_C(1) << 63));
}
static int64_t get_slice(const unsigned char *p) {
    return (int64_t)(lk__get_be64(p) ^ (UINT64_C(1) << 63));
}

/* 'S' be64(slice) [be16(klen) key] into k (LK_WINDOW_KEY_MAX + 11 bytes); returns length */
static size_t skey(unsigned char *k, int64_t slice, const void *key, size_t klen) {
    k[0] = 'S';
    put_slice(k + 1, slice);
    if (!key)
        return 9;
    k[9] = (unsigned char)(klen >> 8);
    k[10] = (unsigned char)klen;
    memcpy(k + 11, key, klen);
    return 11 + klen;
}

static size_t lkey(unsigned char *k, int64_t slice) {
    k[0] = 'L';
    put_slice(k + 1, slice);
    return 9;
}

static size_t vkey(unsigned char *k, const void *key, size_t klen) {
    k[0] = 'V';
    k[1] = (unsigned char)(klen >> 8);
    k[2] = (unsigned char)klen;
    memcpy(k + 3, key, klen);
    return 3 + klen;
}

#define KEYBUF (LK_WINDOW_KEY_MAX + 16)

/* The value at k, of min..max bytes (LK_ERR_CORRUPT otherwise): every fixed-layout read. */
static lk_err_t get_sized(lk__store_txn_t *t, lk__state_db_t db, const unsigned char *k,
                          size_t klen, size_t min, size_t max, const unsigned char **val,
                          size_t *vlen) {
    const void *v;
    size_t n;
    lk_err_t e = lk__store_state_get(t, db, k, klen, &v, &n, NULL);
    if (e)
        return e;
    if (n < min || n > max)
        return LK_ERR_CORRUPT;
    *val = v;
    *vlen = n;
    return LK_OK;
}

static lk_err_t key_too_long(size_t klen, char *errstr, size_t errstr_size) {
    return lk__err(LK_ERR_TOO_LARGE, errstr, errstr_size,
                   "window key of %zu bytes (at most %d)", klen, LK_WINDOW_KEY_MAX);
}

lk_err_t lk__wstore_meta_get(lk__store_txn_t *t, lk__state_db_t db, const char *name,
                             int64_t *v) {
    unsigned char k[64];
    size_t n = strlen(name);
    if (n + 1 > sizeof k)
        return LK_ERR_INVALID_ARG;
    k[0] = 'M';
    memcpy(k + 1, name, n);
    const unsigned char *val;
    size_t vlen;
    lk_err_t e = get_sized(t, db, k, n + 1, 8, 8, &val, &vlen);
    if (!e)
        *v = (int64_t)lk__get_be64(val);
    return e;
}

lk_err_t lk__wstore_meta_put(lk__store_txn_t *t, lk__state_db_t db, const char *name,
                             int64_t v, int64_t now_ms, char *errstr, size_t errstr_size) {
    unsigned char k[64], val[8];
    size_t n = strlen(name);
    if (n + 1 > sizeof k)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "meta name too long");
    k[0] = 'M';
    memcpy(k + 1, name, n);
    lk__put_be64(val, (uint64_t)v);
    return lk__store_state_put(t, db, k, n + 1, val, 8, now_ms, errstr, errstr_size);
}

lk_err_t lk__wstore_slice_get(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                              size_t klen, int64_t slice, const void **val, size_t *vlen) {
    if (klen > LK_WINDOW_KEY_MAX)
        return LK_ERR_TOO_LARGE;
    unsigned char k[KEYBUF];
    return lk__store_state_get(t, db, k, skey(k, slice, key, klen), val, vlen, NULL);
}

lk_err_t lk__wstore_slice_put(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                              size_t klen, int64_t slice, const void *val, size_t vlen,
                              int64_t now_ms, char *errstr, size_t errstr_size) {
    if (klen > LK_WINDOW_KEY_MAX)
        return key_too_long(klen, errstr, errstr_size);
    unsigned char k[KEYBUF];
    return lk__store_state_put(t, db, k, skey(k, slice, key, klen), val, vlen, now_ms, errstr,
                               errstr_size);
}

lk_err_t lk__wstore_slice_mark(lk__store_txn_t *t, lk__state_db_t db, int64_t slice,
                               int64_t now_ms, char *errstr, size_t errstr_size) {
    unsigned char k[16];
    return lk__store_state_put(t, db, k, lkey(k, slice), "", 0, now_ms, errstr, errstr_size);
}

typedef struct {
    unsigned char prefix[KEYBUF];
    size_t plen;
    int (*slice_cb)(int64_t, void *);
    int (*key_cb)(const void *, size_t, void *);
    void *opaque;
} walk_t;

static int in_prefix(const walk_t *w, const void *k, size_t klen) {
    return klen >= w->plen && !memcmp(k, w->prefix, w->plen);
}

static int each_slice(const void *k, size_t klen, const void *v, size_t vlen, int64_t upd,
                      void *o) {
    (void)v, (void)vlen, (void)upd;
    walk_t *w = o;
    if (!in_prefix(w, k, klen) || klen != 9)
        return 1;
    return w->slice_cb(get_slice((const unsigned char *)k + 1), w->opaque);
}

lk_err_t lk__wstore_slices(lk__store_txn_t *t, lk__state_db_t db, int64_t from,
                           int (*cb)(int64_t slice, void *opaque), void *opaque) {
    walk_t w = {.prefix = "L", .plen = 1, .slice_cb = cb, .opaque = opaque};
    unsigned char after[9];
    size_t alen = 1;
    if (from == INT64_MIN)
        after[0] = 'L'; /* strictly after "L": the first slice */
    else
        alen = lkey(after, from - 1);
    size_t visited;
    return lk__store_state_scan(t, db, after, alen, SIZE_MAX, each_slice, &w, &visited);
}

static int each_slice_key(const void *k, size_t klen, const void *v, size_t vlen, int64_t upd,
                          void *o) {
    (void)v, (void)vlen, (void)upd;
    walk_t *w = o;
    if (!in_prefix(w, k, klen) || klen < 11)
        return 1;
    return w->key_cb((const unsigned char *)k + 11, klen - 11, w->opaque);
}

lk_err_t lk__wstore_slice_keys(lk__store_txn_t *t, lk__state_db_t db, int64_t slice,
                               int (*cb)(const void *key, size_t klen, void *opaque),
                               void *opaque) {
    walk_t w = {.key_cb = cb, .opaque = opaque};
    w.plen = skey(w.prefix, slice, NULL, 0);
    size_t visited; /* the prefix itself is never a key: "strictly after" starts at it */
    return lk__store_state_scan(t, db, w.prefix, w.plen, SIZE_MAX, each_slice_key, &w,
                                &visited);
}

/* ---- expiry ---- */

typedef struct {
    int64_t upto;
    int64_t slice; /* the oldest live slice, if found */
    int found;
    /* keys of the slice being expired, copied: no write may happen during a scan */
    unsigned char *buf;
    size_t len, cap;
    size_t nkeys;
    int oom;
} expire_t;

static int first_slice(int64_t slice, void *o) {
    expire_t *x = o;
    if (slice <= x->upto) {
        x->slice = slice;
        x->found = 1;
    }
    return 1;
}

#define EXPIRE_CHUNK 4096 /* keys collected per scan: bounded memory for a huge slice */

static int collect_key(const void *key, size_t klen, void *o) {
    expire_t *x = o;
    unsigned char *n = lk__vec_reserve(x->buf, &x->cap, x->len + 2 + klen, 1, 16384);
    if (!n)
        return x->oom = 1;
    x->buf = n;
    x->buf[x->len] = (unsigned char)(klen >> 8);
    x->buf[x->len + 1] = (unsigned char)klen;
    memcpy(x->buf + x->len + 2, key, klen);
    x->len += 2 + klen;
    return ++x->nkeys >= EXPIRE_CHUNK;
}

lk_err_t lk__wstore_expire(lk__store_txn_t *t, lk__state_db_t db, int64_t upto,
                           uint64_t *deleted, char *errstr, size_t errstr_size) {
    expire_t x = {.upto = upto};
    lk_err_t e = LK_OK;
    uint64_t n = 0;
    unsigned char k[KEYBUF];
    for (;;) {
        x.found = 0;
        if ((e = lk__wstore_slices(t, db, INT64_MIN, first_slice, &x))) {
            e = lk__err(e, errstr, errstr_size, "window state: reading live slices: %s",
                        lk_err_str(e));
            break;
        }
        if (!x.found)
            break;
        /* the slice's keys, a chunk at a time; each chunk is deleted before the next
         * scan, which therefore starts again at the slice's first remaining key */
        for (;;) {
            x.len = x.nkeys = 0;
            if ((e = lk__wstore_slice_keys(t, db, x.slice, collect_key, &x)) || x.oom) {
                e = lk__err(e ? e : LK_ERR_NOMEM, errstr, errstr_size,
                            "window state: reading slice keys: %s",
                            lk_err_str(e ? e : LK_ERR_NOMEM));
                goto out;
            }
            if (!x.nkeys)
                break;
            for (size_t off = 0; off < x.len && !e;) {
                size_t klen = (size_t)x.buf[off] << 8 | x.buf[off + 1];
                const unsigned char *key = x.buf + off + 2;
                e = lk__store_state_del(t, db, k, skey(k, x.slice, key, klen), errstr,
                                        errstr_size);
                n++;
                off += 2 + klen;
            }
            if (e)
                goto out;
        }
        if ((e = lk__store_state_del(t, db, k, lkey(k, x.slice), errstr, errstr_size)))
            break;
    }
out:
    free(x.buf);
    if (deleted)
        *deleted = n;
    return e;
}

/* ---- running values ---- */

lk_err_t lk__wstore_value_get(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                              size_t klen, lk__wvalue_t *out) {
    if (klen > LK_WINDOW_KEY_MAX)
        return LK_ERR_TOO_LARGE;
    unsigned char k[KEYBUF];
    const unsigned char *p;
    size_t vlen;
    lk_err_t e = get_sized(t, db, k, vkey(k, key, klen), 5, SIZE_MAX, &p, &vlen);
    if (e)
        return e;
    out->nslices = lk__get_be32(p);
    out->visible = p[4] != 0;
    out->val = p + 5;
    out->len = vlen - 5;
    return LK_OK;
}

lk_err_t lk__wstore_value_put(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                              size_t klen, const lk__wvalue_t *v, void *scratch,
                              int64_t now_ms, char *errstr, size_t errstr_size) {
    if (klen > LK_WINDOW_KEY_MAX)
        return key_too_long(klen, errstr, errstr_size);
    unsigned char k[KEYBUF], *p = scratch;
    lk__put_be32(p, v->nslices);
    p[4] = v->visible ? 1 : 0;
    if (v->len)
        memmove(p + 5, v->val, v->len);
    return lk__store_state_put(t, db, k, vkey(k, key, klen), p, 5 + v->len, now_ms, errstr,
                               errstr_size);
}

lk_err_t lk__wstore_value_del(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                              size_t klen, char *errstr, size_t errstr_size) {
    if (klen > LK_WINDOW_KEY_MAX)
        return key_too_long(klen, errstr, errstr_size);
    unsigned char k[KEYBUF];
    return lk__store_state_del(t, db, k, vkey(k, key, klen), errstr, errstr_size);
}

/* ---- per-partition event-time maxima ---- */

static size_t pkey(unsigned char *k, const char *topic, int32_t partition) {
    size_t tl = strlen(topic);
    k[0] = 'P';
    k[1] = (unsigned char)(tl >> 8);
    k[2] = (unsigned char)tl;
    memcpy(k + 3, topic, tl);
    lk__put_be32(k + 3 + tl, (uint32_t)partition);
    return 3 + tl + 4;
}

lk_err_t lk__wstore_part_get(lk__store_txn_t *t, lk__state_db_t db, const char *topic,
                             int32_t partition, int64_t *max, int64_t *seen_ms) {
    if (strlen(topic) > 255) /* Kafka's limit is 249 */
        return LK_ERR_INVALID_ARG;
    unsigned char k[300];
    const unsigned char *val;
    size_t vlen;
    lk_err_t e = get_sized(t, db, k, pkey(k, topic, partition), 16, 16, &val, &vlen);
    if (e)
        return e;
    *max = (int64_t)lk__get_be64(val);
    *seen_ms = (int64_t)lk__get_be64(val + 8);
    return LK_OK;
}

lk_err_t lk__wstore_part_put(lk__store_txn_t *t, lk__state_db_t db, const char *topic,
                             int32_t partition, int64_t max, int64_t seen_ms, char *errstr,
                             size_t errstr_size) {
    if (strlen(topic) > 255)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "topic name too long");
    unsigned char k[300], v[16];
    lk__put_be64(v, (uint64_t)max);
    lk__put_be64(v + 8, (uint64_t)seen_ms);
    return lk__store_state_put(t, db, k, pkey(k, topic, partition), v, 16, seen_ms, errstr,
                               errstr_size);
}

typedef struct {
    int (*cb)(int64_t, int64_t, void *);
    void *opaque;
    int corrupt;
} parts_t;

static int each_part(const void *k, size_t klen, const void *v, size_t vlen, int64_t upd,
                     void *o) {
    (void)upd;
    parts_t *p = o;
    if (klen < 1 || *(const unsigned char *)k != 'P')
        return 1;
    if (vlen != 16) {
        p->corrupt = 1;
        return 1;
    }
    return p->cb((int64_t)lk__get_be64(v), (int64_t)lk__get_be64((const unsigned char *)v + 8),
                 p->opaque);
}

lk_err_t lk__wstore_parts(lk__store_txn_t *t, lk__state_db_t db,
                          int (*cb)(int64_t max, int64_t seen_ms, void *opaque), void *opaque) {
    parts_t p = {cb, opaque, 0};
    size_t visited;
    lk_err_t e = lk__store_state_scan(t, db, "P", 1, SIZE_MAX, each_part, &p, &visited);
    return e ? e : p.corrupt ? LK_ERR_CORRUPT : LK_OK;
}

/* ---- the planned batch's partitions with records left unread ---- */

static const unsigned char ikey[1] = {'I'};

lk_err_t lk__wstore_unread_put(lk__store_txn_t *t, lk__state_db_t db, uint64_t batch_id,
                               const lk__wunread_t *parts, size_t n, int64_t now_ms,
                               char *errstr, size_t errstr_size) {
    size_t len = 8;
    for (size_t i = 0; i < n; i++) {
        size_t tl = strlen(parts[i].topic);
        if (tl > 255) /* Kafka's limit is 249 */
            return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "topic name too long");
        len += 2 + tl + 4;
    }
    unsigned char *v = malloc(len);
    if (!v)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    lk__put_be64(v, batch_id);
    size_t o = 8;
    for (size_t i = 0; i < n; i++) {
        size_t tl = strlen(parts[i].topic);
        v[o] = (unsigned char)(tl >> 8);
        v[o + 1] = (unsigned char)tl;
        memcpy(v + o + 2, parts[i].topic, tl);
        lk__put_be32(v + o + 2 + tl, (uint32_t)parts[i].partition);
        o += 2 + tl + 4;
    }
    lk_err_t e = lk__store_state_put(t, db, ikey, 1, v, len, now_ms, errstr, errstr_size);
    free(v);
    return e;
}

lk_err_t lk__wstore_unread_get(lk__store_txn_t *t, lk__state_db_t db, uint64_t *batch_id,
                               int (*cb)(const char *topic, size_t tlen, int32_t partition,
                                         void *opaque),
                               void *opaque) {
    const unsigned char *v;
    size_t vlen;
    lk_err_t e = get_sized(t, db, ikey, 1, 8, SIZE_MAX, &v, &vlen);
    if (e)
        return e;
    *batch_id = lk__get_be64(v);
    for (size_t o = 8; o < vlen;) {
        if (vlen - o < 2)
            return LK_ERR_CORRUPT;
        size_t tl = (size_t)v[o] << 8 | v[o + 1];
        if (vlen - o - 2 < tl + 4)
            return LK_ERR_CORRUPT;
        if (cb && cb((const char *)v + o + 2, tl, (int32_t)lk__get_be32(v + o + 2 + tl), opaque))
            break;
        o += 2 + tl + 4;
    }
    return LK_OK;
}

lk_err_t lk__wstore_unread_del(lk__store_txn_t *t, lk__state_db_t db, char *errstr,
                               size_t errstr_size) {
    return lk__store_state_del(t, db, ikey, 1, errstr, errstr_size);
}

/* ---- sessions ---- */

static size_t wkey(unsigned char *k, const void *key, size_t klen, const int64_t *start) {
    k[0] = 'W';
    k[1] = (unsigned char)(klen >> 8);
    k[2] = (unsigned char)klen;
    memcpy(k + 3, key, klen);
    if (!start)
        return 3 + klen;
    put_slice(k + 3 + klen, *start);
    return 3 + klen + 8;
}

static size_t ckey(unsigned char *k, int64_t end, const void *key, size_t klen, int64_t start) {
    k[0] = 'C';
    put_slice(k + 1, end);
    k[9] = (unsigned char)(klen >> 8);
    k[10] = (unsigned char)klen;
    memcpy(k + 11, key, klen);
    put_slice(k + 11 + klen, start);
    return 19 + klen;
}

typedef struct {
    size_t plen;
    int (*cb)(int64_t, int64_t, const void *, size_t, void *);
    int (*end_cb)(int64_t, const void *, size_t, int64_t, void *);
    int64_t upto;
    void *opaque;
    int corrupt;
    unsigned char prefix[KEYBUF];
} swalk_t;

static int each_session(const void *k, size_t klen, const void *v, size_t vlen, int64_t upd,
                        void *o) {
    (void)upd;
    swalk_t *w = o;
    if (klen != w->plen + 8 || memcmp(k, w->prefix, w->plen))
        return 1;
    if (vlen < 8) {
        w->corrupt = 1;
        return 1;
    }
    return w->cb(get_slice((const unsigned char *)k + w->plen),
                 get_slice(v), (const unsigned char *)v + 8, vlen - 8, w->opaque);
}

lk_err_t lk__wstore_sessions(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                             size_t klen,
                             int (*cb)(int64_t, int64_t, const void *, size_t, void *),
                             void *opaque) {
    if (klen > LK_WINDOW_KEY_MAX)
        return LK_ERR_TOO_LARGE;
    swalk_t w = {.cb = cb, .opaque = opaque};
    w.plen = wkey(w.prefix, key, klen, NULL);
    size_t visited;
    lk_err_t e = lk__store_state_scan(t, db, w.prefix, w.plen, SIZE_MAX, each_session, &w,
                                      &visited);
    return e ? e : w.corrupt ? LK_ERR_CORRUPT : LK_OK;
}

lk_err_t lk__wstore_session_put(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                                size_t klen, int64_t start, int64_t end, const void *val,
                                size_t vlen, int64_t now_ms, char *errstr, size_t errstr_size) {
    if (klen > LK_WINDOW_KEY_MAX)
        return key_too_long(klen, errstr, errstr_size);
    unsigned char k[KEYBUF + 16], *v = malloc(8 + vlen);
    if (!v)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    put_slice(v, end);
    if (vlen)
        memcpy(v + 8, val, vlen);
    lk_err_t e = lk__store_state_put(t, db, k, wkey(k, key, klen, &start), v, 8 + vlen, now_ms,
                                     errstr, errstr_size);
    free(v);
    if (!e)
        e = lk__store_state_put(t, db, k, ckey(k, end, key, klen, start), "", 0, now_ms, errstr,
                                errstr_size);
    return e;
}

lk_err_t lk__wstore_session_del(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                                size_t klen, int64_t start, int64_t end, char *errstr,
                                size_t errstr_size) {
    if (klen > LK_WINDOW_KEY_MAX)
        return key_too_long(klen, errstr, errstr_size);
    unsigned char k[KEYBUF + 16];
    lk_err_t e = lk__store_state_del(t, db, k, wkey(k, key, klen, &start), errstr, errstr_size);
    if (!e)
        e = lk__store_state_del(t, db, k, ckey(k, end, key, klen, start), errstr, errstr_size);
    return e;
}

lk_err_t lk__wstore_session_get(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                                size_t klen, int64_t start, const void **val, size_t *vlen) {
    if (klen > LK_WINDOW_KEY_MAX)
        return LK_ERR_TOO_LARGE;
    unsigned char k[KEYBUF];
    const unsigned char *v;
    size_t n;
    lk_err_t e = get_sized(t, db, k, wkey(k, key, klen, &start), 8, SIZE_MAX, &v, &n);
    if (e)
        return e;
    *val = v + 8;
    *vlen = n - 8;
    return LK_OK;
}

static int each_ending(const void *k, size_t klen, const void *v, size_t vlen, int64_t upd,
                       void *o) {
    (void)v, (void)vlen, (void)upd;
    swalk_t *w = o;
    const unsigned char *p = k;
    if (klen < 19 || p[0] != 'C')
        return 1;
    int64_t end = get_slice(p + 1);
    if (end > w->upto)
        return 1;
    size_t kl = (size_t)p[9] << 8 | p[10];
    if (klen != 19 + kl) {
        w->corrupt = 1;
        return 1;
    }
    return w->end_cb(end, p + 11, kl, get_slice(p + 11 + kl), w->opaque);
}

lk_err_t lk__wstore_sessions_ending(lk__store_txn_t *t, lk__state_db_t db, int64_t upto,
                                    int (*cb)(int64_t, const void *, size_t, int64_t, void *),
                                    void *opaque) {
    swalk_t w = {.end_cb = cb, .upto = upto, .opaque = opaque};
    size_t visited;
    lk_err_t e = lk__store_state_scan(t, db, "C", 1, SIZE_MAX, each_ending, &w, &visited);
    return e ? e : w.corrupt ? LK_ERR_CORRUPT : LK_OK;
}
