/*
 * store_batch.c — what a batch commits about its input: the offsets (each with the
 * fingerprint of the last record read), the batch records (with history pruning) and the
 * pending plan recorded before a batch is read; and the rules of `checkpoint
 * reset-offsets` (offsets moved or forgotten, the pending plan dropped with them).
 * DESIGN.md, The batch protocol (items 2 and 4) and The checkpoint.
 */
#define _GNU_SOURCE
#include "store_priv.h"
#include "../core/crc32c_int.h"
#include "../core/util_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- offsets ---- */

static size_t offset_key(unsigned char *k, size_t cap, const char *topic, int32_t partition) {
    size_t tl = strlen(topic);
    if (tl + 5 > cap || tl + 5 > MAX_KEY) /* cap alone allowed a 512-byte key */
        return 0;
    memcpy(k, topic, tl);
    k[tl] = 0;
    lk__put_be32(k + tl + 1, (uint32_t)partition);
    return tl + 5;
}

uint64_t lk__record_hash(const void *key, size_t klen, const void *value, size_t vlen) {
    return (uint64_t)lk__crc32c(0, key ? key : "", key ? klen : 0) << 32 |
           lk__crc32c(0, value ? value : "", value ? vlen : 0);
}

lk_err_t lk__store_offset_put(lk__store_txn_t *t, const char *topic, int32_t partition,
                              int64_t offset, char *errstr, size_t errstr_size) {
    return lk__store_offset_put_fp(t, topic, partition, offset, NULL, errstr, errstr_size);
}

/* value: [1, offset] or [1, offset, fp offset, fp timestamp, fp hash] */
lk_err_t lk__store_offset_put_fp(lk__store_txn_t *t, const char *topic, int32_t partition,
                                 int64_t offset, const lk__fingerprint_t *fp, char *errstr,
                                 size_t errstr_size) {
    unsigned char k[512];
    size_t kl = offset_key(k, sizeof k, topic, partition);
    if (!kl)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "topic name too long");
    if (offset < 0)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size,
                       "offset %lld of %s[%d] is negative", (long long)offset, topic,
                       (int)partition);
    if (fp && (fp->offset < 0 || fp->offset >= offset))
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size,
                       "fingerprint of %s[%d] at offset %lld, not below the offset %lld",
                       topic, (int)partition, (long long)fp->offset, (long long)offset);
    lk__buf_reset(&t->buf);
    lk__pack_array(&t->buf, fp ? 5 : 2);
    lk__pack_i64(&t->buf, 1);
    lk__pack_i64(&t->buf, offset);
    if (fp) {
        lk__pack_i64(&t->buf, fp->offset);
        lk__pack_i64(&t->buf, fp->timestamp);
        lk__pack_i64(&t->buf, (int64_t)fp->hash);
    }
    lk__store_seal(&t->buf, k, kl);
    return lk__store_txn_put(t, t->s->dbi[DB_OFFSETS], k, kl, t->buf.data, t->buf.len, errstr,
                             errstr_size, "writing an offset");
}

/* Decode the offset stored for (topic, partition) under key k; a value that fails its
 * checksum, does not decode or is negative is corrupt, never "no offset". */
lk_err_t lk__store_decode_offset(lk__store_txn_t *t, const MDB_val *k, MDB_val v,
                                 const char *topic, int32_t partition, int64_t *offset,
                                 lk__fingerprint_t *fp, int *has_fp) {
    lk__obj_t o;
    if (lk__store_unseal(t->s, k, &v))
        return lk__store_corrupt(t, "the offset of %s[%d] fails its checksum", topic,
                                 (int)partition);
    lk__zone_clear(&t->tmp);
    if (lk__unpack(&t->tmp, v.mv_data, v.mv_size, &o) || !lk__arr_i64(&o, 1, offset))
        return lk__store_corrupt(t, "the offset of %s[%d] does not decode (%zu bytes)", topic,
                                 (int)partition, v.mv_size);
    if (*offset < 0)
        return lk__store_corrupt(t, "the offset of %s[%d] is negative (%lld)", topic,
                                 (int)partition, (long long)*offset);
    if (has_fp)
        *has_fp = 0;
    if (lk__arr_len(&o) >= 5) {
        lk__fingerprint_t f;
        int64_t h;
        if (!lk__arr_i64(&o, 2, &f.offset) || !lk__arr_i64(&o, 3, &f.timestamp) ||
            !lk__arr_i64(&o, 4, &h) || f.offset < 0 || f.offset >= *offset)
            return lk__store_corrupt(t, "the fingerprint kept with the offset of %s[%d] is invalid",
                                     topic, (int)partition);
        f.hash = (uint64_t)h;
        if (fp)
            *fp = f;
        if (has_fp)
            *has_fp = 1;
    }
    return LK_OK;
}

