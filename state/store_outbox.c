/*
 * store_outbox.c — the outbox (a batch's output records, packed into ~32 KiB chunks
 * written once per chunk), the sinks' fences (the last batch acknowledged as delivered)
 * and the accumulators (counters written in each batch's transaction). DESIGN.md, The
 * batch protocol (items 5 and 7), The checkpoint and Observability.
 */
#define _GNU_SOURCE
#include "store_priv.h"
#include "../core/util_int.h"

#include <stdlib.h>
#include <string.h>

/* ---- outbox ---- */

/* key: sink '\0' lk__put_be64(batch) lk__put_be32(seq) */
static size_t outbox_key(unsigned char *k, size_t cap, const char *sink, uint64_t batch,
                         uint32_t seq) {
    size_t sl = strlen(sink);
    if (sl + 13 > cap || sl + 13 > MAX_KEY) /* cap alone allowed a 512-byte key */
        return 0;
    memcpy(k, sink, sl);
    k[sl] = 0;
    lk__put_be64(k + sl + 1, batch);
    lk__put_be32(k + sl + 9, seq);
    return sl + 13;
}

static seq_slot_t *seq_slot(lk__store_txn_t *t, const char *sink, uint64_t batch) {
    for (size_t i = 0; i < t->nseqs; i++)
        if (t->seqs[i]->batch == batch && !strcmp(t->seqs[i]->sink, sink))
            return t->seqs[i];
    /* first append for (sink, batch) in this txn: continue after existing records */
    unsigned char k[512];
    size_t kl = outbox_key(k, sizeof k, sink, batch + 1, 0);
    uint32_t next = 0;
    MDB_cursor *c;
    if (kl && mdb_cursor_open(t->txn, t->s->dbi[DB_OUTBOX], &c) == 0) {
        MDB_val kk = {kl, k}, vv;
        int rc = mdb_cursor_get(c, &kk, &vv, MDB_SET_RANGE);
        rc = rc == 0 ? mdb_cursor_get(c, &kk, &vv, MDB_PREV)
                     : mdb_cursor_get(c, &kk, &vv, MDB_LAST);
        if (rc == 0 && kk.mv_size == kl && !memcmp(kk.mv_data, k, kl - 12) &&
            lk__get_be64((unsigned char *)kk.mv_data + kl - 12) == batch)
            next = lk__get_be32((unsigned char *)kk.mv_data + kl - 4) + 1;
        mdb_cursor_close(c);
    }
    seq_slot_t **n = lk__vec_reserve(t->seqs, &t->seqs_cap, t->nseqs + 1, sizeof *n, 4);
    if (!n)
        return NULL;
    t->seqs = n;
    seq_slot_t *slot = calloc(1, sizeof *slot);
    if (!slot || !(slot->sink = strdup(sink))) {
        free(slot);
        return NULL;
    }
    slot->batch = batch;
    slot->next_seq = next;
    lk__buf_init(&slot->chunk);
    t->seqs[t->nseqs++] = slot;
    return slot;
}

/* Write the pending chunk of slot as the value of key (sink, batch, next_seq). */
static lk_err_t chunk_write(lk__store_txn_t *t, seq_slot_t *slot, char *errstr,
                            size_t errstr_size) {
    if (!slot->chunk.len)
        return LK_OK;
    if (slot->chunk.oom)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    unsigned char k[512];
    size_t kl = outbox_key(k, sizeof k, slot->sink, slot->batch, slot->next_seq);
    if (!kl)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "sink name too long");
    lk__store_seal(&slot->chunk, k, kl);
    if (slot->chunk.oom)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    t->outbox_delta += CRC_LEN; /* outbox bytes count whole values, as at open */
    lk_err_t err = lk__store_txn_put(t, t->s->dbi[DB_OUTBOX], k, kl, slot->chunk.data,
                                     slot->chunk.len, errstr, errstr_size,
                                     "appending to the outbox");
    if (err)
        return err;
    slot->next_seq++;
    lk__buf_reset(&slot->chunk);
    return LK_OK;
}

