/*
 * store_state.c — keyed state: one state.<uid> database per stateful operator, opened
 * (created when new, recorded in meta's state-dbs) outside a batch, read and written in
 * the batch's transaction, walked in key order. Window state lives in the same databases
 * (window_store.c). In group.mode=consumer every write of a database with a changelog is
 * also appended, in the same transaction, to the outbox of its changelog member (the
 * capture), and a task's handoff clears the databases and applies changelog records
 * (the restore). DESIGN.md, The checkpoint, Windows and Scale-out.
 */
#define _GNU_SOURCE
#include "store_priv.h"
#include "../core/util_int.h"

#include <stdlib.h>
#include <string.h>

/* ---- keyed state ---- */

lk_err_t lk__store_state_open(lk__store_t *s, const char *uid, lk__state_db_t *db,
                              char *errstr, size_t errstr_size) {
    for (size_t i = 0; i < s->nstates; i++)
        if (!strcmp(s->states[i].uid, uid)) {
            *db = (lk__state_db_t)i;
            return LK_OK;
        }
    if (s->wtxn)
        return lk__err(LK_ERR_STATE, errstr, errstr_size,
                       "state databases must be opened outside a write transaction");
    if (s->nstates + DB_FIXED_COUNT >= MAX_DBS)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size,
                       "too many stateful operators (at most %d)", MAX_DBS - DB_FIXED_COUNT);
    char name[512];
    lk__fmt(name, sizeof name, "state.%s", uid);
    MDB_dbi dbi;
    for (;;) {
        /* Begun like every transaction (lk__store_txn_begin): a map another process grew
         * is adopted (MDB_MAP_RESIZED) and dead readers' slots are cleared. */
        lk__store_txn_t *t;
        lk_err_t err = lk__store_txn_begin(s, !s->readonly, &t, errstr, errstr_size);
        if (err)
            return err;
        int rc = mdb_dbi_open(t->txn, name, 0, &dbi);
        if (rc == MDB_NOTFOUND && !s->readonly) {
            /* a new database joins the record of state databases in the same txn */
            rc = mdb_dbi_open(t->txn, name, MDB_CREATE, &dbi);
            if (!rc && lk__store_sealed(s))
                rc = lk__store_put_state_names(s, t->txn);
        }
        int committing = !rc;
        if (committing) {
            /* LMDB's commit, not lk__store_txn_commit: nothing here is in the replay log,
             * and committing (even a read txn) keeps the database handle */
            rc = mdb_txn_commit(t->txn);
            t->txn = NULL;
        }
        lk__store_txn_abort(t); /* aborts what is left, frees t */
        if (!rc)
            break;
        if (rc == MDB_NOTFOUND)
            return lk__err(LK_ERR_NOT_FOUND, errstr, errstr_size,
                           "checkpoint %s has no state for operator '%s'", s->dir, uid);
        if (rc != MDB_MAP_FULL)
            return lk__store_mdb_err(s, rc, errstr, errstr_size,
                                     committing ? "creating a state database"
                                                : "opening a state database");
        /* a map too small even for a new database: grow it, as batches do */
        size_t newsize = s->map_size * 2;
        pthread_rwlock_wrlock(&s->resize_lock);
        rc = mdb_env_set_mapsize(s->env, newsize);
        pthread_rwlock_unlock(&s->resize_lock);
        if (rc)
            return lk__store_mdb_err(s, rc, errstr, errstr_size, "growing the map");
        s->map_size = newsize;
    }
    state_db_t *n = lk__vec_reserve(s->states, &s->states_cap, s->nstates + 1, sizeof *n, 8);
    if (!n)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    s->states = n;
    if (!(n[s->nstates].uid = strdup(uid)))
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    n[s->nstates].dbi = dbi;
    n[s->nstates].changelog = NULL;
    n[s->nstates].changelog_partition = -1;
    *db = (lk__state_db_t)s->nstates++;
    return LK_OK;
}

/* The envelope as lk__store_state_put writes it: fixarray(3), 1, updated_ms (any msgpack
 * integer form), bin8/16/32. Read without msgpack's general decoder; 0 when the value has
 * another shape (the general path then decides). */
