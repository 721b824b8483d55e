/*
 * store.c — the LMDB checkpoint store (see store_int.h for the model).
 *
 * Two mechanisms carry the guarantees:
 *  - Every write of a write transaction is also appended to an in-memory replay log.
 *    When LMDB answers MDB_MAP_FULL (at a put or at commit), the transaction is aborted,
 *    the map doubled, and the log replayed into a fresh transaction — the caller never
 *    sees the failure and no batch is lost.
 *  - A LOCK file held with flock() makes a checkpoint single-owner (LMDB itself allows
 *    many processes); the holder's pid is written into it for the error message.
 */
#define _GNU_SOURCE
#include "store_int.h"
#include "codec_int.h"
#include "../core/conf_int.h"
#include "../core/util_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

enum { DB_META, DB_OFFSETS, DB_BATCHES, DB_OUTBOX, DB_FENCES, DB_ACC, DB_FIXED_COUNT };
static const char *const db_names[DB_FIXED_COUNT] = {"meta",   "offsets", "batches",
                                                     "outbox", "fences",  "acc"};
#define MAX_DBS 1024 /* fixed databases + state databases */
/* LMDB's maximum key size (MDB_MAXKEYSIZE, what mdb_env_get_maxkeysize() answers for
 * Debian's liblmdb). Keys are checked before LMDB sees them: LMDB would answer
 * MDB_BAD_VALSIZE, and a failed write aborts the whole batch transaction. */
#define MAX_KEY 511

typedef struct {
    char *uid;
    MDB_dbi dbi;
} state_db_t;

struct lk_store {
    MDB_env *env;
    char *dir;
    int lock_fd;
    int readonly;
    MDB_dbi dbi[DB_FIXED_COUNT];
    state_db_t *states;
    size_t nstates;
    size_t map_size;
    int sync_interval;
    int64_t sync_interval_ms, last_sync_ms;
    uint64_t batch_history;
    uint64_t committed_batch, durable_batch;
    uint64_t outbox_bytes;
    char *app_id;
    int format;
    int64_t created_ms;
    atomic_int fatal; /* set after fatal_msg is written; read from any thread */
    char fatal_msg[512];
    lk_store_txn_t *wtxn;
    /* readers hold it shared; map growth holds it exclusively (LMDB requires no live
     * transaction in this process while the map is resized) */
    pthread_rwlock_t resize_lock;
    /* LMDB's environment flags are one plain word: commits toggle MDB_NOSYNC in it
     * (lk__store_txn_commit_unsynced) while another thread (a sink's delivery) may be
     * beginning a read transaction, which reads it */
    pthread_mutex_t flags_lock;
};

/* Outbox records of one (sink, batch) appended in this txn. They are packed into a chunk
 * buffer and written as one LMDB value per OUTBOX_CHUNK_BYTES: one put (and later one
 * delete) per chunk instead of per record. */
typedef struct {
    char *sink;
    uint64_t batch;
    uint32_t next_seq; /* key sequence number of the next chunk */
    lk__buf_t chunk;   /* packed records not yet written */
} seq_slot_t;

#define OUTBOX_CHUNK_BYTES (32 * 1024)

struct lk_store_txn {
    lk_store_t *s;
    MDB_txn *txn;
    int write;
    char *log;
    size_t log_len, log_cap;
    lk__buf_t buf;        /* encoding scratch */
    lk__zone_t zone;      /* decoded objects valid until the txn ends */
    lk__zone_t tmp;       /* decoded objects valid for one call */
    seq_slot_t **seqs; /* each slot allocated alone: its chunk buffer must not move */
    size_t nseqs;
    int64_t outbox_delta;
    uint64_t batch_id; /* batch record written by this txn, 0 if none */
};

static const char plan_key[] = "pending-plan"; /* meta key of the pending plan */

enum { OP_PUT = 1, OP_DEL = 2 };
typedef struct {
    uint8_t op;
    uint32_t dbi, klen, vlen;
} log_hdr_t;

/* ------------------------------------------------------------------------- */

static lk_err_t mdb_err(lk_store_t *s, int rc, char *errstr, size_t errstr_size,
                        const char *what) {
    if (rc == MDB_PANIC) {
        if (!s->fatal) /* the first panic's message stays */
            lk__fmt(s->fatal_msg, sizeof s->fatal_msg, "%s: %s: LMDB panic: %s", s->dir, what,
                    mdb_strerror(rc));
        s->fatal = 1;
        return lk__err(LK_ERR_FATAL, errstr, errstr_size, "%s", s->fatal_msg);
    }
    lk_err_t e = (rc == ENOSPC || rc == EIO || rc == EDQUOT || rc == EFBIG) ? LK_ERR_IO
                 : (rc == MDB_CORRUPTED || rc == MDB_INVALID) ? LK_ERR_CORRUPT
                                                              : LK_ERR_STORE;
    if (e == LK_ERR_IO) {
        /* LMDB reports a short write as EIO: say what it most likely means */
        struct statvfs fs;
        char space[96] = "";
        if (statvfs(s->dir, &fs) == 0)
            lk__fmt(space, sizeof space, "; %llu MiB free there",
                    (unsigned long long)((uint64_t)fs.f_bavail * fs.f_frsize >> 20));
        return lk__err(e, errstr, errstr_size,
                       "checkpoint %s: %s: %s (disk full, a file size limit reached, or the "
                       "device failing%s); nothing of the batch was kept, it is retried",
                       s->dir, what, mdb_strerror(rc), space);
    }
    return lk__err(e, errstr, errstr_size, "checkpoint %s: %s: %s", s->dir, what,
                   mdb_strerror(rc));
}

/* ---- the replay log and MAP_FULL handling ---- */

static int log_append(lk_store_txn_t *t, uint8_t op, MDB_dbi dbi, const MDB_val *k,
                      const MDB_val *v) {
    log_hdr_t h = {op, dbi, (uint32_t)k->mv_size, v ? (uint32_t)v->mv_size : 0};
    size_t need = sizeof h + h.klen + h.vlen;
    if (t->log_len + need > t->log_cap) {
        size_t cap = t->log_cap ? t->log_cap : 4096;
        while (cap < t->log_len + need)
            cap *= 2;
        char *n = realloc(t->log, cap);
        if (!n)
            return -1;
        t->log = n;
        t->log_cap = cap;
    }
    char *p = t->log + t->log_len;
    memcpy(p, &h, sizeof h);
    memcpy(p + sizeof h, k->mv_data, h.klen);
    if (h.vlen)
        memcpy(p + sizeof h + h.klen, v->mv_data, h.vlen);
    t->log_len += need;
    return 0;
}

/* Abort the LMDB txn, double the map, begin again and replay the log. */
static int grow_and_replay(lk_store_txn_t *t) {
    lk_store_t *s = t->s;
    mdb_txn_abort(t->txn);
    t->txn = NULL;
    for (;;) {
        size_t newsize = s->map_size * 2;
        pthread_rwlock_wrlock(&s->resize_lock);
        int rc = LK__FAULT_RC("map-growth", 0, mdb_env_set_mapsize(s->env, newsize));
        pthread_rwlock_unlock(&s->resize_lock);
        if (rc)
            return rc;
        lk__log(LK_LOG_NOTICE, "checkpoint %s: map full, grown from %zu to %zu bytes", s->dir,
                s->map_size, newsize);
        s->map_size = newsize;
        if ((rc = mdb_txn_begin(s->env, NULL, 0, &t->txn)))
            return rc;
        size_t off = 0;
        while (off < t->log_len && rc == 0) {
            log_hdr_t h;
            memcpy(&h, t->log + off, sizeof h);
            MDB_val k = {h.klen, t->log + off + sizeof h};
            MDB_val v = {h.vlen, t->log + off + sizeof h + h.klen};
            rc = h.op == OP_PUT ? mdb_put(t->txn, h.dbi, &k, &v, 0)
                                : mdb_del(t->txn, h.dbi, &k, NULL);
            if (rc == MDB_NOTFOUND)
                rc = 0;
            off += sizeof h + h.klen + h.vlen;
        }
        if (rc == 0)
            return 0;
        mdb_txn_abort(t->txn);
        t->txn = NULL;
        if (rc != MDB_MAP_FULL)
            return rc;
    }
}