/* Write every pending chunk: before a commit, and before anything reads the outbox in
 * this txn. */
lk_err_t lk__store_outbox_flush(lk__store_txn_t *t, char *errstr, size_t errstr_size) {
    for (size_t i = 0; i < t->nseqs; i++) {
        lk_err_t err = chunk_write(t, t->seqs[i], errstr, errstr_size);
        if (err)
            return err;
    }
    return LK_OK;
}

lk_err_t lk__store_outbox_append(lk__store_txn_t *t, const char *sink, uint64_t batch,
                                 const lk__out_record_t *r, char *errstr, size_t errstr_size) {
    lk_err_t err = lk__store_txn_check(t, errstr, errstr_size);
    if (err)
        return err;
    if (strlen(sink) + 13 > MAX_KEY)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "sink name too long");
    seq_slot_t *slot = seq_slot(t, sink, batch);
    if (!slot)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    /* a chunk is a sequence of records, each [1, partition, key, value, ts, headers] */
    lk__buf_t *b = &slot->chunk;
    size_t before = b->len;
    lk__pack_array(b, 6);
    lk__pack_i64(b, 1);
    lk__pack_i64(b, r->partition);
    lk__pack_bin_or_nil(b, r->key, r->key_len);
    lk__pack_bin_or_nil(b, r->value, r->value_len);
    lk__pack_i64(b, r->timestamp_ms);
    lk__pack_array(b, r->nheaders);
    for (size_t i = 0; i < r->nheaders; i++) {
        lk__pack_array(b, 2);
        lk__pack_str(b, r->headers[i].name);
        lk__pack_bin_or_nil(b, r->headers[i].value, r->headers[i].value_len);
    }
    if (b->oom)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    t->outbox_delta += (int64_t)(b->len - before);
    return b->len >= OUTBOX_CHUNK_BYTES ? chunk_write(t, slot, errstr, errstr_size) : LK_OK;
}

lk_err_t lk__store_outbox_first_batch(lk__store_txn_t *t, const char *sink, uint64_t *batch) {
    return lk__store_outbox_batch_from(t, sink, 0, batch);
}

/* A cursor on the outbox, for a read in t, positioned (MDB_SET_RANGE) at the first key at
 * or after sink's first chunk of batch. */
typedef struct {
    unsigned char k[512]; /* sink NUL batch chunk 0 */
    size_t kl;
    MDB_cursor *c;
    MDB_val kk, vv; /* where the cursor is */
} outbox_cur_t;

/* Open oc (*rc: the positioning's LMDB result); the chunks this txn has pending are
 * written first, so that the read sees them. The caller closes oc->c. */
static lk_err_t outbox_seek(lk__store_txn_t *t, const char *sink, uint64_t batch,
                            outbox_cur_t *oc, int *rc) {
    char ferr[256];
    lk_err_t err = lk__store_outbox_flush(t, ferr, sizeof ferr);
    if (err)
        return err;
    oc->kl = outbox_key(oc->k, sizeof oc->k, sink, batch, 0);
    if (!oc->kl || !t->txn || mdb_cursor_open(t->txn, t->s->dbi[DB_OUTBOX], &oc->c))
        return LK_ERR_STORE;
    oc->kk = (MDB_val){oc->kl, oc->k};
    *rc = mdb_cursor_get(oc->c, &oc->kk, &oc->vv, MDB_SET_RANGE);
    return LK_OK;
}

lk_err_t lk__store_outbox_batch_from(lk__store_txn_t *t, const char *sink, uint64_t from,
                                     uint64_t *batch) {
    outbox_cur_t oc;
    int rc;
    lk_err_t err = outbox_seek(t, sink, from, &oc, &rc);
    if (err)
        return err;
    err = LK_ERR_NOT_FOUND;
    if (rc == 0 && oc.kk.mv_size == oc.kl && !memcmp(oc.kk.mv_data, oc.k, oc.kl - 12)) {
        *batch = lk__get_be64((unsigned char *)oc.kk.mv_data + oc.kl - 12);
        err = LK_OK;
    }
    mdb_cursor_close(oc.c);
    return err;
}

