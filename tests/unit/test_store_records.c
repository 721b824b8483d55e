/*
 * test_store_records.c — every record type of the checkpoint store survives a commit
 * and a reopen exactly: offsets, batch records (and history pruning), the outbox
 * (order, sinks, headers, absent keys and tombstones, acknowledgement, byte accounting),
 * fences, accumulators, keyed state, topology and the recorded configuration (secrets
 * redacted), and reset-offsets' rules (lk__store_reset_offsets). Aborted transactions
 * leave nothing behind.
 */
#define _GNU_SOURCE
#include "testutil.h"
#include "core/util_int.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

TestSuite(store_records, .init = tu_scratch_init, .fini = tu_scratch_fini);

/* Calls without an errstr: assert LK_OK. */
#define OK(expr)                                                                         \
    do {                                                                                 \
        lk_err_t e_ = (expr);                                                            \
        cr_assert_eq(e_, LK_OK, "%s: %s", #expr, lk_err_name(e_));                       \
    } while (0)

/* Most calls take (errstr, size); this passes a scratch buffer and asserts LK_OK. */

static lk__store_t *reopen(lk__store_t *s, const char *app) {
    lk__store_close(s);
    return tu_open(tu_dir, app);
}

/* ---- offsets ---- */

typedef struct {
    char topic[64];
    int32_t partition;
    int64_t offset;
} off_row_t;

typedef struct {
    off_row_t rows[32];
    size_t n;
} off_rows_t;

static int collect_offset(const char *topic, int32_t partition, int64_t offset, void *o) {
    off_rows_t *r = o;
    cr_assert_lt(r->n, LK_ARRAY_SIZE(r->rows));
    snprintf(r->rows[r->n].topic, sizeof r->rows[r->n].topic, "%s", topic);
    r->rows[r->n].partition = partition;
    r->rows[r->n].offset = offset;
    r->n++;
    return 0;
}

static int stop_after_two(const char *topic, int32_t partition, int64_t offset, void *o) {
    (void)topic, (void)partition, (void)offset;
    return ++*(int *)o == 2;
}

static void check_offsets(lk__store_t *s) {
    /* (topic, partition) order: byte order of the topic, then numeric partition */
    static const off_row_t want[] = {
        {"a", 0, 5},       {"orders", 0, 100}, {"orders", 1, 0},
        {"orders", 2, 7},  {"orders", 256, 1}, {"orders-eu", 0, 1LL << 40},
        {"payments", 3, 9},
    };
    lk__store_txn_t *t = tu_begin(s, 0);
    off_rows_t got = {0};
    OK(lk__store_offsets_foreach(t, collect_offset, &got));
    cr_assert_eq(got.n, LK_ARRAY_SIZE(want), "offsets: %zu rows", got.n);
    for (size_t i = 0; i < got.n; i++) {
        cr_assert_str_eq(got.rows[i].topic, want[i].topic, "row %zu", i);
        cr_assert_eq(got.rows[i].partition, want[i].partition, "row %zu", i);
        cr_assert_eq(got.rows[i].offset, want[i].offset, "row %zu", i);
        int64_t off = -1;
        OK(lk__store_offset_get(t, want[i].topic, want[i].partition, &off));
        cr_assert_eq(off, want[i].offset);
    }
    int64_t off = 12345;
    cr_assert_eq(lk__store_offset_get(t, "orders", 3, &off), LK_ERR_NOT_FOUND);
    cr_assert_eq(lk__store_offset_get(t, "order", 0, &off), LK_ERR_NOT_FOUND);
    cr_assert_eq(lk__store_offset_get(t, "nope", 0, &off), LK_ERR_NOT_FOUND);
    cr_assert_eq(off, 12345, "a failed get must not write *offset");
    int calls = 0;
    OK(lk__store_offsets_foreach(t, stop_after_two, &calls));
    cr_assert_eq(calls, 2, "a non-zero return stops the iteration");
    lk__store_txn_abort(t);
}

Test(store_records, offsets_round_trip) {
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__store_txn_t *t = tu_begin(s, 1);
    /* put in scrambled order; one value overwritten within the txn */
    CHECK(lk__store_offset_put(t, "payments", 3, 9, ES));
    CHECK(lk__store_offset_put(t, "orders", 256, 1, ES));
    CHECK(lk__store_offset_put(t, "orders", 2, 7, ES));
    CHECK(lk__store_offset_put(t, "orders-eu", 0, 1LL << 40, ES));
    CHECK(lk__store_offset_put(t, "orders", 0, 99, ES));
    CHECK(lk__store_offset_put(t, "orders", 0, 100, ES));
    CHECK(lk__store_offset_put(t, "orders", 1, 0, ES));
    CHECK(lk__store_offset_put(t, "a", 0, 5, ES));
    /* visible inside the writing txn */
    int64_t off;
    OK(lk__store_offset_get(t, "orders", 0, &off));
    cr_assert_eq(off, 100);
    tu_commit(t);
    check_offsets(s);
    s = reopen(s, "app");
    check_offsets(s);
    lk__store_close(s);
}

/* The rules of `checkpoint reset-offsets` in the store: the partitions asked for (in
 * partition order whatever the request's order), the pending plan dropped with them, a
 * dry run that changes nothing, and a partition without an offset refused whole. */
Test(store_records, reset_offsets_moves_the_offsets_and_drops_the_plan) {
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__store_txn_t *t = tu_begin(s, 1);
    for (int32_t p = 0; p < 4; p++)
        CHECK(lk__store_offset_put(t, "in", p, 100 + p, ES));
    CHECK(lk__store_offset_put(t, "other", 0, 7, ES));
    tu_commit(t);
    lk__range_t range = {"in", 0, 100, 200};
    lk__batch_rec_t plan = {.id = 5, .batch_time_ms = 1, .ranges = &range, .nranges = 1};
    CHECK(lk__store_plan_put(s, &plan, ES));

    int32_t parts[] = {3, 1};
    lk__offset_reset_t r = {"in", parts, 2, 10, 0};
    lk__offset_change_t *ch;
    size_t n;
    uint64_t pid;
    CHECK(lk__store_reset_offsets(s, &r, &ch, &n, &pid, ES)); /* dry run */
    cr_assert_eq(n, 2);
    cr_assert(ch[0].partition == 1 && ch[0].from == 101 && ch[0].to == 10);
    cr_assert(ch[1].partition == 3 && ch[1].from == 103 && ch[1].to == 10);
    cr_assert_eq(pid, 5);
    free(ch);
    t = tu_begin(s, 0);
    int64_t off;
    OK(lk__store_offset_get(t, "in", 1, &off));
    cr_assert_eq(off, 101, "a dry run wrote");
    lk__batch_rec_t got;
    OK(lk__store_plan_get(t, &got));
    lk__store_txn_abort(t);

    r.write = 1;
    CHECK(lk__store_reset_offsets(s, &r, &ch, &n, &pid, ES));
    free(ch);
    cr_assert_eq(pid, 5);
    s = reopen(s, "app");
    t = tu_begin(s, 0);
    for (int32_t p = 0; p < 4; p++) {
        OK(lk__store_offset_get(t, "in", p, &off));
        cr_assert_eq(off, p == 1 || p == 3 ? 10 : 100 + p, "in[%d] at %lld", p, (long long)off);
    }
    cr_assert_eq(lk__store_plan_get(t, &got), LK_ERR_NOT_FOUND, "the plan stayed");
    lk__store_txn_abort(t);

    /* every partition, deleted; no plan left to drop */
    lk__offset_reset_t all = {"in", NULL, 0, -1, 1};
    CHECK(lk__store_reset_offsets(s, &all, &ch, &n, &pid, ES));
    free(ch);
    cr_assert(n == 4 && pid == 0);
    t = tu_begin(s, 0);
    cr_assert_eq(lk__store_offset_get(t, "in", 2, &off), LK_ERR_NOT_FOUND);
    OK(lk__store_offset_get(t, "other", 0, &off));
    lk__store_txn_abort(t);

    /* a topic or a partition without offsets: refused, naming what has them */
    cr_assert_eq(lk__store_reset_offsets(s, &all, &ch, &n, &pid, ES), LK_ERR_NOT_FOUND);
    cr_assert(strstr(tu_err, "topics with offsets: other"), "%s", tu_err);
    cr_assert_null(ch);
    int32_t missing[] = {0, 9};
    lk__offset_reset_t bad = {"other", missing, 2, 1, 1};
    cr_assert_eq(lk__store_reset_offsets(s, &bad, &ch, &n, &pid, ES), LK_ERR_NOT_FOUND);
    cr_assert(strstr(tu_err, "no offset for other[9]; partitions of other with offsets: 0"), "%s",
              tu_err);
    t = tu_begin(s, 0);
    OK(lk__store_offset_get(t, "other", 0, &off));
    cr_assert_eq(off, 7, "a refused reset wrote");
    lk__store_txn_abort(t);
    lk__store_close(s);
}

Test(store_records, offset_topic_too_long_is_refused_without_killing_the_txn) {
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__store_txn_t *t = tu_begin(s, 1);
    char topic[600];
    for (size_t len = 500; len < sizeof topic; len++) {
        memset(topic, 't', len);
        topic[len] = '\0';
        lk_err_t e = lk__store_offset_put(t, topic, 0, 1, ES);
        if (e == LK_OK)
            continue;
        cr_assert_eq(e, LK_ERR_INVALID_ARG, "topic of %zu bytes: %s (%s)", len, tu_err,
                     lk_err_name(e));
        cr_assert(strstr(tu_err, "too long"), "message: %s", tu_err);
    }
    /* the transaction is still usable and commits */
    CHECK(lk__store_offset_put(t, "ok", 0, 1, ES));
    tu_commit(t);
    t = tu_begin(s, 0);
    int64_t off;
    OK(lk__store_offset_get(t, "ok", 0, &off));
    cr_assert_eq(off, 1);
    lk__store_txn_abort(t);
    lk__store_close(s);
}

/* ---- batch records ---- */

static void put_batch(lk__store_txn_t *t, uint64_t id) {
    lk__range_t r[2] = {{"in", 0, (int64_t)id * 10, (int64_t)id * 10 + 10},
                       {"in-two", 7, (int64_t)id, (int64_t)id + 1}};
    lk__batch_rec_t b = {.id = id,
                        .batch_time_ms = 1700000000000LL + (int64_t)id * 1000,
                        .commit_wall_ms = 1700000000500LL + (int64_t)id,
                        .records_in = id * 3,
                        .records_out = id * 2,
                        .nranges = 2,
                        .ranges = r};
    CHECK(lk__store_batch_put(t, &b, ES));
}

static void check_batch(const lk__batch_rec_t *b, uint64_t id) {
    cr_assert_eq(b->id, id);
    cr_assert_eq(b->batch_time_ms, 1700000000000LL + (int64_t)id * 1000);
    cr_assert_eq(b->commit_wall_ms, 1700000000500LL + (int64_t)id);
    cr_assert_eq(b->records_in, id * 3);
    cr_assert_eq(b->records_out, id * 2);
    cr_assert_eq(b->nranges, 2);
    cr_assert_str_eq(b->ranges[0].topic, "in");
    cr_assert_eq(b->ranges[0].partition, 0);
    cr_assert_eq(b->ranges[0].from, (int64_t)id * 10);
    cr_assert_eq(b->ranges[0].until, (int64_t)id * 10 + 10);
    cr_assert_str_eq(b->ranges[1].topic, "in-two");
    cr_assert_eq(b->ranges[1].partition, 7);
    cr_assert_eq(b->ranges[1].from, (int64_t)id);
    cr_assert_eq(b->ranges[1].until, (int64_t)id + 1);
}

Test(store_records, batch_records_round_trip) {
    lk__store_t *s = tu_open(tu_dir, "app");
    cr_assert_eq(lk__store_committed_batch(s), 0);
    lk__store_txn_t *t = tu_begin(s, 0);
    lk__batch_rec_t b;
    cr_assert_eq(lk__store_batch_last(t, &b), LK_ERR_NOT_FOUND);
    cr_assert_eq(lk__store_batch_get(t, 1, &b), LK_ERR_NOT_FOUND);
    cr_assert_eq(lk__store_batch_count(t), 0);
    lk__store_txn_abort(t);

    for (uint64_t id = 1; id <= 5; id++) {
        t = tu_begin(s, 1);
        put_batch(t, id);
        cr_assert_eq(lk__store_committed_batch(s), id - 1, "not committed before commit");
        tu_commit(t);
        cr_assert_eq(lk__store_committed_batch(s), id);
        cr_assert_eq(lk__store_durable_batch(s), id, "per-batch sync: durable at commit");
    }
    /* no ranges, and commit_wall_ms 0 = now */
    int64_t before = lk__wall_ms();
    t = tu_begin(s, 1);
    lk__batch_rec_t empty = {.id = 6, .batch_time_ms = -5};
    CHECK(lk__store_batch_put(t, &empty, ES));
    tu_commit(t);
    int64_t after = lk__wall_ms();

    for (int pass = 0; pass < 2; pass++) {
        t = tu_begin(s, 0);
        cr_assert_eq(lk__store_batch_count(t), 6);
        OK(lk__store_batch_last(t, &b));
        cr_assert_eq(b.id, 6);
        cr_assert_eq(b.batch_time_ms, -5);
        cr_assert_eq(b.nranges, 0);
        cr_assert(b.commit_wall_ms >= before && b.commit_wall_ms <= after,
                  "commit_wall_ms %lld not in [%lld, %lld]", (long long)b.commit_wall_ms,
                  (long long)before, (long long)after);
        for (uint64_t id = 1; id <= 5; id++) {
            OK(lk__store_batch_get(t, id, &b));
            check_batch(&b, id);
        }
        cr_assert_eq(lk__store_batch_get(t, 7, &b), LK_ERR_NOT_FOUND);
        lk__store_txn_abort(t);
        s = reopen(s, "app");
        cr_assert_eq(lk__store_committed_batch(s), 6);
        cr_assert_eq(lk__store_durable_batch(s), 6);
    }
    lk__store_close(s);
}

Test(store_records, batch_history_is_pruned) {
    lk__store_t *s;
    CHECK(tu_open_opts(&s, tu_dir, "app", 0, 3, ES));
    for (uint64_t id = 1; id <= 10; id++) {
        lk__store_txn_t *t = tu_begin(s, 1);
        put_batch(t, id);
        tu_commit(t);
        t = tu_begin(s, 0);
        cr_assert_eq(lk__store_batch_count(t), id < 3 ? id : 3, "after batch %llu",
                     (unsigned long long)id);
        lk__store_txn_abort(t);
    }
    lk__store_txn_t *t = tu_begin(s, 0);
    lk__batch_rec_t b;
    for (uint64_t id = 1; id <= 7; id++)
        cr_assert_eq(lk__store_batch_get(t, id, &b), LK_ERR_NOT_FOUND, "batch %llu kept",
                     (unsigned long long)id);
    for (uint64_t id = 8; id <= 10; id++) {
        OK(lk__store_batch_get(t, id, &b));
        check_batch(&b, id);
    }
    OK(lk__store_batch_last(t, &b));
    check_batch(&b, 10);
    lk__store_txn_abort(t);
    lk__store_close(s);

    /* many records accumulated under a large history, then pruned in one go (more than
     * one round of the pruning loop) */
    CHECK(tu_open_opts(&s, tu_dir, "app", 0, 1000, ES));
    t = tu_begin(s, 1);
    for (uint64_t id = 11; id <= 300; id++)
        put_batch(t, id);
    tu_commit(t);
    t = tu_begin(s, 0);
    cr_assert_eq(lk__store_batch_count(t), 293);
    lk__store_txn_abort(t);
    lk__store_close(s);
    CHECK(tu_open_opts(&s, tu_dir, "app", 0, 2, ES));
    t = tu_begin(s, 1);
    put_batch(t, 301);
    tu_commit(t);
    t = tu_begin(s, 0);
    cr_assert_eq(lk__store_batch_count(t), 2);
    cr_assert_eq(lk__store_batch_get(t, 299, &b), LK_ERR_NOT_FOUND);
    OK(lk__store_batch_get(t, 300, &b));
    check_batch(&b, 300);
    OK(lk__store_batch_get(t, 301, &b));
    check_batch(&b, 301);
    lk__store_txn_abort(t);
    lk__store_close(s);
}

/* ---- outbox ---- */

typedef struct {
    int32_t partition;
    const char *key; /* NULL: no key */
    const char *value; /* NULL: tombstone */
    size_t value_len;
    int64_t ts;
    int nheaders;
} rec_spec_t;

static const lk__header_t hdrs[3] = {
    {"lk-app", "app", 3}, {"lk-batch", "\x00\x01\x02", 3}, {"empty", "", 0}};

static void append(lk__store_txn_t *t, const char *sink, uint64_t batch, const rec_spec_t *r) {
    lk__out_record_t o = {.partition = r->partition,
                         .key = r->key,
                         .key_len = r->key ? strlen(r->key) : 0,
                         .value = r->value,
                         .value_len = r->value_len,
                         .timestamp_ms = r->ts,
                         .nheaders = (size_t)r->nheaders,
                         .headers = hdrs};
    CHECK(lk__store_outbox_append(t, sink, batch, &o, ES));
}

typedef struct {
    const rec_spec_t *want;
    size_t n, seen;
} rec_check_t;

static int check_rec(const lk__out_record_t *r, void *o) {
    rec_check_t *c = o;
    cr_assert_lt(c->seen, c->n, "more records than appended");
    const rec_spec_t *w = &c->want[c->seen++];
    cr_assert_eq(r->partition, w->partition);
    if (w->key) {
        cr_assert_not_null(r->key, "record %zu: key lost", c->seen);
        cr_assert_eq(r->key_len, strlen(w->key));
        cr_assert_eq(memcmp(r->key, w->key, r->key_len), 0);
    } else {
        cr_assert_null(r->key, "record %zu: absent key came back non-NULL", c->seen);
        cr_assert_eq(r->key_len, 0);
    }
    if (w->value) {
        cr_assert_not_null(r->value, "record %zu: empty value became a tombstone", c->seen);
        cr_assert_eq(r->value_len, w->value_len);
        cr_assert_eq(memcmp(r->value, w->value, w->value_len), 0);
    } else {
        cr_assert_null(r->value, "record %zu: tombstone came back with a value", c->seen);
        cr_assert_eq(r->value_len, 0);
    }
    cr_assert_eq(r->timestamp_ms, w->ts);
    cr_assert_eq(r->nheaders, (size_t)w->nheaders);
    for (size_t i = 0; i < r->nheaders; i++) {
        cr_assert_str_eq(r->headers[i].name, hdrs[i].name);
        cr_assert_not_null(r->headers[i].value);
        cr_assert_eq(r->headers[i].value_len, hdrs[i].value_len);
        cr_assert_eq(memcmp(r->headers[i].value, hdrs[i].value, hdrs[i].value_len), 0);
    }
    return 0;
}

static void expect_records(lk__store_txn_t *t, const char *sink, uint64_t batch,
                           const rec_spec_t *want, size_t n) {
    rec_check_t c = {want, n, 0};
    OK(lk__store_outbox_foreach(t, sink, batch, check_rec, &c));
    cr_assert_eq(c.seen, n, "sink %s batch %llu: %zu records, want %zu", sink,
                 (unsigned long long)batch, c.seen, n);
}

typedef struct {
    char sink[64];
    lk__outbox_stat_t st;
} stat_row_t;
typedef struct {
    stat_row_t rows[8];
    size_t n;
} stat_rows_t;

static int collect_stat(const lk__outbox_stat_t *st, void *o) {
    stat_rows_t *r = o;
    cr_assert_lt(r->n, LK_ARRAY_SIZE(r->rows));
    snprintf(r->rows[r->n].sink, sizeof r->rows[r->n].sink, "%s", st->sink);
    r->rows[r->n].st = *st;
    r->n++;
    return 0;
}

/* "a" batch 5: 3 records (2 appended in one txn, 1 in a later one), batch 6: 2,
 * batch 9: 1; "a-b" (sorts after "a") batch 5: 1; "z" batch 2: 1 */
static const rec_spec_t a5[] = {
    {0, "k1", "v1", 2, 1000, 0},
    {-1, NULL, "no key", 6, 1001, 2},   /* absent key */
    {3, "k3", NULL, 0, 1002, 3},        /* tombstone, headers incl. empty value */
};
static const rec_spec_t a6[] = {
    {1, "", "", 0, 2000, 1}, /* empty (not absent) key and empty (not tombstone) value */
    {2, "k\0x", "bin\0ary", 7, 2001, 0},
};
static const rec_spec_t a9[] = {{0, NULL, NULL, 0, 9000, 0}};
static const rec_spec_t ab5[] = {{4, "other", "sink", 4, 5000, 1}};
static const rec_spec_t z2[] = {{0, "zz", "zz", 2, 2, 0}};

static void check_stats(lk__store_txn_t *t, uint64_t want_total_bytes) {
    stat_rows_t got = {0};
    OK(lk__store_outbox_stats(t, collect_stat, &got));
    cr_assert_eq(got.n, 3);
    cr_assert_str_eq(got.rows[0].sink, "a");
    cr_assert_eq(got.rows[0].st.batches, 3);
    cr_assert_eq(got.rows[0].st.records, 6);
    cr_assert_eq(got.rows[0].st.first_batch, 5);
    cr_assert_eq(got.rows[0].st.last_batch, 9);
    cr_assert_str_eq(got.rows[1].sink, "a-b");
    cr_assert_eq(got.rows[1].st.batches, 1);
    cr_assert_eq(got.rows[1].st.records, 1);
    cr_assert_eq(got.rows[1].st.first_batch, 5);
    cr_assert_eq(got.rows[1].st.last_batch, 5);
    cr_assert_str_eq(got.rows[2].sink, "z");
    cr_assert_eq(got.rows[2].st.batches, 1);
    cr_assert_eq(got.rows[2].st.records, 1);
    cr_assert_eq(got.rows[2].st.first_batch, 2);
    cr_assert_eq(got.rows[2].st.last_batch, 2);
    uint64_t sum = 0;
    for (size_t i = 0; i < got.n; i++) {
        cr_assert_gt(got.rows[i].st.bytes, 0);
        sum += got.rows[i].st.bytes;
    }
    cr_assert_eq(sum, want_total_bytes, "stats bytes %llu, outbox_bytes %llu",
                 (unsigned long long)sum, (unsigned long long)want_total_bytes);
}

static void check_outbox(lk__store_t *s) {
    lk__store_txn_t *t = tu_begin(s, 0);
    uint64_t first = 0;
    OK(lk__store_outbox_first_batch(t, "a", &first));
    cr_assert_eq(first, 5);
    OK(lk__store_outbox_first_batch(t, "a-b", &first));
    cr_assert_eq(first, 5);
    OK(lk__store_outbox_first_batch(t, "z", &first));
    cr_assert_eq(first, 2);
    cr_assert_eq(lk__store_outbox_first_batch(t, "", &first), LK_ERR_NOT_FOUND);
    cr_assert_eq(lk__store_outbox_first_batch(t, "b", &first), LK_ERR_NOT_FOUND);
    expect_records(t, "a", 5, a5, 3);
    expect_records(t, "a", 6, a6, 2);
    expect_records(t, "a", 7, NULL, 0);
    expect_records(t, "a", 9, a9, 1);
    expect_records(t, "a-b", 5, ab5, 1);
    expect_records(t, "z", 2, z2, 1);
    expect_records(t, "z", 5, NULL, 0);
    check_stats(t, lk__store_outbox_bytes(s));
    lk__store_txn_abort(t);
}

static int count_rec(const lk__out_record_t *r, void *o) {
    (void)r;
    ++*(int *)o;
    return 0;
}

Test(store_records, outbox_round_trip_ack_and_bytes) {
    lk__store_t *s = tu_open(tu_dir, "app");
    cr_assert_eq(lk__store_outbox_bytes(s), 0);
    lk__store_txn_t *t = tu_begin(s, 1);
    append(t, "a", 6, &a6[0]); /* batches need not be appended in order */
    append(t, "a", 5, &a5[0]);
    append(t, "z", 2, &z2[0]);
    append(t, "a", 5, &a5[1]);
    append(t, "a-b", 5, &ab5[0]);
    append(t, "a", 6, &a6[1]);
    tu_commit(t);
    uint64_t b1 = lk__store_outbox_bytes(s);
    cr_assert_gt(b1, 0, "outbox bytes must grow on append");

    /* a later transaction continues batch 5's sequence after the existing records */
    t = tu_begin(s, 1);
    append(t, "a", 5, &a5[2]);
    append(t, "a", 9, &a9[0]);
    cr_assert_eq(lk__store_outbox_bytes(s), b1, "uncommitted appends are not counted");
    tu_commit(t);
    uint64_t b2 = lk__store_outbox_bytes(s);
    cr_assert_gt(b2, b1);
    check_outbox(s);

    s = reopen(s, "app");
    cr_assert_eq(lk__store_outbox_bytes(s), b2, "outbox bytes restored on reopen");
    check_outbox(s);

    /* an aborted ack changes nothing */
    t = tu_begin(s, 1);
    CHECK(lk__store_outbox_ack(t, "a", 100, ES));
    lk__store_txn_abort(t);
    cr_assert_eq(lk__store_outbox_bytes(s), b2);
    check_outbox(s);

    /* ack "a" through 6: batch 9 of "a" and the other sinks stay */
    t = tu_begin(s, 1);
    CHECK(lk__store_outbox_ack(t, "a", 6, ES));
    CHECK(lk__store_outbox_ack(t, "nothing-here", 100, ES));
    tu_commit(t);
    uint64_t b3 = lk__store_outbox_bytes(s);
    cr_assert_lt(b3, b2, "outbox bytes must go down on ack");
    for (int pass = 0; pass < 2; pass++) {
        t = tu_begin(s, 0);
        uint64_t first;
        OK(lk__store_outbox_first_batch(t, "a", &first));
        cr_assert_eq(first, 9);
        expect_records(t, "a", 5, NULL, 0);
        expect_records(t, "a", 6, NULL, 0);
        expect_records(t, "a", 9, a9, 1);
        expect_records(t, "a-b", 5, ab5, 1);
        expect_records(t, "z", 2, z2, 1);
        stat_rows_t st = {0};
        OK(lk__store_outbox_stats(t, collect_stat, &st));
        cr_assert_eq(st.n, 3);
        cr_assert_eq(st.rows[0].st.records, 1);
        cr_assert_eq(st.rows[0].st.bytes + st.rows[1].st.bytes + st.rows[2].st.bytes, b3);
        lk__store_txn_abort(t);
        s = reopen(s, "app");
        cr_assert_eq(lk__store_outbox_bytes(s), b3);
    }

    /* ack everything */
    t = tu_begin(s, 1);
    CHECK(lk__store_outbox_ack(t, "a", 9, ES));
    CHECK(lk__store_outbox_ack(t, "a-b", 5, ES));
    CHECK(lk__store_outbox_ack(t, "z", UINT64_MAX, ES));
    tu_commit(t);
    cr_assert_eq(lk__store_outbox_bytes(s), 0);
    s = reopen(s, "app");
    cr_assert_eq(lk__store_outbox_bytes(s), 0);
    t = tu_begin(s, 0);
    uint64_t first;
    cr_assert_eq(lk__store_outbox_first_batch(t, "a", &first), LK_ERR_NOT_FOUND);
    stat_rows_t st = {0};
    OK(lk__store_outbox_stats(t, collect_stat, &st));
    cr_assert_eq(st.n, 0);
    lk__store_txn_abort(t);
    lk__store_close(s);
}

Test(store_records, outbox_many_records_keep_order_and_ack_in_rounds) {
    /* more records than one round of the ack loop, in one batch and across batches */
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__store_txn_t *t = tu_begin(s, 1);
    for (uint64_t b = 1; b <= 3; b++)
        for (int i = 0; i < 700; i++) {
            char v[32];
            int n = snprintf(v, sizeof v, "%llu:%d", (unsigned long long)b, i);
            lk__out_record_t r = {.partition = i % 4, .value = v, .value_len = (size_t)n};
            CHECK(lk__store_outbox_append(t, "big", b, &r, ES));
        }
    tu_commit(t);
    uint64_t all = lk__store_outbox_bytes(s);
    t = tu_begin(s, 0);
    int n = 0;
    OK(lk__store_outbox_foreach(t, "big", 2, count_rec, &n));
    cr_assert_eq(n, 700);
    lk__store_txn_abort(t);

    t = tu_begin(s, 1);
    CHECK(lk__store_outbox_ack(t, "big", 2, ES));
    tu_commit(t);
    cr_assert_lt(lk__store_outbox_bytes(s), all / 2);
    s = reopen(s, "app");
    t = tu_begin(s, 0);
    uint64_t first;
    OK(lk__store_outbox_first_batch(t, "big", &first));
    cr_assert_eq(first, 3);
    n = 0;
    OK(lk__store_outbox_foreach(t, "big", 2, count_rec, &n));
    cr_assert_eq(n, 0);
    n = 0;
    OK(lk__store_outbox_foreach(t, "big", 3, count_rec, &n));
    cr_assert_eq(n, 700);
    stat_rows_t st = {0};
    OK(lk__store_outbox_stats(t, collect_stat, &st));
    cr_assert_eq(st.n, 1);
    cr_assert_eq(st.rows[0].st.bytes, lk__store_outbox_bytes(s));
    lk__store_txn_abort(t);
    lk__store_close(s);
}

/* Records are stored in chunks of about 32 KiB: appends to one batch across several txns
 * continue after the chunks already there, reads in the appending txn see the records not
 * yet written as a chunk, and order, counts and bytes hold across chunk boundaries. */
typedef struct {
    uint64_t batch;
    int next, stop_at;
} seq_check_t;

static int check_seq(const lk__out_record_t *r, void *o) {
    seq_check_t *c = o;
    char want[256];
    int n = snprintf(want, sizeof want, "%llu:%06d:%0200d", (unsigned long long)c->batch,
                     c->next, 0);
    cr_assert_eq(r->value_len, (size_t)n, "record %d: length %zu", c->next, r->value_len);
    cr_assert_eq(memcmp(r->value, want, (size_t)n), 0, "record %d out of order", c->next);
    c->next++;
    return c->next == c->stop_at;
}

static void append_seq(lk__store_txn_t *t, uint64_t batch, int from, int to) {
    for (int i = from; i < to; i++) {
        char v[256];
        int n = snprintf(v, sizeof v, "%llu:%06d:%0200d", (unsigned long long)batch, i, 0);
        lk__out_record_t r = {.partition = i % 3, .value = v, .value_len = (size_t)n};
        CHECK(lk__store_outbox_append(t, "chunky", batch, &r, ES));
    }
}

Test(store_records, outbox_chunks_span_txns_and_keep_order) {
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__store_txn_t *t = tu_begin(s, 1);
    append_seq(t, 7, 0, 1000); /* ~220 KB: several chunks and a partial one */
    seq_check_t c = {7, 0, -1};
    OK(lk__store_outbox_foreach(t, "chunky", 7, check_seq, &c));
    cr_assert_eq(c.next, 1000, "the appending txn sees %d of 1000 records", c.next);
    append_seq(t, 7, 1000, 1010); /* appending after a read continues the same batch */
    tu_commit(t);
    uint64_t bytes1 = lk__store_outbox_bytes(s);

    t = tu_begin(s, 1);
    append_seq(t, 7, 1010, 1500);
    append_seq(t, 8, 0, 5);
    tu_commit(t);
    cr_assert_gt(lk__store_outbox_bytes(s), bytes1);

    s = reopen(s, "app");
    t = tu_begin(s, 0);
    c = (seq_check_t){7, 0, -1};
    OK(lk__store_outbox_foreach(t, "chunky", 7, check_seq, &c));
    cr_assert_eq(c.next, 1500);
    c = (seq_check_t){7, 0, 777};
    OK(lk__store_outbox_foreach(t, "chunky", 7, check_seq, &c));
    cr_assert_eq(c.next, 777, "a callback's stop must end the walk inside a chunk");
    c = (seq_check_t){8, 0, -1};
    OK(lk__store_outbox_foreach(t, "chunky", 8, check_seq, &c));
    cr_assert_eq(c.next, 5);
    stat_rows_t st = {0};
    OK(lk__store_outbox_stats(t, collect_stat, &st));
    cr_assert_eq(st.n, 1);
    cr_assert_eq(st.rows[0].st.records, 1505, "stats count records, not chunks");
    cr_assert_eq(st.rows[0].st.batches, 2);
    cr_assert_eq(st.rows[0].st.bytes, lk__store_outbox_bytes(s));
    lk__store_txn_abort(t);

    t = tu_begin(s, 1);
    CHECK(lk__store_outbox_ack(t, "chunky", 7, ES));
    tu_commit(t);
    t = tu_begin(s, 0);
    uint64_t first;
    OK(lk__store_outbox_first_batch(t, "chunky", &first));
    cr_assert_eq(first, 8);
    lk__store_txn_abort(t);
    t = tu_begin(s, 1);
    CHECK(lk__store_outbox_ack(t, "chunky", 8, ES));
    tu_commit(t);
    cr_assert_eq(lk__store_outbox_bytes(s), 0);
    lk__store_close(s);
}

/* ---- fences ---- */

typedef struct {
    char sink[64];
    uint64_t batch;
    int64_t wall;
} fence_row_t;
typedef struct {
    fence_row_t rows[8];
    size_t n;
} fence_rows_t;

static int collect_fence(const char *sink, uint64_t batch, int64_t wall, void *o) {
    fence_rows_t *r = o;
    cr_assert_lt(r->n, LK_ARRAY_SIZE(r->rows));
    snprintf(r->rows[r->n].sink, sizeof r->rows[r->n].sink, "%s", sink);
    r->rows[r->n].batch = batch;
    r->rows[r->n].wall = wall;
    r->n++;
    return 0;
}

Test(store_records, fences_round_trip) {
    lk__store_t *s = tu_open(tu_dir, "app");
    int64_t before = lk__wall_ms();
    lk__store_txn_t *t = tu_begin(s, 1);
    CHECK(lk__store_fence_put(t, "kafka-out", 3, ES));
    CHECK(lk__store_fence_put(t, "files", 17, ES));
    CHECK(lk__store_fence_put(t, "kafka-out", 4, ES));
    tu_commit(t);
    int64_t after = lk__wall_ms();
    for (int pass = 0; pass < 2; pass++) {
        t = tu_begin(s, 0);
        uint64_t b = 0;
        OK(lk__store_fence_get(t, "kafka-out", &b));
        cr_assert_eq(b, 4);
        OK(lk__store_fence_get(t, "files", &b));
        cr_assert_eq(b, 17);
        cr_assert_eq(lk__store_fence_get(t, "kafka", &b), LK_ERR_NOT_FOUND);
        fence_rows_t got = {0};
        OK(lk__store_fences_foreach(t, collect_fence, &got));
        cr_assert_eq(got.n, 2);
        cr_assert_str_eq(got.rows[0].sink, "files");
        cr_assert_eq(got.rows[0].batch, 17);
        cr_assert_str_eq(got.rows[1].sink, "kafka-out");
        cr_assert_eq(got.rows[1].batch, 4);
        for (size_t i = 0; i < 2; i++)
            cr_assert(got.rows[i].wall >= before && got.rows[i].wall <= after);
        lk__store_txn_abort(t);
        s = reopen(s, "app");
    }
    lk__store_close(s);
}

/* ---- accumulators ---- */

typedef struct {
    char names[8][32];
    int64_t values[8];
    size_t n;
} acc_rows_t;

static int collect_acc(const char *name, int64_t value, void *o) {
    acc_rows_t *r = o;
    cr_assert_lt(r->n, 8);
    snprintf(r->names[r->n], sizeof r->names[r->n], "%s", name);
    r->values[r->n++] = value;
    return 0;
}

Test(store_records, accumulators_add_across_txns_and_reopen) {
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__store_txn_t *t = tu_begin(s, 1);
    CHECK(lk__store_acc_add(t, "records", 10, ES));
    CHECK(lk__store_acc_add(t, "records", 5, ES)); /* twice in one txn */
    CHECK(lk__store_acc_add(t, "errors", -3, ES));
    int64_t v;
    OK(lk__store_acc_get(t, "records", &v));
    cr_assert_eq(v, 15);
    tu_commit(t);
    t = tu_begin(s, 1);
    CHECK(lk__store_acc_add(t, "records", 100, ES));
    tu_commit(t);
    t = tu_begin(s, 1);
    CHECK(lk__store_acc_add(t, "records", 1000000, ES)); /* aborted: not counted */
    lk__store_txn_abort(t);
    s = reopen(s, "app");
    t = tu_begin(s, 1);
    CHECK(lk__store_acc_add(t, "records", 1LL << 40, ES));
    CHECK(lk__store_acc_add(t, "zero", 0, ES));
    tu_commit(t);
    s = reopen(s, "app");
    t = tu_begin(s, 0);
    OK(lk__store_acc_get(t, "records", &v));
    cr_assert_eq(v, 115 + (1LL << 40));
    OK(lk__store_acc_get(t, "errors", &v));
    cr_assert_eq(v, -3);
    OK(lk__store_acc_get(t, "zero", &v));
    cr_assert_eq(v, 0);
    cr_assert_eq(lk__store_acc_get(t, "missing", &v), LK_ERR_NOT_FOUND);
    acc_rows_t got = {0};
    OK(lk__store_acc_foreach(t, collect_acc, &got));
    cr_assert_eq(got.n, 3);
    cr_assert_str_eq(got.names[0], "errors");
    cr_assert_eq(got.values[0], -3);
    cr_assert_str_eq(got.names[1], "records");
    cr_assert_eq(got.values[1], 115 + (1LL << 40));
    cr_assert_str_eq(got.names[2], "zero");
    lk__store_txn_abort(t);
    lk__store_close(s);
}

/* ---- keyed state ---- */

typedef struct {
    char keys[16][16];
    char vals[16][16];
    int64_t upd[16];
    size_t n;
} kv_rows_t;

static int collect_kv(const void *k, size_t kl, const void *v, size_t vl, int64_t upd,
                      void *o) {
    kv_rows_t *r = o;
    cr_assert_lt(r->n, 16);
    cr_assert_lt(kl, 16);
    cr_assert_lt(vl, 16);
    cr_assert_not_null(v, "foreach: a stored value is never NULL");
    memcpy(r->keys[r->n], k, kl);
    r->keys[r->n][kl] = 0;
    memcpy(r->vals[r->n], v, vl);
    r->vals[r->n][vl] = 0;
    r->upd[r->n++] = upd;
    return 0;
}

static void expect_state(lk__store_txn_t *t, lk__state_db_t db, const char *key,
                         const char *val, int64_t upd) {
    const void *v = NULL;
    size_t vl = 99;
    int64_t u = 0;
    lk_err_t e = lk__store_state_get(t, db, key, strlen(key), &v, &vl, &u);
    if (!val) {
        cr_assert_eq(e, LK_ERR_NOT_FOUND, "key %s: %s", key, lk_err_name(e));
        return;
    }
    cr_assert_eq(e, LK_OK, "key %s: %s", key, lk_err_name(e));
    cr_assert_not_null(v, "key %s: a stored (even empty) value is never NULL", key);
    cr_assert_eq(vl, strlen(val), "key %s", key);
    cr_assert_eq(memcmp(v, val, vl), 0, "key %s", key);
    cr_assert_eq(u, upd, "key %s updated_ms", key);
}

Test(store_records, keyed_state_round_trip) {
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__state_db_t counts, other;
    CHECK(lk__store_state_open(s, "word-counts", &counts, ES));
    CHECK(lk__store_state_open(s, "sessions", &other, ES));
    lk__state_db_t again;
    CHECK(lk__store_state_open(s, "word-counts", &again, ES));
    cr_assert_eq(again, counts, "the same uid gives the same handle");

    lk__store_txn_t *t = tu_begin(s, 1);
    /* state_open inside a write txn is refused for a new uid */
    lk__state_db_t x;
    cr_assert_eq(lk__store_state_open(s, "new-op", &x, ES), LK_ERR_STATE);
    CHECK(lk__store_state_put(t, counts, "fox", 3, "1", 1, 100, ES));
    CHECK(lk__store_state_put(t, counts, "dog", 3, "22", 2, 200, ES));
    CHECK(lk__store_state_put(t, counts, "the", 3, "4", 1, 300, ES));
    CHECK(lk__store_state_put(t, counts, "empty", 5, "", 0, 400, ES));
    CHECK(lk__store_state_put(t, counts, "nullval", 7, NULL, 0, 500, ES));
    CHECK(lk__store_state_put(t, counts, "gone", 4, "x", 1, 600, ES));
    CHECK(lk__store_state_put(t, other, "fox", 3, "other-db", 8, -7, ES));
    expect_state(t, counts, "dog", "22", 200);
    CHECK(lk__store_state_put(t, counts, "fox", 3, "333", 3, 700, ES)); /* overwrite */
    expect_state(t, counts, "fox", "333", 700);
    CHECK(lk__store_state_del(t, counts, "gone", 4, ES));
    CHECK(lk__store_state_del(t, counts, "never-existed", 13, ES));
    expect_state(t, counts, "gone", NULL, 0);
    tu_commit(t);

    for (int pass = 0; pass < 2; pass++) {
        t = tu_begin(s, 0);
        expect_state(t, counts, "fox", "333", 700);
        expect_state(t, counts, "dog", "22", 200);
        expect_state(t, counts, "the", "4", 300);
        expect_state(t, counts, "empty", "", 400);
        expect_state(t, counts, "nullval", "", 500);
        expect_state(t, counts, "gone", NULL, 0);
        expect_state(t, other, "fox", "other-db", -7);
        expect_state(t, other, "dog", NULL, 0);
        kv_rows_t got = {0};
        OK(lk__store_state_foreach(t, counts, collect_kv, &got));
        static const char *const wk[] = {"dog", "empty", "fox", "nullval", "the"};
        static const char *const wv[] = {"22", "", "333", "", "4"};
        static const int64_t wu[] = {200, 400, 700, 500, 300};
        cr_assert_eq(got.n, 5);
        for (size_t i = 0; i < 5; i++) {
            cr_assert_str_eq(got.keys[i], wk[i]);
            cr_assert_str_eq(got.vals[i], wv[i]);
            cr_assert_eq(got.upd[i], wu[i]);
        }
        lk__store_txn_abort(t);
        lk__store_close(s);
        s = tu_open(tu_dir, "app");
        /* handles are per store: open again after reopen */
        CHECK(lk__store_state_open(s, "word-counts", &counts, ES));
        CHECK(lk__store_state_open(s, "sessions", &other, ES));
    }

    /* delete, then the key is gone after commit and reopen */
    t = tu_begin(s, 1);
    CHECK(lk__store_state_del(t, counts, "fox", 3, ES));
    tu_commit(t);
    s = reopen(s, "app");
    CHECK(lk__store_state_open(s, "word-counts", &counts, ES));
    t = tu_begin(s, 0);
    expect_state(t, counts, "fox", NULL, 0);
    expect_state(t, counts, "dog", "22", 200);
    lk__store_txn_abort(t);
    lk__store_close(s);
}

/* Every msgpack form of the envelope's time and value length reads back exactly (the
 * store reads its own envelope without msgpack's general decoder when it can). */
Test(store_records, state_envelope_forms_round_trip) {
    static const int64_t times[] = {0,          1,          127,        128,       255,
                                    256,        65535,      65536,      0x12345678, INT32_MAX, (int64_t)1 << 32,
                                    1795293000000LL, INT64_MAX, -1,     -33,       INT64_MIN};
    static const size_t lens[] = {0, 1, 255, 256, 65535, 65536, 70000};
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__state_db_t db;
    CHECK(lk__store_state_open(s, "forms", &db, ES));
    char *val = malloc(70000);
    cr_assert_not_null(val);
    for (size_t i = 0; i < 70000; i++)
        val[i] = (char)(i * 7 + 3);
    lk__store_txn_t *t = tu_begin(s, 1);
    for (size_t i = 0; i < LK_ARRAY_SIZE(times); i++)
        for (size_t j = 0; j < LK_ARRAY_SIZE(lens); j++) {
            char key[32];
            int kl = snprintf(key, sizeof key, "k%zu-%zu", i, j);
            CHECK(lk__store_state_put(t, db, key, (size_t)kl, val, lens[j], times[i], ES));
        }
    tu_commit(t);
    t = tu_begin(s, 0);
    for (size_t i = 0; i < LK_ARRAY_SIZE(times); i++)
        for (size_t j = 0; j < LK_ARRAY_SIZE(lens); j++) {
            char key[32];
            int kl = snprintf(key, sizeof key, "k%zu-%zu", i, j);
            const void *v;
            size_t vl;
            int64_t upd;
            OK(lk__store_state_get(t, db, key, (size_t)kl, &v, &vl, &upd));
            cr_assert_eq(upd, times[i], "%s: time %lld, want %lld", key, (long long)upd,
                         (long long)times[i]);
            cr_assert_eq(vl, lens[j], "%s: %zu bytes, want %zu", key, vl, lens[j]);
            cr_assert_eq(memcmp(v, val, vl), 0, "%s: value bytes differ", key);
        }
    lk__store_txn_abort(t);
    free(val);
    lk__store_close(s);
}

Test(store_records, state_key_length_limits) {
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__state_db_t db;
    CHECK(lk__store_state_open(s, "op", &db, ES));
    char key[1024];
    memset(key, 'k', sizeof key);
    lk__store_txn_t *t = tu_begin(s, 1);
    CHECK(lk__store_state_put(t, db, key, 1, "one", 3, 1, ES));
    CHECK(lk__store_state_put(t, db, key, 511, "max", 3, 2, ES));
    lk_err_t e = lk__store_state_put(t, db, key, 512, "v", 1, 3, ES);
    cr_assert_eq(e, LK_ERR_TOO_LARGE, "512-byte key: %s", lk_err_name(e));
    cr_assert(strstr(tu_err, "512"), "message names the size: %s", tu_err);
    cr_assert_eq(lk__store_state_put(t, db, key, 1000, "v", 1, 3, ES), LK_ERR_TOO_LARGE);
    cr_assert_eq(lk__store_state_put(t, db, key, 0, "v", 1, 3, ES), LK_ERR_TOO_LARGE);
    /* reading or deleting a key that cannot exist is refused the same way and does not
     * break the transaction */
    const void *v;
    size_t vl;
    cr_assert_eq(lk__store_state_get(t, db, key, 512, &v, &vl, NULL), LK_ERR_TOO_LARGE);
    cr_assert_eq(lk__store_state_get(t, db, key, 0, &v, &vl, NULL), LK_ERR_TOO_LARGE);
    e = lk__store_state_del(t, db, key, 512, ES);
    cr_assert_eq(e, LK_ERR_TOO_LARGE, "del of a 512-byte key: %s (%s)", tu_err, lk_err_name(e));
    cr_assert_eq(lk__store_state_del(t, db, key, 0, ES), LK_ERR_TOO_LARGE);
    /* the refusals did not poison the transaction */
    CHECK(lk__store_state_put(t, db, "after", 5, "ok", 2, 4, ES));
    tu_commit(t);
    s = reopen(s, "app");
    CHECK(lk__store_state_open(s, "op", &db, ES));
    t = tu_begin(s, 0);
    int64_t upd;
    OK(lk__store_state_get(t, db, key, 1, &v, &vl, &upd));
    cr_assert_eq(vl, 3);
    cr_assert_eq(memcmp(v, "one", 3), 0);
    OK(lk__store_state_get(t, db, key, 511, &v, &vl, &upd));
    cr_assert_eq(memcmp(v, "max", 3), 0);
    cr_assert_eq(upd, 2);
    expect_state(t, db, "after", "ok", 4);
    lk__store_txn_abort(t);
    lk__store_close(s);
}

Test(store_records, state_handle_checks) {
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__store_txn_t *t = tu_begin(s, 1);
    const void *v;
    size_t vl;
    cr_assert_eq(lk__store_state_get(t, 0, "k", 1, &v, &vl, NULL), LK_ERR_INVALID_ARG);
    cr_assert_eq(lk__store_state_put(t, 3, "k", 1, "v", 1, 0, ES), LK_ERR_INVALID_ARG);
    cr_assert_eq(lk__store_state_del(t, -1, "k", 1, ES), LK_ERR_INVALID_ARG);
    lk__store_txn_abort(t);
    /* a read transaction refuses writes */
    lk__state_db_t db;
    CHECK(lk__store_state_open(s, "op", &db, ES));
    t = tu_begin(s, 0);
    cr_assert_eq(lk__store_state_put(t, db, "k", 1, "v", 1, 0, ES), LK_ERR_STATE);
    lk__store_txn_abort(t);
    /* one write transaction at a time */
    t = tu_begin(s, 1);
    lk__store_txn_t *t2 = NULL;
    cr_assert_eq(lk__store_txn_begin(s, 1, &t2, ES), LK_ERR_STATE);
    cr_assert_null(t2);
    lk__store_txn_abort(t);
    lk__store_close(s);
}

/* ---- topology and config ---- */

Test(store_records, topology_round_trip) {
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__store_txn_t *t = tu_begin(s, 0);
    lk__topo_op_t *ops = (lk__topo_op_t *)1;
    size_t n = 99;
    OK(lk__store_topology_get(t, &ops, &n));
    cr_assert_eq(n, 0, "no topology recorded yet");
    lk__store_txn_abort(t);

    const lk__topo_op_t want[] = {
        {"lines", "kafka_stream", 0, "topic=lines"},
        {"split-words", "flat_map", 0, ""},
        {"word-counts", "update_state_by_key", 3, "partitions=8 ttl=0"},
    };
    t = tu_begin(s, 1);
    lk__topo_op_t first[1] = {{"old", "map", 1, NULL}};
    CHECK(lk__store_topology_put(t, first, 1, ES));
    CHECK(lk__store_topology_put(t, want, 3, ES)); /* replaces */
    tu_commit(t);
    for (int pass = 0; pass < 2; pass++) {
        t = tu_begin(s, 0);
        OK(lk__store_topology_get(t, &ops, &n));
        cr_assert_eq(n, 3);
        for (size_t i = 0; i < n; i++) {
            cr_assert_str_eq(ops[i].uid, want[i].uid);
            cr_assert_str_eq(ops[i].kind, want[i].kind);
            cr_assert_eq(ops[i].schema_version, want[i].schema_version);
            cr_assert_str_eq(ops[i].params, want[i].params);
        }
        lk__store_txn_abort(t);
        s = reopen(s, "app");
    }
    lk__store_close(s);
}

typedef struct {
    int saw_password, saw_app, saw_servers, saw_dir;
    char password[64];
} cfg_seen_t;

static int see_cfg(const char *k, const char *v, void *o) {
    cfg_seen_t *c = o;
    cr_assert(!strstr(v, "hunter2"), "secret stored in clear under %s", k);
    if (!strcmp(k, "kafka.sasl.password")) {
        c->saw_password++;
        snprintf(c->password, sizeof c->password, "%s", v);
    } else if (!strcmp(k, "app.id")) {
        c->saw_app++;
        cr_assert_str_eq(v, "cfg-app");
    } else if (!strcmp(k, "kafka.bootstrap.servers")) {
        c->saw_servers++;
        cr_assert_str_eq(v, "broker:9092");
    } else if (!strcmp(k, "checkpoint.dir")) {
        c->saw_dir++;
        cr_assert_str_eq(v, tu_dir);
    }
    return 0;
}

Test(store_records, config_recorded_with_secrets_redacted) {
    char err[512];
    lk_conf_t *conf = lk_conf_new();
    cr_assert_eq(lk_conf_set(conf, "app.id", "cfg-app", err, sizeof err), LK_CONF_OK, "%s", err);
    cr_assert_eq(lk_conf_set(conf, "checkpoint.dir", tu_dir, err, sizeof err), LK_CONF_OK, "%s",
                 err);
    cr_assert_eq(lk_conf_set(conf, "kafka.bootstrap.servers", "broker:9092", err, sizeof err),
                 LK_CONF_OK, "%s", err);
    cr_assert_eq(lk_conf_set(conf, "kafka.sasl.password", "hunter2", err, sizeof err),
                 LK_CONF_OK, "%s", err);
    lk__store_opts_t o;
    lk__store_opts_from_conf(&o, conf);
    o.map_size = 1 << 20;
    lk__store_t *s;
    CHECK(lk__store_open(&s, &o, ES));
    for (int pass = 0; pass < 2; pass++) {
        lk__store_txn_t *t = tu_begin(s, 0);
        cfg_seen_t seen = {0};
        OK(lk__store_config_foreach(t, see_cfg, &seen));
        cr_assert_eq(seen.saw_password, 1);
        cr_assert_str_eq(seen.password, "[redacted]");
        cr_assert_eq(seen.saw_app, 1);
        cr_assert_eq(seen.saw_servers, 1);
        cr_assert_eq(seen.saw_dir, 1);
        lk__store_txn_abort(t);
        lk__store_close(s);
        s = tu_open(tu_dir, "cfg-app"); /* no conf: the recorded config stays */
    }
    lk__store_close(s);
    lk_conf_destroy(conf);
    char p[4200];
    cr_assert(!tu_file_contains(tu_path(p, sizeof p, tu_dir, "data.mdb"), "hunter2", 7),
              "the password reached the data file");
}

/* ---- aborted transactions ---- */

static int count_any_offset(const char *a, int32_t b, int64_t c, void *o) {
    (void)a, (void)b, (void)c;
    ++*(int *)o;
    return 0;
}
static int count_any_fence(const char *a, uint64_t b, int64_t c, void *o) {
    (void)a, (void)b, (void)c;
    ++*(int *)o;
    return 0;
}
static int count_any_acc(const char *a, int64_t b, void *o) {
    (void)a, (void)b;
    ++*(int *)o;
    return 0;
}
static int count_any_state(const void *a, size_t b, const void *c, size_t d, int64_t e,
                           void *o) {
    (void)a, (void)b, (void)c, (void)d, (void)e;
    ++*(int *)o;
    return 0;
}
static int count_any_stat(const lk__outbox_stat_t *st, void *o) {
    (void)st;
    ++*(int *)o;
    return 0;
}

static void write_everything(lk__store_txn_t *t, lk__state_db_t db) {
    CHECK(lk__store_offset_put(t, "in", 0, 42, ES));
    put_batch(t, 1);
    append(t, "out", 1, &a5[0]);
    CHECK(lk__store_fence_put(t, "out", 1, ES));
    CHECK(lk__store_acc_add(t, "n", 1, ES));
    CHECK(lk__store_state_put(t, db, "k", 1, "v", 1, 1, ES));
    lk__topo_op_t op = {"op", "map", 1, "p"};
    CHECK(lk__store_topology_put(t, &op, 1, ES));
}

static void expect_nothing(lk__store_t *s, lk__state_db_t db) {
    cr_assert_eq(lk__store_committed_batch(s), 0);
    cr_assert_eq(lk__store_outbox_bytes(s), 0);
    lk__store_txn_t *t = tu_begin(s, 0);
    int n = 0;
    OK(lk__store_offsets_foreach(t, count_any_offset, &n));
    OK(lk__store_fences_foreach(t, count_any_fence, &n));
    OK(lk__store_acc_foreach(t, count_any_acc, &n));
    OK(lk__store_state_foreach(t, db, count_any_state, &n));
    OK(lk__store_outbox_stats(t, count_any_stat, &n));
    cr_assert_eq(n, 0, "%d entries left by an aborted transaction", n);
    cr_assert_eq(lk__store_batch_count(t), 0);
    lk__topo_op_t *ops;
    size_t nops;
    OK(lk__store_topology_get(t, &ops, &nops));
    cr_assert_eq(nops, 0);
    lk__store_txn_abort(t);
}

Test(store_records, aborted_transactions_leave_nothing) {
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__state_db_t db;
    CHECK(lk__store_state_open(s, "op", &db, ES));
    lk__store_txn_t *t = tu_begin(s, 1);
    write_everything(t, db);
    lk__store_txn_abort(t);
    expect_nothing(s, db);

    /* closing with a write transaction open aborts it */
    t = tu_begin(s, 1);
    write_everything(t, db);
    lk__store_close(s);
    s = tu_open(tu_dir, "app");
    CHECK(lk__store_state_open(s, "op", &db, ES));
    expect_nothing(s, db);

    /* a write transaction can follow an aborted one, and commits everything */
    t = tu_begin(s, 1);
    write_everything(t, db);
    tu_commit(t);
    cr_assert_eq(lk__store_committed_batch(s), 1);
    cr_assert_gt(lk__store_outbox_bytes(s), 0);
    lk__store_close(s);
}

Test(store_records, read_txn_sees_a_snapshot) {
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__store_txn_t *w = tu_begin(s, 1);
    CHECK(lk__store_offset_put(w, "in", 0, 1, ES));
    tu_commit(w);
    lk__store_txn_t *r = tu_begin(s, 0);
    w = tu_begin(s, 1);
    CHECK(lk__store_offset_put(w, "in", 0, 2, ES));
    tu_commit(w);
    int64_t off;
    OK(lk__store_offset_get(r, "in", 0, &off));
    cr_assert_eq(off, 1, "a read txn must not see a later commit");
    lk__store_txn_abort(r);
    r = tu_begin(s, 0);
    OK(lk__store_offset_get(r, "in", 0, &off));
    cr_assert_eq(off, 2);
    tu_commit(r); /* committing a read txn just ends it */
    lk__store_close(s);
}

Test(store_records, overlong_names_are_refused_without_killing_the_txn) {
    lk__store_t *s = tu_open(tu_dir, "app");
    char name[600];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    lk__store_txn_t *t = tu_begin(s, 1);
    CHECK(lk__store_acc_add(t, "kept", 1, ES));
    lk_err_t e = lk__store_acc_add(t, name, 1, ES);
    cr_assert_eq(e, LK_ERR_TOO_LARGE, "accumulator name: %s (%s)", tu_err, lk_err_name(e));
    e = lk__store_fence_put(t, name, 1, ES);
    cr_assert_eq(e, LK_ERR_TOO_LARGE, "fence sink name: %s (%s)", tu_err, lk_err_name(e));
    lk__out_record_t r = {.value = "v", .value_len = 1};
    e = lk__store_outbox_append(t, name, 1, &r, ES);
    cr_assert_eq(e, LK_ERR_INVALID_ARG, "outbox sink name: %s (%s)", tu_err, lk_err_name(e));
    int64_t v;
    cr_assert_eq(lk__store_acc_get(t, name, &v), LK_ERR_NOT_FOUND);
    uint64_t b;
    cr_assert_eq(lk__store_fence_get(t, name, &b), LK_ERR_NOT_FOUND);
    /* every earlier write of the transaction survives */
    tu_commit(t);
    t = tu_begin(s, 0);
    cr_assert_eq(lk__store_acc_get(t, "kept", &v), LK_OK);
    cr_assert_eq(v, 1);
    lk__store_txn_abort(t);
    cr_assert_eq(lk__store_outbox_bytes(s), 0);
    lk__store_close(s);
}

/* ---- a task's handoff (scale-out) ---- */

static int count_outbox(const lk__outbox_stat_t *st, void *o) {
    *(uint64_t *)o += st->batches;
    return 0;
}

/* Another process ran the task: what this checkpoint committed and never delivered goes
 * (every sink's outbox, the pending plan), and the offsets are those of the other
 * process's last progress record, in one transaction. Without the outbox dropped, batches
 * numbered above the other process's last one would be delivered again (input it also
 * processed). */
Test(store_records, task_handoff_drops_the_undelivered_and_moves_the_offsets) {
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__store_txn_t *t = tu_begin(s, 1);
    CHECK(lk__store_offset_put(t, "in", 3, 500, ES));
    CHECK(lk__store_offset_put(t, "other", 3, 70, ES));
    lk__out_record_t r = {.partition = 3, .value = "v", .value_len = 1};
    for (uint64_t b = 18; b <= 20; b++) {
        CHECK(lk__store_outbox_append(t, "to-kafka", b, &r, ES));
        CHECK(lk__store_outbox_append(t, "dlq", b, &r, ES));
    }
    lk__range_t rr[1] = {{"in", 3, 400, 500}};
    lk__batch_rec_t b20 = {.id = 20, .batch_time_ms = 1, .nranges = 1, .ranges = rr};
    CHECK(lk__store_batch_put(t, &b20, ES));
    tu_commit(t);
    lk__range_t next[1] = {{"in", 3, 500, 600}};
    lk__batch_rec_t plan = {.id = 21, .batch_time_ms = 2, .nranges = 1, .ranges = next};
    CHECK(lk__store_plan_put(s, &plan, ES));

    lk__range_t from_progress[2] = {{"in", 3, 350, 350}, {"other", 3, 65, 65}};
    uint64_t lo, hi;
    CHECK(lk__store_task_handoff(s, from_progress, 2, NULL, NULL, &lo, &hi, ES));
    cr_assert_eq(lo, 18);
    cr_assert_eq(hi, 20);
    s = reopen(s, "app");
    t = tu_begin(s, 0);
    uint64_t batches = 0;
    OK(lk__store_outbox_stats(t, count_outbox, &batches));
    cr_assert_eq(batches, 0, "%llu outbox batches left", (unsigned long long)batches);
    cr_assert_eq(lk__store_outbox_bytes(s), 0);
    lk__batch_rec_t p;
    cr_assert_eq(lk__store_plan_get(t, &p), LK_ERR_NOT_FOUND, "the pending plan is left");
    int64_t o;
    lk__fingerprint_t fp;
    int has_fp = 1;
    OK(lk__store_offset_get_fp(t, "in", 3, &o, &fp, &has_fp));
    cr_assert_eq(o, 350);
    cr_assert_eq(has_fp, 0, "a fingerprint of a record this checkpoint never read");
    OK(lk__store_offset_get(t, "other", 3, &o));
    cr_assert_eq(o, 65);
    lk__store_txn_abort(t);
    /* nothing to drop: a checkpoint that never ran the task */
    CHECK(lk__store_task_handoff(s, from_progress, 1, NULL, NULL, &lo, &hi, ES));
    cr_assert_eq(lo, 0);
    lk__store_close(s);
}
