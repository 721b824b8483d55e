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
#include "../core/crc32c_int.h"
#include "../core/util_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
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
    int migrated_from; /* format before this open migrated it; 0: none */
    int64_t created_ms;
    char checkpoint_id[LK_CHECKPOINT_ID_LEN + 1];
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
    char err[512];     /* what the last failed read found wrong (lk__store_txn_errstr) */
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

/* A failed fsync: whether the pages reached the disk is unknown (and Linux may have
 * dropped them from the page cache), so nothing committed since the last good sync
 * may be called durable, ever. The store becomes unusable (sticky), with the OS error. */
static lk_err_t sync_failed(lk_store_t *s, int rc, char *errstr, size_t errstr_size) {
    if (!s->fatal) /* the first failure's message stays */
        lk__fmt(s->fatal_msg, sizeof s->fatal_msg,
                "checkpoint %s: syncing to disk failed: %s; batches after %llu may not be "
                "durable and are not delivered; the checkpoint is unusable until restart "
                "(check the disk)",
                s->dir, mdb_strerror(rc), (unsigned long long)s->durable_batch);
    s->fatal = 1;
    return lk__err(LK_ERR_FATAL, errstr, errstr_size, "%s", s->fatal_msg);
}

/* ---- checksums and corruption ---- */

/*
 * From format 2 on every value carries a checksum: 4 bytes, big-endian, appended to the
 * msgpack value: CRC32C over the value and then its key, so that a flipped byte in
 * either (LMDB has no checksums of its own) is found when the value is read, instead of
 * being used. A format-1 checkpoint is read without them (read-only) or migrated.
 */
#define CRC_LEN 4

static int sealed(const lk_store_t *s) { return s->format >= 2; }

static uint32_t value_crc(const void *val, size_t vlen, const void *key, size_t klen) {
    return lk__crc32c(lk__crc32c(0, val, vlen), key, klen);
}

/* Append the checksum of (b's content, key) to b. */
static void seal(lk__buf_t *b, const void *key, size_t klen) {
    unsigned char tail[CRC_LEN];
    lk__put_be32(tail, value_crc(b->data, b->len, key, klen));
    lk__buf_append(b, tail, CRC_LEN);
}

/* Verify and strip the checksum of value v read under key k: 0, or -1 when it does not
 * match (or v is too short to hold one). */
static int unseal(const lk_store_t *s, const MDB_val *k, MDB_val *v) {
    if (!sealed(s))
        return 0;
    if (v->mv_size < CRC_LEN)
        return -1;
    size_t n = v->mv_size - CRC_LEN;
    const unsigned char *p = v->mv_data;
    if (value_crc(p, n, k->mv_data, k->mv_size) != lk__get_be32(p + n))
        return -1;
    v->mv_size = n;
    return 0;
}

/* Record in t what is corrupt (naming the record) and return LK_ERR_CORRUPT. Never
 * retried and never read as "absent": the caller stops with this message. */
__attribute__((format(printf, 2, 3))) static lk_err_t corrupt(lk_store_txn_t *t,
                                                              const char *fmt, ...) {
    char what[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    lk__fmt(t->err, sizeof t->err,
            "checkpoint %s is corrupt: %s; refused (restore the checkpoint from a backup, "
            "or start a new checkpoint.dir)",
            t->s->dir, what);
    return LK_ERR_CORRUPT;
}

const char *lk__store_txn_errstr(const lk_store_txn_t *t) { return t->err; }

/* An LMDB error from a read in t (not MDB_NOTFOUND), recorded like corrupt() does. */
static lk_err_t read_failed(lk_store_txn_t *t, int rc, const char *what) {
    lk_err_t e = rc == MDB_CORRUPTED || rc == MDB_INVALID || rc == MDB_PAGE_NOTFOUND
                     ? LK_ERR_CORRUPT
                     : LK_ERR_STORE;
    lk__fmt(t->err, sizeof t->err, "checkpoint %s: %s: %s", t->s->dir, what,
            mdb_strerror(rc));
    return e;
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
            if (mkdir(tmp, 0700) && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir(tmp, 0700) && errno != EEXIST ? -1 : 0;
}

/*
 * LMDB maps data.mdb and trusts it: a truncated file makes it read past the end of the
 * file (SIGBUS), a wrong page number anywhere. Before LMDB maps the file, check it
 * against LMDB's own meta pages, whose layout is LMDB 0.9's (mdb.c: MDB_page, MDB_meta,
 * MDB_db, on a 64-bit build): pages 0 and 1 are meta pages; after a 16-byte page header
 * (flags at byte 10, P_META = 0x08), a meta holds magic 0xBEEFC0DE, version 1, the map
 * address and size, the free and main databases (48 bytes each; the page size is the
 * free database's first field, md_pad; md_root at 40), the last page number and the
 * transaction id. Each meta must be whole and name only pages the file has.
 */
#define LMDB_MAGIC 0xBEEFC0DEu
enum {
    PAGE_HDR = 16,
    PAGE_FLAGS = 10,
    P_META = 0x08,
    META_MAGIC = 0,
    META_VERSION = 4,
    META_MAPSIZE = 16,
    META_DBS = 24,
    DB_SIZE = 48,
    DB_ROOT = 40,
    META_LAST_PG = META_DBS + 2 * DB_SIZE,
    META_TXNID = META_LAST_PG + 8,
    META_END = META_TXNID + 8,
};

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t le64(const unsigned char *p) { return le32(p) | (uint64_t)le32(p + 4) << 32; }

static lk_err_t check_data_file(lk_store_t *s, char *errstr, size_t errstr_size) {
    if (sizeof(size_t) != 8) /* the layout below is a 64-bit build's */
        return LK_OK;
    char p[4200];
    lk__fmt(p, sizeof p, "%s/data.mdb", s->dir);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lk__err(LK_ERR_IO, errstr, errstr_size, "cannot open %s: %s", p,
                       strerror(errno));
    struct stat st;
    unsigned char m[2][PAGE_HDR + META_END];
    char why[200] = "";
    uint64_t psize = 0;
    if (fstat(fd, &st) != 0) {
        lk_err_t e = lk__err(LK_ERR_IO, errstr, errstr_size, "cannot stat %s: %s", p,
                             strerror(errno));
        close(fd);
        return e;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size == 0) { /* a creation killed before LMDB wrote its meta pages: it writes them */
        close(fd);
        return LK_OK;
    }
    if (pread(fd, m[0], sizeof m[0], 0) != (ssize_t)sizeof m[0]) {
        lk__fmt(why, sizeof why, "%llu bytes, shorter than a meta page",
                (unsigned long long)size);
    } else {
        psize = le32(m[0] + PAGE_HDR + META_DBS);
        if (psize < 512 || psize > 65536 || (psize & (psize - 1)))
            lk__fmt(why, sizeof why, "meta page 0 gives page size %llu",
                    (unsigned long long)psize);
        else if (size < 2 * psize ||
                 pread(fd, m[1], sizeof m[1], (off_t)psize) != (ssize_t)sizeof m[1])
            lk__fmt(why, sizeof why, "%llu bytes, shorter than its two meta pages",
                    (unsigned long long)size);
    }
    close(fd);
    for (int i = 0; i < 2 && !why[0]; i++) {
        const unsigned char *mm = m[i] + PAGE_HDR;
        uint64_t last = le64(mm + META_LAST_PG);
        if (!(le32(m[i] + PAGE_FLAGS) & P_META) || le32(mm + META_MAGIC) != LMDB_MAGIC ||
            le32(mm + META_VERSION) != 1) {
            lk__fmt(why, sizeof why, "meta page %d is not an LMDB 0.9 meta page", i);
        } else if (le32(mm + META_DBS) != psize) {
            lk__fmt(why, sizeof why, "meta page %d gives page size %u, meta page 0 %llu", i,
                    le32(mm + META_DBS), (unsigned long long)psize);
        } else if (last < 1 || last >= size / psize) {
            lk__fmt(why, sizeof why,
                    "%llu bytes, but meta page %d says its pages go up to page %llu of %llu "
                    "bytes",
                    (unsigned long long)size, i, (unsigned long long)last,
                    (unsigned long long)psize);
        } else if (le64(mm + META_MAPSIZE) / psize <= last) {
            lk__fmt(why, sizeof why, "meta page %d gives a map size below its last page", i);
        } else {
            for (int d = 0; d < 2 && !why[0]; d++) {
                uint64_t root = le64(mm + META_DBS + d * DB_SIZE + DB_ROOT);
                if (root != UINT64_MAX && (root < 2 || root > last))
                    lk__fmt(why, sizeof why,
                            "meta page %d puts a database root at page %llu (pages 2..%llu "
                            "exist)",
                            i, (unsigned long long)root, (unsigned long long)last);
            }
        }
    }
    if (!why[0])
        return LK_OK;
    return lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                   "checkpoint %s is corrupt (truncated or damaged): %s has %s; refused "
                   "before LMDB "
                   "reads it (restore the checkpoint from a backup, or start a new "
                   "checkpoint.dir)",
                   s->dir, p, why);
}

/*
 * LMDB follows page numbers and node offsets without checking them: a flipped byte in a
 * page header or a node makes it read anywhere (SIGSEGV/SIGBUS inside liblmdb). So before
 * anything reads a checkpoint's data, every page reachable from the snapshot's meta is
 * checked, through the map, with every read bounds-checked: page numbers within the
 * file and each page reached once, a page's own number, its type, its node table, every
 * node inside its page, branch children, overflow pages, named databases (their roots),
 * and the free list's page numbers. Layout of LMDB 0.9, 64-bit (mdb.c: MDB_page,
 * MDB_node, MDB_db). It reads what LMDB would read anyway, once.
 */
enum {
    P_BRANCH = 0x01, P_LEAF = 0x02, P_OVERFLOW = 0x04,
    F_BIGDATA = 0x01, F_SUBDATA = 0x02,
    NODE_HDR = 8,
};

typedef struct {
    const unsigned char *map;
    uint64_t psize, last;
    unsigned char *seen;
    char why[160];
} verify_t;

/* What a tree holds, counted, to compare with its MDB_db record (whose counters
 * mdb_stat reports, e.g. as inspect's entries and bytes). */
typedef struct {
    uint64_t branch, leaf, overflow, entries, depth;
} tree_count_t;

static uint16_t le16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }

