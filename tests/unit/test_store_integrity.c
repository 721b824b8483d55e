/*
 * test_store_integrity.c — checkpoints that lie are refused, never believed: a flipped
 * byte in any value (offsets, batch records, the pending plan, outbox chunks, fences,
 * accumulators, state, topology, configuration, the meta header) is found by its
 * checksum and refused naming the record; a corrupt offset is never "no offset";
 * impossible values (negative offsets, ranges backwards, partitions out of range) are
 * refused at decode even with a valid checksum (a crafted checkpoint); a key longer than
 * any key the store writes is refused before it is copied; a failed fsync is fatal and
 * sticky, and never makes a batch durable.
 *
 * Values are edited with raw LMDB while the store is closed. A crafted value is sealed
 * the way the store seals it (CRC32C of value then key, 4 bytes big-endian).
 */
#define _GNU_SOURCE
#include "testutil.h"
#include "core/crc32c_int.h"
#include "core/util_int.h"
#include "state/codec_int.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

TestSuite(store_integrity, .init = tu_scratch_init, .fini = tu_scratch_fini);


/* ---- failing fsync: this definition interposes libc's for liblmdb too ---- */

static volatile int fail_sync; /* fdatasync fails with EIO while set */
static volatile int syncs;

int fdatasync(int fd);
int fdatasync(int fd) {
    syncs++;
    if (fail_sync) {
        errno = EIO;
        return -1;
    }
    return (int)syscall(SYS_fdatasync, fd);
}

/* ---- raw LMDB access to a closed checkpoint ---- */

typedef struct {
    MDB_env *env;
    MDB_txn *txn;
} raw_t;