static int decode_state_fast(const MDB_val *v, const void **val, size_t *vlen,
                             int64_t *updated_ms) {
    const unsigned char *p = v->mv_data, *end = p + v->mv_size;
    if (v->mv_size < 4 || p[0] != 0x93 || p[1] != 0x01)
        return 0;
    p += 2;
    int64_t upd;
    if (*p <= 0x7f) {
        upd = *p++;
    } else if (*p == 0xce && end - p >= 5) {
        upd = lk__get_be32(p + 1);
        p += 5;
    } else if ((*p == 0xcf || *p == 0xd3) && end - p >= 9) {
        uint64_t u = lk__get_be64(p + 1);
        if (*p == 0xcf && u > INT64_MAX)
            return 0;
        upd = (int64_t)u;
        p += 9;
    } else {
        return 0;
    }
    size_t n;
    if (end - p >= 2 && *p == 0xc4) {
        n = p[1];
        p += 2;
    } else if (end - p >= 3 && *p == 0xc5) {
        n = ((size_t)p[1] << 8) | p[2];
        p += 3;
    } else if (end - p >= 5 && *p == 0xc6) {
        n = lk__get_be32(p + 1);
        p += 5;
    } else {
        return 0;
    }
    if ((size_t)(end - p) != n)
        return 0;
    *val = p;
    *vlen = n;
    if (updated_ms)
        *updated_ms = upd;
    return 1;
}

/* Decode a state value read under key k: 1, or 0 when it fails its checksum or does
 * not decode. */
int lk__store_decode_state(lk__store_txn_t *t, const MDB_val *k, MDB_val vv, const void **val,
                           size_t *vlen, int64_t *updated_ms) {
    const MDB_val *v = &vv;
    if (lk__store_unseal(t->s, k, &vv))
        return 0;
    if (decode_state_fast(v, val, vlen, updated_ms))
        return 1;
    lk__obj_t o;
    int64_t upd;
    lk__zone_clear(&t->tmp);
    if (lk__unpack(&t->tmp, v->mv_data, v->mv_size, &o) || !lk__arr_i64(&o, 1, &upd) ||
        !lk__arr_bin_or_nil(&o, 2, val, vlen))
        return 0;
    if (updated_ms)
        *updated_ms = upd;
    return 1;
}

lk_err_t lk__store_state_get(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                             size_t klen, const void **val, size_t *vlen,
                             int64_t *updated_ms) {
    if (db < 0 || (size_t)db >= t->s->nstates)
        return LK_ERR_INVALID_ARG;
    if (klen == 0 || klen > MAX_KEY) /* the same limit as state_put */
        return LK_ERR_TOO_LARGE;
    MDB_val v;
    lk_err_t e =
        lk__store_txn_get(t, t->s->states[db].dbi, key, klen, &v, "reading state");
    if (e)
        return e;
    MDB_val k = {klen, (void *)key};
    if (!lk__store_decode_state(t, &k, v, val, vlen, updated_ms))
        return lk__store_corrupt(t,
                                 "a state value of operator '%s' (key of %zu bytes) fails "
                                 "its checksum or does not decode",
                                 t->s->states[db].uid, klen);
    return LK_OK;
}

/* ---- the changelog (DESIGN.md, Scale-out) ---- */

lk_err_t lk__store_state_changelog(lk__store_t *s, lk__state_db_t db, const char *member,
                                   int32_t partition) {
    if (db < 0 || (size_t)db >= s->nstates || partition < 0)
        return LK_ERR_INVALID_ARG;
    char *m = member ? strdup(member) : NULL;
    if (member && !m)
        return LK_ERR_NOMEM;
    free(s->states[db].changelog);
    s->states[db].changelog = m;
    s->states[db].changelog_partition = partition;
    return LK_OK;
}

void lk__store_txn_capture(lk__store_txn_t *t, uint64_t batch, int64_t time_ms) {
    t->capture_batch = batch;
    t->capture_time_ms = time_ms;
}

/* The capture: a write of db in a batch's transaction also goes to db's changelog member's
 * outbox for that batch (key = the state key, value = the envelope [1, updated_ms, value]
 * as stored minus its checksum; NULL: a delete), to partition the task's. Writes outside
 * a batch (the plan's unread-partition record of event-time windows, the restore itself)
 * are not captured: they belong to no delivered batch. */
static lk_err_t capture(lk__store_txn_t *t, lk__state_db_t db, const void *key, size_t klen,
                        const void *envelope, size_t elen, char *errstr,
                        size_t errstr_size) {
    const state_db_t *d = &t->s->states[db];
    if (!d->changelog || !t->capture_batch)
        return LK_OK;
    lk__out_record_t r = {d->changelog_partition, key, klen, envelope, elen,
                          t->capture_time_ms, 0, NULL};
    return lk__store_outbox_append(t, d->changelog, t->capture_batch, &r, errstr, errstr_size);
}