static lk_err_t txn_check(lk_store_txn_t *t, char *errstr, size_t errstr_size) {
    if (t->s->fatal)
        return lk__err(LK_ERR_FATAL, errstr, errstr_size, "%s", t->s->fatal_msg);
    if (!t->write)
        return lk__err(LK_ERR_STATE, errstr, errstr_size, "write in a read transaction");
    if (!t->txn)
        return lk__err(LK_ERR_STATE, errstr, errstr_size,
                       "transaction failed earlier and must be aborted");
    return LK_OK;
}

static lk_err_t txn_write(lk_store_txn_t *t, uint8_t op, MDB_dbi dbi, MDB_val *k, MDB_val *v,
                          char *errstr, size_t errstr_size, const char *what) {
    lk_err_t e = txn_check(t, errstr, errstr_size);
    if (e)
        return e;
    /* Refuse a key LMDB cannot hold here, leaving the transaction usable (an LMDB error
     * below aborts it, losing every earlier write of the batch). */
    if (k->mv_size == 0 || k->mv_size > MAX_KEY)
        return lk__err(LK_ERR_TOO_LARGE, errstr, errstr_size,
                       "%s: key of %zu bytes (1..%d allowed)", what, k->mv_size, MAX_KEY);
    /* the replay log records lengths as 32 bits */
    if (v && v->mv_size > UINT32_MAX)
        return lk__err(LK_ERR_TOO_LARGE, errstr, errstr_size,
                       "%s: value of %zu bytes (at most %u)", what, v->mv_size, UINT32_MAX);
    for (;;) {
        int rc = op == OP_PUT ? mdb_put(t->txn, dbi, k, v, 0) : mdb_del(t->txn, dbi, k, NULL);
        if (rc == MDB_NOTFOUND && op == OP_DEL)
            return LK_OK;
        if (rc == 0)
            break;
        if (rc != MDB_MAP_FULL) {
            lk_err_t err = mdb_err(t->s, rc, errstr, errstr_size, what);
            mdb_txn_abort(t->txn); /* LMDB txns are unusable after a failed write */
            t->txn = NULL;
            return err;
        }
        if ((rc = grow_and_replay(t)))
            return mdb_err(t->s, rc, errstr, errstr_size, "growing the map");
    }
    if (log_append(t, op, dbi, k, v))
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory (replay log)");
    return LK_OK;
}

static lk_err_t txn_put(lk_store_txn_t *t, MDB_dbi dbi, const void *key, size_t klen,
                        const void *val, size_t vlen, char *errstr, size_t errstr_size,
                        const char *what) {
    MDB_val k = {klen, (void *)key}, v = {vlen, (void *)val};
    return txn_write(t, OP_PUT, dbi, &k, &v, errstr, errstr_size, what);
}

static lk_err_t txn_del(lk_store_txn_t *t, MDB_dbi dbi, const void *key, size_t klen,
                        char *errstr, size_t errstr_size, const char *what) {
    MDB_val k = {klen, (void *)key};
    return txn_write(t, OP_DEL, dbi, &k, NULL, errstr, errstr_size, what);
}

static int txn_get(lk_store_txn_t *t, MDB_dbi dbi, const void *key, size_t klen, MDB_val *v) {
    if (!t->txn)
        return EINVAL;
    if (klen == 0 || klen > MAX_KEY) /* cannot have been stored (see txn_write) */
        return MDB_NOTFOUND;
    MDB_val k = {klen, (void *)key};
    return mdb_get(t->txn, dbi, &k, v);
}

/* ---- open / close ---- */

static int dir_has(const char *dir, const char *name) {
    char p[4200];
    lk__fmt(p, sizeof p, "%s/%s", dir, name);
    struct stat st;
    return stat(p, &st) == 0;
}

/* 1: empty (or only our lock files), 0: has other entries, -1: error */
static int dir_is_empty(const char *dir) {
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int empty = 1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") ||
            !strcmp(e->d_name, "LOCK") || !strcmp(e->d_name, "lock.mdb"))
            continue;
        empty = 0;
        break;
    }
    closedir(d);
    return empty;
}

static int mkdir_p(const char *path) {
    char tmp[4200];
    lk__fmt(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir(tmp, 0755) && errno != EEXIST ? -1 : 0;
}

static lk_err_t take_lock(lk_store_t *s, char *errstr, size_t errstr_size) {
    char p[4200];
    lk__fmt(p, sizeof p, "%s/LOCK", s->dir);
    s->lock_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (s->lock_fd < 0)
        return lk__err(LK_ERR_IO, errstr, errstr_size, "cannot open lock file %s: %s", p,
                       strerror(errno));
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char pidtxt[32] = "";
        ssize_t n = pread(s->lock_fd, pidtxt, sizeof pidtxt - 1, 0);
        pidtxt[n > 0 ? n : 0] = '\0';
        long pid = strtol(pidtxt, NULL, 10);
        close(s->lock_fd);
        s->lock_fd = -1;
        if (e != EWOULDBLOCK)
            return lk__err(LK_ERR_IO, errstr, errstr_size, "cannot lock %s: %s", p,
                           strerror(e));
        return lk__err(LK_ERR_LOCKED, errstr, errstr_size,
                       "checkpoint %s is in use (held by pid %ld%s); one process per "
                       "checkpoint: stop the other one first",
                       s->dir, pid, pid == (long)getpid() ? ", this process" : "");
    }
    char pidtxt[32];
    int len = snprintf(pidtxt, sizeof pidtxt, "%ld\n", (long)getpid());
    if (ftruncate(s->lock_fd, 0) != 0 || pwrite(s->lock_fd, pidtxt, (size_t)len, 0) != len)
        lk__log(LK_LOG_WARNING, "cannot write pid to %s: %s", p, strerror(errno));
    return LK_OK;
}

static void store_free(lk_store_t *s) {
    if (!s)
        return;
    if (s->env)
        mdb_env_close(s->env);
    if (s->lock_fd >= 0)
        close(s->lock_fd); /* releases the flock */
    for (size_t i = 0; i < s->nstates; i++)
        free(s->states[i].uid);
    free(s->states);
    free(s->app_id);
    free(s->dir);
    pthread_rwlock_destroy(&s->resize_lock);
    pthread_mutex_destroy(&s->flags_lock);
    free(s);
}

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

/* Read and check meta; fills s->app_id etc. Returns LK_OK or a refusal. */
static lk_err_t check_meta(lk_store_t *s, MDB_txn *txn, const char *want_app,
                           char *errstr, size_t errstr_size) {
    MDB_dbi meta;
    int rc = mdb_dbi_open(txn, "meta", 0, &meta);
    if (rc == MDB_NOTFOUND)
        return lk__err(LK_ERR_NOT_CHECKPOINT, errstr, errstr_size,
                       "%s is an LMDB environment but not a lockstep checkpoint (no meta "
                       "database)",
                       s->dir);
    if (rc)
        return mdb_err(s, rc, errstr, errstr_size, "opening meta");
    MDB_val k = {6, "header"}, v;
    rc = mdb_get(txn, meta, &k, &v);
    if (rc == MDB_NOTFOUND)
        return lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                       "checkpoint %s is corrupt: meta has no header", s->dir);
    if (rc)
        return mdb_err(s, rc, errstr, errstr_size, "reading meta");
    lk__zone_t z;
    lk__zone_init(&z);
    lk__obj_t o;
    lk_err_t err = LK_OK;
    const char *magic, *app;
    size_t magic_len, app_len;
    int64_t ver, format, created;
    if (lk__unpack(&z, v.mv_data, v.mv_size, &o) || !lk__arr_i64(&o, 0, &ver) ||
        !lk__arr_str(&o, 1, &magic, &magic_len) || magic_len != strlen(LK_CHECKPOINT_MAGIC) ||
        memcmp(magic, LK_CHECKPOINT_MAGIC, magic_len) || !lk__arr_i64(&o, 2, &format) ||
        !lk__arr_str(&o, 3, &app, &app_len) || !lk__arr_i64(&o, 4, &created)) {
        err = lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                      "checkpoint %s is corrupt: meta header is unreadable (%zu bytes)",
                      s->dir, v.mv_size);
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
    s->app_id = strndup(app, app_len);
    s->format = (int)format;
    s->created_ms = created;
    if (!s->app_id)
        err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
