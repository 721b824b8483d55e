/*
 * store_inspect.c — what `lockstep checkpoint inspect` counts (outbox depth per sink,
 * state database sizes) and lk__store_decode, every record decoder on raw bytes for the
 * fuzz target. inspect.c renders the description; this file reads the databases for it.
 * DESIGN.md, The checkpoint and Testing.
 */
#define _GNU_SOURCE
#include "store_priv.h"
#include "../core/util_int.h"

#include <stdlib.h>
#include <string.h>

/* Records in one chunk value read under key k; (size_t)-1 if it fails its checksum or
 * does not decode. */
static size_t chunk_records(lk__store_txn_t *t, const MDB_val *k, MDB_val vv) {
    const MDB_val *v = &vv;
    size_t n = 0, off = 0;
    lk__obj_t o;
    if (lk__store_unseal(t->s, k, &vv))
        return (size_t)-1;
    while (off < v->mv_size) {
        lk__zone_clear(&t->tmp);
        if (lk__unpack_next(&t->tmp, v->mv_data, v->mv_size, &off, &o))
            return (size_t)-1;
        n++;
    }
    return n;
}

lk_err_t lk__store_outbox_stats(lk__store_txn_t *t,
                                int (*cb)(const lk__outbox_stat_t *, void *), void *opaque) {
    char ferr[256];
    lk_err_t err = lk__store_outbox_flush(t, ferr, sizeof ferr);
    if (err)
        return err;
    MDB_cursor *c;
    if (!t->txn || mdb_cursor_open(t->txn, t->s->dbi[DB_OUTBOX], &c))
        return LK_ERR_STORE;
    MDB_val k, v;
    lk__outbox_stat_t st;
    char cur[512] = "";
    int have = 0;
    memset(&st, 0, sizeof st);
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        const unsigned char *kp = k.mv_data;
        if (k.mv_size < 14 || k.mv_size > MAX_KEY || kp[k.mv_size - 13] != 0 ||
            memchr(kp, 0, k.mv_size - 13)) {
            err = lk__store_corrupt(
                t, "an outbox key of %zu bytes is not sink, NUL, batch, sequence", k.mv_size);
            goto out;
        }
        size_t sl = k.mv_size - 13;
        uint64_t batch = lk__get_be64(kp + sl + 1);
        if (!have || strlen(cur) != sl || memcmp(cur, kp, sl)) {
            if (have && cb(&st, opaque))
                goto out;
            memcpy(cur, kp, sl);
            cur[sl] = 0;
            memset(&st, 0, sizeof st);
            st.sink = cur;
            st.first_batch = batch;
            have = 1;
        }
        if (st.records == 0 || batch != st.last_batch)
            st.batches++;
        st.last_batch = batch;
        size_t n = chunk_records(t, &k, v);
        if (n == (size_t)-1) {
            err = lk__store_corrupt(t,
                                    "outbox chunk %lu of sink '%s' batch %llu fails its "
                                    "checksum or does not decode",
                                    (unsigned long)lk__get_be32(kp + sl + 9), cur,
                                    (unsigned long long)batch);
            goto out;
        }
        st.records += n;
        st.bytes += v.mv_size;
    }
    if (have)
        cb(&st, opaque);
