/*
 * store.c — the LMDB checkpoint store's environment and transactions (see store_int.h
 * for the model, store_priv.h for how the store's files divide it): open and close,
 * the replay log and map growth, transaction begin and commit, group commit.
 * DESIGN.md, The checkpoint and Integrity.
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
#include "store_priv.h"
#include "../core/conf_int.h"
#include "../core/util_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

static const char *const db_names[DB_FIXED_COUNT] = {"meta",   "offsets", "batches",
                                                     "outbox", "fences",  "acc"};

enum { OP_PUT = 1, OP_DEL = 2 };
typedef struct {
    uint8_t op;
    uint32_t dbi, klen, vlen;
} log_hdr_t;

/* ------------------------------------------------------------------------- */

lk_err_t lk__store_mdb_err(lk__store_t *s, int rc, char *errstr, size_t errstr_size,
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

/* A failed fsync: whether the pages reached the disk is unknown (and Linux may have
 * dropped them from the page cache), so nothing committed since the last good sync
 * may be called durable, ever. The store becomes unusable (sticky), with the OS error. */
static lk_err_t sync_failed(lk__store_t *s, int rc, char *errstr, size_t errstr_size) {
    if (!s->fatal) /* the first failure's message stays */
        lk__fmt(s->fatal_msg, sizeof s->fatal_msg,
                "checkpoint %s: syncing to disk failed: %s; batches after %llu may not be "
                "durable and are not delivered; the checkpoint is unusable until restart "
                "(check the disk)",
                s->dir, mdb_strerror(rc), (unsigned long long)s->durable_batch);
    s->fatal = 1;
    return lk__err(LK_ERR_FATAL, errstr, errstr_size, "%s", s->fatal_msg);
}

/* ---- the replay log and MAP_FULL handling ---- */

static int log_append(lk__store_txn_t *t, uint8_t op, MDB_dbi dbi, const MDB_val *k,
                      const MDB_val *v) {
    log_hdr_t h = {op, dbi, (uint32_t)k->mv_size, v ? (uint32_t)v->mv_size : 0};
    size_t need = sizeof h + h.klen + h.vlen;
    if (t->log_len + need > t->log_cap) {
        char *n = lk__vec_reserve(t->log, &t->log_cap, t->log_len + need, 1, 4096);
        if (!n)
            return -1;
        t->log = n;
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
static int grow_and_replay(lk__store_txn_t *t) {
    lk__store_t *s = t->s;
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

lk_err_t lk__store_txn_check(lk__store_txn_t *t, char *errstr, size_t errstr_size) {
    if (t->s->fatal)
        return lk__err(LK_ERR_FATAL, errstr, errstr_size, "%s", t->s->fatal_msg);
    if (!t->write)
        return lk__err(LK_ERR_STATE, errstr, errstr_size, "write in a read transaction");
    if (!t->txn)
        return lk__err(LK_ERR_STATE, errstr, errstr_size,
                       "transaction failed earlier and must be aborted");
    return LK_OK;
}

static lk_err_t txn_write(lk__store_txn_t *t, uint8_t op, MDB_dbi dbi, MDB_val *k, MDB_val *v,
                          char *errstr, size_t errstr_size, const char *what) {
    lk_err_t e = lk__store_txn_check(t, errstr, errstr_size);
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
            lk_err_t err = lk__store_mdb_err(t->s, rc, errstr, errstr_size, what);
            mdb_txn_abort(t->txn); /* LMDB txns are unusable after a failed write */
            t->txn = NULL;
            return err;
        }
        if ((rc = grow_and_replay(t)))
            return lk__store_mdb_err(t->s, rc, errstr, errstr_size, "growing the map");
    }
    if (log_append(t, op, dbi, k, v))
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory (replay log)");
    return LK_OK;
}

lk_err_t lk__store_txn_put(lk__store_txn_t *t, MDB_dbi dbi, const void *key, size_t klen,
                           const void *val, size_t vlen, char *errstr, size_t errstr_size,
                           const char *what) {
    MDB_val k = {klen, (void *)key}, v = {vlen, (void *)val};
    return txn_write(t, OP_PUT, dbi, &k, &v, errstr, errstr_size, what);
}

lk_err_t lk__store_txn_del(lk__store_txn_t *t, MDB_dbi dbi, const void *key, size_t klen,
                           char *errstr, size_t errstr_size, const char *what) {
    MDB_val k = {klen, (void *)key};
    return txn_write(t, OP_DEL, dbi, &k, NULL, errstr, errstr_size, what);
}

lk_err_t lk__store_txn_get(lk__store_txn_t *t, MDB_dbi dbi, const void *key, size_t klen,
                           MDB_val *v, const char *what) {
    if (!t->txn)
        return lk__store_read_failed(t, EINVAL, what);
    if (klen == 0 || klen > MAX_KEY) /* cannot have been stored (see txn_write) */
        return LK_ERR_NOT_FOUND;
    MDB_val k = {klen, (void *)key};
    int rc = mdb_get(t->txn, dbi, &k, v);
    if (rc == MDB_NOTFOUND) /* the only "absent" */
        return LK_ERR_NOT_FOUND;
    return rc ? lk__store_read_failed(t, rc, what) : LK_OK;
}

lk_err_t lk__store_walk(lk__store_txn_t *t, MDB_dbi dbi, const char *reading,
                        int (*each)(lk__store_txn_t *, const MDB_val *, MDB_val, void *,
                                    lk_err_t *),
                        void *ctx) {
    MDB_cursor *c;
    if (!t->txn || mdb_cursor_open(t->txn, dbi, &c))
        return LK_ERR_STORE;
    MDB_val k, v;
    lk_err_t err = LK_OK;
    int rc;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT))
        if (each(t, &k, v, ctx, &err) || err)
            break;
    if (!err && rc && rc != MDB_NOTFOUND)
        err = lk__store_read_failed(t, rc, reading);
    mdb_cursor_close(c);
    return err;
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

static lk_err_t take_lock(lk__store_t *s, char *errstr, size_t errstr_size) {
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

static void store_free(lk__store_t *s) {
    if (!s)
        return;
    if (s->env)
        mdb_env_close(s->env);
    if (s->lock_fd >= 0)
        close(s->lock_fd); /* releases the flock */
    for (size_t i = 0; i < s->nstates; i++) {
        free(s->states[i].uid);
        free(s->states[i].changelog);
    }
    free(s->states);
    free(s->app_id);
    free(s->dir);
    pthread_rwlock_destroy(&s->resize_lock);
    pthread_mutex_destroy(&s->flags_lock);
    free(s);
}


void lk__store_opts_from_conf(lk__store_opts_t *o, const lk_conf_t *conf) {
    memset(o, 0, sizeof *o);
    o->dir = lk__conf_str(conf, LK__P_CHECKPOINT_DIR);
    o->app_id = lk__conf_str(conf, LK__P_APP_ID);
    o->sync_interval = lk__conf_int(conf, LK__P_CHECKPOINT_SYNC) == 1;
    o->sync_interval_ms = lk__conf_int(conf, LK__P_CHECKPOINT_SYNC_INTERVAL_MS);
    o->map_size = (size_t)lk__conf_int(conf, LK__P_CHECKPOINT_MAP_SIZE);
    o->batch_history = (uint64_t)lk__conf_int(conf, LK__P_CHECKPOINT_BATCH_HISTORY);
    o->conf = conf;
}

lk_err_t lk__store_open(lk__store_t **out, const lk__store_opts_t *o, char *errstr,
                        size_t errstr_size) {
    *out = NULL;
    if (!o || !o->dir || !o->dir[0])
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "checkpoint.dir is not set");
    if (!o->readonly && (!o->app_id || !o->app_id[0]))
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "app.id is not set");
    lk__store_t *s = calloc(1, sizeof *s);
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
            if (exists && dir_has(s->dir, "task-0")) /* DESIGN.md, Scale-out */
                err = lk__err(LK_ERR_NOT_CHECKPOINT, errstr, errstr_size,
                              "%s holds the task checkpoints of group.mode=consumer, one per "
                              "input partition: give one of them, e.g. %s/task-0",
                              s->dir, s->dir);
            else
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
        if (!exists && lk__mkdir_p(s->dir)) {
            err = lk__err(LK_ERR_IO, errstr, errstr_size, "cannot create %s: %s", s->dir,
                          strerror(errno));
            goto fail;
        }
    }

    /* 2. Single owner, in a directory nobody else can plant links in (issue 15 item 8). */
    if (!o->readonly &&
        ((err = lk__dir_check_private(s->dir, o->conf && lk__conf_bool(o->conf, LK__P_DIR_ALLOW_SHARED) ? LK__DIR_ALLOW_SHARED : 0, errstr, errstr_size)) ||
         (err = take_lock(s, errstr, errstr_size))))
        goto fail;

    /* 3. The environment, once its file passed the check against its own meta pages. */
    if (!creating && (err = lk__store_check_data_file(s, errstr, errstr_size)))
        goto fail;
    int rc = mdb_env_create(&s->env);
    if (!rc)
        rc = mdb_env_set_maxdbs(s->env, MAX_DBS);
    if (!rc)
        rc = mdb_env_set_mapsize(s->env, s->map_size);
    if (rc) {
        err = lk__store_mdb_err(s, rc, errstr, errstr_size, "creating the environment");
        goto fail;
    }
    unsigned flags = MDB_NOTLS | (o->readonly ? MDB_RDONLY : 0) |
                     (s->sync_interval ? MDB_NOSYNC : 0);
    if ((rc = mdb_env_open(s->env, s->dir, flags, 0600))) {
        if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_CORRUPTED)
            err = lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                          "checkpoint %s is corrupt or not an LMDB file: %s", s->dir,
                          mdb_strerror(rc));
        else
            err = lk__store_mdb_err(s, rc, errstr, errstr_size, "opening the environment");
        goto fail;
    }
    /* Reader slots of processes that died inside a read transaction (a killed
     * `checkpoint inspect`) stay taken until someone clears them: enough of them and
     * every transaction fails with MDB_READERS_FULL. Clear them at every open. */
    int dead = 0;
    (void)mdb_reader_check(s->env, &dead); /* only clears; a failure changes nothing */
    if (dead)
        lk__log(LK_LOG_NOTICE, "checkpoint %s: cleared %d reader slots of dead processes",
                s->dir, dead);
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
    int names_absent = 0; /* no "state-dbs" record yet: written below */
    if (!creating) {
        if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn))) {
            err = lk__store_mdb_err(s, rc, errstr, errstr_size, "beginning a read transaction");
            goto fail;
        }
        err = lk__store_verify_pages(s, txn, errstr, errstr_size);
        if (!err)
            err = lk__store_check_meta(s, txn, o->app_id, errstr, errstr_size);
        for (int i = 0; !err && i < DB_FIXED_COUNT; i++)
            if ((rc = mdb_dbi_open(txn, db_names[i], 0, &s->dbi[i])))
                err = rc == MDB_NOTFOUND
                          ? lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                                    "checkpoint %s is corrupt: database '%s' is missing",
                                    s->dir, db_names[i])
                          : lk__store_mdb_err(s, rc, errstr, errstr_size, "opening databases");
        if (!err)
            err = lk__store_load_outbox_bytes(s, txn);
        if (!err)
            err = lk__store_load_last_batch(s, txn);
        if (!err)
            err = lk__store_check_meta_keys(s, txn, errstr, errstr_size);
        if (!err && lk__store_sealed(s))
            err = lk__store_check_state_names(s, txn, &names_absent, errstr, errstr_size);
        if (err) {
            mdb_txn_abort(txn);
            goto fail;
        }
        if ((rc = mdb_txn_commit(txn))) { /* keeps the dbi handles */
            err = lk__store_mdb_err(s, rc, errstr, errstr_size, "opening databases");
            goto fail;
        }
        if (o->readonly) {
            *out = s;
            return LK_OK;
        }
    }

    /* 5. Create (new checkpoint) or migrate (older format), and record the effective
     * config, in one write transaction. A migration that fills the map grows it and
     * starts again (nothing of the failed attempt was kept). */
    int migrating = !creating && s->format < LK_CHECKPOINT_FORMAT;
    if (migrating && o->no_migrate) { /* a dry run: the checkpoint stays as it is */
        s->readonly = 1;              /* its writes would mix formats */
        *out = s;
        return LK_OK;
    }
    for (;;) {
        if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn))) {
            err = lk__store_mdb_err(s, rc, errstr, errstr_size, "beginning a write transaction");
            goto fail;
        }
        for (int i = 0; i < DB_FIXED_COUNT && !rc; i++)
            rc = mdb_dbi_open(txn, db_names[i], MDB_CREATE, &s->dbi[i]);
        if (rc) {
            mdb_txn_abort(txn);
            err = lk__store_mdb_err(s, rc, errstr, errstr_size, "creating databases");
            goto fail;
        }
        int full = 0;
        if (creating) {
            if (!s->app_id) {
                s->format = LK_CHECKPOINT_FORMAT;
                s->created_ms = lk__wall_ms();
                if (!(s->app_id = strdup(o->app_id)))
                    err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
                if (!err)
                    err = lk__store_new_checkpoint_id(s->checkpoint_id, errstr, errstr_size);
            }
            if (!err)
                err = lk__store_write_header(s, txn, errstr, errstr_size);
        } else if (migrating) {
            /* format 1 -> 2: every value gets its checksum, the checkpoint its id */
            if (!s->checkpoint_id[0])
                err = lk__store_new_checkpoint_id(s->checkpoint_id, errstr, errstr_size);
            if (!err && (rc = lk__store_seal_all(s, txn))) {
                if (rc == MDB_MAP_FULL)
                    full = 1;
                else
                    err = lk__store_mdb_err(s, rc, errstr, errstr_size, "migrating to format 2");
            }
            if (!err && !full)
                err = lk__store_load_outbox_bytes(s, txn); /* each chunk grew by its checksum */
            if (!err && !full)
                err = lk__store_write_header(s, txn, errstr, errstr_size);
        }
        if (!err && !full && (creating || migrating || names_absent) &&
            (rc = lk__store_put_state_names(s, txn))) {
            if (rc == MDB_MAP_FULL && migrating)
                full = 1;
            else
                err = lk__store_mdb_err(s, rc, errstr, errstr_size,
                                        "recording the state databases");
        }
        if (!err && !full && o->conf)
            err = lk__store_write_config(s, txn, o->conf, errstr, errstr_size);
        if (err || full) {
            mdb_txn_abort(txn);
        } else if ((rc = mdb_txn_commit(txn))) {
            if (rc != MDB_MAP_FULL || !migrating) {
                err = lk__store_mdb_err(s, rc, errstr, errstr_size, "initialising the checkpoint");
                goto fail;
            }
            full = 1;
        }
        if (err)
            goto fail;
        if (!full)
            break;
        size_t newsize = s->map_size * 2;
        if ((rc = mdb_env_set_mapsize(s->env, newsize))) {
            err = lk__store_mdb_err(s, rc, errstr, errstr_size, "growing the map");
            goto fail;
        }
        s->map_size = newsize;
    }
    if (migrating) {
        lk__log(LK_LOG_NOTICE,
                "checkpoint %s: migrated from format %d to %d (checksums added; checkpoint "
                "id %s)",
                s->dir, s->format, LK_CHECKPOINT_FORMAT, s->checkpoint_id);
        s->migrated_from = s->format;
        s->format = LK_CHECKPOINT_FORMAT;
    }
    /* What a previous process committed without fsync (group commit) becomes durable
     * now, so durable_batch is true from the start. A failed sync leaves that unknown:
     * refuse to start rather than let a sink deliver a batch that is not on disk. */
    if ((rc = mdb_env_sync(s->env, 1))) {
        err = lk__err(LK_ERR_IO, errstr, errstr_size,
                      "checkpoint %s: cannot sync it to disk at open: %s; its last batches "
                      "may not be durable, so nothing is delivered from it (check the disk)",
                      s->dir, mdb_strerror(rc));
        goto fail;
    }
    s->last_sync_ms = lk__mono_ms();
    *out = s;
    return LK_OK;