out:
    lk__zone_destroy(&z);
    return err;
}

static lk_err_t write_header(lk_store_t *s, MDB_txn *txn, const lk_store_opts_t *o,
                             char *errstr, size_t errstr_size) {
    lk__buf_t b;
    lk__buf_init(&b);
    lk__pack_array(&b, 5);
    lk__pack_i64(&b, 1);
    lk__pack_str(&b, LK_CHECKPOINT_MAGIC);
    lk__pack_i64(&b, LK_CHECKPOINT_FORMAT);
    lk__pack_str(&b, o->app_id);
    lk__pack_i64(&b, lk__wall_ms());
    MDB_val k = {6, "header"}, v = {b.len, b.data};
    int rc = b.oom ? ENOMEM : mdb_put(txn, s->dbi[DB_META], &k, &v, 0);
    lk__buf_free(&b);
    return rc ? mdb_err(s, rc, errstr, errstr_size, "writing meta header") : LK_OK;
}

static lk_err_t write_config(lk_store_t *s, MDB_txn *txn, const lk_conf_t *conf,
                             char *errstr, size_t errstr_size) {
    lk__buf_t b;
    lk__buf_init(&b);
    cfg_acc_t a = {&b, 0};
    lk_conf_foreach(conf, 1, count_cfg, &a);
    lk__pack_array(&b, 2);
    lk__pack_i64(&b, 1);
    lk__pack_map(&b, a.n);
    lk_conf_foreach(conf, 1, pack_cfg, &a);
    MDB_val k = {6, "config"}, v = {b.len, b.data};
    int rc = b.oom ? ENOMEM : mdb_put(txn, s->dbi[DB_META], &k, &v, 0);
    lk__buf_free(&b);
    return rc ? mdb_err(s, rc, errstr, errstr_size, "writing meta config") : LK_OK;
}

static lk_err_t load_outbox_bytes(lk_store_t *s, MDB_txn *txn) {
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

static lk_err_t load_last_batch(lk_store_t *s, MDB_txn *txn) {
    MDB_cursor *c;
    if (mdb_cursor_open(txn, s->dbi[DB_BATCHES], &c))
        return LK_ERR_STORE;
    MDB_val k, v;
    if (mdb_cursor_get(c, &k, &v, MDB_LAST) == 0 && k.mv_size == 8)
        s->committed_batch = s->durable_batch = lk__get_be64(k.mv_data);
    mdb_cursor_close(c);
    return LK_OK;
}

void lk__store_opts_from_conf(lk_store_opts_t *o, const lk_conf_t *conf) {
    memset(o, 0, sizeof *o);
    o->dir = lk__conf_str(conf, LK__P_CHECKPOINT_DIR);
    o->app_id = lk__conf_str(conf, LK__P_APP_ID);
    o->sync_interval = lk__conf_int(conf, LK__P_CHECKPOINT_SYNC) == 1;
    o->sync_interval_ms = lk__conf_int(conf, LK__P_CHECKPOINT_SYNC_INTERVAL_MS);
    o->map_size = (size_t)lk__conf_int(conf, LK__P_CHECKPOINT_MAP_SIZE);
    o->batch_history = (uint64_t)lk__conf_int(conf, LK__P_CHECKPOINT_BATCH_HISTORY);
    o->conf = conf;
}

lk_err_t lk__store_open(lk_store_t **out, const lk_store_opts_t *o, char *errstr,
                        size_t errstr_size) {
    *out = NULL;
    if (!o || !o->dir || !o->dir[0])
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "checkpoint.dir is not set");
    if (!o->readonly && (!o->app_id || !o->app_id[0]))
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "app.id is not set");
    lk_store_t *s = calloc(1, sizeof *s);
    if (!s)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    s->lock_fd = -1;
    s->readonly = o->readonly;
    s->sync_interval = o->sync_interval;
    s->sync_interval_ms = o->sync_interval_ms > 0 ? o->sync_interval_ms : 1000;
    s->batch_history = o->batch_history ? o->batch_history : 1000;
    s->map_size = o->map_size ? o->map_size : (size_t)256 << 20;
    pthread_rwlock_init(&s->resize_lock, NULL);
    pthread_mutex_init(&s->flags_lock, NULL);
    lk_err_t err = LK_OK;
    if (!(s->dir = strdup(o->dir))) {
        err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        goto fail;
    }

    /* 1. What is at the path? Decide before touching anything. */
    struct stat st;
    int exists = stat(s->dir, &st) == 0;
    if (exists && !S_ISDIR(st.st_mode)) {
        err = lk__err(LK_ERR_NOT_CHECKPOINT, errstr, errstr_size,
                      "%s is not a directory, so not a lockstep checkpoint", s->dir);
        goto fail;
    }
    if (!exists && errno != ENOENT) {
        err = lk__err(LK_ERR_IO, errstr, errstr_size, "cannot access %s: %s", s->dir,
                      strerror(errno));
        goto fail;
    }
    int creating = !exists || !dir_has(s->dir, "data.mdb");
    if (creating) {
        if (o->readonly) {
            err = lk__err(LK_ERR_NOT_CHECKPOINT, errstr, errstr_size,
                          "%s is not a lockstep checkpoint (no data.mdb)", s->dir);
            goto fail;
        }
        if (exists && dir_is_empty(s->dir) != 1) {
            err = lk__err(LK_ERR_NOT_CHECKPOINT, errstr, errstr_size,
                          "%s is not empty and holds no lockstep checkpoint (no data.mdb); "
                          "refusing to create one there",
                          s->dir);
            goto fail;
        }
        if (!exists && mkdir_p(s->dir)) {
            err = lk__err(LK_ERR_IO, errstr, errstr_size, "cannot create %s: %s", s->dir,
                          strerror(errno));
            goto fail;
        }
    }

    /* 2. Single owner. */
    if (!o->readonly && (err = take_lock(s, errstr, errstr_size)))
        goto fail;

    /* 3. The environment. */
    int rc = mdb_env_create(&s->env);
    if (!rc)
        rc = mdb_env_set_maxdbs(s->env, MAX_DBS);
    if (!rc)
        rc = mdb_env_set_mapsize(s->env, s->map_size);
    if (rc) {
        err = mdb_err(s, rc, errstr, errstr_size, "creating the environment");
        goto fail;
    }
    unsigned flags = MDB_NOTLS | (o->readonly ? MDB_RDONLY : 0) |
                     (s->sync_interval ? MDB_NOSYNC : 0);
    if ((rc = mdb_env_open(s->env, s->dir, flags, 0644))) {
        if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_CORRUPTED)
            err = lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                          "checkpoint %s is corrupt or not an LMDB file: %s", s->dir,
                          mdb_strerror(rc));
        else
            err = mdb_err(s, rc, errstr, errstr_size, "opening the environment");
        goto fail;
    }
    MDB_envinfo info;
    mdb_env_info(s->env, &info);
    s->map_size = info.me_mapsize; /* an existing file may already be larger */
    /* LMDB writes data.mdb at mdb_env_open, before our first commit: a process killed
     * in between leaves an environment in which nothing was ever committed. It holds
     * nothing, so create the checkpoint in it; refusing it as "not a checkpoint" would
     * make the directory unusable forever after one badly timed kill. */
    if (!creating && info.me_last_txnid == 0) {
        if (o->readonly) {
            err = lk__err(LK_ERR_NOT_CHECKPOINT, errstr, errstr_size,
                          "%s is not a lockstep checkpoint (empty LMDB environment)",
                          s->dir);
            goto fail;
        }
        creating = 1;
    }

    /* 4. Existing checkpoint: validate in a read txn, before any write. */
    MDB_txn *txn = NULL;
    if (!creating) {
        if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn))) {
            err = mdb_err(s, rc, errstr, errstr_size, "beginning a read transaction");
            goto fail;
        }
        err = check_meta(s, txn, o->app_id, errstr, errstr_size);
        for (int i = 0; !err && i < DB_FIXED_COUNT; i++)
            if ((rc = mdb_dbi_open(txn, db_names[i], 0, &s->dbi[i])))
                err = rc == MDB_NOTFOUND
                          ? lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                                    "checkpoint %s is corrupt: database '%s' is missing",
                                    s->dir, db_names[i])
                          : mdb_err(s, rc, errstr, errstr_size, "opening databases");
        if (!err)
            err = load_outbox_bytes(s, txn);
        if (!err)
            err = load_last_batch(s, txn);
        if (err) {
            mdb_txn_abort(txn);
            goto fail;
        }
        if ((rc = mdb_txn_commit(txn))) { /* keeps the dbi handles */
            err = mdb_err(s, rc, errstr, errstr_size, "opening databases");
            goto fail;
        }
        if (o->readonly) {
            *out = s;
            return LK_OK;
        }
    }

    /* 5. Create (new checkpoint) and record the effective config. */
    if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn))) {
        err = mdb_err(s, rc, errstr, errstr_size, "beginning a write transaction");
        goto fail;
    }
    for (int i = 0; i < DB_FIXED_COUNT && !rc; i++)
        rc = mdb_dbi_open(txn, db_names[i], MDB_CREATE, &s->dbi[i]);
    if (rc) {
        mdb_txn_abort(txn);
        err = mdb_err(s, rc, errstr, errstr_size, "creating databases");
        goto fail;
    }
    if (creating) {
        err = write_header(s, txn, o, errstr, errstr_size);
        if (!err && !(s->app_id = strdup(o->app_id)))
            err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        s->format = LK_CHECKPOINT_FORMAT;
        s->created_ms = lk__wall_ms();
    }
    if (!err && o->conf)
        err = write_config(s, txn, o->conf, errstr, errstr_size);
    if (err) {
        mdb_txn_abort(txn);
        goto fail;
    }
    if ((rc = mdb_txn_commit(txn))) {
        err = mdb_err(s, rc, errstr, errstr_size, "initialising the checkpoint");
        goto fail;
    }
    /* What a previous process committed without fsync (group commit) becomes durable
     * now, so durable_batch is true from the start. */
    mdb_env_sync(s->env, 1);
    s->last_sync_ms = lk__mono_ms();
    *out = s;
    return LK_OK;