static int verify_tree(verify_t *v, const unsigned char *db, int kind, const char *name);

/* kind: 0 the main database (leaves name databases), 1 a named database, 2 the free
 * list (leaves are page lists). 0: fine; -1: v->why says what is wrong. */
static int verify_page(verify_t *v, uint64_t pgno, int depth, int kind, tree_count_t *tc) {
    if (pgno < 2 || pgno > v->last)
        return lk__fmt(v->why, sizeof v->why, "a page number %llu outside 2..%llu",
                       (unsigned long long)pgno, (unsigned long long)v->last), -1;
    if (depth > 40 || v->seen[pgno])
        return lk__fmt(v->why, sizeof v->why, "page %llu reached twice (a loop)",
                       (unsigned long long)pgno), -1;
    v->seen[pgno] = 1;
    const unsigned char *p = v->map + pgno * v->psize;
    uint16_t flags = le16(p + PAGE_FLAGS), lower = le16(p + 12), upper = le16(p + 14);
    if (le64(p) != pgno)
        return lk__fmt(v->why, sizeof v->why, "page %llu says it is page %llu",
                       (unsigned long long)pgno, (unsigned long long)le64(p)), -1;
    int branch = (flags & ~0xc000) == P_BRANCH, leaf = (flags & ~0xc000) == P_LEAF;
    if ((!branch && !leaf) || lower < PAGE_HDR || lower > upper || upper > v->psize ||
        (lower & 1))
        return lk__fmt(v->why, sizeof v->why, "page %llu has a bad header",
                       (unsigned long long)pgno), -1;
    size_t n = (size_t)(lower - PAGE_HDR) / 2;
    if ((uint64_t)depth + 1 > tc->depth)
        tc->depth = (uint64_t)depth + 1;
    if (branch)
        tc->branch++;
    else
        tc->leaf++, tc->entries += n;
    if (branch && n < 1)
        return lk__fmt(v->why, sizeof v->why, "branch page %llu is empty",
                       (unsigned long long)pgno), -1;
    for (size_t i = 0; i < n; i++) {
        uint64_t off = le16(p + PAGE_HDR + 2 * i);
        if (off < upper || off + NODE_HDR > v->psize)
            return lk__fmt(v->why, sizeof v->why, "page %llu node %zu outside the page",
                           (unsigned long long)pgno, i), -1;
        const unsigned char *nd = p + off;
        uint64_t lo = le16(nd), hi = le16(nd + 2), nflags = le16(nd + 4), ks = le16(nd + 6);
        if (off + NODE_HDR + ks > v->psize)
            return lk__fmt(v->why, sizeof v->why, "page %llu node %zu key outside the page",
                           (unsigned long long)pgno, i), -1;
        if (branch) {
            if (verify_page(v, lo | hi << 16 | nflags << 32, depth + 1, kind, tc))
                return -1;
            continue;
        }
        uint64_t dsize = lo | hi << 16;
        const unsigned char *data = nd + NODE_HDR + ks;
        if (nflags & ~(uint64_t)(F_BIGDATA | F_SUBDATA) ||
            ((nflags & F_SUBDATA) && (kind != 0 || (nflags & F_BIGDATA))))
            return lk__fmt(v->why, sizeof v->why, "page %llu node %zu has flags %llu",
                           (unsigned long long)pgno, i, (unsigned long long)nflags), -1;
        if (nflags & F_BIGDATA) {
            if (off + NODE_HDR + ks + 8 > v->psize)
                return lk__fmt(v->why, sizeof v->why, "page %llu node %zu outside the page",
                               (unsigned long long)pgno, i), -1;
            uint64_t ov = le64(data);
            if (ov < 2 || ov > v->last || v->seen[ov])
                return lk__fmt(v->why, sizeof v->why, "page %llu node %zu: overflow page %llu",
                               (unsigned long long)pgno, i, (unsigned long long)ov), -1;
            const unsigned char *op = v->map + ov * v->psize;
            uint64_t pages = le32(op + 12);
            if (le64(op) != ov || !(le16(op + PAGE_FLAGS) & P_OVERFLOW) || pages < 1 ||
                pages > v->last - ov + 1 || dsize > pages * v->psize - PAGE_HDR)
                return lk__fmt(v->why, sizeof v->why, "overflow page %llu is damaged",
                               (unsigned long long)ov), -1;
            tc->overflow += pages;
            for (uint64_t q = ov; q < ov + pages; q++) {
                if (v->seen[q])
                    return lk__fmt(v->why, sizeof v->why, "page %llu reached twice",
                                   (unsigned long long)q), -1;
                v->seen[q] = 1;
            }
            data = op + PAGE_HDR;
        } else if (off + NODE_HDR + ks + dsize > v->psize) {
            return lk__fmt(v->why, sizeof v->why, "page %llu node %zu value outside the page",
                           (unsigned long long)pgno, i), -1;
        }
        if (nflags & F_SUBDATA) { /* a named database: an MDB_db */
            if (dsize != DB_SIZE)
                return lk__fmt(v->why, sizeof v->why, "page %llu node %zu: a database record "
                               "of %llu bytes", (unsigned long long)pgno, i,
                               (unsigned long long)dsize), -1;
            char name[64];
            lk__fmt(name, sizeof name, "%.*s", (int)(ks > 40 ? 40 : ks), nd + NODE_HDR);
            if (verify_tree(v, data, 1, name))
                return -1;
        } else if (kind == 2) { /* free list: a count, then page numbers */
            if (dsize < 8 || (dsize & 7) || le64(data) != dsize / 8 - 1)
                return lk__fmt(v->why, sizeof v->why, "a free list record is damaged"), -1;
            for (uint64_t j = 1; j < dsize / 8; j++)
                if (le64(data + 8 * j) < 2 || le64(data + 8 * j) > v->last)
                    return lk__fmt(v->why, sizeof v->why, "the free list names page %llu",
                                   (unsigned long long)le64(data + 8 * j)), -1;
        }
    }
    return 0;
}

