/*
 * store_integrity.c — how the store finds damage instead of using it (DESIGN.md,
 * Integrity): the CRC32C each value carries from format 2 on (seal, unseal), the report of
 * what is corrupt (lk__store_corrupt, lk__store_read_failed: never retried, never read as
 * absent), and the checks of data.mdb that run before LMDB reads it: the file against
 * LMDB's own meta pages (lk__store_check_data_file, before the environment is opened), and
 * every page reachable from the snapshot's meta walked with bounds-checked reads
 * (lk__store_verify_pages, in the open's first read transaction). liblmdb has no
 * checksums and follows page numbers blindly, so a damaged file would crash it.
 */
#define _GNU_SOURCE
#include "store_priv.h"
#include "../core/crc32c_int.h"
#include "../core/util_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- checksums and corruption ---- */

int lk__store_sealed(const lk__store_t *s) { return s->format >= 2; }

uint32_t lk__store_value_crc(const void *val, size_t vlen, const void *key, size_t klen) {
    return lk__crc32c(lk__crc32c(0, val, vlen), key, klen);
}

/* Append the checksum of (b's content, key) to b. */
void lk__store_seal(lk__buf_t *b, const void *key, size_t klen) {
    unsigned char tail[CRC_LEN];
    lk__put_be32(tail, lk__store_value_crc(b->data, b->len, key, klen));
    lk__buf_append(b, tail, CRC_LEN);
}

/* Verify and strip the checksum of value v read under key k: 0, or -1 when it does not
 * match (or v is too short to hold one). */
int lk__store_unseal(const lk__store_t *s, const MDB_val *k, MDB_val *v) {
    if (!lk__store_sealed(s))
        return 0;
    if (v->mv_size < CRC_LEN)
        return -1;
    size_t n = v->mv_size - CRC_LEN;
    const unsigned char *p = v->mv_data;
    if (lk__store_value_crc(p, n, k->mv_data, k->mv_size) != lk__get_be32(p + n))
        return -1;
    v->mv_size = n;
    return 0;
}

/* Record in t what is corrupt (naming the record) and return LK_ERR_CORRUPT. Never
 * retried and never read as "absent": the caller stops with this message. */
__attribute__((format(printf, 2, 3))) lk_err_t lk__store_corrupt(lk__store_txn_t *t,
                                                                 const char *fmt, ...) {
    char what[300];
    va_list ap;
    va_start(ap, fmt);
    lk__vfmt(what, sizeof what, fmt, ap);
    va_end(ap);
    lk__fmt(t->err, sizeof t->err,
            "checkpoint %s is corrupt: %s; refused (restore the checkpoint from a backup, "
            "or start a new checkpoint.dir)",
            t->s->dir, what);
    return LK_ERR_CORRUPT;
}

const char *lk__store_txn_errstr(const lk__store_txn_t *t) { return t->err; }

/* An LMDB error from a read in t (not MDB_NOTFOUND), recorded like lk__store_corrupt() does. */
lk_err_t lk__store_read_failed(lk__store_txn_t *t, int rc, const char *what) {
    lk_err_t e = rc == MDB_CORRUPTED || rc == MDB_INVALID || rc == MDB_PAGE_NOTFOUND
                     ? LK_ERR_CORRUPT
                     : LK_ERR_STORE;
    lk__fmt(t->err, sizeof t->err, "checkpoint %s: %s: %s", t->s->dir, what,
            mdb_strerror(rc));
    return e;
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

lk_err_t lk__store_check_data_file(lk__store_t *s, char *errstr, size_t errstr_size) {
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
lk_err_t lk__store_verify_pages(lk__store_t *s, MDB_txn *txn, char *errstr, size_t errstr_size) {
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