fail:
    store_free(s);
    return err;
}

void lk__store_close(lk_store_t *s) {
    if (!s)
        return;
    if (s->wtxn)
        lk__store_txn_abort(s->wtxn);
    if (!s->readonly && !s->fatal && s->env)
        mdb_env_sync(s->env, 1);
    store_free(s);
}

const char *lk__store_app_id(const lk_store_t *s) { return s->app_id; }
int lk__store_format(const lk_store_t *s) { return s->format; }
int64_t lk__store_created_ms(const lk_store_t *s) { return s->created_ms; }
const char *lk__store_dir(const lk_store_t *s) { return s->dir; }
size_t lk__store_map_size(const lk_store_t *s) { return s->map_size; }
uint64_t lk__store_committed_batch(const lk_store_t *s) { return s->committed_batch; }
uint64_t lk__store_durable_batch(const lk_store_t *s) { return s->durable_batch; }
uint64_t lk__store_outbox_bytes(const lk_store_t *s) { return s->outbox_bytes; }

int lk__store_fatal(const lk_store_t *s, const char **msg) {
    if (msg)
        *msg = s->fatal ? s->fatal_msg : NULL;
    return s->fatal;
}

lk_err_t lk__store_sync(lk_store_t *s, char *errstr, size_t errstr_size) {
    if (s->fatal)
        return lk__err(LK_ERR_FATAL, errstr, errstr_size, "%s", s->fatal_msg);
    int rc = LK__FAULT_RC("mdb_env_sync", 0, mdb_env_sync(s->env, 1));
    if (rc)
        return mdb_err(s, rc, errstr, errstr_size, "syncing");
    s->durable_batch = s->committed_batch;
    s->last_sync_ms = lk__mono_ms();
    return LK_OK;
}

/* ---- transactions ---- */

lk_err_t lk__store_txn_begin(lk_store_t *s, int write, lk_store_txn_t **out, char *errstr,
                             size_t errstr_size) {
    *out = NULL;
    if (s->fatal)
        return lk__err(LK_ERR_FATAL, errstr, errstr_size, "%s", s->fatal_msg);
    if (write && s->readonly)
        return lk__err(LK_ERR_STATE, errstr, errstr_size, "checkpoint opened read-only");
    if (write && s->wtxn)
        return lk__err(LK_ERR_STATE, errstr, errstr_size,
                       "a write transaction is already open on %s", s->dir);
    lk_store_txn_t *t = calloc(1, sizeof *t);
    if (!t)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    t->s = s;
    t->write = write;
    lk__buf_init(&t->buf);
    lk__zone_init(&t->zone);
    lk__zone_init(&t->tmp);
    if (!write)
        pthread_rwlock_rdlock(&s->resize_lock);
    int rc;
    for (;;) {
        pthread_mutex_lock(&s->flags_lock);
        rc = mdb_txn_begin(s->env, NULL, write ? 0 : MDB_RDONLY, &t->txn);
        pthread_mutex_unlock(&s->flags_lock);
        if (rc != MDB_MAP_RESIZED)
            break;
        /* another process grew the map: adopt its size */
        if (!write)
            pthread_rwlock_unlock(&s->resize_lock);
        pthread_rwlock_wrlock(&s->resize_lock);
        rc = mdb_env_set_mapsize(s->env, 0);
        pthread_rwlock_unlock(&s->resize_lock);
        if (!write)
            pthread_rwlock_rdlock(&s->resize_lock);
        if (rc)
            break;
    }
    if (rc) {
        if (!write)
            pthread_rwlock_unlock(&s->resize_lock);
        lk__buf_free(&t->buf);
        lk__zone_destroy(&t->zone);
        lk__zone_destroy(&t->tmp);
        free(t);
        return mdb_err(s, rc, errstr, errstr_size, "beginning a transaction");
    }
    if (write)
        s->wtxn = t;
    *out = t;
    return LK_OK;
}

static void txn_free(lk_store_txn_t *t) {
    if (t->write)
        t->s->wtxn = NULL;
    else
        pthread_rwlock_unlock(&t->s->resize_lock);
    free(t->log);
    lk__buf_free(&t->buf);
    lk__zone_destroy(&t->zone);
    lk__zone_destroy(&t->tmp);
    for (size_t i = 0; i < t->nseqs; i++) {
        free(t->seqs[i]->sink);
        lk__buf_free(&t->seqs[i]->chunk);
        free(t->seqs[i]);
    }
    free(t->seqs);
    free(t);
}

static lk_err_t outbox_flush(lk_store_txn_t *t, char *errstr, size_t errstr_size);

void lk__store_txn_abort(lk_store_txn_t *t) {
    if (!t)
        return;
    if (t->txn)
        mdb_txn_abort(t->txn);
    txn_free(t);
}

lk_err_t lk__store_txn_commit(lk_store_txn_t *t, char *errstr, size_t errstr_size) {
    lk_store_t *s = t->s;
    if (!t->write) {
        if (t->txn)
            mdb_txn_abort(t->txn);
        txn_free(t);
        return LK_OK;
    }
    lk_err_t err = txn_check(t, errstr, errstr_size);
    if (!err)
        err = outbox_flush(t, errstr, errstr_size);
    if (err) {
        lk__store_txn_abort(t);
        return err;
    }
    for (;;) {
        int rc = LK__FAULT_RC("mdb_txn_commit", mdb_txn_abort(t->txn), mdb_txn_commit(t->txn));
        t->txn = NULL;
        if (rc == 0)
            break;
        if (rc != MDB_MAP_FULL || (rc = grow_and_replay(t))) {
            err = mdb_err(s, rc, errstr, errstr_size, "committing");
            txn_free(t);
            return err;
        }
    }
    s->outbox_bytes = (uint64_t)((int64_t)s->outbox_bytes + t->outbox_delta);
    if (t->batch_id)
        s->committed_batch = t->batch_id;
    if (!s->sync_interval) {
        s->durable_batch = s->committed_batch;
    } else if (lk__mono_ms() - s->last_sync_ms >= s->sync_interval_ms) {
        int rc = LK__FAULT_RC("mdb_env_sync", 0, mdb_env_sync(s->env, 1));
        if (rc) {
            err = mdb_err(s, rc, errstr, errstr_size, "syncing");
            txn_free(t);
            return err;
        }
        s->durable_batch = s->committed_batch;
        s->last_sync_ms = lk__mono_ms();
    }
    txn_free(t);
    return LK_OK;
}

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