/* The tree of MDB_db record db: its pages, and its counters against what they hold. */
static int verify_tree(verify_t *v, const unsigned char *db, int kind, const char *name) {
    tree_count_t tc = {0, 0, 0, 0, 0};
    uint64_t root = le64(db + DB_ROOT);
    if (root != UINT64_MAX && verify_page(v, root, 0, kind, &tc))
        return -1;
    /* md_flags: lockstep creates every database without flags; LMDB's free list has
     * integer keys (MDB_INTEGERKEY) */
    if (le16(db + 4) != (kind == 2 ? MDB_INTEGERKEY : 0) || le16(db + 6) != tc.depth || le64(db + 8) != tc.branch ||
        le64(db + 16) != tc.leaf || le64(db + 24) != tc.overflow ||
        (kind != 2 && le64(db + 32) != tc.entries))
        return lk__fmt(v->why, sizeof v->why,
                       "database '%s' whose record does not match its pages", name),
               -1;
    return 0;
}

/* Check every page of the snapshot txn reads (see verify_page). */
static lk_err_t verify_pages(lk_store_t *s, MDB_txn *txn, char *errstr, size_t errstr_size) {
    if (sizeof(size_t) != 8)
        return LK_OK;
    MDB_stat st;
    mdb_filehandle_t fd;
    struct stat fst;
    if (mdb_env_stat(s->env, &st) || mdb_env_get_fd(s->env, &fd) || fstat(fd, &fst))
        return LK_OK;
    /* LMDB does not tell where its map is (me_mapaddr is a meta field, NULL unless
     * MDB_FIXEDMAP): map the file once more, read-only, for the check */
    uint64_t fsize = (uint64_t)fst.st_size;
    verify_t v = {NULL, st.ms_psize, 0, NULL, ""};
    if (v.psize < 512 || fsize < 2 * v.psize)
        return LK_OK; /* checked against the file before the open */
    void *map = mmap(NULL, fsize, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        return lk__err(LK_ERR_IO, errstr, errstr_size, "checkpoint %s: cannot map data.mdb: %s",
                       s->dir, strerror(errno));
    v.map = map;
    /* the meta of this snapshot: the one with the txn's id */
    const unsigned char *meta = NULL;
    for (int i = 0; i < 2; i++) {
        const unsigned char *m = v.map + i * v.psize + PAGE_HDR;
        if (le64(m + META_TXNID) == (uint64_t)mdb_txn_id(txn))
            meta = m;
    }
    int bad = 0;
    if (meta) { /* else a snapshot another process just replaced */
        v.last = le64(meta + META_LAST_PG);
        if (v.last >= fsize / v.psize) {
            lk__fmt(v.why, sizeof v.why, "pages up to %llu in %llu bytes",
                    (unsigned long long)v.last, (unsigned long long)fsize);
            bad = 1;
        } else if (!(v.seen = calloc(v.last + 1, 1))) {
            munmap(map, fsize);
            return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        } else {
            bad = verify_tree(&v, meta + META_DBS, 2, "(free pages)") ||
                  verify_tree(&v, meta + META_DBS + DB_SIZE, 0, "(main)");
        }
    }
    free(v.seen);
    munmap(map, fsize);
    if (!bad)
        return LK_OK;
    return lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                   "checkpoint %s is corrupt (damaged): data.mdb has %s; refused before LMDB "
                   "reads it (restore the checkpoint from a backup, or start a new "
                   "checkpoint.dir)",
                   s->dir, v.why);
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
static lk_err_t new_checkpoint_id(char out[LK_CHECKPOINT_ID_LEN + 1], char *errstr,
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
static lk_err_t parse_header(lk_store_t *s, MDB_val v, const char *want_app, char *errstr,
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
                           value_crc(hp, used, "header", 6) != lk__get_be32(hp + used)
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
    return parse_header(s, v, want_app, errstr, errstr_size);
}

/* meta's header: [1, magic, format, app.id, created_ms, checkpoint id] */
static lk_err_t write_header(lk_store_t *s, MDB_txn *txn, char *errstr, size_t errstr_size) {
    lk__buf_t b;
    lk__buf_init(&b);
    lk__pack_array(&b, 6);
    lk__pack_i64(&b, 1);
    lk__pack_str(&b, LK_CHECKPOINT_MAGIC);
    lk__pack_i64(&b, LK_CHECKPOINT_FORMAT);
    lk__pack_str(&b, s->app_id);
    lk__pack_i64(&b, s->created_ms);
    lk__pack_str(&b, s->checkpoint_id);
    seal(&b, "header", 6);
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
    seal(&b, "config", 6);
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

/* Append the checksum to every value of dbi (format 1 -> 2); an LMDB error code. */
static int seal_db(lk_store_t *s, MDB_txn *txn, MDB_dbi dbi) {
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
        seal(&b, key, kc.mv_size);
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
static int seal_all(lk_store_t *s, MDB_txn *txn) {
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
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            char (*nn)[MAX_KEY + 1] = realloc(names, cap * sizeof *names);
            if (!nn) {
                rc = ENOMEM;
                break;
            }
            names = nn;
        }
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
static int put_state_names(lk_store_t *s, MDB_txn *txn) {
    lk__buf_t b;
    lk__buf_init(&b);
    int rc = state_names(txn, &b);
    if (!rc) {
        seal(&b, state_dbs_key, sizeof state_dbs_key - 1);
        MDB_val k = {sizeof state_dbs_key - 1, (void *)state_dbs_key}, v = {b.len, b.data};
        rc = mdb_put(txn, s->dbi[DB_META], &k, &v, 0);
    }
    lk__buf_free(&b);
    return rc;
}

/* Compare the main database's state database names with the "state-dbs" record. A
 * missing record: *absent = 1 (the caller writes it when it may). */
static lk_err_t check_state_names(lk_store_t *s, MDB_txn *txn, int *absent, char *errstr,
                                  size_t errstr_size) {
    *absent = 0;
    MDB_val k = {sizeof state_dbs_key - 1, (void *)state_dbs_key}, v;
    int rc = mdb_get(txn, s->dbi[DB_META], &k, &v);
    if (rc == MDB_NOTFOUND) {
        *absent = 1;
        return LK_OK;
    }
    if (rc)
        return mdb_err(s, rc, errstr, errstr_size, "reading the state database names");
    if (!sealed(s) || unseal(s, &k, &v))
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
        err = mdb_err(s, rc, errstr, errstr_size, "listing the state databases");
    }
    lk__buf_free(&b);
    return err;
}

/* meta's keys are a closed set. A key is not covered by a value's checksum when nobody
 * reads it: a damaged "topology" key read as "no topology recorded" (found by the damage
 * campaign). Any other key in meta is a damaged one. */
static lk_err_t check_meta_keys(lk_store_t *s, MDB_txn *txn, char *errstr,
                                size_t errstr_size) {
    static const char *const known[] = {"header", "config", "topology", plan_key,
                                        state_dbs_key};
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, s->dbi[DB_META], &c);
    if (rc)
        return mdb_err(s, rc, errstr, errstr_size, "reading meta");
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
        err = mdb_err(s, rc, errstr, errstr_size, "reading meta");
    return err;
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

    /* 2. Single owner, in a directory nobody else can plant links in (issue 15 item 8). */
    if (!o->readonly &&
        ((err = lk__dir_check_private(s->dir, o->conf && lk__conf_bool(o->conf, LK__P_DIR_ALLOW_SHARED) ? LK__DIR_ALLOW_SHARED : 0, errstr, errstr_size)) ||
         (err = take_lock(s, errstr, errstr_size))))
        goto fail;

    /* 3. The environment, once its file passed the check against its own meta pages. */
    if (!creating && (err = check_data_file(s, errstr, errstr_size)))
        goto fail;
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
    if ((rc = mdb_env_open(s->env, s->dir, flags, 0600))) {
        if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH || rc == MDB_CORRUPTED)
            err = lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                          "checkpoint %s is corrupt or not an LMDB file: %s", s->dir,
                          mdb_strerror(rc));
        else
            err = mdb_err(s, rc, errstr, errstr_size, "opening the environment");
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
            err = mdb_err(s, rc, errstr, errstr_size, "beginning a read transaction");
            goto fail;
        }
        err = verify_pages(s, txn, errstr, errstr_size);
        if (!err)
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
        if (!err)
            err = check_meta_keys(s, txn, errstr, errstr_size);
        if (!err && sealed(s))
            err = check_state_names(s, txn, &names_absent, errstr, errstr_size);
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
        int full = 0;
        if (creating) {
            if (!s->app_id) {
                s->format = LK_CHECKPOINT_FORMAT;
                s->created_ms = lk__wall_ms();
                if (!(s->app_id = strdup(o->app_id)))
                    err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
                if (!err)
                    err = new_checkpoint_id(s->checkpoint_id, errstr, errstr_size);
            }
            if (!err)
                err = write_header(s, txn, errstr, errstr_size);
        } else if (migrating) {
            /* format 1 -> 2: every value gets its checksum, the checkpoint its id */
            if (!s->checkpoint_id[0])
                err = new_checkpoint_id(s->checkpoint_id, errstr, errstr_size);
            if (!err && (rc = seal_all(s, txn))) {
                if (rc == MDB_MAP_FULL)
                    full = 1;
                else
                    err = mdb_err(s, rc, errstr, errstr_size, "migrating to format 2");
            }
            if (!err && !full)
                err = load_outbox_bytes(s, txn); /* each chunk grew by its checksum */
            if (!err && !full)
                err = write_header(s, txn, errstr, errstr_size);
        }
        if (!err && !full && (creating || migrating || names_absent) &&
            (rc = put_state_names(s, txn))) {
            if (rc == MDB_MAP_FULL && migrating)
                full = 1;
            else
                err = mdb_err(s, rc, errstr, errstr_size, "recording the state databases");
        }
        if (!err && !full && o->conf)
            err = write_config(s, txn, o->conf, errstr, errstr_size);
        if (err || full) {
            mdb_txn_abort(txn);
        } else if ((rc = mdb_txn_commit(txn))) {
            if (rc != MDB_MAP_FULL || !migrating) {
                err = mdb_err(s, rc, errstr, errstr_size, "initialising the checkpoint");
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
            err = mdb_err(s, rc, errstr, errstr_size, "growing the map");
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

void lk__store_close(lk_store_t *s) {
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

const char *lk__store_app_id(const lk_store_t *s) { return s->app_id; }
int lk__store_format(const lk_store_t *s) { return s->format; }
int64_t lk__store_created_ms(const lk_store_t *s) { return s->created_ms; }
const char *lk__store_dir(const lk_store_t *s) { return s->dir; }
const char *lk__store_checkpoint_id(const lk_store_t *s) { return s->checkpoint_id; }
int lk__store_migrated_from(const lk_store_t *s) { return s->migrated_from; }
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
        return sync_failed(s, rc, errstr, errstr_size);
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

lk_err_t lk__store_offset_put(lk_store_txn_t *t, const char *topic, int32_t partition,
                              int64_t offset, char *errstr, size_t errstr_size) {
    return lk__store_offset_put_fp(t, topic, partition, offset, NULL, errstr, errstr_size);
}

/* value: [1, offset] or [1, offset, fp offset, fp timestamp, fp hash] */
lk_err_t lk__store_offset_put_fp(lk_store_txn_t *t, const char *topic, int32_t partition,
                                 int64_t offset, const lk_fingerprint_t *fp, char *errstr,
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
    seal(&t->buf, k, kl);
    return txn_put(t, t->s->dbi[DB_OFFSETS], k, kl, t->buf.data, t->buf.len, errstr,
                   errstr_size, "writing an offset");
}

/* Decode the offset stored for (topic, partition) under key k; a value that fails its
 * checksum, does not decode or is negative is corrupt, never "no offset". */
static lk_err_t decode_offset(lk_store_txn_t *t, const MDB_val *k, MDB_val v,
                              const char *topic, int32_t partition, int64_t *offset,
                              lk_fingerprint_t *fp, int *has_fp) {
    lk__obj_t o;
    if (unseal(t->s, k, &v))
        return corrupt(t, "the offset of %s[%d] fails its checksum", topic, (int)partition);
    lk__zone_clear(&t->tmp);
    if (lk__unpack(&t->tmp, v.mv_data, v.mv_size, &o) || !lk__arr_i64(&o, 1, offset))
        return corrupt(t, "the offset of %s[%d] does not decode (%zu bytes)", topic,
                       (int)partition, v.mv_size);
    if (*offset < 0)
        return corrupt(t, "the offset of %s[%d] is negative (%lld)", topic, (int)partition,
                       (long long)*offset);
    if (has_fp)
        *has_fp = 0;
    if (lk__arr_len(&o) >= 5) {
        lk_fingerprint_t f;
        int64_t h;
        if (!lk__arr_i64(&o, 2, &f.offset) || !lk__arr_i64(&o, 3, &f.timestamp) ||
            !lk__arr_i64(&o, 4, &h) || f.offset < 0 || f.offset >= *offset)
            return corrupt(t, "the fingerprint kept with the offset of %s[%d] is invalid",
                           topic, (int)partition);
        f.hash = (uint64_t)h;
        if (fp)
            *fp = f;
        if (has_fp)
            *has_fp = 1;
    }
    return LK_OK;
}

lk_err_t lk__store_offset_get(lk_store_txn_t *t, const char *topic, int32_t partition,
                              int64_t *offset) {
    return lk__store_offset_get_fp(t, topic, partition, offset, NULL, NULL);
}

lk_err_t lk__store_offset_get_fp(lk_store_txn_t *t, const char *topic, int32_t partition,
                                 int64_t *offset, lk_fingerprint_t *fp, int *has_fp) {
    unsigned char k[512];
    size_t kl = offset_key(k, sizeof k, topic, partition);
    MDB_val v;
    if (!kl)
        return LK_ERR_INVALID_ARG;
    int rc = txn_get(t, t->s->dbi[DB_OFFSETS], k, kl, &v);
    if (rc == MDB_NOTFOUND) /* the only "no offset" */
        return LK_ERR_NOT_FOUND;
    if (rc)
        return read_failed(t, rc, "reading an offset");
    MDB_val kv = {kl, k};
    return decode_offset(t, &kv, v, topic, partition, offset, fp, has_fp);
}

lk_err_t lk__store_offsets_foreach(lk_store_txn_t *t,
                                   int (*cb)(const char *, int32_t, int64_t, void *),
                                   void *opaque) {
    MDB_cursor *c;
    if (!t->txn || mdb_cursor_open(t->txn, t->s->dbi[DB_OFFSETS], &c))
        return LK_ERR_STORE;
    MDB_val k, v;
    lk_err_t err = LK_OK;
    int rc;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        /* key: topic '\0' be32(partition); its length is checked before anything is
         * copied (a crafted key longer than a topic can be overflowed the copy) */
        const unsigned char *kp = k.mv_data;
        if (k.mv_size < 6 || k.mv_size > MAX_KEY) {
            err = corrupt(t, "an offsets key of %zu bytes (6..%d possible)", k.mv_size, MAX_KEY);
            break;
        }
        const unsigned char *nul = memchr(kp, 0, k.mv_size);
        if (!nul || (size_t)(nul - kp) + 5 != k.mv_size) {
            err = corrupt(t, "an offsets key of %zu bytes is not topic, NUL, partition",
                          k.mv_size);
            break;
        }
        char topic[MAX_KEY + 1];
        memcpy(topic, kp, (size_t)(nul - kp));
        topic[nul - kp] = 0;
        uint32_t part = lk__get_be32(nul + 1);
        if (part > INT32_MAX) {
            err = corrupt(t, "the offsets key of topic %s has partition %lu", topic,
                          (unsigned long)part);
            break;
        }
        int64_t off;
        if ((err = decode_offset(t, &k, v, topic, (int32_t)part, &off, NULL, NULL)))
            break;
        if (cb(topic, (int32_t)part, off, opaque))
            break;
    }
    if (!err && rc && rc != MDB_NOTFOUND)
        err = read_failed(t, rc, "reading offsets");
    mdb_cursor_close(c);
    return err;
}

/* ---- batch records ---- */

/* Encode a batch record (also the pending plan's format), sealed for key (key, klen);
 * -1 when out of memory. */
static int encode_batch(lk__buf_t *buf, const lk_batch_rec_t *b, const void *key,
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
    seal(buf, key, klen);
    return buf->oom ? -1 : 0;
}

lk_err_t lk__store_batch_put(lk_store_txn_t *t, const lk_batch_rec_t *b, char *errstr,
                             size_t errstr_size) {
    lk__buf_t *buf = &t->buf;
    unsigned char k[8];
    lk__put_be64(k, b->id);
    if (encode_batch(buf, b, k, sizeof k))
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
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

/* Decode the batch record or pending plan v stored under key k (what names it in a
 * message). Every field is checked: ids positive, counts and offsets not negative,
 * partitions in range, from <= until. */
static lk_err_t decode_batch(lk_store_txn_t *t, const MDB_val *k, MDB_val v, const char *what,
                             lk_batch_rec_t *b) {
    lk__obj_t o;
    int64_t id, bt, cw, rin, rout;
    memset(b, 0, sizeof *b);
    if (unseal(t->s, k, &v))
        return corrupt(t, "%s fails its checksum", what);
    if (lk__unpack(&t->zone, v.mv_data, v.mv_size, &o) || !lk__arr_i64(&o, 1, &id) ||
        !lk__arr_i64(&o, 2, &bt) || !lk__arr_i64(&o, 3, &cw) || !lk__arr_i64(&o, 4, &rin) ||
        !lk__arr_i64(&o, 5, &rout))
        return corrupt(t, "%s does not decode (%zu bytes)", what, v.mv_size);
    if (id < 1 || rin < 0 || rout < 0)
        return corrupt(t, "%s has id %lld, %lld records in, %lld out", what, (long long)id,
                       (long long)rin, (long long)rout);
    if (k->mv_size == 8 && lk__get_be64(k->mv_data) != (uint64_t)id)
        return corrupt(t, "%s holds the record of batch %lld", what, (long long)id);
    const lk__obj_t *ranges = lk__arr_at(&o, 6);
    size_t n = ranges ? lk__arr_len(ranges) : (size_t)-1;
    if (n == (size_t)-1)
        return corrupt(t, "%s has no ranges", what);
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
            return corrupt(t, "%s: range %zu does not decode", what, i);
        if (p < 0 || p > INT32_MAX || f < 0 || u < f)
            return corrupt(t, "%s: range %zu is %.*s[%lld] [%lld, %lld)", what, i,
                           (int)(tl > 200 ? 200 : tl), topic, (long long)p, (long long)f,
                           (long long)u);
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

static lk_err_t decode_batch_at(lk_store_txn_t *t, const MDB_val *k, MDB_val v,
                                lk_batch_rec_t *out) {
    if (k->mv_size != 8)
        return corrupt(t, "a batches key of %zu bytes (8 expected)", k->mv_size);
    char what[64];
    lk__fmt(what, sizeof what, "batch record %llu",
            (unsigned long long)lk__get_be64(k->mv_data));
    return decode_batch(t, k, v, what, out);
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
        return read_failed(t, rc, "reading the last batch record");
    return decode_batch_at(t, &k, v, out);
}

lk_err_t lk__store_batch_get(lk_store_txn_t *t, uint64_t id, lk_batch_rec_t *out) {
    unsigned char k[8];
    lk__put_be64(k, id);
    MDB_val v;
    int rc = txn_get(t, t->s->dbi[DB_BATCHES], k, 8, &v);
    if (rc == MDB_NOTFOUND)
        return LK_ERR_NOT_FOUND;
    if (rc)
        return read_failed(t, rc, "reading a batch record");
    MDB_val kv = {8, k};
    return decode_batch_at(t, &kv, v, out);
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
    seal(&slot->chunk, k, kl);
    if (slot->chunk.oom)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    t->outbox_delta += CRC_LEN; /* outbox bytes count whole values, as at open */
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

/* Decode the record at *off of a chunk (checksum already verified and stripped) and
 * advance *off past it; 0 when it does not decode or holds impossible values. */
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

/* Records in one chunk value read under key k; (size_t)-1 if it fails its checksum or
 * does not decode. */
static size_t chunk_records(lk_store_txn_t *t, const MDB_val *k, MDB_val vv) {
    const MDB_val *v = &vv;
    size_t n = 0, off = 0;
    lk__obj_t o;
    if (unseal(t->s, k, &vv))
        return (size_t)-1;
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
    int stop = 0, rc;
    for (rc = mdb_cursor_get(c, &kk, &vv, MDB_SET_RANGE); rc == 0 && !stop && !err;
         rc = mdb_cursor_get(c, &kk, &vv, MDB_NEXT)) {
        if (kk.mv_size != kl || memcmp(kk.mv_data, k, kl - 4))
            break;
        uint32_t seq = lk__get_be32((unsigned char *)kk.mv_data + kl - 4);
        if (unseal(t->s, &kk, &vv)) {
            err = corrupt(t, "outbox chunk %lu of sink '%s' batch %llu fails its checksum",
                          (unsigned long)seq, sink, (unsigned long long)batch);
            break;
        }
        for (size_t off = 0, i = 0; off < vv.mv_size && !stop; i++) {
            lk_out_record_t r;
            if (!decode_out(t, &vv, &off, &r, hbuf, LK_ARRAY_SIZE(hbuf))) {
                err = corrupt(t, "record %zu of outbox chunk %lu of sink '%s' batch %llu "
                                 "does not decode",
                              i, (unsigned long)seq, sink, (unsigned long long)batch);
                break;
            }
            stop = cb(&r, opaque);
        }
    }
    if (!err && rc && rc != MDB_NOTFOUND && !stop)
        err = read_failed(t, rc, "reading the outbox");
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
        if (k.mv_size < 14 || k.mv_size > MAX_KEY || kp[k.mv_size - 13] != 0 ||
            memchr(kp, 0, k.mv_size - 13)) {
            err = corrupt(t, "an outbox key of %zu bytes is not sink, NUL, batch, sequence",
                          k.mv_size);
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
            err = corrupt(t, "outbox chunk %lu of sink '%s' batch %llu fails its checksum or "
                             "does not decode",
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

/* ---- fences ---- */

lk_err_t lk__store_fence_put(lk_store_txn_t *t, const char *sink, uint64_t batch,
                             char *errstr, size_t errstr_size) {
    lk__buf_reset(&t->buf);
    lk__pack_array(&t->buf, 3);
    lk__pack_i64(&t->buf, 1);
    lk__pack_i64(&t->buf, (int64_t)batch);
    lk__pack_i64(&t->buf, lk__wall_ms());
    seal(&t->buf, sink, strlen(sink));
    return txn_put(t, t->s->dbi[DB_FENCES], sink, strlen(sink), t->buf.data, t->buf.len,
                   errstr, errstr_size, "writing a sink fence");
}

/* Decode the fence of sink (value v under key k, already unsealed). */
static lk_err_t decode_fence(lk_store_txn_t *t, const char *sink, MDB_val v, int64_t *batch,
                             int64_t *wall) {
    lk__obj_t o;
    lk__zone_clear(&t->tmp);
    if (lk__unpack(&t->tmp, v.mv_data, v.mv_size, &o) || !lk__arr_i64(&o, 1, batch) ||
        !lk__arr_i64(&o, 2, wall))
        return corrupt(t, "the fence of sink '%s' does not decode (%zu bytes)", sink,
                       v.mv_size);
    if (*batch < 0)
        return corrupt(t, "the fence of sink '%s' names batch %lld", sink, (long long)*batch);
    return LK_OK;
}

lk_err_t lk__store_fence_get(lk_store_txn_t *t, const char *sink, uint64_t *batch) {
    MDB_val v;
    size_t sl = strlen(sink);
    int rc = txn_get(t, t->s->dbi[DB_FENCES], sink, sl, &v);
    if (rc == MDB_NOTFOUND)
        return LK_ERR_NOT_FOUND;
    if (rc)
        return read_failed(t, rc, "reading a fence");
    MDB_val k = {sl, (void *)sink};
    if (unseal(t->s, &k, &v))
        return corrupt(t, "the fence of sink '%s' fails its checksum", sink);
    int64_t b, w;
    lk_err_t e = decode_fence(t, sink, v, &b, &w);
    if (!e)
        *batch = (uint64_t)b;
    return e;
}

/* Iterate a name-keyed database (what: "fence", "accumulator"), handing each name as a
 * C string and its value with the checksum verified and stripped. each returns 0 to go
 * on, 1 to stop, or an error (its message already in t). */
static lk_err_t foreach_named(lk_store_txn_t *t, MDB_dbi dbi, const char *what,
                              int (*each)(lk_store_txn_t *, const char *, MDB_val, void *,
                                          lk_err_t *),
                              void *ctx) {
    MDB_cursor *c;
    if (!t->txn || mdb_cursor_open(t->txn, dbi, &c))
        return LK_ERR_STORE;
    MDB_val k, v;
    lk_err_t err = LK_OK;
    int rc;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        char name[MAX_KEY + 1];
        if (k.mv_size == 0 || k.mv_size > MAX_KEY || memchr(k.mv_data, 0, k.mv_size)) {
            err = corrupt(t, "a %s key of %zu bytes is not a name", what, k.mv_size);
            break;
        }
        memcpy(name, k.mv_data, k.mv_size);
        name[k.mv_size] = 0;
        if (unseal(t->s, &k, &v)) {
            err = corrupt(t, "the %s '%s' fails its checksum", what, name);
            break;
        }
        if (each(t, name, v, ctx, &err) || err)
            break;
    }
    if (!err && rc && rc != MDB_NOTFOUND)
        err = read_failed(t, rc, "reading");
    mdb_cursor_close(c);
    return err;
}

typedef struct {
    int (*fence_cb)(const char *, uint64_t, int64_t, void *);
    int (*acc_cb)(const char *, int64_t, void *);
    void *opaque;
} named_ctx_t;

static int each_fence(lk_store_txn_t *t, const char *name, MDB_val v, void *p,
                      lk_err_t *err) {
    named_ctx_t *c = p;
    int64_t b, w;
    if ((*err = decode_fence(t, name, v, &b, &w)))
        return 1;
    return c->fence_cb(name, (uint64_t)b, w, c->opaque) ? 1 : 0;
}

lk_err_t lk__store_fences_foreach(lk_store_txn_t *t,
                                  int (*cb)(const char *, uint64_t, int64_t, void *),
                                  void *opaque) {
    named_ctx_t c = {cb, NULL, opaque};
    return foreach_named(t, t->s->dbi[DB_FENCES], "fence", each_fence, &c);
}

/* ---- accumulators ---- */

/* Decode accumulator name's value (already unsealed). */
static lk_err_t decode_acc(lk_store_txn_t *t, const char *name, MDB_val v, int64_t *value) {
    lk__obj_t o;
    lk__zone_clear(&t->tmp);
    if (lk__unpack(&t->tmp, v.mv_data, v.mv_size, &o) || !lk__arr_i64(&o, 1, value))
        return corrupt(t, "the accumulator '%s' does not decode (%zu bytes)", name, v.mv_size);
    return LK_OK;
}

lk_err_t lk__store_acc_get(lk_store_txn_t *t, const char *name, int64_t *value) {
    MDB_val v;
    size_t nl = strlen(name);
    int rc = txn_get(t, t->s->dbi[DB_ACC], name, nl, &v);
    if (rc == MDB_NOTFOUND)
        return LK_ERR_NOT_FOUND;
    if (rc)
        return read_failed(t, rc, "reading an accumulator");
    MDB_val k = {nl, (void *)name};
    if (unseal(t->s, &k, &v))
        return corrupt(t, "the accumulator '%s' fails its checksum", name);
    return decode_acc(t, name, v, value);
}

lk_err_t lk__store_acc_add(lk_store_txn_t *t, const char *name, int64_t delta, char *errstr,
                           size_t errstr_size) {
    int64_t cur = 0;
    lk_err_t err = lk__store_acc_get(t, name, &cur);
    if (err && err != LK_ERR_NOT_FOUND)
        return lk__err(err, errstr, errstr_size, "%s", t->err);
    lk__buf_reset(&t->buf);
    lk__pack_array(&t->buf, 2);
    lk__pack_i64(&t->buf, 1);
    lk__pack_i64(&t->buf, (int64_t)((uint64_t)cur + (uint64_t)delta));
    seal(&t->buf, name, strlen(name));
    return txn_put(t, t->s->dbi[DB_ACC], name, strlen(name), t->buf.data, t->buf.len, errstr,
                   errstr_size, "writing an accumulator");
}

static int each_acc(lk_store_txn_t *t, const char *name, MDB_val v, void *p, lk_err_t *err) {
    named_ctx_t *c = p;
    int64_t value;
    if ((*err = decode_acc(t, name, v, &value)))
        return 1;
    return c->acc_cb(name, value, c->opaque) ? 1 : 0;
}

lk_err_t lk__store_acc_foreach(lk_store_txn_t *t, int (*cb)(const char *, int64_t, void *),
                               void *opaque) {
    named_ctx_t c = {NULL, cb, opaque};
    return foreach_named(t, t->s->dbi[DB_ACC], "accumulator", each_acc, &c);
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
    MDB_dbi dbi;
    for (;;) {
        MDB_txn *txn;
        int rc = mdb_txn_begin(s->env, NULL, s->readonly ? MDB_RDONLY : 0, &txn);
        if (rc)
            return mdb_err(s, rc, errstr, errstr_size, "beginning a transaction");
        rc = mdb_dbi_open(txn, name, 0, &dbi);
        if (rc == MDB_NOTFOUND && !s->readonly) {
            /* a new database joins the record of state databases in the same txn */
            rc = mdb_dbi_open(txn, name, MDB_CREATE, &dbi);
            if (!rc && sealed(s))
                rc = put_state_names(s, txn);
        }
        if (rc) {
            mdb_txn_abort(txn);
        } else if ((rc = mdb_txn_commit(txn))) {
            if (rc != MDB_MAP_FULL)
                return mdb_err(s, rc, errstr, errstr_size, "creating a state database");
        } else {
            break;
        }
        if (rc == MDB_NOTFOUND)
            return lk__err(LK_ERR_NOT_FOUND, errstr, errstr_size,
                           "checkpoint %s has no state for operator '%s'", s->dir, uid);
        if (rc != MDB_MAP_FULL)
            return mdb_err(s, rc, errstr, errstr_size, "opening a state database");
        /* a map too small even for a new database: grow it, as batches do */
        size_t newsize = s->map_size * 2;
        pthread_rwlock_wrlock(&s->resize_lock);
        rc = mdb_env_set_mapsize(s->env, newsize);
        pthread_rwlock_unlock(&s->resize_lock);
        if (rc)
            return mdb_err(s, rc, errstr, errstr_size, "growing the map");
        s->map_size = newsize;
    }
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

/* Decode a state value read under key k: 1, or 0 when it fails its checksum or does
 * not decode. */
static int decode_state(lk_store_txn_t *t, const MDB_val *k, MDB_val vv, const void **val,
                        size_t *vlen, int64_t *updated_ms) {
    const MDB_val *v = &vv;
    if (unseal(t->s, k, &vv))
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
        return read_failed(t, rc, "reading state");
    MDB_val k = {klen, (void *)key};
    if (!decode_state(t, &k, v, val, vlen, updated_ms))
        return corrupt(t, "a state value of operator '%s' (key of %zu bytes) fails its "
                          "checksum or does not decode",
                       t->s->states[db].uid, klen);
    return LK_OK;
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
    seal(&t->buf, key, klen);
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
        if (k.mv_size == 0 || k.mv_size > MAX_KEY) {
            err = corrupt(t, "a state key of %zu bytes (1..%d possible)", k.mv_size, MAX_KEY);
            break;
        }
        if (!decode_state(t, &k, v, &val, &vlen, &upd)) {
            err = corrupt(t, "a state value (key of %zu bytes) fails its checksum or does "
                             "not decode",
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
        if (k.mv_size < 6 || memcmp(k.mv_data, "state.", 6))
            break;
        if (k.mv_size > MAX_KEY || memchr(k.mv_data, 0, k.mv_size)) {
            err = corrupt(t, "a database name of %zu bytes", k.mv_size);
            break;
        }
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
    seal(b, "topology", 8);
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

static lk_err_t decode_topology(lk_store_txn_t *t, MDB_val v, lk_topo_op_t **ops, size_t *n);

lk_err_t lk__store_topology_get(lk_store_txn_t *t, lk_topo_op_t **ops, size_t *n) {
    *ops = NULL;
    *n = 0;
    MDB_val v;
    int rc = txn_get(t, t->s->dbi[DB_META], "topology", 8, &v);
    if (rc == MDB_NOTFOUND)
        return LK_OK;
    if (rc)
        return read_failed(t, rc, "reading the topology");
    return decode_topology(t, v, ops, n);
}

static lk_err_t decode_topology(lk_store_txn_t *t, MDB_val v, lk_topo_op_t **ops, size_t *n) {
    MDB_val k = {8, "topology"};
    if (unseal(t->s, &k, &v))
        return corrupt(t, "the recorded topology fails its checksum");
    lk__obj_t o;
    if (lk__unpack(&t->zone, v.mv_data, v.mv_size, &o))
        return corrupt(t, "the recorded topology does not decode");
    const lk__obj_t *arr = lk__arr_at(&o, 1);
    size_t cnt = arr ? lk__arr_len(arr) : (size_t)-1;
    if (cnt == (size_t)-1)
        return corrupt(t, "the recorded topology has no operator list");
    lk_topo_op_t *out = lk__zone_alloc(&t->zone, (cnt ? cnt : 1) * sizeof *out);
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
            return corrupt(t, "operator %zu of the recorded topology does not decode", i);
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

static lk_err_t decode_config(lk_store_txn_t *t, MDB_val v,
                              int (*cb)(const char *, const char *, void *), void *opaque);

lk_err_t lk__store_config_foreach(lk_store_txn_t *t,
                                  int (*cb)(const char *, const char *, void *), void *opaque) {
    MDB_val v;
    int rc = txn_get(t, t->s->dbi[DB_META], "config", 6, &v);
    if (rc == MDB_NOTFOUND)
        return LK_OK;
    if (rc)
        return read_failed(t, rc, "reading the recorded configuration");
    return decode_config(t, v, cb, opaque);
}

static lk_err_t decode_config(lk_store_txn_t *t, MDB_val v,
                              int (*cb)(const char *, const char *, void *), void *opaque) {
    MDB_val key = {6, "config"};
    if (unseal(t->s, &key, &v))
        return corrupt(t, "the recorded configuration fails its checksum");
    lk__obj_t o;
    lk__zone_clear(&t->tmp);
    if (lk__unpack(&t->tmp, v.mv_data, v.mv_size, &o))
        return corrupt(t, "the recorded configuration does not decode");
    const lk__obj_t *m = lk__arr_at(&o, 1);
    size_t n;
    if (!m || !lk__map_len(m, &n))
        return corrupt(t, "the recorded configuration is not a map");
    for (size_t i = 0; i < n; i++) {
        const char *k, *val;
        size_t kl, vl;
        if (!lk__map_str_at(m, i, &k, &kl, &val, &vl))
            return corrupt(t, "entry %zu of the recorded configuration does not decode", i);
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
    err = encode_batch(buf, plan, plan_key, sizeof plan_key - 1) ? lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory")
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
        return read_failed(t, rc, "reading the pending plan");
    MDB_val kv = {sizeof plan_key - 1, (void *)plan_key};
    return decode_batch(t, &kv, v, "the pending plan", out);
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
    seal(b, "config", 6);
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

/* ---- the decoders on raw bytes (the fuzz target) ---- */

static int no_config_cb(const char *k, const char *v, void *o) {
    (void)k, (void)v, (void)o;
    return 0;
}

lk_err_t lk__store_decode(lk_store_txn_t *t, lk_store_record_t kind, const void *key,
                          size_t klen, const void *val, size_t vlen) {
    MDB_val k = {klen, (void *)key}, v = {vlen, (void *)val};
    t->err[0] = 0;
    switch (kind) {
    case LK_REC_OFFSET: {
        int64_t off;
        lk_fingerprint_t fp;
        int has_fp;
        return decode_offset(t, &k, v, "topic", 0, &off, &fp, &has_fp);
    }
    case LK_REC_BATCH: {
        lk_batch_rec_t b;
        if (klen != 8)
            return LK_ERR_INVALID_ARG;
        return decode_batch_at(t, &k, v, &b);
    }
    case LK_REC_PLAN: {
        lk_batch_rec_t b;
        MDB_val pk = {sizeof plan_key - 1, (void *)plan_key};
        return decode_batch(t, &pk, v, "the pending plan", &b);
    }
    case LK_REC_OUTBOX: {
        if (unseal(t->s, &k, &v))
            return corrupt(t, "outbox chunk fails its checksum");
        lk_header_t hbuf[64];
        for (size_t off = 0; off < v.mv_size;) {
            lk_out_record_t r;
            if (!decode_out(t, &v, &off, &r, hbuf, LK_ARRAY_SIZE(hbuf)))
                return corrupt(t, "an outbox record does not decode");
        }
        return LK_OK;
    }
    case LK_REC_FENCE: {
        int64_t b, w;
        if (unseal(t->s, &k, &v))
            return corrupt(t, "fence fails its checksum");
        return decode_fence(t, "sink", v, &b, &w);
    }
    case LK_REC_ACC: {
        int64_t a;
        if (unseal(t->s, &k, &v))
            return corrupt(t, "accumulator fails its checksum");
        return decode_acc(t, "acc", v, &a);
    }
    case LK_REC_STATE: {
        const void *p;
        size_t n;
        int64_t upd;
        return decode_state(t, &k, v, &p, &n, &upd) ? LK_OK : LK_ERR_CORRUPT;
    }
    case LK_REC_TOPOLOGY: {
        lk_topo_op_t *ops;
        size_t n;
        return decode_topology(t, v, &ops, &n);
    }
    case LK_REC_CONFIG:
        return decode_config(t, v, no_config_cb, NULL);
    case LK_REC_HEADER: {
        lk_store_t h;
        memset(&h, 0, sizeof h);
        h.dir = t->s->dir;
        lk_err_t e = parse_header(&h, v, NULL, t->err, sizeof t->err);
        free(h.app_id);
        return e;
    }
    case LK_REC_KINDS:
        break;
    }
    return LK_ERR_INVALID_ARG;
}