lk_err_t lk__store_offset_get(lk__store_txn_t *t, const char *topic, int32_t partition,
                              int64_t *offset) {
    return lk__store_offset_get_fp(t, topic, partition, offset, NULL, NULL);
}

lk_err_t lk__store_offset_get_fp(lk__store_txn_t *t, const char *topic, int32_t partition,
                                 int64_t *offset, lk__fingerprint_t *fp, int *has_fp) {
    unsigned char k[512];
    size_t kl = offset_key(k, sizeof k, topic, partition);
    MDB_val v;
    if (!kl)
        return LK_ERR_INVALID_ARG;
    lk_err_t e = lk__store_txn_get(t, t->s->dbi[DB_OFFSETS], k, kl, &v,
                                   "reading an offset");
    if (e) /* LK_ERR_NOT_FOUND: the only "no offset" */
        return e;
    MDB_val kv = {kl, k};
    return lk__store_decode_offset(t, &kv, v, topic, partition, offset, fp, has_fp);
}

typedef struct {
    int (*cb)(const char *, int32_t, int64_t, void *);
    void *opaque;
} offsets_walk_t;

static int each_offset(lk__store_txn_t *t, const MDB_val *k, MDB_val v, void *p,
                       lk_err_t *err) {
    offsets_walk_t *w = p;
    /* key: topic '\0' be32(partition); its length is checked before anything is
     * copied (a crafted key longer than a topic can be overflowed the copy) */
    const unsigned char *kp = k->mv_data;
    if (k->mv_size < 6 || k->mv_size > MAX_KEY) {
        *err = lk__store_corrupt(t, "an offsets key of %zu bytes (6..%d possible)", k->mv_size,
                                 MAX_KEY);
        return 1;
    }
    const unsigned char *nul = memchr(kp, 0, k->mv_size);
    if (!nul || (size_t)(nul - kp) + 5 != k->mv_size) {
        *err = lk__store_corrupt(t, "an offsets key of %zu bytes is not topic, NUL, partition",
                                 k->mv_size);
        return 1;
    }
    char topic[MAX_KEY + 1];
    memcpy(topic, kp, (size_t)(nul - kp));
    topic[nul - kp] = 0;
    uint32_t part = lk__get_be32(nul + 1);
    if (part > INT32_MAX) {
        *err = lk__store_corrupt(t, "the offsets key of topic %s has partition %lu", topic,
                                 (unsigned long)part);
        return 1;
    }
    int64_t off;
    if ((*err = lk__store_decode_offset(t, k, v, topic, (int32_t)part, &off, NULL, NULL)))
        return 1;
    return w->cb(topic, (int32_t)part, off, w->opaque) ? 1 : 0;
}

lk_err_t lk__store_offsets_foreach(lk__store_txn_t *t,
                                   int (*cb)(const char *, int32_t, int64_t, void *),
                                   void *opaque) {
    offsets_walk_t w = {cb, opaque};
    return lk__store_walk(t, t->s->dbi[DB_OFFSETS], "reading offsets", each_offset, &w);
}

/* ---- batch records ---- */

/* Encode a batch record (also the pending plan's format), sealed for key (key, klen);
 * -1 when out of memory. */
static int encode_batch(lk__buf_t *buf, const lk__batch_rec_t *b, const void *key,
                        size_t klen) {
    lk__buf_reset(buf);
    lk__pack_array(buf, 7);
    lk__pack_i64(buf, 1);
    lk__pack_i64(buf, (int64_t)b->id);
    lk__pack_i64(buf, b->batch_time_ms);
    lk__pack_i64(buf, b->commit_wall_ms ? b->commit_wall_ms : lk__wall_ms());
    lk__pack_i64(buf, (int64_t)b->records_in);
    lk__pack_i64(buf, (int64_t)b->records_out);
    lk__pack_array(buf, b->nranges);
    for (size_t i = 0; i < b->nranges; i++) {
        lk__pack_array(buf, 4);
        lk__pack_str(buf, b->ranges[i].topic);
        lk__pack_i64(buf, b->ranges[i].partition);
        lk__pack_i64(buf, b->ranges[i].from);
        lk__pack_i64(buf, b->ranges[i].until);
    }
    lk__store_seal(buf, key, klen);
    return buf->oom ? -1 : 0;
}

