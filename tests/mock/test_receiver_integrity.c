/*
 * test_receiver_integrity.c — the receiver and driver against a checkpoint that no longer
 * matches the input, or that lies, on the mock cluster:
 *  - a recreated input topic (same name, other records) is data loss: refused naming the
 *    partition and both fingerprints, or skipped and counted under on.data.loss=skip. The
 *    mock cannot delete and recreate a topic in place, so a fresh mock cluster with the
 *    same topic name under the existing checkpoint plays the recreated topic;
 *  - a restart on the same log reads on without a word (no false alarm);
 *  - a pending plan that reaches past the log end is refused, not fetched forever;
 *  - a corrupt offset or pending plan stops the run naming the record, and is left as it
 *    was (the evidence is not overwritten);
 *  - a corrupt outbox chunk of a removed sink is reported with a message (it printed
 *    uninitialised memory), and a wrongly shaped one stops delivery for good (it was
 *    retried forever).
 */
#define _GNU_SOURCE
#include "lockstep.h"
#include "mockutil.h"
#include "core/crc32c_int.h"
#include "core/util_int.h"
#include "state/codec_int.h"
#include "state/store_int.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

TestSuite(receiver_integrity, .init = mu_fixture_init, .fini = mu_fixture_fini, .timeout = 180);

static uint64_t seen;
static char first_value[64];
static void count(lk_batch_t *b, const lk_record_t *r, size_t n, void *o) {
    (void)b;
    (void)o;
    if (!seen && n)
        snprintf(first_value, sizeof first_value, "%.*s", (int)r[0].value_len,
                 (const char *)r[0].value);
    seen += n;
}
static void define_count(lk_pipeline_t *p, void *o) {
    (void)o;
    lk_foreach_batch(lk_kafka_stream(p, "lines"), "count", count, NULL);
}

