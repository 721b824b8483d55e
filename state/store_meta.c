/*
 * store_meta.c — the checkpoint's meta database: the header (magic, format, app.id,
 * creation time, checkpoint id) and its checks, a fresh checkpoint id, the format 1 -> 2
 * migration (every value sealed), the record of the state database names, the closed set
 * of meta keys, and the recorded topology and configuration. DESIGN.md, The checkpoint
 * and Identity.
 */
#define _GNU_SOURCE
#include "store_priv.h"
#include "../core/util_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

typedef struct {
    lk__buf_t *buf;
    size_t n;
} cfg_acc_t;

static void count_cfg(const char *k, const char *v, void *o) {
    (void)k;
    (void)v;
    ((cfg_acc_t *)o)->n++;
}
static void pack_cfg(const char *k, const char *v, void *o) {
    cfg_acc_t *a = o;
    lk__pack_str(a->buf, k);
    lk__pack_str(a->buf, v);
}

/* 1 if id is LK_CHECKPOINT_ID_LEN lowercase hex characters. */
static int valid_checkpoint_id(const char *id, size_t n) {
    if (n != LK_CHECKPOINT_ID_LEN)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return 0;
    return 1;
}

/* A fresh checkpoint id: 128 bits from getrandom(2) as hex. Two checkpoints of one app.id
 * must never share an id, so no weaker source is used as a fallback. */
lk_err_t lk__store_new_checkpoint_id(char out[LK_CHECKPOINT_ID_LEN + 1], char *errstr,
                                     size_t errstr_size) {
    unsigned char raw[LK_CHECKPOINT_ID_LEN / 2];
    size_t got = 0;
    while (got < sizeof raw) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return lk__err(LK_ERR_IO, errstr, errstr_size,
                           "cannot make a checkpoint id: getrandom: %s", strerror(errno));
        got += (size_t)n;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof raw; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[LK_CHECKPOINT_ID_LEN] = 0;
    return LK_OK;
}

/* Read and check meta; fills s->app_id etc. Returns LK_OK or a refusal. */
/* Parse and check meta's header value v (fills s->app_id etc.): LK_OK or a refusal. */
lk_err_t lk__store_parse_header(lk__store_t *s, MDB_val v, const char *want_app, char *errstr,
                                size_t errstr_size) {
    lk__zone_t z;
    lk__zone_init(&z);
    lk__obj_t o;
    lk_err_t err = LK_OK;
    const char *magic, *app;
    size_t magic_len, app_len;
    int64_t ver, format, created;
    size_t used = 0; /* the msgpack header; from format 2 on its checksum follows */
    if (lk__unpack_next(&z, v.mv_data, v.mv_size, &used, &o) || !lk__arr_i64(&o, 0, &ver) ||
        !lk__arr_str(&o, 1, &magic, &magic_len) || magic_len != strlen(LK_CHECKPOINT_MAGIC) ||
        memcmp(magic, LK_CHECKPOINT_MAGIC, magic_len) || !lk__arr_i64(&o, 2, &format) ||
        !lk__arr_str(&o, 3, &app, &app_len) || !lk__arr_i64(&o, 4, &created)) {
        err = lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                      "checkpoint %s is corrupt: meta header is unreadable (%zu bytes)",
                      s->dir, v.mv_size);
        goto out;
    }
    /* The header's layout and checksum are the same for every format from 2 on (a
     * promise to later formats), so a flipped byte, the format number's included, is
     * found here and not mistaken for a newer format. */
    const unsigned char *hp = v.mv_data;
    if (format < 1 ||
        (format >= 2 ? v.mv_size - used != CRC_LEN ||
                           lk__store_value_crc(hp, used, "header", 6) != lk__get_be32(hp + used)
                     : v.mv_size != used)) {
        err = lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                      "checkpoint %s is corrupt: meta header fails its checksum (format %lld, "
                      "%zu bytes)",
                      s->dir, (long long)format, v.mv_size);
        goto out;
    }
    if (format > LK_CHECKPOINT_FORMAT) {
        err = lk__err(LK_ERR_FORMAT_TOO_NEW, errstr, errstr_size,
                      "checkpoint %s has format version %lld, newer than this build "
                      "understands (%d); upgrade lockstep to read it",
                      s->dir, (long long)format, LK_CHECKPOINT_FORMAT);
        goto out;
    }
    if (want_app && want_app[0] &&
        (strlen(want_app) != app_len || memcmp(want_app, app, app_len))) {
        err = lk__err(LK_ERR_APP_MISMATCH, errstr, errstr_size,
                      "checkpoint %s belongs to app.id \"%.*s\", not \"%s\"; use another "
                      "checkpoint.dir or the matching app.id",
                      s->dir, (int)app_len, app, want_app);
        goto out;
    }
    if (format >= 2) {
        /* from format 2 on the header names the checkpoint's id */
        const char *id;
        size_t id_len;
        if (!lk__arr_str(&o, 5, &id, &id_len) || !valid_checkpoint_id(id, id_len)) {
            err = lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                          "checkpoint %s is corrupt: meta header has no valid checkpoint id",
                          s->dir);
            goto out;
        }
        memcpy(s->checkpoint_id, id, id_len);
        s->checkpoint_id[id_len] = 0;
    }
    s->app_id = strndup(app, app_len);
    s->format = (int)format;
    s->created_ms = created;
    if (!s->app_id)
        err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