out:
    mdb_cursor_close(c);
    return err;
}
lk_err_t lk__store_state_stats(lk__store_txn_t *t, int (*cb)(const lk__state_stat_t *, void *),
                               void *opaque) {
    MDB_dbi main;
    MDB_cursor *c;
    if (!t->txn || mdb_dbi_open(t->txn, NULL, 0, &main) || mdb_cursor_open(t->txn, main, &c))
        return LK_ERR_STORE;
    MDB_val k, v;
    /* named databases are keys of the main database; collect names first */
    char (*names)[512] = NULL;
    size_t n = 0, cap = 0;
    MDB_val start = {6, "state."};
    k = start;
    lk_err_t err = LK_OK;
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size < 6 || memcmp(k.mv_data, "state.", 6))
            break;
        if (k.mv_size > MAX_KEY || memchr(k.mv_data, 0, k.mv_size)) {
            err = lk__store_corrupt(t, "a database name of %zu bytes", k.mv_size);
            break;
        }
        char (*nn)[512] = lk__vec_reserve(names, &cap, n + 1, sizeof *names, 16);
        if (!nn) {
            err = LK_ERR_NOMEM;
            break;
        }
        names = nn;
        memcpy(names[n], k.mv_data, k.mv_size);
        names[n][k.mv_size] = 0;
        n++;
    }
    mdb_cursor_close(c);
    for (size_t i = 0; i < n; i++) {
        MDB_dbi dbi;
        MDB_stat st;
        /* For a read txn this handle is closed again when the txn ends. */
        if (mdb_dbi_open(t->txn, names[i], 0, &dbi) || mdb_stat(t->txn, dbi, &st))
            continue;
        lk__state_stat_t ss = {names[i] + 6, st.ms_entries,
                              (uint64_t)(st.ms_branch_pages + st.ms_leaf_pages +
                                         st.ms_overflow_pages) *
                                  st.ms_psize};
        if (cb(&ss, opaque))
            break;
    }
    free(names);
    return err;
}
/* ---- the decoders on raw bytes (the fuzz target) ---- */

static int no_config_cb(const char *k, const char *v, void *o) {
    (void)k, (void)v, (void)o;
    return 0;
}

lk_err_t lk__store_decode(lk__store_txn_t *t, lk__store_record_t kind, const void *key,
                          size_t klen, const void *val, size_t vlen) {
    MDB_val k = {klen, (void *)key}, v = {vlen, (void *)val};
    t->err[0] = 0;
    switch (kind) {
    case LK_REC_OFFSET: {
        int64_t off;
        lk__fingerprint_t fp;
        int has_fp;
        return lk__store_decode_offset(t, &k, v, "topic", 0, &off, &fp, &has_fp);
    }
    case LK_REC_BATCH: {
        lk__batch_rec_t b;
        if (klen != 8)
            return LK_ERR_INVALID_ARG;
        return lk__store_decode_batch_at(t, &k, v, &b);
    }
    case LK_REC_PLAN: {
        lk__batch_rec_t b;
        MDB_val pk = {sizeof plan_key - 1, (void *)plan_key};
        return lk__store_decode_batch(t, &pk, v, "the pending plan", &b);
    }
    case LK_REC_OUTBOX: {
        if (lk__store_unseal(t->s, &k, &v))
            return lk__store_corrupt(t, "outbox chunk fails its checksum");
        lk__header_t hbuf[64];
        for (size_t off = 0; off < v.mv_size;) {
            lk__out_record_t r;
            if (!lk__store_decode_out(t, &v, &off, &r, hbuf, LK_ARRAY_SIZE(hbuf)))
                return lk__store_corrupt(t, "an outbox record does not decode");
        }
        return LK_OK;
    }
    case LK_REC_FENCE: {
        int64_t b, w;
        if (lk__store_unseal(t->s, &k, &v))
            return lk__store_corrupt(t, "fence fails its checksum");
        return lk__store_decode_fence(t, "sink", v, &b, &w);
    }
    case LK_REC_ACC: {
        int64_t a;
        if (lk__store_unseal(t->s, &k, &v))
            return lk__store_corrupt(t, "accumulator fails its checksum");
        return lk__store_decode_acc(t, "acc", v, &a);
    }
    case LK_REC_STATE: {
        const void *p;
        size_t n;
        int64_t upd;
        return lk__store_decode_state(t, &k, v, &p, &n, &upd) ? LK_OK : LK_ERR_CORRUPT;
    }
    case LK_REC_TOPOLOGY: {
        lk__topo_op_t *ops;
        size_t n;
        return lk__store_decode_topology(t, v, &ops, &n);
    }
    case LK_REC_CONFIG:
        return lk__store_decode_config(t, v, no_config_cb, NULL);
    case LK_REC_HEADER: {
        lk__store_t h;
        memset(&h, 0, sizeof h);
        h.dir = t->s->dir;
        lk_err_t e = lk__store_parse_header(&h, v, NULL, t->err, sizeof t->err);
        free(h.app_id);
        return e;
    }
    case LK_REC_KINDS:
        break;
    }
    return LK_ERR_INVALID_ARG;
}