lk_err_t lk__store_offset_put(lk_store_txn_t *t, const char *topic, int32_t partition,
                              int64_t offset, char *errstr, size_t errstr_size) {
    unsigned char k[512];
    size_t kl = offset_key(k, sizeof k, topic, partition);
    if (!kl)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "topic name too long");
    lk__buf_reset(&t->buf);
    lk__pack_array(&t->buf, 2);
    lk__pack_i64(&t->buf, 1);
    lk__pack_i64(&t->buf, offset);
    return txn_put(t, t->s->dbi[DB_OFFSETS], k, kl, t->buf.data, t->buf.len, errstr,
                   errstr_size, "writing an offset");
}

static int decode_offset(lk_store_txn_t *t, const MDB_val *v, int64_t *offset) {
    lk__obj_t o;
    lk__zone_clear(&t->tmp);
    return lk__unpack(&t->tmp, v->mv_data, v->mv_size, &o) == 0 && lk__arr_i64(&o, 1, offset);
}

lk_err_t lk__store_offset_get(lk_store_txn_t *t, const char *topic, int32_t partition,
                              int64_t *offset) {
    unsigned char k[512];
    size_t kl = offset_key(k, sizeof k, topic, partition);
    MDB_val v;
    if (!kl)
        return LK_ERR_INVALID_ARG;
    int rc = txn_get(t, t->s->dbi[DB_OFFSETS], k, kl, &v);
    if (rc == MDB_NOTFOUND)
        return LK_ERR_NOT_FOUND;
    if (rc)
        return LK_ERR_STORE;
    return decode_offset(t, &v, offset) ? LK_OK : LK_ERR_CORRUPT;
}

lk_err_t lk__store_offsets_foreach(lk_store_txn_t *t,
                                   int (*cb)(const char *, int32_t, int64_t, void *),
                                   void *opaque) {
    MDB_cursor *c;
    if (!t->txn || mdb_cursor_open(t->txn, t->s->dbi[DB_OFFSETS], &c))
        return LK_ERR_STORE;
    MDB_val k, v;
    lk_err_t err = LK_OK;
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        const unsigned char *kp = k.mv_data;
        const unsigned char *nul = memchr(kp, 0, k.mv_size);
        int64_t off;
        if (!nul || (size_t)(nul - kp) + 5 != k.mv_size || !decode_offset(t, &v, &off)) {
            err = LK_ERR_CORRUPT;
            break;
        }
        char topic[512];
        memcpy(topic, kp, (size_t)(nul - kp));
        topic[nul - kp] = 0;
        if (cb(topic, (int32_t)lk__get_be32(nul + 1), off, opaque))
            break;
    }
    mdb_cursor_close(c);
    return err;
}

/* ---- batch records ---- */

/* Encode a batch record (also the pending plan's format); -1 when out of memory. */
static int encode_batch(lk__buf_t *buf, const lk_batch_rec_t *b) {
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
    return buf->oom ? -1 : 0;
}

lk_err_t lk__store_batch_put(lk_store_txn_t *t, const lk_batch_rec_t *b, char *errstr,
                             size_t errstr_size) {
    lk__buf_t *buf = &t->buf;
    if (encode_batch(buf, b))
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    unsigned char k[8];
    lk__put_be64(k, b->id);
    lk_err_t err = txn_put(t, t->s->dbi[DB_BATCHES], k, 8, buf->data, buf->len, errstr,
                           errstr_size, "writing the batch record");
    if (err)
        return err;
    t->batch_id = b->id;
    if ((err = txn_del(t, t->s->dbi[DB_META], plan_key, sizeof plan_key - 1, errstr,
                       errstr_size, "clearing the batch plan")))
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
            if ((err = txn_del(t, t->s->dbi[DB_BATCHES], k, 8, errstr, errstr_size,
                               "pruning batch records")))
                return err;
        }
    } while (n == 64);
    return LK_OK;
}

static lk_err_t decode_batch(lk_store_txn_t *t, const MDB_val *v, lk_batch_rec_t *b) {
    lk__obj_t o;
    int64_t id, bt, cw, rin, rout;
    memset(b, 0, sizeof *b);
    if (lk__unpack(&t->zone, v->mv_data, v->mv_size, &o) || !lk__arr_i64(&o, 1, &id) ||
        !lk__arr_i64(&o, 2, &bt) || !lk__arr_i64(&o, 3, &cw) || !lk__arr_i64(&o, 4, &rin) ||
        !lk__arr_i64(&o, 5, &rout))
        return LK_ERR_CORRUPT;
    const lk__obj_t *ranges = lk__arr_at(&o, 6);
    size_t n = ranges ? lk__arr_len(ranges) : (size_t)-1;
    if (n == (size_t)-1)
        return LK_ERR_CORRUPT;
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
            return LK_ERR_CORRUPT;
        char *ts = lk__zone_alloc(&t->zone, tl + 1);
        if (!ts)
            return LK_ERR_NOMEM;
        memcpy(ts, topic, tl);
        ts[tl] = 0;
        b->ranges[i] = (lk_range_t){ts, (int32_t)p, f, u};
    }
    b->nranges = n;
    b->id = (uint64_t)id;
    b->batch_time_ms = bt;
    b->commit_wall_ms = cw;
    b->records_in = (uint64_t)rin;
    b->records_out = (uint64_t)rout;
    return LK_OK;
}

lk_err_t lk__store_batch_last(lk_store_txn_t *t, lk_batch_rec_t *out) {
    MDB_cursor *c;
    if (!t->txn || mdb_cursor_open(t->txn, t->s->dbi[DB_BATCHES], &c))
        return LK_ERR_STORE;
    MDB_val k, v;
    int rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
    mdb_cursor_close(c);
    if (rc == MDB_NOTFOUND)
        return LK_ERR_NOT_FOUND;
    if (rc)
        return LK_ERR_STORE;
    return decode_batch(t, &v, out);
}

lk_err_t lk__store_batch_get(lk_store_txn_t *t, uint64_t id, lk_batch_rec_t *out) {
    unsigned char k[8];
    lk__put_be64(k, id);
    MDB_val v;
    int rc = txn_get(t, t->s->dbi[DB_BATCHES], k, 8, &v);
    if (rc == MDB_NOTFOUND)
        return LK_ERR_NOT_FOUND;
    if (rc)
        return LK_ERR_STORE;
    return decode_batch(t, &v, out);
}

size_t lk__store_batch_count(lk_store_txn_t *t) {
    MDB_stat st;
    if (!t->txn || mdb_stat(t->txn, t->s->dbi[DB_BATCHES], &st))
        return 0;
    return st.ms_entries;
}

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

static seq_slot_t *seq_slot(lk_store_txn_t *t, const char *sink, uint64_t batch) {
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
    seq_slot_t **n = realloc(t->seqs, (t->nseqs + 1) * sizeof *n);
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
static lk_err_t chunk_write(lk_store_txn_t *t, seq_slot_t *slot, char *errstr,
                            size_t errstr_size) {
    if (!slot->chunk.len)
        return LK_OK;
    if (slot->chunk.oom)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    unsigned char k[512];
    size_t kl = outbox_key(k, sizeof k, slot->sink, slot->batch, slot->next_seq);
    if (!kl)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "sink name too long");
    lk_err_t err = txn_put(t, t->s->dbi[DB_OUTBOX], k, kl, slot->chunk.data, slot->chunk.len,
                           errstr, errstr_size, "appending to the outbox");
    if (err)
        return err;
    slot->next_seq++;
    lk__buf_reset(&slot->chunk);
    return LK_OK;
}

/* Write every pending chunk: before a commit, and before anything reads the outbox in
 * this txn. */
static lk_err_t outbox_flush(lk_store_txn_t *t, char *errstr, size_t errstr_size) {
    for (size_t i = 0; i < t->nseqs; i++) {
        lk_err_t err = chunk_write(t, t->seqs[i], errstr, errstr_size);
        if (err)
            return err;
    }
    return LK_OK;
}