lk_err_t lk__store_state_put(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                             size_t klen, const void *val, size_t vlen, int64_t updated_ms,
                             char *errstr, size_t errstr_size) {
    if (db < 0 || (size_t)db >= t->s->nstates)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "bad state handle");
    if (klen == 0 || klen > MAX_KEY)
        return lk__err(LK_ERR_TOO_LARGE, errstr, errstr_size,
                       "state key of %zu bytes (1..%d allowed)", klen, MAX_KEY);
    lk__buf_reset(&t->buf);
    lk__pack_array(&t->buf, 3);
    lk__pack_i64(&t->buf, 1);
    lk__pack_i64(&t->buf, updated_ms);
    lk__pack_bin_or_nil(&t->buf, val ? val : "", vlen);
    size_t envelope = t->buf.len; /* what the changelog carries: the value, unsealed */
    lk__store_seal(&t->buf, key, klen);
    if (t->buf.oom)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    lk_err_t e = lk__store_txn_put(t, t->s->states[db].dbi, key, klen, t->buf.data, t->buf.len,
                                   errstr, errstr_size, "writing state");
    if (!e)
        e = capture(t, db, key, klen, t->buf.data, envelope, errstr, errstr_size);
    return e;
}

lk_err_t lk__store_state_del(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                             size_t klen, char *errstr, size_t errstr_size) {
    if (db < 0 || (size_t)db >= t->s->nstates)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "bad state handle");
    lk_err_t e = lk__store_txn_del(t, t->s->states[db].dbi, key, klen, errstr, errstr_size,
                                   "deleting state");
    if (!e) /* a tombstone: deleting a missing key too (the changelog may hold it) */
        e = capture(t, db, key, klen, NULL, 0, errstr, errstr_size);
    return e;
}

/* Visit the entries of a state database in key order, from the first one strictly after
 * `after` (NULL: from the start), at most max of them; a non-zero cb stops. *visited
 * counts the entries passed to cb. */
static lk_err_t walk_state_dbi(lk__store_txn_t *t, MDB_dbi dbi, const void *after,
                               size_t after_len, size_t max,
                               int (*cb)(const void *, size_t, const void *, size_t, int64_t,
                                         void *),
                               void *opaque, size_t *visited) {
    *visited = 0;
    MDB_cursor *c;
    if (!t->txn || mdb_cursor_open(t->txn, dbi, &c))
        return LK_ERR_STORE;
    MDB_val k = {after_len, (void *)after}, v;
    int rc = after ? mdb_cursor_get(c, &k, &v, MDB_SET_RANGE) : mdb_cursor_get(c, &k, &v, MDB_FIRST);
    if (rc == 0 && after && k.mv_size == after_len && !memcmp(k.mv_data, after, after_len))
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT); /* strictly after */
    lk_err_t err = LK_OK;
    for (; rc == 0 && *visited < max; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        const void *val;
        size_t vlen;
        int64_t upd;
        if (k.mv_size == 0 || k.mv_size > MAX_KEY) {
            err = lk__store_corrupt(t, "a state key of %zu bytes (1..%d possible)", k.mv_size,
                                    MAX_KEY);
            break;
        }
        if (!lk__store_decode_state(t, &k, v, &val, &vlen, &upd)) {
            err = lk__store_corrupt(t,
                                    "a state value (key of %zu bytes) fails its checksum or "
                                    "does not decode",
                                    k.mv_size);
            break;
        }
        (*visited)++;
        if (cb(k.mv_data, k.mv_size, val, vlen, upd, opaque))
            break;
    }
    if (!err && rc && rc != MDB_NOTFOUND)
        err = LK_ERR_STORE;
    mdb_cursor_close(c);
    return err;
}

/* Visit every entry of a state database in key order (a non-zero cb stops). */
static lk_err_t foreach_state_dbi(lk__store_txn_t *t, MDB_dbi dbi,
                                  int (*cb)(const void *, size_t, const void *, size_t,
                                            int64_t, void *),
                                  void *opaque) {
    size_t visited;
    return walk_state_dbi(t, dbi, NULL, 0, SIZE_MAX, cb, opaque, &visited);
}

lk_err_t lk__store_state_foreach(lk__store_txn_t *t, lk__state_db_t db,
                                 int (*cb)(const void *, size_t, const void *, size_t,
                                 int64_t, void *),
                                 void *opaque) {
    if (db < 0 || (size_t)db >= t->s->nstates)
        return LK_ERR_STORE;
    return foreach_state_dbi(t, t->s->states[db].dbi, cb, opaque);
}