out:
    lk__zone_destroy(&z);
    return err;
}

lk_err_t lk__store_check_meta(lk__store_t *s, MDB_txn *txn, const char *want_app,
                              char *errstr, size_t errstr_size) {
    MDB_dbi meta;
    int rc = mdb_dbi_open(txn, "meta", 0, &meta);
    if (rc == MDB_NOTFOUND)
        return lk__err(LK_ERR_NOT_CHECKPOINT, errstr, errstr_size,
                       "%s is an LMDB environment but not a lockstep checkpoint (no meta "
                       "database)",
                       s->dir);
    if (rc)
        return lk__store_mdb_err(s, rc, errstr, errstr_size, "opening meta");
    MDB_val k = {6, "header"}, v;
    rc = mdb_get(txn, meta, &k, &v);
    if (rc == MDB_NOTFOUND)
        return lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                       "checkpoint %s is corrupt: meta has no header", s->dir);
    if (rc)
        return lk__store_mdb_err(s, rc, errstr, errstr_size, "reading meta");
    return lk__store_parse_header(s, v, want_app, errstr, errstr_size);
}

/* meta's header: [1, magic, format, app.id, created_ms, checkpoint id] */
lk_err_t lk__store_write_header(lk__store_t *s, MDB_txn *txn, char *errstr, size_t errstr_size) {
    lk__buf_t b;
    lk__buf_init(&b);
    lk__pack_array(&b, 6);
    lk__pack_i64(&b, 1);
    lk__pack_str(&b, LK_CHECKPOINT_MAGIC);
    lk__pack_i64(&b, LK_CHECKPOINT_FORMAT);
    lk__pack_str(&b, s->app_id);
    lk__pack_i64(&b, s->created_ms);
    lk__pack_str(&b, s->checkpoint_id);
    lk__store_seal(&b, "header", 6);
    MDB_val k = {6, "header"}, v = {b.len, b.data};
    int rc = b.oom ? ENOMEM : mdb_put(txn, s->dbi[DB_META], &k, &v, 0);
    lk__buf_free(&b);
    return rc ? lk__store_mdb_err(s, rc, errstr, errstr_size, "writing meta header") : LK_OK;
}

/* meta's config: [1, {key: value, ...}] of conf's settings (secrets redacted), sealed. */
static void encode_config(lk__buf_t *b, const lk_conf_t *conf) {
    cfg_acc_t a = {b, 0};
    lk_conf_foreach(conf, 1, count_cfg, &a);
    lk__pack_array(b, 2);
    lk__pack_i64(b, 1);
    lk__pack_map(b, a.n);
    lk_conf_foreach(conf, 1, pack_cfg, &a);
    lk__store_seal(b, "config", 6);
}