/* Drop the pending plan inside write transaction t (no plan is not an error). */
static lk_err_t plan_del(lk__store_txn_t *t, char *errstr, size_t errstr_size) {
    return lk__store_txn_del(t, t->s->dbi[DB_META], plan_key, sizeof plan_key - 1, errstr,
                             errstr_size, "clearing the batch plan");
}

lk_err_t lk__store_batch_put(lk__store_txn_t *t, const lk__batch_rec_t *b, char *errstr,
                             size_t errstr_size) {
    lk__buf_t *buf = &t->buf;
    unsigned char k[8];
    lk__put_be64(k, b->id);
    if (encode_batch(buf, b, k, sizeof k))
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    lk_err_t err = lk__store_txn_put(t, t->s->dbi[DB_BATCHES], k, 8, buf->data, buf->len, errstr,
                                     errstr_size, "writing the batch record");
    if (err)
        return err;
    t->batch_id = b->id;
    if ((err = plan_del(t, errstr, errstr_size))) /* the batch's commit ends its plan */
        return err;
    /* prune history: delete records with id <= b->id - history */
    if (b->id <= t->s->batch_history)
        return LK_OK;
    uint64_t cutoff = b->id - t->s->batch_history;
    uint64_t ids[64];
    size_t n;
    do {
        n = 0;
        MDB_cursor *c;
        if (mdb_cursor_open(t->txn, t->s->dbi[DB_BATCHES], &c))
            return lk__err(LK_ERR_STORE, errstr, errstr_size, "cursor");
        MDB_val kk, vv;
        for (int rc = mdb_cursor_get(c, &kk, &vv, MDB_FIRST); rc == 0 && n < 64;
             rc = mdb_cursor_get(c, &kk, &vv, MDB_NEXT)) {
            uint64_t id = kk.mv_size == 8 ? lk__get_be64(kk.mv_data) : 0;
            if (id > cutoff)
                break;
            ids[n++] = id;
        }
        mdb_cursor_close(c);
        for (size_t i = 0; i < n; i++) {
            lk__put_be64(k, ids[i]);
            if ((err = lk__store_txn_del(t, t->s->dbi[DB_BATCHES], k, 8, errstr, errstr_size,
                                         "pruning batch records")))
                return err;
        }
    } while (n == 64);
    return LK_OK;
}

/* Decode the batch record or pending plan v stored under key k (what names it in a
 * message). Every field is checked: ids positive, counts and offsets not negative,
 * partitions in range, from <= until. */
lk_err_t lk__store_decode_batch(lk__store_txn_t *t, const MDB_val *k, MDB_val v, const char *what,
                                lk__batch_rec_t *b) {
    lk__obj_t o;
    int64_t id, bt, cw, rin, rout;
    memset(b, 0, sizeof *b);
    if (lk__store_unseal(t->s, k, &v))
        return lk__store_corrupt(t, "%s fails its checksum", what);
    if (lk__unpack(&t->zone, v.mv_data, v.mv_size, &o) || !lk__arr_i64(&o, 1, &id) ||
        !lk__arr_i64(&o, 2, &bt) || !lk__arr_i64(&o, 3, &cw) || !lk__arr_i64(&o, 4, &rin) ||
        !lk__arr_i64(&o, 5, &rout))
        return lk__store_corrupt(t, "%s does not decode (%zu bytes)", what, v.mv_size);
    if (id < 1 || rin < 0 || rout < 0)
        return lk__store_corrupt(t, "%s has id %lld, %lld records in, %lld out", what,
                                 (long long)id, (long long)rin, (long long)rout);
    if (k->mv_size == 8 && lk__get_be64(k->mv_data) != (uint64_t)id)
        return lk__store_corrupt(t, "%s holds the record of batch %lld", what, (long long)id);
    const lk__obj_t *ranges = lk__arr_at(&o, 6);
    size_t n = ranges ? lk__arr_len(ranges) : (size_t)-1;
    if (n == (size_t)-1)
        return lk__store_corrupt(t, "%s has no ranges", what);
    b->ranges = lk__zone_alloc(&t->zone, (n ? n : 1) * sizeof *b->ranges);
    if (!b->ranges)
        return LK_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        const lk__obj_t *r = lk__arr_at(ranges, i);
        const char *topic;
        size_t tl;
        int64_t p, f, u;
        if (!r || !lk__arr_str(r, 0, &topic, &tl) || !lk__arr_i64(r, 1, &p) ||
            !lk__arr_i64(r, 2, &f) || !lk__arr_i64(r, 3, &u))
            return lk__store_corrupt(t, "%s: range %zu does not decode", what, i);
        if (p < 0 || p > INT32_MAX || f < 0 || u < f)
            return lk__store_corrupt(t, "%s: range %zu is %.*s[%lld] [%lld, %lld)", what, i,
                                     (int)(tl > 200 ? 200 : tl), topic, (long long)p, (long long)f,
                                     (long long)u);
        char *ts = lk__zone_alloc(&t->zone, tl + 1);
        if (!ts)
            return LK_ERR_NOMEM;
        memcpy(ts, topic, tl);
        ts[tl] = 0;
        b->ranges[i] = (lk__range_t){ts, (int32_t)p, f, u};
    }
    b->nranges = n;
    b->id = (uint64_t)id;
    b->batch_time_ms = bt;
    b->commit_wall_ms = cw;
    b->records_in = (uint64_t)rin;
    b->records_out = (uint64_t)rout;
    return LK_OK;
}