fail:
    store_free(s);
    return err;
}

void lk__store_close(lk__store_t *s) {
    if (!s)
        return;
    if (s->wtxn)
        lk__store_txn_abort(s->wtxn);
    if (!s->readonly && !s->fatal && s->env) {
        int rc = mdb_env_sync(s->env, 1);
        if (rc) /* close cannot fail; the next open syncs again and refuses if it fails */
            lk__log(LK_LOG_ERR, "checkpoint %s: syncing to disk at close failed: %s", s->dir,
                    mdb_strerror(rc));
    }
    store_free(s);
}

const char *lk__store_app_id(const lk__store_t *s) { return s->app_id; }
int lk__store_format(const lk__store_t *s) { return s->format; }
int64_t lk__store_created_ms(const lk__store_t *s) { return s->created_ms; }
const char *lk__store_dir(const lk__store_t *s) { return s->dir; }
const char *lk__store_checkpoint_id(const lk__store_t *s) { return s->checkpoint_id; }
int lk__store_migrated_from(const lk__store_t *s) { return s->migrated_from; }
size_t lk__store_map_size(const lk__store_t *s) { return s->map_size; }
uint64_t lk__store_committed_batch(const lk__store_t *s) { return s->committed_batch; }
uint64_t lk__store_durable_batch(const lk__store_t *s) { return s->durable_batch; }
uint64_t lk__store_outbox_bytes(const lk__store_t *s) { return s->outbox_bytes; }