lk_err_t lk__store_write_config(lk__store_t *s, MDB_txn *txn, const lk_conf_t *conf,
                                char *errstr, size_t errstr_size) {
    lk__buf_t b;
    lk__buf_init(&b);
    encode_config(&b, conf);
    MDB_val k = {6, "config"}, v = {b.len, b.data};
    int rc = b.oom ? ENOMEM : mdb_put(txn, s->dbi[DB_META], &k, &v, 0);
    lk__buf_free(&b);
    return rc ? lk__store_mdb_err(s, rc, errstr, errstr_size, "writing meta config") : LK_OK;
}

lk_err_t lk__store_load_outbox_bytes(lk__store_t *s, MDB_txn *txn) {
    MDB_cursor *c;
    if (mdb_cursor_open(txn, s->dbi[DB_OUTBOX], &c))
        return LK_ERR_STORE;
    MDB_val k, v;
    uint64_t total = 0;
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT))
        total += v.mv_size;
    mdb_cursor_close(c);
    s->outbox_bytes = total;
    return LK_OK;
}

lk_err_t lk__store_load_last_batch(lk__store_t *s, MDB_txn *txn) {
    MDB_cursor *c;
    if (mdb_cursor_open(txn, s->dbi[DB_BATCHES], &c))
        return LK_ERR_STORE;
    MDB_val k, v;
    if (mdb_cursor_get(c, &k, &v, MDB_LAST) == 0 && k.mv_size == 8)
        s->committed_batch = s->durable_batch = lk__get_be64(k.mv_data);
    mdb_cursor_close(c);
    return LK_OK;
}

/* Append the checksum to every value of dbi (format 1 -> 2); an LMDB error code. */
static int seal_db(lk__store_t *s, MDB_txn *txn, MDB_dbi dbi) {
    (void)s;
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, dbi, &c);
    if (rc)
        return rc;
    lk__buf_t b;
    lk__buf_init(&b);
    unsigned char key[MAX_KEY];
    MDB_val k, v;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size > MAX_KEY) {
            rc = MDB_CORRUPTED;
            break;
        }
        /* copies: the put may move the page both point into */
        memcpy(key, k.mv_data, k.mv_size);
        MDB_val kc = {k.mv_size, key};
        lk__buf_reset(&b);
        lk__buf_append(&b, v.mv_data, v.mv_size);
        lk__store_seal(&b, key, kc.mv_size);
        if (b.oom) {
            rc = ENOMEM;
            break;
        }
        MDB_val nv = {b.len, b.data};
        if ((rc = mdb_cursor_put(c, &kc, &nv, MDB_CURRENT)))
            break;
    }
    lk__buf_free(&b);
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Format 1 -> 2: seal every value of every database (the fixed ones and each
 * state.<uid>) inside txn. */
int lk__store_seal_all(lk__store_t *s, MDB_txn *txn) {
    int rc = 0;
    for (int i = 0; i < DB_FIXED_COUNT && !rc; i++)
        rc = seal_db(s, txn, s->dbi[i]);
    if (rc)
        return rc;
    MDB_dbi main;
    MDB_cursor *c;
    if ((rc = mdb_dbi_open(txn, NULL, 0, &main)) || (rc = mdb_cursor_open(txn, main, &c)))
        return rc;
    /* named databases are keys of the main database: collect the state ones first */
    char (*names)[MAX_KEY + 1] = NULL;
    size_t n = 0, cap = 0;
    MDB_val k = {6, "state."}, v;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size < 6 || memcmp(k.mv_data, "state.", 6))
            break;
        if (k.mv_size > MAX_KEY) {
            rc = MDB_CORRUPTED;
            break;
        }
        char (*nn)[MAX_KEY + 1] = lk__vec_reserve(names, &cap, n + 1, sizeof *names, 16);
        if (!nn) {
            rc = ENOMEM;
            break;
        }
        names = nn;
        memcpy(names[n], k.mv_data, k.mv_size);
        names[n++][k.mv_size] = 0;
    }
    mdb_cursor_close(c);
    if (rc == MDB_NOTFOUND || rc == 0)
        rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        MDB_dbi dbi;
        if (!(rc = mdb_dbi_open(txn, names[i], 0, &dbi)))
            rc = seal_db(s, txn, dbi);
    }
    free(names);
    return rc;
}