static lk_context_t *open_count(lk_conf_t *conf) {
    char err[1024];
    lk_context_t *ctx = lk_context_get_or_create(conf, define_count, NULL, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    return ctx;
}

static void produce_n(const char *prefix, int n) {
    char v[64];
    for (int i = 0; i < n; i++) {
        snprintf(v, sizeof v, "%s-%d", prefix, i);
        mu_produce(&mu_cl, "lines", 0, NULL, v);
    }
    mu_flush(&mu_cl);
}

static lk__store_t *open_ro(void) {
    lk__store_opts_t o = {.dir = tu_dir, .readonly = 1};
    lk__store_t *s;
    char err[512];
    cr_assert_eq(lk__store_open(&s, &o, err, sizeof err), LK_OK, "%s", err);
    return s;
}

static int64_t offset_of(int32_t partition) {
    lk__store_t *s = open_ro();
    lk__store_txn_t *t;
    char err[512];
    cr_assert_eq(lk__store_txn_begin(s, 0, &t, err, sizeof err), LK_OK);
    int64_t off = -1;
    lk__store_offset_get(t, "lines", partition, &off);
    lk__store_txn_abort(t);
    lk__store_close(s);
    return off;
}

/* 10 records "old-i" read into the checkpoint (offset 10, fingerprint of offset 9). */
static void read_ten(lk_conf_t *conf) {
    mu_topic(&mu_cl, "lines", 1);
    produce_n("old", 20);
    mu_set(conf, "max.records.per.partition", "10");
    lk_context_t *ctx = open_count(conf);
    seen = 0;
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(seen, 10);
    lk_context_destroy(ctx);
    cr_assert_eq(offset_of(0), 10);
}

/* The topic "recreated": a fresh cluster whose "lines" holds other records. */
static void recreate(lk_conf_t *conf, int n) {
    mu_stop(&mu_cl);
    mu_start(&mu_cl, 1);
    mu_topic(&mu_cl, "lines", 1);
    produce_n("new", n);
    mu_set(conf, "kafka.bootstrap.servers", mu_cl.bootstraps);
}

Test(receiver_integrity, a_recreated_topic_is_refused_then_skipped_and_counted) {
    lk_conf_t *conf = mu_conf(&mu_cl, "recreated", tu_dir);
    read_ten(conf);
    recreate(conf, 25); /* grown past the checkpointed offset: it used to read on from 10 */
    lk_context_t *ctx = open_count(conf);
    seen = 0;
    cr_assert_eq(lk_context_run_once(ctx), LK_ERR_DATA_LOSS, "%s", lk_context_errstr(ctx));
    const char *e = lk_context_errstr(ctx);
    cr_assert(strstr(e, "lines[0]: the last record read (offset 9, timestamp "), "%s", e);
    cr_assert(strstr(e, "another record is there (offset 9, timestamp "), "%s", e);
    cr_assert(strstr(e, "10 records before the checkpointed offset 10 were never read"), "%s",
              e);
    cr_assert(strstr(e, "on.data.loss=skip"), "%s", e);
    cr_assert_eq(seen, 0);
    lk_context_destroy(ctx);
    cr_assert_eq(offset_of(0), 10, "a refused start moves no offset");

    mu_set(conf, "on.data.loss", "skip");
    ctx = open_count(conf);
    seen = 0;
    first_value[0] = 0;
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(seen, 10, "continues at the checkpointed offset");
    cr_assert_str_eq(first_value, "new-10");
    int64_t skipped = 0;
    cr_assert_eq(lk_context_accumulator(ctx, "lockstep.data.loss.skipped", &skipped), LK_OK);
    cr_assert_eq(skipped, 10);
    /* checked once: the next batch reads on */
    seen = 0;
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(seen, 5);
    cr_assert_eq(lk_context_accumulator(ctx, "lockstep.data.loss.skipped", &skipped), LK_OK);
    cr_assert_eq(skipped, 10);
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

Test(receiver_integrity, a_restart_on_the_same_log_reads_on) {
    lk_conf_t *conf = mu_conf(&mu_cl, "same", tu_dir);
    read_ten(conf);
    lk_context_t *ctx = open_count(conf);
    seen = 0;
    first_value[0] = 0;
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(seen, 10);
    cr_assert_str_eq(first_value, "old-10");
    cr_assert_eq(lk_context_accumulator(ctx, "lockstep.data.loss.skipped", &(int64_t){0}),
                 LK_ERR_NOT_FOUND);
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

/* A pending plan reading [10, 20) of a topic recreated with 15 records: the old code
 * fetched offsets 15..19 until fetch.timeout.ms, and again, forever. */
Test(receiver_integrity, a_replayed_plan_past_the_log_end_is_refused) {
    lk_conf_t *conf = mu_conf(&mu_cl, "plan", tu_dir);
    mu_set(conf, "fetch.timeout.ms", "2000");
    lk__store_opts_t o;
    lk__store_opts_from_conf(&o, conf);
    lk__store_t *s;
    char err[512];
    cr_assert_eq(lk__store_open(&s, &o, err, sizeof err), LK_OK, "%s", err);
    lk__store_txn_t *t;
    cr_assert_eq(lk__store_txn_begin(s, 1, &t, err, sizeof err), LK_OK, "%s", err);
    /* no fingerprint: only the plan's range is wrong */
    cr_assert_eq(lk__store_offset_put(t, "lines", 0, 10, err, sizeof err), LK_OK, "%s", err);
    lk__range_t r0 = {"lines", 0, 0, 10};
    lk__batch_rec_t b1 = {1, 1700000000000LL, 0, 10, 0, 1, &r0};
    cr_assert_eq(lk__store_batch_put(t, &b1, err, sizeof err), LK_OK, "%s", err);
    cr_assert_eq(lk__store_txn_commit(t, err, sizeof err), LK_OK, "%s", err);
    lk__range_t r = {"lines", 0, 10, 20};
    lk__batch_rec_t plan = {2, 1700000001000LL, 0, 0, 0, 1, &r};
    cr_assert_eq(lk__store_plan_put(s, &plan, err, sizeof err), LK_OK, "%s", err);
    lk__store_close(s);
    mu_topic(&mu_cl, "lines", 1);
    produce_n("short", 15);

    lk_context_t *ctx = open_count(conf);
    seen = 0;
    lk_err_t e = lk_context_run_once(ctx);
    cr_assert_eq(e, LK_ERR_DATA_LOSS, "%s (%s)", lk_err_name(e), lk_context_errstr(ctx));
    cr_assert(strstr(lk_context_errstr(ctx), "lines[0]: the pending plan reads up to offset 20, "
                                             "beyond the log end 15"),
              "%s", lk_context_errstr(ctx));
    cr_assert_eq(seen, 0);
    lk_context_destroy(ctx);
    cr_assert_eq(offset_of(0), 10);
    lk_conf_destroy(conf);
}

/* Flip one bit of the value under key in db of the (closed) checkpoint. */
static void flip(const char *db, const void *key, size_t klen, size_t pos) {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 64), 0);
    cr_assert_eq(mdb_env_open(env, tu_dir, 0, 0644), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, db, 0, &dbi), 0);
    MDB_val k = {klen, (void *)key}, v;
    cr_assert_eq(mdb_get(txn, dbi, &k, &v), 0);
    unsigned char *copy = malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    copy[pos] ^= 0x01;
    MDB_val nv = {v.mv_size, copy};
    cr_assert_eq(mdb_put(txn, dbi, &k, &nv, 0), 0);
    free(copy);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

/* The offset's value ([1, 10, fp...]) with its low byte changed still decodes: the old
 * code took a corrupt offset for "no offset" and read the partition from its start. */
Test(receiver_integrity, a_corrupt_offset_stops_the_run_and_stays) {
    lk_conf_t *conf = mu_conf(&mu_cl, "corrupt-offset", tu_dir);
    read_ten(conf);
    flip("offsets", "lines\0\0\0\0\0", 10, 2);
    lk_context_t *ctx = open_count(conf);
    seen = 0;
    lk_err_t e = lk_context_run_once(ctx);
    cr_assert_eq(e, LK_ERR_CORRUPT, "%s (%s)", lk_err_name(e), lk_context_errstr(ctx));
    cr_assert(strstr(lk_context_errstr(ctx), "the offset of lines[0] fails its checksum"), "%s",
              lk_context_errstr(ctx));
    cr_assert(strstr(lk_context_errstr(ctx), tu_dir), "%s", lk_context_errstr(ctx));
    cr_assert_eq(seen, 0, "nothing read again");
    lk_context_destroy(ctx);
    flip("offsets", "lines\0\0\0\0\0", 10, 2); /* the evidence was left as it was */
    cr_assert_eq(offset_of(0), 10);
    lk_conf_destroy(conf);
}

/* A corrupt pending plan is refused, not ignored (and re-planned differently). */
Test(receiver_integrity, a_corrupt_pending_plan_stops_the_run) {
    lk_conf_t *conf = mu_conf(&mu_cl, "corrupt-plan", tu_dir);
    read_ten(conf);
    lk__store_opts_t o;
    lk__store_opts_from_conf(&o, conf);
    lk__store_t *s;
    char err[512];
    cr_assert_eq(lk__store_open(&s, &o, err, sizeof err), LK_OK, "%s", err);
    lk__range_t r = {"lines", 0, 10, 15};
    lk__batch_rec_t plan = {2, 1700000001000LL, 0, 0, 0, 1, &r};
    cr_assert_eq(lk__store_plan_put(s, &plan, err, sizeof err), LK_OK, "%s", err);
    lk__store_close(s);
    flip("meta", "pending-plan", 12, 4);
    lk_context_t *ctx = open_count(conf);
    seen = 0;
    lk_err_t e = lk_context_run_once(ctx);
    cr_assert_eq(e, LK_ERR_CORRUPT, "%s (%s)", lk_err_name(e), lk_context_errstr(ctx));
    cr_assert(strstr(lk_context_errstr(ctx), "the pending plan fails its checksum"), "%s",
              lk_context_errstr(ctx));
    cr_assert_eq(seen, 0);
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

/* An undecodable outbox chunk of a sink no longer in the pipeline: the start is refused
 * with a message naming the chunk (the old code printed uninitialised memory). */
Test(receiver_integrity, a_corrupt_outbox_chunk_is_named_at_start) {
    lk_conf_t *conf = mu_conf(&mu_cl, "corrupt-outbox", tu_dir);
    read_ten(conf);
    lk__store_opts_t o;
    lk__store_opts_from_conf(&o, conf);
    lk__store_t *s;
    char err[512];
    cr_assert_eq(lk__store_open(&s, &o, err, sizeof err), LK_OK, "%s", err);
    lk__store_txn_t *t;
    cr_assert_eq(lk__store_txn_begin(s, 1, &t, err, sizeof err), LK_OK, "%s", err);
    lk__out_record_t rec = {-1, "k", 1, "v", 1, 42, 0, NULL};
    cr_assert_eq(lk__store_outbox_append(t, "gone", 1, &rec, err, sizeof err), LK_OK);
    cr_assert_eq(lk__store_txn_commit(t, err, sizeof err), LK_OK, "%s", err);
    lk__store_close(s);
    unsigned char key[17];
    memcpy(key, "gone", 5);
    memset(key + 5, 0, 12);
    key[12] = 1; /* batch 1, chunk 0 */
    flip("outbox", key, sizeof key, 0); /* 0x96 -> 0x97: the array header lies */
    char e[1024];
    memset(e, 0x5a, sizeof e); /* what an unwritten message would show */
    e[sizeof e - 1] = 0;
    lk_context_t *ctx = lk_context_get_or_create(conf, define_count, NULL, e, sizeof e);
    cr_assert_null(ctx);
    cr_assert(strstr(e, "outbox chunk 0 of sink 'gone' batch 1"), "%s", e);
    lk_conf_destroy(conf);
}

static void define_copy(lk_pipeline_t *p, void *o) {
    (void)o;
    lk_to_kafka(lk_kafka_stream(p, "lines"), "sink", "out");
}

/* A wrongly shaped outbox chunk with a valid checksum (a crafted checkpoint: the old code
 * retried "Checkpoint is corrupt" forever): delivery stops the application, naming the
 * record, and is not tried again. */
Test(receiver_integrity, a_wrongly_shaped_outbox_chunk_stops_delivery_for_good) {
    mu_topic(&mu_cl, "lines", 1);
    mu_topic(&mu_cl, "out", 1);
    mu_topic(&mu_cl, "shape.progress", 1);
    lk_conf_t *conf = mu_conf(&mu_cl, "shape", tu_dir);
    lk__store_opts_t o;
    lk__store_opts_from_conf(&o, conf);
    lk__store_t *s;
    char err[512];
    cr_assert_eq(lk__store_open(&s, &o, err, sizeof err), LK_OK, "%s", err);
    lk__store_txn_t *t;
    cr_assert_eq(lk__store_txn_begin(s, 1, &t, err, sizeof err), LK_OK, "%s", err);
    cr_assert_eq(lk__store_offset_put(t, "lines", 0, 0, err, sizeof err), LK_OK, "%s", err);
    lk__batch_rec_t b1 = {1, 1700000000000LL, 0, 0, 1, 0, NULL};
    cr_assert_eq(lk__store_batch_put(t, &b1, err, sizeof err), LK_OK, "%s", err);
    cr_assert_eq(lk__store_txn_commit(t, err, sizeof err), LK_OK, "%s", err);
    lk__store_close(s);
    /* [1, "partition?", key, value, ts, []]: msgpack, sealed, but not an outbox record */
    lk__buf_t b;
    lk__buf_init(&b);
    lk__pack_array(&b, 6);
    lk__pack_i64(&b, 1);
    lk__pack_str(&b, "partition?");
    lk__pack_bin_or_nil(&b, "k", 1);
    lk__pack_bin_or_nil(&b, "v", 1);
    lk__pack_i64(&b, 42);
    lk__pack_array(&b, 0);
    unsigned char key[17];
    memcpy(key, "sink", 5);
    memset(key + 5, 0, 12);
    key[12] = 1; /* batch 1, chunk 0 */
    if (LK_CHECKPOINT_FORMAT >= 2) { /* sealed as the store seals values */
        unsigned char tail[4];
        lk__put_be32(tail, lk__crc32c(lk__crc32c(0, b.data, b.len), key, sizeof key));
        lk__buf_append(&b, tail, 4);
    }
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 64), 0);
    cr_assert_eq(mdb_env_open(env, tu_dir, 0, 0644), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "outbox", 0, &dbi), 0);
    MDB_val k = {sizeof key, key}, v = {b.len, b.data};
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    lk__buf_free(&b);

    char e[1024];
    lk_context_t *ctx = lk_context_get_or_create(conf, define_copy, NULL, e, sizeof e);
    cr_assert_not_null(ctx, "%s", e);
    lk_err_t r = lk_context_run_once(ctx);
    cr_assert_eq(r, LK_ERR_CORRUPT, "%s (%s)", lk_err_name(r), lk_context_errstr(ctx));
    cr_assert(strstr(lk_context_errstr(ctx),
                     "record 0 of outbox chunk 0 of sink 'sink' batch 1 does not decode"),
              "%s", lk_context_errstr(ctx));
    r = lk_context_run_once(ctx);
    cr_assert_eq(r, LK_ERR_FATAL, "not tried again: %s (%s)", lk_err_name(r),
                 lk_context_errstr(ctx));
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}