int lk__store_fatal(const lk__store_t *s, const char **msg) {
    if (msg)
        *msg = s->fatal ? s->fatal_msg : NULL;
    return s->fatal;
}

lk_err_t lk__store_sync(lk__store_t *s, char *errstr, size_t errstr_size) {
    if (s->fatal)
        return lk__err(LK_ERR_FATAL, errstr, errstr_size, "%s", s->fatal_msg);
    int rc = LK__FAULT_RC("mdb_env_sync", 0, mdb_env_sync(s->env, 1));
    if (rc)
        return sync_failed(s, rc, errstr, errstr_size);
    s->durable_batch = s->committed_batch;
    s->last_sync_ms = lk__mono_ms();
    return LK_OK;
}

/* ---- transactions ---- */

lk_err_t lk__store_txn_begin(lk__store_t *s, int write, lk__store_txn_t **out, char *errstr,
                             size_t errstr_size) {
    *out = NULL;
    if (s->fatal)
        return lk__err(LK_ERR_FATAL, errstr, errstr_size, "%s", s->fatal_msg);
    if (write && s->readonly)
        return lk__err(LK_ERR_STATE, errstr, errstr_size, "checkpoint opened read-only");
    if (write && s->wtxn)
        return lk__err(LK_ERR_STATE, errstr, errstr_size,
                       "a write transaction is already open on %s", s->dir);
    lk__store_txn_t *t = calloc(1, sizeof *t);
    if (!t)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    t->s = s;
    t->write = write;
    lk__buf_init(&t->buf);
    lk__zone_init(&t->zone);
    lk__zone_init(&t->tmp);
    if (!write)
        pthread_rwlock_rdlock(&s->resize_lock);
    int rc, readers_checked = 0;
    for (;;) {
        pthread_mutex_lock(&s->flags_lock);
        rc = mdb_txn_begin(s->env, NULL, write ? 0 : MDB_RDONLY, &t->txn);
        pthread_mutex_unlock(&s->flags_lock);
        if (rc == MDB_READERS_FULL && !readers_checked) {
            /* slots of dead readers (see lk__store_open): clear them, try once more */
            int dead = 0;
            readers_checked = 1;
            if (!mdb_reader_check(s->env, &dead) && dead)
                continue;
        }
        if (rc != MDB_MAP_RESIZED)
            break;
        /* another process grew the map: adopt its size */
        if (!write)
            pthread_rwlock_unlock(&s->resize_lock);
        pthread_rwlock_wrlock(&s->resize_lock);
        rc = mdb_env_set_mapsize(s->env, 0);
        if (!rc) { /* and know it: lk__store_map_size, and a later growth doubles it */
            MDB_envinfo info;
            mdb_env_info(s->env, &info);
            s->map_size = info.me_mapsize;
        }
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
        return lk__store_mdb_err(s, rc, errstr, errstr_size, "beginning a transaction");
    }
    if (write)
        s->wtxn = t;
    *out = t;
    return LK_OK;
}

static void txn_free(lk__store_txn_t *t) {
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


void lk__store_txn_abort(lk__store_txn_t *t) {
    if (!t)
        return;
    if (t->txn)
        mdb_txn_abort(t->txn);
    txn_free(t);
}

lk_err_t lk__store_txn_commit(lk__store_txn_t *t, char *errstr, size_t errstr_size) {
    lk__store_t *s = t->s;
    if (!t->write) {
        if (t->txn)
            mdb_txn_abort(t->txn);
        txn_free(t);
        return LK_OK;
    }
    lk_err_t err = lk__store_txn_check(t, errstr, errstr_size);
    if (!err)
        err = lk__store_outbox_flush(t, errstr, errstr_size);
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
            err = lk__store_mdb_err(s, rc, errstr, errstr_size, "committing");
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
            err = sync_failed(s, rc, errstr, errstr_size);
            txn_free(t);
            return err;
        }
        s->durable_batch = s->committed_batch;
        s->last_sync_ms = lk__mono_ms();
    }
    txn_free(t);
    return LK_OK;
}


lk_err_t lk__store_txn_commit_unsynced(lk__store_txn_t *t, char *errstr, size_t errstr_size) {
    lk__store_t *s = t->s;
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