/*
 * The names of the state databases. A named database is a key of LMDB's main database,
 * which no checksum of ours covers: a damaged name would read as some other operator's
 * state (found by the damage campaign). meta's "state-dbs" record lists the names this
 * checkpoint created (each NUL-terminated, in key order, sealed); every open compares it
 * with the main database. Checkpoints without the record (format 1, and format 2 before
 * the record existed) get it at their first writable open.
 */
static const char state_dbs_key[] = "state-dbs";

/* The "state.*" keys of the main database, each NUL-terminated, in key order. */
static int state_names(MDB_txn *txn, lk__buf_t *out) {
    MDB_dbi main;
    MDB_cursor *c;
    int rc;
    if ((rc = mdb_dbi_open(txn, NULL, 0, &main)) || (rc = mdb_cursor_open(txn, main, &c)))
        return rc;
    MDB_val k = {6, "state."}, v;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size < 6 || memcmp(k.mv_data, "state.", 6))
            break;
        if (k.mv_size > MAX_KEY || memchr(k.mv_data, 0, k.mv_size)) {
            rc = MDB_CORRUPTED;
            break;
        }
        lk__buf_append(out, k.mv_data, k.mv_size);
        lk__buf_append(out, "", 1);
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Write the "state-dbs" record from the main database's names (inside write txn). */
int lk__store_put_state_names(lk__store_t *s, MDB_txn *txn) {
    lk__buf_t b;
    lk__buf_init(&b);
    int rc = state_names(txn, &b);
    if (!rc) {
        lk__store_seal(&b, state_dbs_key, sizeof state_dbs_key - 1);
        MDB_val k = {sizeof state_dbs_key - 1, (void *)state_dbs_key}, v = {b.len, b.data};
        rc = mdb_put(txn, s->dbi[DB_META], &k, &v, 0);
    }
    lk__buf_free(&b);
    return rc;
}

/* Compare the main database's state database names with the "state-dbs" record. A
 * missing record: *absent = 1 (the caller writes it when it may). */
lk_err_t lk__store_check_state_names(lk__store_t *s, MDB_txn *txn, int *absent, char *errstr,
                                     size_t errstr_size) {
    *absent = 0;
    MDB_val k = {sizeof state_dbs_key - 1, (void *)state_dbs_key}, v;
    int rc = mdb_get(txn, s->dbi[DB_META], &k, &v);
    if (rc == MDB_NOTFOUND) {
        *absent = 1;
        return LK_OK;
    }
    if (rc)
        return lk__store_mdb_err(s, rc, errstr, errstr_size, "reading the state database names");
    if (!lk__store_sealed(s) || lk__store_unseal(s, &k, &v))
        return lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                       "checkpoint %s is corrupt: the record of its state databases fails "
                       "its checksum; refused (restore the checkpoint from a backup, or start "
                       "a new checkpoint.dir)",
                       s->dir);
    lk__buf_t b;
    lk__buf_init(&b);
    rc = state_names(txn, &b);
    lk_err_t err = LK_OK;
    /* (no state database: b.data and v.mv_data may be NULL, and equal) */
    if (rc == MDB_CORRUPTED ||
        (!rc && (b.len != v.mv_size || (b.len && memcmp(b.data, v.mv_data, b.len))))) {
        /* name the first database that is not in the record, or the first missing one */
        const char *bad = NULL, *gone = NULL;
        for (size_t i = 0; !rc && i < b.len && !bad; i += strlen((char *)b.data + i) + 1)
            if (!memmem(v.mv_data, v.mv_size, (char *)b.data + i, strlen((char *)b.data + i) + 1))
                bad = (char *)b.data + i;
        for (size_t i = 0; !rc && !bad && i < v.mv_size && !gone;) {
            const char *n = (const char *)v.mv_data + i;
            size_t l = strnlen(n, v.mv_size - i);
            if ((!b.len || !memmem(b.data, b.len, n, l)) && l < v.mv_size - i)
                gone = n;
            i += l + 1;
        }
        char what[200];
        if (bad)
            lk__fmt(what, sizeof what, "a state database '%.*s' that it never created "
                    "(a damaged database name)", 100, bad);
        else if (gone)
            lk__fmt(what, sizeof what, "its state database '%.*s' is missing", 100, gone);
        else
            lk__fmt(what, sizeof what, "a damaged state database name");
        err = lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                      "checkpoint %s is corrupt: %s; refused (restore the checkpoint from a "
                      "backup, or start a new checkpoint.dir)",
                      s->dir, what);
    } else if (rc) {
        err = lk__store_mdb_err(s, rc, errstr, errstr_size, "listing the state databases");
    }
    lk__buf_free(&b);
    return err;
}