static raw_t raw_begin(void) {
    raw_t r;
    cr_assert_eq(mdb_env_create(&r.env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(r.env, 64), 0);
    cr_assert_eq(mdb_env_open(r.env, tu_dir, 0, 0644), 0);
    cr_assert_eq(mdb_txn_begin(r.env, NULL, 0, &r.txn), 0);
    return r;
}

static void raw_end(raw_t r) {
    cr_assert_eq(mdb_txn_commit(r.txn), 0);
    mdb_env_close(r.env);
}

static MDB_dbi raw_db(raw_t r, const char *name) {
    MDB_dbi dbi;
    cr_assert_eq(mdb_dbi_open(r.txn, name, 0, &dbi), 0, "no database %s", name);
    return dbi;
}

static void raw_put(const char *db, const void *key, size_t klen, const void *val,
                    size_t vlen) {
    raw_t r = raw_begin();
    MDB_val k = {klen, (void *)key}, v = {vlen, (void *)val};
    cr_assert_eq(mdb_put(r.txn, raw_db(r, db), &k, &v, 0), 0);
    raw_end(r);
}

/* Put value b (msgpack) under key, sealed as the current format seals it. */
static void craft(const char *db, const void *key, size_t klen, lk__buf_t *b) {
    if (LK_CHECKPOINT_FORMAT >= 2) {
        unsigned char tail[4];
        lk__put_be32(tail, lk__crc32c(lk__crc32c(0, b->data, b->len), key, klen));
        lk__buf_append(b, tail, 4);
    }
    raw_put(db, key, klen, b->data, b->len);
    lk__buf_reset(b);
}

/* ---- a checkpoint holding every kind of record ---- */

static const unsigned char OFF_KEY[] = "in\0\0\0\0\0"; /* "in", NUL, partition 0 */

static void make_full(void) {
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__state_db_t db;
    CHECK(lk__store_state_open(s, "counts", &db, ES));
    lk__store_txn_t *t = tu_begin(s, 1);
    CHECK(lk__store_offset_put(t, "in", 0, 123, ES));
    CHECK(lk__store_state_put(t, db, "word", 4, "15", 2, 1700000000000LL, ES));
    lk__header_t h = {"h", "hv", 2};
    lk__out_record_t rec = {-1, "k", 1, "value", 5, 42, 1, &h};
    CHECK(lk__store_outbox_append(t, "out", 3, &rec, ES));
    CHECK(lk__store_fence_put(t, "out", 2, ES));
    CHECK(lk__store_acc_add(t, "records", 77, ES));
    lk__topo_op_t op = {"counts", "update_state_by_key", 1, "x"};
    CHECK(lk__store_topology_put(t, &op, 1, ES));
    lk_conf_t *conf = lk_conf_new();
    cr_assert_eq(lk_conf_set(conf, "app.id", "app", ES), LK_CONF_OK, "%s", tu_err);
    CHECK(lk__store_config_put(t, conf, ES));
    lk_conf_destroy(conf);
    lk__range_t r = {"in", 0, 100, 123};
    lk__batch_rec_t b = {3, 1700000000000LL, 1700000000001LL, 23, 1, 1, &r};
    CHECK(lk__store_batch_put(t, &b, ES));
    tu_commit(t);
    lk__range_t r2 = {"in", 0, 123, 130};
    lk__batch_rec_t plan = {4, 1700000000002LL, 0, 0, 0, 1, &r2};
    CHECK(lk__store_plan_put(s, &plan, ES));
    lk__store_close(s);
}

static int no_offset(const char *tp, int32_t p, int64_t o, void *x) {
    (void)tp, (void)p, (void)o, (void)x;
    return 0;
}
static int no_out(const lk__out_record_t *r, void *x) {
    (void)r, (void)x;
    return 0;
}
static int no_fence(const char *n, uint64_t b, int64_t w, void *x) {
    (void)n, (void)b, (void)w, (void)x;
    return 0;
}
static int no_acc(const char *n, int64_t v, void *x) {
    (void)n, (void)v, (void)x;
    return 0;
}
static int no_state(const void *k, size_t kl, const void *v, size_t vl, int64_t u, void *x) {
    (void)k, (void)kl, (void)v, (void)vl, (void)u, (void)x;
    return 0;
}
static int no_cfg(const char *k, const char *v, void *x) {
    (void)k, (void)v, (void)x;
    return 0;
}

/* Open and read every record; the first error (its message in msg). */
static lk_err_t read_all(char *msg, size_t size) {
    lk__store_t *s = NULL;
    lk_err_t e = tu_open_opts(&s, tu_dir, "app", 1 << 20, 0, msg, size);
    if (e)
        return e;
    lk__state_db_t db;
    if ((e = lk__store_state_open(s, "counts", &db, msg, size))) {
        lk__store_close(s);
        return e;
    }
    lk__store_txn_t *t = tu_begin(s, 0);
    int64_t off;
    uint64_t fence;
    int64_t acc;
    lk__batch_rec_t b;
    lk__topo_op_t *ops;
    size_t nops;
    const void *val;
    size_t vlen;
    e = lk__store_offset_get(t, "in", 0, &off);
    if (!e)
        e = lk__store_offsets_foreach(t, no_offset, NULL);
    if (!e)
        e = lk__store_batch_last(t, &b);
    if (!e)
        e = lk__store_batch_get(t, 3, &b);
    if (!e)
        e = lk__store_plan_get(t, &b);
    if (!e)
        e = lk__store_outbox_foreach(t, "out", 3, no_out, NULL);
    if (!e)
        e = lk__store_outbox_stats(t, (int (*)(const lk__outbox_stat_t *, void *))no_out, NULL);
    if (!e)
        e = lk__store_fence_get(t, "out", &fence);
    if (!e)
        e = lk__store_fences_foreach(t, no_fence, NULL);
    if (!e)
        e = lk__store_acc_get(t, "records", &acc);
    if (!e)
        e = lk__store_acc_foreach(t, no_acc, NULL);
    if (!e)
        e = lk__store_state_get(t, db, "word", 4, &val, &vlen, NULL);
    if (!e)
        e = lk__store_state_foreach(t, db, no_state, NULL);
    if (!e)
        e = lk__store_topology_get(t, &ops, &nops);
    if (!e)
        e = lk__store_config_foreach(t, no_cfg, NULL);
    if (e)
        snprintf(msg, size, "%s", lk__store_txn_errstr(t));
    lk__store_txn_abort(t);
    lk__store_close(s);
    return e;
}

/* Flip one bit of byte pos of the value under key in db (raw). */
static void flip(const char *db, const void *key, size_t klen, size_t pos) {
    raw_t r = raw_begin();
    MDB_dbi dbi = raw_db(r, db);
    MDB_val k = {klen, (void *)key}, v;
    cr_assert_eq(mdb_get(r.txn, dbi, &k, &v), 0);
    cr_assert_lt(pos, v.mv_size);
    unsigned char *copy = malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    copy[pos] ^= 0x10;
    MDB_val nv = {v.mv_size, copy};
    cr_assert_eq(mdb_put(r.txn, dbi, &k, &nv, 0), 0);
    free(copy);
    raw_end(r);
}

static size_t value_size(const char *db, const void *key, size_t klen) {
    raw_t r = raw_begin();
    MDB_val k = {klen, (void *)key}, v;
    cr_assert_eq(mdb_get(r.txn, raw_db(r, db), &k, &v), 0, "no record %.*s in %s", (int)klen,
                 (const char *)key, db);
    size_t n = v.mv_size;
    raw_end(r);
    return n;
}

typedef struct {
    const char *db;
    const void *key;
    size_t klen;
    const char *names; /* what the message must contain */
} record_t;

/* Every byte of every value, flipped one at a time: refused as corrupt, naming the
 * record; flipped back: everything reads again. */
Test(store_integrity, a_flipped_byte_in_any_value_is_refused_naming_the_record) {
    make_full();
    char msg[1024];
    cr_assert_eq(read_all(msg, sizeof msg), LK_OK, "intact checkpoint: %s", msg);
    unsigned char bkey[8], okey[13 + 3];
    lk__put_be64(bkey, 3);
    memcpy(okey, "out", 4);
    lk__put_be64(okey + 4, 3);
    lk__put_be32(okey + 12, 0);
    const record_t recs[] = {
        {"offsets", OFF_KEY, 7, "offset of in[0]"},
        {"batches", bkey, 8, "batch record 3"},
        {"meta", "pending-plan", 12, "pending plan"},
        {"outbox", okey, 16, "sink 'out' batch 3"},
        {"fences", "out", 3, "fence of sink 'out'"},
        {"acc", "records", 7, "accumulator 'records'"},
        {"state.counts", "word", 4, "state"},
        {"meta", "topology", 8, "topology"},
        {"meta", "config", 6, "configuration"},
        {"meta", "header", 6, "meta header"},
    };
    for (size_t i = 0; i < sizeof recs / sizeof recs[0]; i++) {
        const record_t *r = &recs[i];
        size_t n = value_size(r->db, r->key, r->klen);
        for (size_t pos = 0; pos < n; pos++) {
            flip(r->db, r->key, r->klen, pos);
            msg[0] = 0;
            lk_err_t e = read_all(msg, sizeof msg);
            cr_assert_eq(e, LK_ERR_CORRUPT, "%s byte %zu of %zu flipped: %s (%s)", r->db, pos,
                         n, lk_err_name(e), msg);
            cr_assert(strstr(msg, r->names), "%s byte %zu: the message names \"%s\": %s",
                      r->db, pos, r->names, msg);
            cr_assert(strstr(msg, tu_dir), "names the checkpoint: %s", msg);
            flip(r->db, r->key, r->klen, pos);
        }
    }
    cr_assert_eq(read_all(msg, sizeof msg), LK_OK, "restored checkpoint: %s", msg);
}

/* A corrupt offset is refused, naming it, and never reads as "no offset" (a partition
 * treated as new would be read again from its start, or skipped to its end). */
Test(store_integrity, a_corrupt_offset_is_not_no_offset) {
    make_full();
    flip("offsets", OFF_KEY, 7, 2); /* the offset's low byte: still valid msgpack */
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__store_txn_t *t = tu_begin(s, 0);
    int64_t off = -7;
    cr_assert_eq(lk__store_offset_get(t, "in", 0, &off), LK_ERR_CORRUPT);
    cr_assert_eq(off, -7, "no value handed out");
    cr_assert(strstr(lk__store_txn_errstr(t), "offset of in[0]"), "%s",
              lk__store_txn_errstr(t));
    cr_assert_eq(lk__store_offset_get(t, "in", 1, &off), LK_ERR_NOT_FOUND,
                 "a missing offset is still just missing");
    lk__store_txn_abort(t);
    lk__store_close(s);
}

/* Impossible values with a valid checksum (a crafted checkpoint) are refused at decode. */
Test(store_integrity, impossible_values_are_refused_at_decode) {
    make_full();
    lk__buf_t b;
    lk__buf_init(&b);
    char msg[1024];

    lk__pack_array(&b, 2); /* a negative offset */
    lk__pack_i64(&b, 1);
    lk__pack_i64(&b, -5);
    craft("offsets", OFF_KEY, 7, &b);
    cr_assert_eq(read_all(msg, sizeof msg), LK_ERR_CORRUPT, "negative offset: %s", msg);
    cr_assert(strstr(msg, "offset of in[0] is negative (-5)"), "%s", msg);
    lk__pack_array(&b, 2);
    lk__pack_i64(&b, 1);
    lk__pack_i64(&b, 123);
    craft("offsets", OFF_KEY, 7, &b);
    cr_assert_eq(read_all(msg, sizeof msg), LK_OK, "%s", msg);

    /* batch records and plans: ranges backwards, negative, partitions out of range */
    const int64_t bad[][3] = {{0, 130, 123}, {0, -1, 5}, {-1, 0, 5}, {1LL << 32, 0, 5}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        lk__pack_array(&b, 7);
        lk__pack_i64(&b, 1);
        lk__pack_i64(&b, 4);
        lk__pack_i64(&b, 1700000000002LL);
        lk__pack_i64(&b, 0);
        lk__pack_i64(&b, 0);
        lk__pack_i64(&b, 0);
        lk__pack_array(&b, 1);
        lk__pack_array(&b, 4);
        lk__pack_str(&b, "in");
        lk__pack_i64(&b, bad[i][0]);
        lk__pack_i64(&b, bad[i][1]);
        lk__pack_i64(&b, bad[i][2]);
        craft("meta", "pending-plan", 12, &b);
        cr_assert_eq(read_all(msg, sizeof msg), LK_ERR_CORRUPT, "plan %zu: %s", i, msg);
        cr_assert(strstr(msg, "the pending plan: range 0 is in["), "%s", msg);
    }
    /* a negative record count in a batch record */
    lk__pack_array(&b, 7);
    lk__pack_i64(&b, 1);
    lk__pack_i64(&b, 3);
    lk__pack_i64(&b, 0);
    lk__pack_i64(&b, 0);
    lk__pack_i64(&b, -1);
    lk__pack_i64(&b, 0);
    lk__pack_array(&b, 0);
    unsigned char bkey[8];
    lk__put_be64(bkey, 3);
    craft("batches", bkey, 8, &b);
    cr_assert_eq(read_all(msg, sizeof msg), LK_ERR_CORRUPT, "%s", msg);
    cr_assert(strstr(msg, "batch record 3"), "%s", msg);
    lk__buf_free(&b);
}

/* An outbox record with an impossible partition is corrupt, named by sink and batch. */
Test(store_integrity, an_outbox_record_with_an_impossible_partition_is_refused) {
    make_full();
    lk__buf_t b;
    lk__buf_init(&b);
    lk__pack_array(&b, 6);
    lk__pack_i64(&b, 1);
    lk__pack_i64(&b, -2);
    lk__pack_bin_or_nil(&b, "k", 1);
    lk__pack_bin_or_nil(&b, "v", 1);
    lk__pack_i64(&b, 42);
    lk__pack_array(&b, 0);
    unsigned char okey[16];
    memcpy(okey, "out", 4);
    lk__put_be64(okey + 4, 3);
    lk__put_be32(okey + 12, 0);
    craft("outbox", okey, 16, &b);
    lk__buf_free(&b);
    char msg[1024];
    cr_assert_eq(read_all(msg, sizeof msg), LK_ERR_CORRUPT, "%s", msg);
    cr_assert(strstr(msg, "record 0 of outbox chunk 0 of sink 'out' batch 3"), "%s", msg);
}

/* Patch every copy of a node in data.mdb whose key is `key` (LMDB's MDB_node: data size
 * lo/hi, flags, key size, then the key): give it key size ksize and data size dsize. */
static int patch_node(const void *key, size_t klen, uint16_t ksize, uint16_t dsize) {
    char p[4200];
    tu_path(p, sizeof p, tu_dir, "data.mdb");
    int fd = open(p, O_RDWR);
    cr_assert_geq(fd, 0);
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    unsigned char *buf = malloc((size_t)st.st_size);
    cr_assert_eq(pread(fd, buf, (size_t)st.st_size, 0), st.st_size);
    int found = 0;
    for (size_t i = 8; i + klen <= (size_t)st.st_size; i++)
        if (!memcmp(buf + i, key, klen)) {
            unsigned char h[8];
            memcpy(h, buf + i - 8, 8);
            uint16_t lo = dsize, hi = 0;
            memcpy(h, &lo, 2);
            memcpy(h + 2, &hi, 2);
            memcpy(h + 6, &ksize, 2);
            cr_assert_eq(pwrite(fd, h, 8, (off_t)(i - 8)), 8);
            found++;
        }
    free(buf);
    close(fd);
    return found;
}

/*
 * A crafted offsets key longer than any topic (LMDB's node says 611 bytes; the store
 * never writes one over 511): refused before anything is copied. The bytes after the
 * key are made to look like "topic, NUL, partition" and a valid offset value, as an
 * attacker would, so that only the length check stands between the key and a stack
 * buffer of 512 bytes.
 */
Test(store_integrity, a_crafted_overlong_offsets_key_is_refused_not_copied) {
    make_full();
    unsigned char key[511];
    memset(key, 'A', sizeof key);
    /* the value: 95 more topic bytes, NUL, partition 0, then the offset [1, 5] */
    unsigned char val[103];
    memset(val, 'B', 95);
    memset(val + 95, 0, 5);
    memcpy(val + 100, "\x92\x01\x05", 3);
    raw_put("offsets", key, sizeof key, val, sizeof val);
    cr_assert_gt(patch_node(key, sizeof key, 611, 3), 0);
    lk__store_opts_t o = {.dir = tu_dir, .readonly = 1};
    lk__store_t *s;
    CHECK(lk__store_open(&s, &o, ES));
    lk__store_txn_t *t = tu_begin(s, 0);
    cr_assert_eq(lk__store_offsets_foreach(t, no_offset, NULL), LK_ERR_CORRUPT);
    cr_assert(strstr(lk__store_txn_errstr(t), "an offsets key of 611 bytes"), "%s",
              lk__store_txn_errstr(t));
    lk__store_txn_abort(t);
    /* inspect (documented as safe on any checkpoint) refuses it the same way */
    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    tu_err[0] = 0;
    cr_assert_eq(lk__store_inspect(s, fp, 0, ES), LK_ERR_CORRUPT);
    fclose(fp);
    free(text);
    cr_assert(strstr(tu_err, "an offsets key of 611 bytes"), "%s", tu_err);
    lk__store_close(s);
}

/* ---- failed fsync ---- */

static lk__store_t *open_group_commit(void) {
    lk__store_opts_t o = {.dir = tu_dir, .app_id = "app", .map_size = 1 << 20,
                         .sync_interval = 1, .sync_interval_ms = 3600 * 1000};
    lk__store_t *s;
    CHECK(lk__store_open(&s, &o, ES));
    return s;
}

static void commit_batch(lk__store_t *s, uint64_t id) {
    lk__store_txn_t *t = tu_begin(s, 1);
    lk__batch_rec_t b = {id, 1700000000000LL, 0, 0, 0, 0, NULL};
    CHECK(lk__store_batch_put(t, &b, ES));
    tu_commit(t);
}

/* A sync that fails makes nothing durable and the store unusable (sticky), with the OS
 * error in the message; group commit never calls a batch durable that was not synced. */
Test(store_integrity, a_failed_sync_is_fatal_and_sticky) {
    lk__store_t *s = open_group_commit();
    commit_batch(s, 1);
    CHECK(lk__store_sync(s, ES));
    cr_assert_eq(lk__store_durable_batch(s), 1);
    commit_batch(s, 2);
    cr_assert_eq(lk__store_durable_batch(s), 1, "group commit: not yet synced");
    fail_sync = 1;
    int before = syncs;
    tu_err[0] = 0;
    lk_err_t e = lk__store_sync(s, ES);
    fail_sync = 0;
    cr_assert_gt(syncs, before, "the sync reached fdatasync");
    cr_assert_eq(e, LK_ERR_FATAL, "%s (%s)", lk_err_name(e), tu_err);
    cr_assert(strstr(tu_err, strerror(EIO)), "the OS error is in the message: %s", tu_err);
    cr_assert_eq(lk__store_durable_batch(s), 1, "a failed sync made batch 2 durable");
    const char *msg;
    cr_assert(lk__store_fatal(s, &msg));
    cr_assert(strstr(msg, strerror(EIO)), "%s", msg);
    /* sticky: a later sync that would succeed does not make it durable either */
    cr_assert_eq(lk__store_sync(s, ES), LK_ERR_FATAL);
    cr_assert_eq(lk__store_durable_batch(s), 1);
    lk__store_txn_t *t;
    cr_assert_eq(lk__store_txn_begin(s, 1, &t, ES), LK_ERR_FATAL);
    cr_assert(strstr(tu_err, strerror(EIO)), "%s", tu_err);
    lk__store_close(s);
}

/* The sync at open makes what a previous group-commit process committed durable: when it
 * fails, the open is refused (nothing may be delivered as durable). */
Test(store_integrity, a_failed_sync_at_open_refuses_the_open) {
    lk__store_t *s = open_group_commit();
    commit_batch(s, 1);
    lk__store_close(s);
    fail_sync = 1;
    /* group commit again: the open's own commit does not sync, only the sync does */
    lk__store_opts_t o = {.dir = tu_dir, .app_id = "app", .map_size = 1 << 20,
                         .sync_interval = 1, .sync_interval_ms = 3600 * 1000};
    s = (lk__store_t *)1;
    tu_err[0] = 0;
    lk_err_t e = lk__store_open(&s, &o, ES);
    fail_sync = 0;
    cr_assert_eq(e, LK_ERR_IO, "%s (%s)", lk_err_name(e), tu_err);
    cr_assert_null(s);
    cr_assert(strstr(tu_err, strerror(EIO)) && strstr(tu_err, tu_dir), "%s", tu_err);
    s = tu_open(tu_dir, "app");
    cr_assert_eq(lk__store_durable_batch(s), 1);
    lk__store_close(s);
}

/* ---- a truncated or damaged data file ---- */

/* A checkpoint of ~50 pages, with state reaching to its last pages. */
static off_t make_big(void) {
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__state_db_t db;
    CHECK(lk__store_state_open(s, "counts", &db, ES));
    char val[300];
    memset(val, 'v', sizeof val);
    for (int b = 0; b < 4; b++) {
        lk__store_txn_t *t = tu_begin(s, 1);
        for (int i = 0; i < 150; i++) {
            char key[32];
            int kl = snprintf(key, sizeof key, "key-%d-%d", b, i);
            CHECK(lk__store_state_put(t, db, key, (size_t)kl, val, sizeof val, i, ES));
        }
        lk__batch_rec_t rec = {(uint64_t)b + 1, 1700000000000LL, 0, 0, 0, 0, NULL};
        CHECK(lk__store_batch_put(t, &rec, ES));
        tu_commit(t);
    }
    lk__store_close(s);
    char p[4200];
    struct stat st;
    cr_assert_eq(stat(tu_path(p, sizeof p, tu_dir, "data.mdb"), &st), 0);
    return st.st_size;
}

static int visit_state(const void *k, size_t kl, const void *v, size_t vl, int64_t u,
                       void *o) {
    (void)k, (void)kl, (void)v, (void)u;
    *(size_t *)o += vl;
    return 0;
}

/* Open (read-only or not) and read all state: a refusal or the full content, never a
 * crash. The refusal must say what is wrong. */
static void expect_truncation_refused(off_t at, int readonly) {
    lk__store_opts_t o = {.dir = tu_dir, .app_id = readonly ? NULL : "app", .readonly = readonly,
                         .map_size = 1 << 20};
    lk__store_t *s = (lk__store_t *)1;
    tu_err[0] = 0;
    lk_err_t e = lk__store_open(&s, &o, ES);
    cr_assert_eq(e, LK_ERR_CORRUPT, "truncated to %lld bytes (%s): %s (%s)", (long long)at,
                 readonly ? "read-only" : "writable", lk_err_name(e), tu_err);
    cr_assert_null(s);
    cr_assert(strstr(tu_err, "truncated or damaged") && strstr(tu_err, "data.mdb"), "%s", tu_err);
}

/* Truncations of data.mdb (the issue's `truncate -s 40960` among them) are refused before
 * LMDB maps the file; the old code died of SIGBUS inside liblmdb. */
Test(store_integrity, a_truncated_data_file_is_refused_not_mapped) {
    off_t size = make_big();
    cr_assert_gt(size, 40960 + 8192, "checkpoint of %lld bytes", (long long)size);
    char p[4200];
    tu_path(p, sizeof p, tu_dir, "data.mdb");
    char *orig = malloc((size_t)size);
    int fd = open(p, O_RDONLY);
    cr_assert_eq(pread(fd, orig, (size_t)size, 0), size);
    close(fd);
    const off_t cuts[] = {100, 4096, 8192, 12288, 40960, size - 4096, size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        cr_assert_eq(truncate(p, cuts[i]), 0);
        uint64_t before = tu_dir_digest(tu_dir);
        expect_truncation_refused(cuts[i], 1);
        expect_truncation_refused(cuts[i], 0);
        cr_assert_eq(tu_dir_digest(tu_dir), before, "a refused open modified the checkpoint");
        tu_write_file(p, orig, (size_t)size);
    }
    /* restored: everything is there */
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__state_db_t db;
    CHECK(lk__store_state_open(s, "counts", &db, ES));
    lk__store_txn_t *t = tu_begin(s, 0);
    size_t bytes = 0;
    cr_assert_eq(lk__store_state_foreach(t, db, visit_state, &bytes), LK_OK);
    cr_assert_eq(bytes, 600 * 300);
    lk__store_txn_abort(t);
    lk__store_close(s);
    free(orig);
}

/* A meta page naming a database root beyond the file, or not a meta page at all. */
Test(store_integrity, a_damaged_meta_page_is_refused) {
    off_t size = make_big();
    char p[4200];
    tu_path(p, sizeof p, tu_dir, "data.mdb");
    int fd = open(p, O_RDWR);
    cr_assert_geq(fd, 0);
    /* meta page 1 (at 4096): the main database's root (16 + 24 + 48 + 40) */
    uint64_t root = (uint64_t)size / 4096 + 10;
    cr_assert_eq(pwrite(fd, &root, 8, 4096 + 16 + 24 + 48 + 40), 8);
    close(fd);
    expect_truncation_refused(size, 1);
    cr_assert(strstr(tu_err, "meta page 1 puts a database root at page"), "%s", tu_err);
    fd = open(p, O_RDWR);
    uint32_t junk = 0x12345678;
    cr_assert_eq(pwrite(fd, &junk, 4, 16), 4); /* meta page 0's magic */
    close(fd);
    expect_truncation_refused(size, 0);
    cr_assert(strstr(tu_err, "meta page 0 is not an LMDB 0.9 meta page"), "%s", tu_err);
}

/* Write ch at offset pos of every copy of needle in data.mdb (LMDB keeps stale page
 * copies), except copies right after skip_after (NULL: none); returns the copies hit. */
static int flip_all(const char *needle, size_t pos, char ch, const char *skip_after) {
    char path[4200];
    snprintf(path, sizeof path, "%s/data.mdb", tu_dir);
    int fd = open(path, O_RDWR);
    cr_assert_geq(fd, 0);
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    char *buf = malloc((size_t)st.st_size);
    cr_assert_eq(pread(fd, buf, (size_t)st.st_size, 0), st.st_size);
    size_t nl = strlen(needle), sl = skip_after ? strlen(skip_after) : 0;
    int flipped = 0;
    for (char *at = buf; (at = memmem(at, (size_t)st.st_size - (size_t)(at - buf), needle, nl));
         at++) {
        if (sl && (size_t)(at - buf) >= sl && !memcmp(at - sl, skip_after, sl))
            continue;
        cr_assert_eq(pwrite(fd, &ch, 1, at - buf + (off_t)pos), 1);
        flipped++;
    }
    close(fd);
    free(buf);
    return flipped;
}

/* Both opens, read-only and writable, refuse the checkpoint as corrupt, saying says. */
static void expect_open_corrupt(const char *says, const char *says_too) {
    for (int readonly = 0; readonly < 2; readonly++) {
        lk__store_opts_t o = {.dir = tu_dir, .app_id = readonly ? NULL : "app",
                             .readonly = readonly, .map_size = 1 << 20};
        lk__store_t *s = (lk__store_t *)1;
        tu_err[0] = 0;
        lk_err_t e = lk__store_open(&s, &o, ES);
        cr_assert_eq(e, LK_ERR_CORRUPT, "%s open: %s (%s)", readonly ? "read-only" : "writable",
                     lk_err_name(e), tu_err);
        cr_assert_null(s);
        cr_assert(strstr(tu_err, says) && strstr(tu_err, says_too), "%s", tu_err);
    }
}

/* A state database's name is a key of LMDB's main database, which no value checksum
 * covers: a flipped byte there made another operator's state ("counts" read as
 * "coents") with no error (found by tests/chaos/damage.py). The meta record of the state
 * databases this checkpoint created makes every open refuse it, naming the stranger. */
Test(store_integrity, a_damaged_state_database_name_is_refused) {
    make_full();
    /* every copy of the name but the one inside meta's record of the state databases
     * (its value follows the key "state-dbs"); "coents" sorts where "counts" did, so the
     * main database's order stays valid */
    cr_assert_gt(flip_all("state.counts", 8, 'e', "state-dbs"), 0,
                 "the state database's name is in data.mdb");
    expect_open_corrupt("'state.coents'", "never created");
}

/* A damaged key in meta: the topology record under "topologx" read as "no topology
 * recorded" (inspect showed an empty topology; found by tests/chaos/damage.py). meta's
 * keys are a closed set, so a stranger there is refused. */
Test(store_integrity, a_damaged_meta_key_is_refused) {
    make_full();
    cr_assert_gt(flip_all("topology", 7, 'x', NULL), 0, "the topology key is in data.mdb");
    expect_open_corrupt("'topologx'", "damaged key");
}