lk_err_t lk__store_decode_batch_at(lk__store_txn_t *t, const MDB_val *k, MDB_val v,
                                   lk__batch_rec_t *out) {
    if (k->mv_size != 8)
        return lk__store_corrupt(t, "a batches key of %zu bytes (8 expected)", k->mv_size);
    char what[64];
    lk__fmt(what, sizeof what, "batch record %llu",
            (unsigned long long)lk__get_be64(k->mv_data));
    return lk__store_decode_batch(t, k, v, what, out);
}

lk_err_t lk__store_batch_last(lk__store_txn_t *t, lk__batch_rec_t *out) {
    MDB_cursor *c;
    if (!t->txn || mdb_cursor_open(t->txn, t->s->dbi[DB_BATCHES], &c))
        return LK_ERR_STORE;
    MDB_val k, v;
    int rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
    mdb_cursor_close(c);
    if (rc == MDB_NOTFOUND)
        return LK_ERR_NOT_FOUND;
    if (rc)
        return lk__store_read_failed(t, rc, "reading the last batch record");
    return lk__store_decode_batch_at(t, &k, v, out);
}

lk_err_t lk__store_batch_get(lk__store_txn_t *t, uint64_t id, lk__batch_rec_t *out) {
    unsigned char k[8];
    lk__put_be64(k, id);
    MDB_val v;
    lk_err_t e = lk__store_txn_get(t, t->s->dbi[DB_BATCHES], k, 8, &v,
                                   "reading a batch record");
    if (e)
        return e;
    MDB_val kv = {8, k};
    return lk__store_decode_batch_at(t, &kv, v, out);
}

size_t lk__store_batch_count(lk__store_txn_t *t) {
    MDB_stat st;
    if (!t->txn || mdb_stat(t->txn, t->s->dbi[DB_BATCHES], &st))
        return 0;
    return st.ms_entries;
}


lk_err_t lk__store_plan_put(lk__store_t *s, const lk__batch_rec_t *plan, char *errstr,
                            size_t errstr_size) {
    lk__store_txn_t *t;
    lk_err_t err = lk__store_txn_begin(s, 1, &t, errstr, errstr_size);
    if (err)
        return err;
    lk__buf_t *buf = &t->buf;
    err = encode_batch(buf, plan, plan_key, sizeof plan_key - 1) ? lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory")
                   : lk__store_txn_put(t, s->dbi[DB_META], plan_key, sizeof plan_key - 1, buf->data,
                                       buf->len, errstr, errstr_size, "writing the batch plan");
    if (err) {
        lk__store_txn_abort(t);
        return err;
    }
    /* The plan need not be durable: without fsync it costs a page write, not a sync. */
    return lk__store_txn_commit_unsynced(t, errstr, errstr_size);
}

lk_err_t lk__store_plan_get(lk__store_txn_t *t, lk__batch_rec_t *out) {
    MDB_val v;
    lk_err_t e = lk__store_txn_get(t, t->s->dbi[DB_META], plan_key, sizeof plan_key - 1, &v,
                                   "reading the pending plan");
    if (e)
        return e;
    MDB_val kv = {sizeof plan_key - 1, (void *)plan_key};
    return lk__store_decode_batch(t, &kv, v, "the pending plan", out);
}