/* meta's keys are a closed set. A key is not covered by a value's checksum when nobody
 * reads it: a damaged "topology" key read as "no topology recorded" (found by the damage
 * campaign). Any other key in meta is a damaged one. */
lk_err_t lk__store_check_meta_keys(lk__store_t *s, MDB_txn *txn, char *errstr,
                                   size_t errstr_size) {
    static const char *const known[] = {"header", "config", "topology", plan_key,
                                        state_dbs_key};
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, s->dbi[DB_META], &c);
    if (rc)
        return lk__store_mdb_err(s, rc, errstr, errstr_size, "reading meta");
    MDB_val k, v;
    lk_err_t err = LK_OK;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0 && !err;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        int ok = 0;
        for (size_t i = 0; i < LK_ARRAY_SIZE(known) && !ok; i++)
            ok = k.mv_size == strlen(known[i]) && !memcmp(k.mv_data, known[i], k.mv_size);
        if (!ok) {
            char shown[64];
            size_t n = k.mv_size < 40 ? k.mv_size : 40;
            for (size_t i = 0; i < n; i++) {
                unsigned char ch = ((const unsigned char *)k.mv_data)[i];
                shown[i] = ch >= 0x20 && ch < 0x7f && ch != '\'' ? (char)ch : '?';
            }
            shown[n] = 0;
            err = lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                          "checkpoint %s is corrupt: meta holds a record '%s' that no lockstep "
                          "writes (a damaged key); refused (restore the checkpoint from a "
                          "backup, or start a new checkpoint.dir)",
                          s->dir, shown);
        }
    }
    mdb_cursor_close(c);
    if (!err && rc != MDB_NOTFOUND)
        err = lk__store_mdb_err(s, rc, errstr, errstr_size, "reading meta");
    return err;
}

/* ---- topology and config in meta ---- */

lk_err_t lk__store_topology_put(lk__store_txn_t *t, const lk__topo_op_t *ops, size_t n,
                                char *errstr, size_t errstr_size) {
    lk__buf_t *b = &t->buf;
    lk__buf_reset(b);
    lk__pack_array(b, 2);
    lk__pack_i64(b, 1);
    lk__pack_array(b, n);
    for (size_t i = 0; i < n; i++) {
        lk__pack_array(b, 4);
        lk__pack_str(b, ops[i].uid);
        lk__pack_str(b, ops[i].kind);
        lk__pack_i64(b, ops[i].schema_version);
        lk__pack_str(b, ops[i].params ? ops[i].params : "");
    }
    lk__store_seal(b, "topology", 8);
    if (b->oom)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return lk__store_txn_put(t, t->s->dbi[DB_META], "topology", 8, b->data, b->len, errstr,
                             errstr_size, "writing the topology");
}