/* Decode the record at *off of a chunk (checksum already verified and stripped) and
 * advance *off past it; 0 when it does not decode or holds impossible values. */
int lk__store_decode_out(lk__store_txn_t *t, const MDB_val *v, size_t *off, lk__out_record_t *r,
                         lk__header_t *hbuf, size_t hcap) {
    lk__obj_t o;
    int64_t part, ts;
    lk__zone_clear(&t->tmp);
    if (lk__unpack_next(&t->tmp, v->mv_data, v->mv_size, off, &o) || !lk__arr_i64(&o, 1, &part) ||
        !lk__arr_bin_or_nil(&o, 2, &r->key, &r->key_len) ||
        !lk__arr_bin_or_nil(&o, 3, &r->value, &r->value_len) || !lk__arr_i64(&o, 4, &ts))
        return 0;
    const lk__obj_t *hs = lk__arr_at(&o, 5);
    size_t n = hs ? lk__arr_len(hs) : (size_t)-1;
    if (n == (size_t)-1)
        return 0;
    if (n > hcap && !(hbuf = lk__zone_alloc(&t->tmp, n * sizeof *hbuf))) /* a copied record may carry any number of headers */
        return 0;
    for (size_t i = 0; i < n; i++) {
        const lk__obj_t *h = lk__arr_at(hs, i);
        const char *name;
        size_t nl;
        if (!h || !lk__arr_str(h, 0, &name, &nl) ||
            !lk__arr_bin_or_nil(h, 1, &hbuf[i].value, &hbuf[i].value_len))
            return 0;
        char *nm = lk__zone_alloc(&t->tmp, nl + 1);
        if (!nm)
            return 0;
        memcpy(nm, name, nl);
        nm[nl] = 0;
        hbuf[i].name = nm;
    }
    if (part < -1 || part > INT32_MAX)
        return 0;
    r->partition = (int32_t)part;
    r->timestamp_ms = ts;
    r->headers = hbuf;
    r->nheaders = n;
    return 1;
}

lk_err_t lk__store_outbox_foreach(lk__store_txn_t *t, const char *sink, uint64_t batch,
                                  int (*cb)(const lk__out_record_t *, void *), void *opaque) {
    outbox_cur_t oc;
    int stop = 0, rc;
    lk_err_t err = outbox_seek(t, sink, batch, &oc, &rc);
    if (err)
        return err;
    MDB_cursor *c = oc.c;
    MDB_val kk = oc.kk, vv = oc.vv;
    const unsigned char *k = oc.k;
    size_t kl = oc.kl;
    lk__header_t hbuf[64];
    for (; rc == 0 && !stop && !err; rc = mdb_cursor_get(c, &kk, &vv, MDB_NEXT)) {
        if (kk.mv_size != kl || memcmp(kk.mv_data, k, kl - 4))
            break;
        uint32_t seq = lk__get_be32((unsigned char *)kk.mv_data + kl - 4);
        if (lk__store_unseal(t->s, &kk, &vv)) {
            err = lk__store_corrupt(t,
                                    "outbox chunk %lu of sink '%s' batch %llu fails its checksum",
                                    (unsigned long)seq, sink, (unsigned long long)batch);
            break;
        }
        for (size_t off = 0, i = 0; off < vv.mv_size && !stop; i++) {
            lk__out_record_t r;
            if (!lk__store_decode_out(t, &vv, &off, &r, hbuf, LK_ARRAY_SIZE(hbuf))) {
                err = lk__store_corrupt(t,
                                        "record %zu of outbox chunk %lu of sink '%s' batch "
                                        "%llu does not decode",
                                        i, (unsigned long)seq, sink, (unsigned long long)batch);
                break;
            }
            stop = cb(&r, opaque);
        }
    }
    if (!err && rc && rc != MDB_NOTFOUND && !stop)
        err = lk__store_read_failed(t, rc, "reading the outbox");
    mdb_cursor_close(c);
    return err;
}