lk_err_t lk__store_outbox_append(lk_store_txn_t *t, const char *sink, uint64_t batch,
                                 const lk_out_record_t *r, char *errstr, size_t errstr_size) {
    lk_err_t err = txn_check(t, errstr, errstr_size);
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

lk_err_t lk__store_outbox_first_batch(lk_store_txn_t *t, const char *sink, uint64_t *batch) {
    return lk__store_outbox_batch_from(t, sink, 0, batch);
}

lk_err_t lk__store_outbox_batch_from(lk_store_txn_t *t, const char *sink, uint64_t from,
                                     uint64_t *batch) {
    char ferr[256];
    lk_err_t ferr_code = outbox_flush(t, ferr, sizeof ferr);
    if (ferr_code)
        return ferr_code;
    unsigned char k[512];
    size_t kl = outbox_key(k, sizeof k, sink, from, 0);
    MDB_cursor *c;
    if (!kl || !t->txn || mdb_cursor_open(t->txn, t->s->dbi[DB_OUTBOX], &c))
        return LK_ERR_STORE;
    MDB_val kk = {kl, k}, vv;
    int rc = mdb_cursor_get(c, &kk, &vv, MDB_SET_RANGE);
    lk_err_t err = LK_ERR_NOT_FOUND;
    if (rc == 0 && kk.mv_size == kl && !memcmp(kk.mv_data, k, kl - 12)) {
        *batch = lk__get_be64((unsigned char *)kk.mv_data + kl - 12);
        err = LK_OK;
    }
    mdb_cursor_close(c);
    return err;
}

/* Decode the record at *off of a chunk and advance *off past it. */
static int decode_out(lk_store_txn_t *t, const MDB_val *v, size_t *off, lk_out_record_t *r,
                      lk_header_t *hbuf, size_t hcap) {
    lk__obj_t o;
    int64_t part, ts;
    lk__zone_clear(&t->tmp);
    if (lk__unpack_next(&t->tmp, v->mv_data, v->mv_size, off, &o) || !lk__arr_i64(&o, 1, &part) ||
        !lk__arr_bin_or_nil(&o, 2, &r->key, &r->key_len) ||
        !lk__arr_bin_or_nil(&o, 3, &r->value, &r->value_len) || !lk__arr_i64(&o, 4, &ts))
        return 0;
    const lk__obj_t *hs = lk__arr_at(&o, 5);
    size_t n = hs ? lk__arr_len(hs) : (size_t)-1;
    if (n == (size_t)-1 || n > hcap)
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
    r->partition = (int32_t)part;
    r->timestamp_ms = ts;
    r->headers = hbuf;
    r->nheaders = n;
    return 1;
}

/* Records in one chunk value; (size_t)-1 if it does not decode. */
static size_t chunk_records(lk_store_txn_t *t, const MDB_val *v) {
    size_t n = 0, off = 0;
    lk__obj_t o;
    while (off < v->mv_size) {
        lk__zone_clear(&t->tmp);
        if (lk__unpack_next(&t->tmp, v->mv_data, v->mv_size, &off, &o))
            return (size_t)-1;
        n++;
    }
    return n;
}

lk_err_t lk__store_outbox_foreach(lk_store_txn_t *t, const char *sink, uint64_t batch,
                                  int (*cb)(const lk_out_record_t *, void *), void *opaque) {
    char ferr[256];
    lk_err_t err = outbox_flush(t, ferr, sizeof ferr);
    if (err)
        return err;
    unsigned char k[512];
    size_t kl = outbox_key(k, sizeof k, sink, batch, 0);
    MDB_cursor *c;
    if (!kl || !t->txn || mdb_cursor_open(t->txn, t->s->dbi[DB_OUTBOX], &c))
        return LK_ERR_STORE;
    MDB_val kk = {kl, k}, vv;
    lk_header_t hbuf[64];
    int stop = 0;
    for (int rc = mdb_cursor_get(c, &kk, &vv, MDB_SET_RANGE); rc == 0 && !stop && !err;
         rc = mdb_cursor_get(c, &kk, &vv, MDB_NEXT)) {
        if (kk.mv_size != kl || memcmp(kk.mv_data, k, kl - 4))
            break;
        for (size_t off = 0; off < vv.mv_size && !stop;) {
            lk_out_record_t r;
            if (!decode_out(t, &vv, &off, &r, hbuf, LK_ARRAY_SIZE(hbuf))) {
                err = LK_ERR_CORRUPT;
                break;
            }
            stop = cb(&r, opaque);
        }
    }
    mdb_cursor_close(c);
    return err;
}

lk_err_t lk__store_outbox_ack(lk_store_txn_t *t, const char *sink, uint64_t batch,
                              char *errstr, size_t errstr_size) {
    lk_err_t err = txn_check(t, errstr, errstr_size);
    if (!err)
        err = outbox_flush(t, errstr, errstr_size);
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
            err = txn_del(t, t->s->dbi[DB_OUTBOX], keys[i], lens[i], errstr, errstr_size,
                          "acknowledging outbox records");
        free(keys);
        if (err || n < 256)
            return err;
    }
}