lk_err_t lk__store_plan_clear(lk__store_t *s, char *errstr, size_t errstr_size) {
    lk__store_txn_t *t;
    lk_err_t err = lk__store_txn_begin(s, 1, &t, errstr, errstr_size);
    if (err)
        return err;
    if ((err = plan_del(t, errstr, errstr_size))) {
        lk__store_txn_abort(t);
        return err;
    }
    return lk__store_txn_commit(t, errstr, errstr_size);
}

/* ---- reset-offsets: the rules of `lockstep checkpoint reset-offsets` ---- */

static lk_err_t offset_del(lk__store_txn_t *t, const char *topic, int32_t partition,
                           char *errstr, size_t errstr_size) {
    unsigned char k[512];
    size_t kl = offset_key(k, sizeof k, topic, partition);
    if (!kl)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "topic name too long");
    return lk__store_txn_del(t, t->s->dbi[DB_OFFSETS], k, kl, errstr, errstr_size,
                             "deleting an offset");
}

/* The offsets of one topic, and the list of topics with offsets for the message that
 * names them when the topic has none. */
typedef struct {
    const char *topic;
    lk__offset_change_t *v;
    size_t n, cap;
    char topics[1024]; /* "a, b, c" (cut when long) */
    size_t tlen, ntopics;
    char last[MAX_KEY + 1];
    int nomem;
} reset_ctx_t;

static int reset_collect(const char *topic, int32_t partition, int64_t offset, void *o) {
    reset_ctx_t *c = o;
    if (!c->ntopics || strcmp(c->last, topic)) { /* keys are in topic order */
        if (c->tlen < sizeof c->topics)
            c->tlen += (size_t)snprintf(c->topics + c->tlen, sizeof c->topics - c->tlen,
                                        "%s%s", c->ntopics ? ", " : "", topic);
        c->ntopics++;
        lk__fmt(c->last, sizeof c->last, "%s", topic);
    }
    if (strcmp(topic, c->topic))
        return 0;
    lk__offset_change_t *nv = lk__vec_reserve(c->v, &c->cap, c->n + 1, sizeof *nv, 16);
    if (!nv) {
        c->nomem = 1;
        return 1;
    }
    c->v = nv;
    c->v[c->n++] = (lk__offset_change_t){partition, offset, -1};
    return 0;
}

/* Keep the changes r asks for of c's offsets (all without r->partitions), each with its
 * new offset. The offsets came in key order, which is partition order, and stay in it
 * whatever the order of the request. */
static lk_err_t reset_select(lk__store_t *s, const lk__offset_reset_t *r, reset_ctx_t *c,
                             char *errstr, size_t errstr_size) {
    for (size_t w = 0; w < r->npartitions; w++) {
        size_t j = 0;
        while (j < c->n && c->v[j].partition != r->partitions[w])
            j++;
        if (j == c->n) {
            char list[1024] = "";
            size_t len = 0;
            for (size_t k = 0; k < c->n && len < sizeof list; k++)
                len += (size_t)snprintf(list + len, sizeof list - len, "%s%d", k ? ", " : "",
                                        (int)c->v[k].partition);
            return lk__err(LK_ERR_NOT_FOUND, errstr, errstr_size,
                           "checkpoint %s has no offset for %s[%d]; partitions of %s with "
                           "offsets: %s",
                           s->dir, r->topic, (int)r->partitions[w], r->topic, list);
        }
    }
    size_t n = 0;
    for (size_t k = 0; k < c->n; k++) {
        int asked = !r->npartitions;
        for (size_t w = 0; w < r->npartitions && !asked; w++)
            asked = r->partitions[w] == c->v[k].partition;
        if (asked) {
            c->v[n] = c->v[k];
            c->v[n++].to = r->to;
        }
    }
    c->n = n;
    return LK_OK;
}