lk_err_t lk__store_outbox_ack(lk__store_txn_t *t, const char *sink, uint64_t batch,
                              char *errstr, size_t errstr_size) {
    lk_err_t err = lk__store_txn_check(t, errstr, errstr_size);
    if (!err)
        err = lk__store_outbox_flush(t, errstr, errstr_size);
    if (err)
        return err;
    unsigned char k[512];
    size_t kl = outbox_key(k, sizeof k, sink, 0, 0);
    if (!kl)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "sink name too long");
    /* collect keys first: deleting may copy pages, invalidating cursor data */
    for (;;) {
        unsigned char (*keys)[512] = malloc(256 * sizeof *keys);
        size_t lens[256], n = 0;
        if (!keys)
            return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        MDB_cursor *c;
        if (mdb_cursor_open(t->txn, t->s->dbi[DB_OUTBOX], &c)) {
            free(keys);
            return lk__err(LK_ERR_STORE, errstr, errstr_size, "cursor");
        }
        MDB_val kk = {kl, k}, vv;
        for (int rc = mdb_cursor_get(c, &kk, &vv, MDB_SET_RANGE); rc == 0 && n < 256;
             rc = mdb_cursor_get(c, &kk, &vv, MDB_NEXT)) {
            if (kk.mv_size != kl || memcmp(kk.mv_data, k, kl - 12) ||
                lk__get_be64((unsigned char *)kk.mv_data + kl - 12) > batch)
                break;
            memcpy(keys[n], kk.mv_data, kl);
            lens[n++] = kk.mv_size;
            t->outbox_delta -= (int64_t)vv.mv_size;
        }
        mdb_cursor_close(c);
        for (size_t i = 0; i < n && !err; i++)
            err = lk__store_txn_del(t, t->s->dbi[DB_OUTBOX], keys[i], lens[i], errstr, errstr_size,
                                    "acknowledging outbox records");
        free(keys);
        if (err || n < 256)
            return err;
    }
}

/* ---- fences ---- */

lk_err_t lk__store_fence_put(lk__store_txn_t *t, const char *sink, uint64_t batch,
                             char *errstr, size_t errstr_size) {
    lk__buf_reset(&t->buf);
    lk__pack_array(&t->buf, 3);
    lk__pack_i64(&t->buf, 1);
    lk__pack_i64(&t->buf, (int64_t)batch);
    lk__pack_i64(&t->buf, lk__wall_ms());
    lk__store_seal(&t->buf, sink, strlen(sink));
    return lk__store_txn_put(t, t->s->dbi[DB_FENCES], sink, strlen(sink), t->buf.data, t->buf.len,
                             errstr, errstr_size, "writing a sink fence");
}

/* Decode the fence of sink (value v under key k, already unsealed). */
lk_err_t lk__store_decode_fence(lk__store_txn_t *t, const char *sink, MDB_val v, int64_t *batch,
                                int64_t *wall) {
    lk__obj_t o;
    lk__zone_clear(&t->tmp);
    if (lk__unpack(&t->tmp, v.mv_data, v.mv_size, &o) || !lk__arr_i64(&o, 1, batch) ||
        !lk__arr_i64(&o, 2, wall))
        return lk__store_corrupt(t, "the fence of sink '%s' does not decode (%zu bytes)", sink,
                                 v.mv_size);
    if (*batch < 0)
        return lk__store_corrupt(t, "the fence of sink '%s' names batch %lld", sink,
                                 (long long)*batch);
    return LK_OK;
}

/* The value of name in the name-keyed database dbi, its checksum verified and stripped;
 * what names the record in messages ("the fence of sink"), reading the read. */