static char *zone_strndup(lk__zone_t *z, const char *s, size_t n) {
    char *d = lk__zone_alloc(z, n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* The value of meta's key in t (lk__store_txn_get). */
static lk_err_t meta_get(lk__store_txn_t *t, const char *key, const char *reading, MDB_val *v) {
    return lk__store_txn_get(t, t->s->dbi[DB_META], key, strlen(key), v, reading);
}

lk_err_t lk__store_topology_get(lk__store_txn_t *t, lk__topo_op_t **ops, size_t *n) {
    *ops = NULL;
    *n = 0;
    MDB_val v;
    lk_err_t e = meta_get(t, "topology", "reading the topology", &v);
    /* none recorded (a checkpoint before its first start): no operators */
    return e == LK_ERR_NOT_FOUND ? LK_OK : e ? e : lk__store_decode_topology(t, v, ops, n);
}

lk_err_t lk__store_decode_topology(lk__store_txn_t *t, MDB_val v, lk__topo_op_t **ops, size_t *n) {
    MDB_val k = {8, "topology"};
    if (lk__store_unseal(t->s, &k, &v))
        return lk__store_corrupt(t, "the recorded topology fails its checksum");
    lk__obj_t o;
    if (lk__unpack(&t->zone, v.mv_data, v.mv_size, &o))
        return lk__store_corrupt(t, "the recorded topology does not decode");
    const lk__obj_t *arr = lk__arr_at(&o, 1);
    size_t cnt = arr ? lk__arr_len(arr) : (size_t)-1;
    if (cnt == (size_t)-1)
        return lk__store_corrupt(t, "the recorded topology has no operator list");
    lk__topo_op_t *out = lk__zone_alloc(&t->zone, (cnt ? cnt : 1) * sizeof *out);
    if (!out)
        return LK_ERR_NOMEM;
    for (size_t i = 0; i < cnt; i++) {
        const lk__obj_t *e = lk__arr_at(arr, i);
        const char *uid, *kind, *params;
        size_t ul, kl, pl;
        int64_t sv;
        if (!e || !lk__arr_str(e, 0, &uid, &ul) || !lk__arr_str(e, 1, &kind, &kl) ||
            !lk__arr_i64(e, 2, &sv) || !lk__arr_str(e, 3, &params, &pl) || sv < 0 ||
            sv > INT32_MAX)
            return lk__store_corrupt(t, "operator %zu of the recorded topology does not decode", i);
        out[i].uid = zone_strndup(&t->zone, uid, ul);
        out[i].kind = zone_strndup(&t->zone, kind, kl);
        out[i].params = zone_strndup(&t->zone, params, pl);
        out[i].schema_version = (int32_t)sv;
        if (!out[i].uid || !out[i].kind || !out[i].params)
            return LK_ERR_NOMEM;
    }
    *ops = out;
    *n = cnt;
    return LK_OK;
}

lk_err_t lk__store_config_foreach(lk__store_txn_t *t,
                                  int (*cb)(const char *, const char *, void *), void *opaque) {
    MDB_val v;
    lk_err_t e = meta_get(t, "config", "reading the recorded configuration", &v);
    return e == LK_ERR_NOT_FOUND ? LK_OK : e ? e : lk__store_decode_config(t, v, cb, opaque);
}

lk_err_t lk__store_decode_config(lk__store_txn_t *t, MDB_val v,
                                 int (*cb)(const char *, const char *, void *), void *opaque) {
    MDB_val key = {6, "config"};
    if (lk__store_unseal(t->s, &key, &v))
        return lk__store_corrupt(t, "the recorded configuration fails its checksum");
    lk__obj_t o;
    lk__zone_clear(&t->tmp);
    if (lk__unpack(&t->tmp, v.mv_data, v.mv_size, &o))
        return lk__store_corrupt(t, "the recorded configuration does not decode");
    const lk__obj_t *m = lk__arr_at(&o, 1);
    size_t n;
    if (!m || !lk__map_len(m, &n))
        return lk__store_corrupt(t, "the recorded configuration is not a map");
    for (size_t i = 0; i < n; i++) {
        const char *k, *val;
        size_t kl, vl;
        if (!lk__map_str_at(m, i, &k, &kl, &val, &vl))
            return lk__store_corrupt(
                t, "entry %zu of the recorded configuration does not decode", i);
        char kb[512], vb[4096];
        lk__fmt(kb, sizeof kb, "%.*s", (int)kl, k);
        lk__fmt(vb, sizeof vb, "%.*s", (int)vl, val);
        if (cb(kb, vb, opaque))
            break;
    }
    return LK_OK;
}


lk_err_t lk__store_config_put(lk__store_txn_t *t, const lk_conf_t *conf, char *errstr,
                              size_t errstr_size) {
    lk_err_t err = lk__store_txn_check(t, errstr, errstr_size);
    if (err)
        return err;
    lk__buf_t *b = &t->buf;
    lk__buf_reset(b);
    encode_config(b, conf);
    if (b->oom)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return lk__store_txn_put(t, t->s->dbi[DB_META], "config", 6, b->data, b->len, errstr,
                             errstr_size, "writing meta config");
}