lk_err_t lk__store_outbox_stats(lk_store_txn_t *t,
                                int (*cb)(const lk_outbox_stat_t *, void *), void *opaque) {
    char ferr[256];
    lk_err_t err = outbox_flush(t, ferr, sizeof ferr);
    if (err)
        return err;
    MDB_cursor *c;
    if (!t->txn || mdb_cursor_open(t->txn, t->s->dbi[DB_OUTBOX], &c))
        return LK_ERR_STORE;
    MDB_val k, v;
    lk_outbox_stat_t st;
    char cur[512] = "";
    int have = 0;
    memset(&st, 0, sizeof st);
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        const unsigned char *kp = k.mv_data;
        if (k.mv_size < 13 || k.mv_size - 13 >= sizeof cur || kp[k.mv_size - 13] != 0)
            continue;
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
        size_t n = chunk_records(t, &v);
        if (n == (size_t)-1) {
            err = LK_ERR_CORRUPT;
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

/* ---- fences ---- */

lk_err_t lk__store_fence_put(lk_store_txn_t *t, const char *sink, uint64_t batch,
                             char *errstr, size_t errstr_size) {
    lk__buf_reset(&t->buf);
    lk__pack_array(&t->buf, 3);
    lk__pack_i64(&t->buf, 1);
    lk__pack_i64(&t->buf, (int64_t)batch);
    lk__pack_i64(&t->buf, lk__wall_ms());
    return txn_put(t, t->s->dbi[DB_FENCES], sink, strlen(sink), t->buf.data, t->buf.len,
                   errstr, errstr_size, "writing a sink fence");
}

static int decode_fence(lk_store_txn_t *t, const MDB_val *v, int64_t *batch, int64_t *wall) {
    lk__obj_t o;
    lk__zone_clear(&t->tmp);
    return lk__unpack(&t->tmp, v->mv_data, v->mv_size, &o) == 0 && lk__arr_i64(&o, 1, batch) &&
           lk__arr_i64(&o, 2, wall);
}

lk_err_t lk__store_fence_get(lk_store_txn_t *t, const char *sink, uint64_t *batch) {
    MDB_val v;
    int rc = txn_get(t, t->s->dbi[DB_FENCES], sink, strlen(sink), &v);
    if (rc == MDB_NOTFOUND)
        return LK_ERR_NOT_FOUND;
    if (rc)
        return LK_ERR_STORE;
    int64_t b, w;
    if (!decode_fence(t, &v, &b, &w))
        return LK_ERR_CORRUPT;
    *batch = (uint64_t)b;
    return LK_OK;
}

/* Iterate a name-keyed database, handing each name as a C string. */
static lk_err_t foreach_named(lk_store_txn_t *t, MDB_dbi dbi,
                              int (*each)(lk_store_txn_t *, const char *, const MDB_val *,
                                          void *),
                              void *ctx) {
    MDB_cursor *c;
    if (!t->txn || mdb_cursor_open(t->txn, dbi, &c))
        return LK_ERR_STORE;
    MDB_val k, v;
    lk_err_t err = LK_OK;
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        char name[512];
        if (k.mv_size >= sizeof name) {
            err = LK_ERR_CORRUPT;
            break;
        }
        memcpy(name, k.mv_data, k.mv_size);
        name[k.mv_size] = 0;
        int r = each(t, name, &v, ctx);
        if (r < 0)
            err = LK_ERR_CORRUPT;
        if (r)
            break;
    }
    mdb_cursor_close(c);
    return err;
}

typedef struct {
    int (*fence_cb)(const char *, uint64_t, int64_t, void *);
    int (*acc_cb)(const char *, int64_t, void *);
    void *opaque;
} named_ctx_t;

static int each_fence(lk_store_txn_t *t, const char *name, const MDB_val *v, void *p) {
    named_ctx_t *c = p;
    int64_t b, w;
    if (!decode_fence(t, v, &b, &w))
        return -1;
    return c->fence_cb(name, (uint64_t)b, w, c->opaque) ? 1 : 0;
}

lk_err_t lk__store_fences_foreach(lk_store_txn_t *t,
                                  int (*cb)(const char *, uint64_t, int64_t, void *),
                                  void *opaque) {
    named_ctx_t c = {cb, NULL, opaque};
    return foreach_named(t, t->s->dbi[DB_FENCES], each_fence, &c);
}

/* ---- accumulators ---- */

static int decode_acc(lk_store_txn_t *t, const MDB_val *v, int64_t *value) {
    lk__obj_t o;
    lk__zone_clear(&t->tmp);
    return lk__unpack(&t->tmp, v->mv_data, v->mv_size, &o) == 0 && lk__arr_i64(&o, 1, value);
}

lk_err_t lk__store_acc_get(lk_store_txn_t *t, const char *name, int64_t *value) {
    MDB_val v;
    int rc = txn_get(t, t->s->dbi[DB_ACC], name, strlen(name), &v);
    if (rc == MDB_NOTFOUND)
        return LK_ERR_NOT_FOUND;
    if (rc)
        return LK_ERR_STORE;
    return decode_acc(t, &v, value) ? LK_OK : LK_ERR_CORRUPT;
}

lk_err_t lk__store_acc_add(lk_store_txn_t *t, const char *name, int64_t delta, char *errstr,
                           size_t errstr_size) {
    int64_t cur = 0;
    lk_err_t err = lk__store_acc_get(t, name, &cur);
    if (err && err != LK_ERR_NOT_FOUND)
        return lk__err(err, errstr, errstr_size, "reading accumulator %s: %s", name,
                       lk_err_str(err));
    lk__buf_reset(&t->buf);
    lk__pack_array(&t->buf, 2);
    lk__pack_i64(&t->buf, 1);
    lk__pack_i64(&t->buf, (int64_t)((uint64_t)cur + (uint64_t)delta));
    return txn_put(t, t->s->dbi[DB_ACC], name, strlen(name), t->buf.data, t->buf.len, errstr,
                   errstr_size, "writing an accumulator");
}

static int each_acc(lk_store_txn_t *t, const char *name, const MDB_val *v, void *p) {
    named_ctx_t *c = p;
    int64_t value;
    if (!decode_acc(t, v, &value))
        return -1;
    return c->acc_cb(name, value, c->opaque) ? 1 : 0;
}

lk_err_t lk__store_acc_foreach(lk_store_txn_t *t, int (*cb)(const char *, int64_t, void *),
                               void *opaque) {
    named_ctx_t c = {NULL, cb, opaque};
    return foreach_named(t, t->s->dbi[DB_ACC], each_acc, &c);
}

/* ---- keyed state ---- */

lk_err_t lk__store_state_open(lk_store_t *s, const char *uid, lk_state_db_t *db,
                              char *errstr, size_t errstr_size) {
    for (size_t i = 0; i < s->nstates; i++)
        if (!strcmp(s->states[i].uid, uid)) {
            *db = (lk_state_db_t)i;
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
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, s->readonly ? MDB_RDONLY : 0, &txn);
    if (rc)
        return mdb_err(s, rc, errstr, errstr_size, "beginning a transaction");
    MDB_dbi dbi;
    if ((rc = mdb_dbi_open(txn, name, s->readonly ? 0 : MDB_CREATE, &dbi))) {
        mdb_txn_abort(txn);
        if (rc == MDB_NOTFOUND)
            return lk__err(LK_ERR_NOT_FOUND, errstr, errstr_size,
                           "checkpoint %s has no state for operator '%s'", s->dir, uid);
        return mdb_err(s, rc, errstr, errstr_size, "opening a state database");
    }
    if ((rc = mdb_txn_commit(txn)))
        return mdb_err(s, rc, errstr, errstr_size, "creating a state database");
    state_db_t *n = realloc(s->states, (s->nstates + 1) * sizeof *n);
    if (!n)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    s->states = n;
    if (!(n[s->nstates].uid = strdup(uid)))
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    n[s->nstates].dbi = dbi;
    *db = (lk_state_db_t)s->nstates++;
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

static int decode_state(lk_store_txn_t *t, const MDB_val *v, const void **val, size_t *vlen,
                        int64_t *updated_ms) {
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

lk_err_t lk__store_state_get(lk_store_txn_t *t, lk_state_db_t db, const void *key,
                             size_t klen, const void **val, size_t *vlen,
                             int64_t *updated_ms) {
    if (db < 0 || (size_t)db >= t->s->nstates)
        return LK_ERR_INVALID_ARG;
    if (klen == 0 || klen > MAX_KEY) /* the same limit as state_put */
        return LK_ERR_TOO_LARGE;
    MDB_val v;
    int rc = txn_get(t, t->s->states[db].dbi, key, klen, &v);
    if (rc == MDB_NOTFOUND)
        return LK_ERR_NOT_FOUND;
    if (rc)
        return LK_ERR_STORE;
    return decode_state(t, &v, val, vlen, updated_ms) ? LK_OK : LK_ERR_CORRUPT;
}

lk_err_t lk__store_state_put(lk_store_txn_t *t, lk_state_db_t db, const void *key,
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
    if (t->buf.oom)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return txn_put(t, t->s->states[db].dbi, key, klen, t->buf.data, t->buf.len, errstr,
                   errstr_size, "writing state");
}

lk_err_t lk__store_state_del(lk_store_txn_t *t, lk_state_db_t db, const void *key,
                             size_t klen, char *errstr, size_t errstr_size) {
    if (db < 0 || (size_t)db >= t->s->nstates)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "bad state handle");
    return txn_del(t, t->s->states[db].dbi, key, klen, errstr, errstr_size,
                   "deleting state");
}

/* Visit the entries of a state database in key order, from the first one strictly after
 * `after` (NULL: from the start), at most max of them; a non-zero cb stops. *visited
 * counts the entries passed to cb. */
static lk_err_t walk_state_dbi(lk_store_txn_t *t, MDB_dbi dbi, const void *after,
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
        if (!decode_state(t, &v, &val, &vlen, &upd)) {
            err = LK_ERR_CORRUPT;
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
static lk_err_t foreach_state_dbi(lk_store_txn_t *t, MDB_dbi dbi,
                                  int (*cb)(const void *, size_t, const void *, size_t,
                                            int64_t, void *),
                                  void *opaque) {
    size_t visited;
    return walk_state_dbi(t, dbi, NULL, 0, SIZE_MAX, cb, opaque, &visited);
}

lk_err_t lk__store_state_foreach(lk_store_txn_t *t, lk_state_db_t db,
                                 int (*cb)(const void *, size_t, const void *, size_t,
                                           int64_t, void *),
                                 void *opaque) {
    if (db < 0 || (size_t)db >= t->s->nstates)
        return LK_ERR_STORE;
    return foreach_state_dbi(t, t->s->states[db].dbi, cb, opaque);
}

lk_err_t lk__store_state_stats(lk_store_txn_t *t, int (*cb)(const lk_state_stat_t *, void *),
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
        if (k.mv_size < 6 || memcmp(k.mv_data, "state.", 6) || k.mv_size >= 512)
            break;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char (*nn)[512] = realloc(names, cap * sizeof *names);
            if (!nn) {
                err = LK_ERR_NOMEM;
                break;
            }
            names = nn;
        }
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
        lk_state_stat_t ss = {names[i] + 6, st.ms_entries,
                              (uint64_t)(st.ms_branch_pages + st.ms_leaf_pages +
                                         st.ms_overflow_pages) *
                                  st.ms_psize};
        if (cb(&ss, opaque))
            break;
    }
    free(names);
    return err;
}

/* ---- topology and config in meta ---- */

lk_err_t lk__store_topology_put(lk_store_txn_t *t, const lk_topo_op_t *ops, size_t n,
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
    if (b->oom)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return txn_put(t, t->s->dbi[DB_META], "topology", 8, b->data, b->len, errstr,
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

lk_err_t lk__store_topology_get(lk_store_txn_t *t, lk_topo_op_t **ops, size_t *n) {
    *ops = NULL;
    *n = 0;
    MDB_val v;
    int rc = txn_get(t, t->s->dbi[DB_META], "topology", 8, &v);
    if (rc == MDB_NOTFOUND)
        return LK_OK;
    if (rc)
        return LK_ERR_STORE;
    lk__obj_t o;
    if (lk__unpack(&t->zone, v.mv_data, v.mv_size, &o))
        return LK_ERR_CORRUPT;
    const lk__obj_t *arr = lk__arr_at(&o, 1);
    size_t cnt = arr ? lk__arr_len(arr) : (size_t)-1;
    if (cnt == (size_t)-1)
        return LK_ERR_CORRUPT;
    lk_topo_op_t *out = lk__zone_alloc(&t->zone, (cnt ? cnt : 1) * sizeof *out);
    if (!out)
        return LK_ERR_NOMEM;
    for (size_t i = 0; i < cnt; i++) {
        const lk__obj_t *e = lk__arr_at(arr, i);
        const char *uid, *kind, *params;
        size_t ul, kl, pl;
        int64_t sv;
        if (!e || !lk__arr_str(e, 0, &uid, &ul) || !lk__arr_str(e, 1, &kind, &kl) ||
            !lk__arr_i64(e, 2, &sv) || !lk__arr_str(e, 3, &params, &pl))
            return LK_ERR_CORRUPT;
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

lk_err_t lk__store_config_foreach(lk_store_txn_t *t,
                                  int (*cb)(const char *, const char *, void *), void *opaque) {
    MDB_val v;
    int rc = txn_get(t, t->s->dbi[DB_META], "config", 6, &v);
    if (rc == MDB_NOTFOUND)
        return LK_OK;
    if (rc)
        return LK_ERR_STORE;
    lk__obj_t o;
    lk__zone_clear(&t->tmp);
    if (lk__unpack(&t->tmp, v.mv_data, v.mv_size, &o))
        return LK_ERR_CORRUPT;
    const lk__obj_t *m = lk__arr_at(&o, 1);
    size_t n;
    if (!m || !lk__map_len(m, &n))
        return LK_ERR_CORRUPT;
    for (size_t i = 0; i < n; i++) {
        const char *k, *val;
        size_t kl, vl;
        if (!lk__map_str_at(m, i, &k, &kl, &val, &vl))
            return LK_ERR_CORRUPT;
        char kb[512], vb[4096];
        lk__fmt(kb, sizeof kb, "%.*s", (int)kl, k);
        lk__fmt(vb, sizeof vb, "%.*s", (int)vl, val);
        if (cb(kb, vb, opaque))
            break;
    }
    return LK_OK;
}

lk_err_t lk__store_state_scan(lk_store_txn_t *t, lk_state_db_t db, const void *after,
                              size_t after_len, size_t max,
                              int (*cb)(const void *, size_t, const void *, size_t, int64_t,
                                        void *),
                              void *opaque, size_t *visited) {
    *visited = 0;
    if (db < 0 || (size_t)db >= t->s->nstates)
        return LK_ERR_STORE;
    return walk_state_dbi(t, t->s->states[db].dbi, after, after_len, max, cb, opaque, visited);
}

lk_err_t lk__store_plan_put(lk_store_t *s, const lk_batch_rec_t *plan, char *errstr,
                            size_t errstr_size) {
    lk_store_txn_t *t;
    lk_err_t err = lk__store_txn_begin(s, 1, &t, errstr, errstr_size);
    if (err)
        return err;
    lk__buf_t *buf = &t->buf;
    err = encode_batch(buf, plan) ? lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory")
                   : txn_put(t, s->dbi[DB_META], plan_key, sizeof plan_key - 1, buf->data,
                             buf->len, errstr, errstr_size, "writing the batch plan");
    if (err) {
        lk__store_txn_abort(t);
        return err;
    }
    /* The plan need not be durable: without fsync it costs a page write, not a sync. */
    return lk__store_txn_commit_unsynced(t, errstr, errstr_size);
}

lk_err_t lk__store_plan_get(lk_store_txn_t *t, lk_batch_rec_t *out) {
    MDB_val v;
    int rc = txn_get(t, t->s->dbi[DB_META], plan_key, sizeof plan_key - 1, &v);
    if (rc == MDB_NOTFOUND)
        return LK_ERR_NOT_FOUND;
    if (rc)
        return LK_ERR_STORE;
    return decode_batch(t, &v, out);
}

lk_err_t lk__store_config_put(lk_store_txn_t *t, const lk_conf_t *conf, char *errstr,
                              size_t errstr_size) {
    lk_err_t err = txn_check(t, errstr, errstr_size);
    if (err)
        return err;
    lk__buf_t *b = &t->buf;
    lk__buf_reset(b);
    cfg_acc_t a = {b, 0};
    lk_conf_foreach(conf, 1, count_cfg, &a);
    lk__pack_array(b, 2);
    lk__pack_i64(b, 1);
    lk__pack_map(b, a.n);
    lk_conf_foreach(conf, 1, pack_cfg, &a);
    if (b->oom)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    return txn_put(t, t->s->dbi[DB_META], "config", 6, b->data, b->len, errstr, errstr_size,
                   "writing meta config");
}

lk_err_t lk__store_plan_clear(lk_store_t *s, char *errstr, size_t errstr_size) {
    lk_store_txn_t *t;
    lk_err_t err = lk__store_txn_begin(s, 1, &t, errstr, errstr_size);
    if (err)
        return err;
    err = txn_del(t, s->dbi[DB_META], plan_key, sizeof plan_key - 1, errstr, errstr_size,
                  "clearing the batch plan");
    if (err) {
        lk__store_txn_abort(t);
        return err;
    }
    return lk__store_txn_commit(t, errstr, errstr_size);
}

lk_err_t lk__store_txn_commit_unsynced(lk_store_txn_t *t, char *errstr, size_t errstr_size) {
    lk_store_t *s = t->s;
    if (s->sync_interval) /* the environment never syncs on commit anyway */
        return lk__store_txn_commit(t, errstr, errstr_size);
    /* not held across the commit: a map growth inside it waits for readers, and a
     * reader could be waiting for this lock */
    pthread_mutex_lock(&s->flags_lock);
    mdb_env_set_flags(s->env, MDB_NOSYNC, 1);
    pthread_mutex_unlock(&s->flags_lock);
    lk_err_t err = lk__store_txn_commit(t, errstr, errstr_size);
    pthread_mutex_lock(&s->flags_lock);
    mdb_env_set_flags(s->env, MDB_NOSYNC, 0);
    pthread_mutex_unlock(&s->flags_lock);
    return err;
}

/* ---- maintenance ---- */

lk_err_t lk__store_offset_del(lk_store_txn_t *t, const char *topic, int32_t partition,
                              char *errstr, size_t errstr_size) {
    unsigned char k[512];
    size_t kl = offset_key(k, sizeof k, topic, partition);
    if (!kl)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "topic name too long");
    return txn_del(t, t->s->dbi[DB_OFFSETS], k, kl, errstr, errstr_size,
                   "deleting an offset");
}

lk_err_t lk__store_plan_del(lk_store_txn_t *t, char *errstr, size_t errstr_size) {
    return txn_del(t, t->s->dbi[DB_META], plan_key, sizeof plan_key - 1, errstr,
                   errstr_size, "clearing the batch plan");
}

lk_err_t lk__store_state_foreach_uid(lk_store_txn_t *t, const char *uid,
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