static lk_err_t get_named(lk__store_txn_t *t, MDB_dbi dbi, const char *name, const char *what,
                          const char *reading, MDB_val *v) {
    size_t nl = strlen(name);
    lk_err_t e = lk__store_txn_get(t, dbi, name, nl, v, reading);
    if (e)
        return e;
    MDB_val k = {nl, (void *)name};
    if (lk__store_unseal(t->s, &k, v))
        return lk__store_corrupt(t, "%s '%s' fails its checksum", what, name);
    return LK_OK;
}

lk_err_t lk__store_fence_get_offset(lk__store_txn_t *t, const char *sink, uint64_t *batch,
                                    int64_t *offset, int64_t *wall_ms) {
    MDB_val v;
    int64_t b, w;
    *offset = -1;
    lk_err_t e = get_named(t, t->s->dbi[DB_FENCES], sink, "the fence of sink",
                           "reading a fence", &v);
    if (!e && !(e = lk__store_decode_fence(t, sink, v, &b, &w))) {
        *batch = (uint64_t)b;
        if (wall_ms)
            *wall_ms = w;
        lk__obj_t o; /* decoded again: lk__store_decode_fence's object is gone */
        int64_t off;
        lk__zone_clear(&t->tmp);
        if (!lk__unpack(&t->tmp, v.mv_data, v.mv_size, &o) && lk__arr_len(&o) > 3 &&
            lk__arr_i64(&o, 3, &off) && off >= 0)
            *offset = off;
    }
    return e;
}

lk_err_t lk__store_fence_put_offset(lk__store_txn_t *t, const char *sink, uint64_t batch,
                                    int64_t offset, char *errstr, size_t errstr_size) {
    if (offset < 0) { /* unknown in this process: the recorded one still bounds the tail */
        uint64_t b;
        int64_t old;
        lk_err_t e = lk__store_fence_get_offset(t, sink, &b, &old, NULL);
        if (e && e != LK_ERR_NOT_FOUND)
            return lk__err(e, errstr, errstr_size, "%s", t->err);
        offset = e ? -1 : old;
    }
    if (offset < 0)
        return lk__store_fence_put(t, sink, batch, errstr, errstr_size);
    lk__buf_reset(&t->buf);
    lk__pack_array(&t->buf, 4); /* older versions read elements 1 and 2 only */
    lk__pack_i64(&t->buf, 1);
    lk__pack_i64(&t->buf, (int64_t)batch);
    lk__pack_i64(&t->buf, lk__wall_ms());
    lk__pack_i64(&t->buf, offset);
    lk__store_seal(&t->buf, sink, strlen(sink));
    return lk__store_txn_put(t, t->s->dbi[DB_FENCES], sink, strlen(sink), t->buf.data, t->buf.len,
                             errstr, errstr_size, "writing a sink fence");
}

lk_err_t lk__store_fence_get(lk__store_txn_t *t, const char *sink, uint64_t *batch) {
    MDB_val v;
    int64_t b, w;
    lk_err_t e = get_named(t, t->s->dbi[DB_FENCES], sink, "the fence of sink",
                           "reading a fence", &v);
    if (!e && !(e = lk__store_decode_fence(t, sink, v, &b, &w)))
        *batch = (uint64_t)b;
    return e;
}

typedef struct {
    const char *what;
    int (*each)(lk__store_txn_t *, const char *, MDB_val, void *, lk_err_t *);
    void *ctx;
} named_walk_t;

static int each_named(lk__store_txn_t *t, const MDB_val *k, MDB_val v, void *p,
                      lk_err_t *err) {
    named_walk_t *w = p;
    char name[MAX_KEY + 1];
    if (k->mv_size == 0 || k->mv_size > MAX_KEY || memchr(k->mv_data, 0, k->mv_size)) {
        *err = lk__store_corrupt(t, "a %s key of %zu bytes is not a name", w->what, k->mv_size);
        return 1;
    }
    memcpy(name, k->mv_data, k->mv_size);
    name[k->mv_size] = 0;
    if (lk__store_unseal(t->s, k, &v)) {
        *err = lk__store_corrupt(t, "the %s '%s' fails its checksum", w->what, name);
        return 1;
    }
    return w->each(t, name, v, w->ctx, err);
}