lk_err_t lk__store_reset_offsets(lk__store_t *s, const lk__offset_reset_t *r,
                                 lk__offset_change_t **changes, size_t *nchanges,
                                 uint64_t *plan, char *errstr, size_t errstr_size) {
    *changes = NULL;
    *nchanges = 0;
    *plan = 0;
    if (r->to < -1)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size,
                       "offset %lld: the next offset to read is 0 or more",
                       (long long)r->to);
    lk__store_txn_t *t;
    lk_err_t e = lk__store_txn_begin(s, r->write, &t, errstr, errstr_size);
    if (e)
        return e;
    reset_ctx_t c = {.topic = r->topic};
    if ((e = lk__store_offsets_foreach(t, reset_collect, &c)) || c.nomem) {
        e = c.nomem ? LK_ERR_NOMEM : e;
        lk__err(e, errstr, errstr_size, "checkpoint %s: cannot read the offsets: %s", s->dir,
                t->err[0] ? t->err : lk_err_str(e));
        goto out;
    }
    if (!c.n) {
        e = lk__err(LK_ERR_NOT_FOUND, errstr, errstr_size,
                    "checkpoint %s has no offsets for topic '%s'; %s%s", s->dir, r->topic,
                    c.ntopics ? "topics with offsets: " : "it has no offsets at all",
                    c.topics);
        goto out;
    }
    if ((e = reset_select(s, r, &c, errstr, errstr_size)))
        goto out;
    for (size_t k = 0; k < c.n && r->write && !e; k++)
        e = r->to < 0 ? offset_del(t, r->topic, c.v[k].partition, errstr, errstr_size)
                      : lk__store_offset_put(t, r->topic, c.v[k].partition, r->to, errstr,
                                             errstr_size);
    if (e)
        goto out;
    /* the pending plan holds the old offsets: replayed, it would undo the change */
    lk__batch_rec_t p;
    lk_err_t pe = lk__store_plan_get(t, &p);
    if (pe && pe != LK_ERR_NOT_FOUND) { /* corrupt: never taken for "no plan" */
        e = lk__err(pe, errstr, errstr_size, "%s", t->err);
        goto out;
    }
    if (pe == LK_OK) {
        *plan = p.id;
        if (r->write && (e = plan_del(t, errstr, errstr_size)))
            goto out;
    }
    if (r->write) {
        e = lk__store_txn_commit(t, errstr, errstr_size);
        t = NULL;
    }
out:
    lk__store_txn_abort(t);
    if (e) {
        free(c.v);
        return e;
    }
    *changes = c.v;
    *nchanges = c.n;
    return LK_OK;
}

/* ---- a task's handoff (DESIGN.md, Scale-out): another process ran the task since ---- */

typedef struct {
    const char *sinks[64];
    size_t n;
    int nomem;
} handoff_sinks_t;

static int handoff_collect(const lk__outbox_stat_t *st, void *o) {
    handoff_sinks_t *c = o;
    if (c->n == LK_ARRAY_SIZE(c->sinks) || !(c->sinks[c->n] = strdup(st->sink))) {
        c->nomem = 1;
        return 1;
    }
    c->n++;
    return 0;
}

lk_err_t lk__store_task_handoff(lk__store_t *s, const lk__range_t *offsets, size_t n,
                                lk__store_restore_fn *restore, void *restore_opaque,
                                uint64_t *dropped_from, uint64_t *dropped_to, char *errstr,
                                size_t errstr_size) {
    *dropped_from = *dropped_to = 0;
    lk__store_txn_t *t;
    lk_err_t e = lk__store_txn_begin(s, 1, &t, errstr, errstr_size);
    if (e)
        return e;
    /* first: the restore decides from the outbox and fences as they are */
    if (restore && (e = restore(t, restore_opaque, errstr, errstr_size))) {
        lk__store_txn_abort(t);
        return e;
    }
    handoff_sinks_t c = {.n = 0};
    if ((e = lk__store_outbox_stats(t, handoff_collect, &c)) || c.nomem) {
        e = c.nomem ? LK_ERR_NOMEM : e;
        lk__err(e, errstr, errstr_size, "checkpoint %s: cannot read the outbox: %s", s->dir,
                t->err[0] ? t->err : lk_err_str(e));
    }
    for (size_t i = 0; i < c.n && !e; i++) {
        uint64_t first;
        if (lk__store_outbox_first_batch(t, c.sinks[i], &first) == LK_OK &&
            (!*dropped_from || first < *dropped_from))
            *dropped_from = first;
        *dropped_to = lk__store_committed_batch(s);
        e = lk__store_outbox_ack(t, c.sinks[i], UINT64_MAX, errstr, errstr_size);
    }
    for (size_t i = 0; i < c.n; i++)
        free((char *)c.sinks[i]);
    if (!e)
        e = plan_del(t, errstr, errstr_size);
    /* no fingerprint: the record before the offset was read by another process */
    for (size_t i = 0; i < n && !e; i++)
        e = lk__store_offset_put_fp(t, offsets[i].topic, offsets[i].partition, offsets[i].until,
                                    NULL, errstr, errstr_size);
    if (e) {
        lk__store_txn_abort(t);
        return e;
    }
    return lk__store_txn_commit(t, errstr, errstr_size);
}