lk_err_t lk__store_state_scan(lk__store_txn_t *t, lk__state_db_t db, const void *after,
                              size_t after_len, size_t max,
                              int (*cb)(const void *, size_t, const void *, size_t, int64_t,
                              void *),
                              void *opaque, size_t *visited) {
    *visited = 0;
    if (db < 0 || (size_t)db >= t->s->nstates)
        return LK_ERR_STORE;
    return walk_state_dbi(t, t->s->states[db].dbi, after, after_len, max, cb, opaque, visited);
}
lk_err_t lk__store_state_foreach_uid(lk__store_txn_t *t, const char *uid,
                                     int (*cb)(const void *, size_t, const void *, size_t,
                                     int64_t, void *),
                                     void *opaque) {
    if (!t->txn)
        return LK_ERR_STATE;
    char name[512];
    if (strlen(uid) + 6 >= sizeof name || !uid[0])
        return LK_ERR_NOT_FOUND;
    lk__fmt(name, sizeof name, "state.%s", uid);
    MDB_dbi dbi;
    /* In a read txn a handle opened here is closed again when the txn ends. */
    int rc = mdb_dbi_open(t->txn, name, 0, &dbi);
    if (rc == MDB_NOTFOUND)
        return LK_ERR_NOT_FOUND;
    if (rc)
        return rc == MDB_INCOMPATIBLE ? LK_ERR_CORRUPT : LK_ERR_STORE;
    return foreach_state_dbi(t, dbi, cb, opaque);
}

/* ---- the restore (DESIGN.md, Scale-out): a task's handoff rebuilds its state ---- */

lk_err_t lk__store_state_find(const lk__store_t *s, const char *uid, lk__state_db_t *db) {
    for (size_t i = 0; i < s->nstates; i++)
        if (!strcmp(s->states[i].uid, uid)) {
            *db = (lk__state_db_t)i;
            return LK_OK;
        }
    return LK_ERR_NOT_FOUND;
}

lk_err_t lk__store_state_clear(lk__store_txn_t *t, lk__state_db_t db, uint64_t *cleared,
                               char *errstr, size_t errstr_size) {
    *cleared = 0;
    if (db < 0 || (size_t)db >= t->s->nstates)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "bad state handle");
    lk_err_t e = lk__store_txn_check(t, errstr, errstr_size);
    if (e)
        return e;
    /* Deleted one by one through lk__store_txn_del, not mdb_drop: every write of a
     * transaction must be in its replay log (MAP_FULL replays it into a larger map). The
     * first key is looked up again after each delete: a cursor does not survive a write
     * made around it. */
    unsigned char key[MAX_KEY];
    for (;;) {
        MDB_cursor *c;
        int rc = mdb_cursor_open(t->txn, t->s->states[db].dbi, &c);
        MDB_val k, v;
        if (!rc) {
            rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
            if (!rc && (k.mv_size == 0 || k.mv_size > MAX_KEY))
                rc = MDB_CORRUPTED;
            if (!rc)
                memcpy(key, k.mv_data, k.mv_size);
            mdb_cursor_close(c);
        }
        if (rc == MDB_NOTFOUND)
            return LK_OK;
        if (rc)
            return lk__store_mdb_err(t->s, rc, errstr, errstr_size, "clearing state");
        if ((e = lk__store_txn_del(t, t->s->states[db].dbi, key, k.mv_size, errstr, errstr_size,
                                   "clearing state")))
            return e;
        (*cleared)++;
    }
}

lk_err_t lk__store_state_apply(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                               size_t klen, const void *envelope, size_t elen, char *errstr,
                               size_t errstr_size) {
    if (db < 0 || (size_t)db >= t->s->nstates)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "bad state handle");
    if (klen == 0 || klen > MAX_KEY)
        return lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                       "a changelog record of operator '%s' has a key of %zu bytes (1..%d "
                       "possible)", t->s->states[db].uid, klen, MAX_KEY);
    if (!envelope)
        return lk__store_state_del(t, db, key, klen, errstr, errstr_size);
    /* the envelope is checked as a stored value is (without its checksum: Kafka's CRC
     * covered it on the way), then stored sealed */
    MDB_val v = {elen, (void *)envelope};
    const void *val;
    size_t vlen;
    int64_t upd;
    if (!decode_state_fast(&v, &val, &vlen, &upd)) {
        lk__obj_t o;
        lk__zone_clear(&t->tmp);
        if (lk__unpack(&t->tmp, envelope, elen, &o) || !lk__arr_i64(&o, 1, &upd) ||
            !lk__arr_bin_or_nil(&o, 2, &val, &vlen))
            return lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                           "a changelog record of operator '%s' (key of %zu bytes, value of "
                           "%zu) is not a state value [1, updated_ms, value]",
                           t->s->states[db].uid, klen, elen);
    }
    return lk__store_state_put(t, db, key, klen, val, vlen, upd, errstr, errstr_size);
}