/* Iterate a name-keyed database (what: "fence", "accumulator"), handing each name as a
 * C string and its value with the checksum verified and stripped. each returns 0 to go
 * on, 1 to stop, or an error (its message already in t). */
static lk_err_t foreach_named(lk__store_txn_t *t, MDB_dbi dbi, const char *what,
                              int (*each)(lk__store_txn_t *, const char *, MDB_val, void *,
                                          lk_err_t *),
                              void *ctx) {
    named_walk_t w = {what, each, ctx};
    return lk__store_walk(t, dbi, "reading", each_named, &w);
}

typedef struct {
    int (*fence_cb)(const char *, uint64_t, int64_t, void *);
    int (*acc_cb)(const char *, int64_t, void *);
    void *opaque;
} named_ctx_t;

static int each_fence(lk__store_txn_t *t, const char *name, MDB_val v, void *p,
                      lk_err_t *err) {
    named_ctx_t *c = p;
    int64_t b, w;
    if ((*err = lk__store_decode_fence(t, name, v, &b, &w)))
        return 1;
    return c->fence_cb(name, (uint64_t)b, w, c->opaque) ? 1 : 0;
}

lk_err_t lk__store_fences_foreach(lk__store_txn_t *t,
                                  int (*cb)(const char *, uint64_t, int64_t, void *),
                                  void *opaque) {
    named_ctx_t c = {cb, NULL, opaque};
    return foreach_named(t, t->s->dbi[DB_FENCES], "fence", each_fence, &c);
}

/* ---- accumulators ---- */

/* Decode accumulator name's value (already unsealed). */
lk_err_t lk__store_decode_acc(lk__store_txn_t *t, const char *name, MDB_val v, int64_t *value) {
    lk__obj_t o;
    lk__zone_clear(&t->tmp);
    if (lk__unpack(&t->tmp, v.mv_data, v.mv_size, &o) || !lk__arr_i64(&o, 1, value))
        return lk__store_corrupt(t, "the accumulator '%s' does not decode (%zu bytes)", name,
                                 v.mv_size);
    return LK_OK;
}

lk_err_t lk__store_acc_get(lk__store_txn_t *t, const char *name, int64_t *value) {
    MDB_val v;
    lk_err_t e = get_named(t, t->s->dbi[DB_ACC], name, "the accumulator",
                           "reading an accumulator", &v);
    return e ? e : lk__store_decode_acc(t, name, v, value);
}

lk_err_t lk__store_acc_add(lk__store_txn_t *t, const char *name, int64_t delta, char *errstr,
                           size_t errstr_size) {
    int64_t cur = 0;
    lk_err_t err = lk__store_acc_get(t, name, &cur);
    if (err && err != LK_ERR_NOT_FOUND)
        return lk__err(err, errstr, errstr_size, "%s", t->err);
    lk__buf_reset(&t->buf);
    lk__pack_array(&t->buf, 2);
    lk__pack_i64(&t->buf, 1);
    lk__pack_i64(&t->buf, (int64_t)((uint64_t)cur + (uint64_t)delta));
    lk__store_seal(&t->buf, name, strlen(name));
    return lk__store_txn_put(t, t->s->dbi[DB_ACC], name, strlen(name), t->buf.data,
                             t->buf.len, errstr, errstr_size, "writing an accumulator");
}

static int each_acc(lk__store_txn_t *t, const char *name, MDB_val v, void *p, lk_err_t *err) {
    named_ctx_t *c = p;
    int64_t value;
    if ((*err = lk__store_decode_acc(t, name, v, &value)))
        return 1;
    return c->acc_cb(name, value, c->opaque) ? 1 : 0;
}

lk_err_t lk__store_acc_foreach(lk__store_txn_t *t, int (*cb)(const char *, int64_t, void *),
                               void *opaque) {
    named_ctx_t c = {NULL, cb, opaque};
    return foreach_named(t, t->s->dbi[DB_ACC], "accumulator", each_acc, &c);
}
