/*
 * test_changelog.c — scale-out's changelog at the seams below Kafka (DESIGN.md,
 * Scale-out): the store's capture of state writes into a changelog member's outbox in the
 * batch's own transaction (and nothing outside a batch), the envelope applied back by the
 * restore, clearing, the changelog position kept with a fence, the restore inside the
 * handoff's transaction (a failed restore moves nothing), and the pure rules of the
 * Kafka sink's restore: full or tail (lk__changelog_plan) and which records a tail
 * applies (lk__changelog_applies). The Kafka side end to end is tests/mock/test_group.c.
 */
#define _GNU_SOURCE
#include "sink/kafka_priv.h"
#include "core/util_int.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

TestSuite(changelog, .init = tu_scratch_init, .fini = tu_scratch_fini);

typedef struct {
    int n;
    int32_t partition[8];
    char key[8][16];
    int has_value[8];
    char value[8][64];
    size_t value_len[8];
    int64_t ts[8];
} seen_t;

static int collect(const lk__out_record_t *r, void *o) {
    seen_t *s = o;
    cr_assert_lt(s->n, 8);
    s->partition[s->n] = r->partition;
    cr_assert_lt(r->key_len, sizeof s->key[0]);
    memcpy(s->key[s->n], r->key, r->key_len);
    s->has_value[s->n] = r->value != NULL;
    if (r->value) {
        cr_assert_leq(r->value_len, sizeof s->value[0]);
        memcpy(s->value[s->n], r->value, r->value_len);
    }
    s->value_len[s->n] = r->value_len;
    s->ts[s->n] = r->timestamp_ms;
    s->n++;
    return 0;
}

static lk__store_t *open_counts(lk__state_db_t *db, const char *member, int32_t partition) {
    lk__store_t *s = tu_open(tu_dir, "app");
    CHECK(lk__store_state_open(s, "counts", db, ES));
    if (member)
        cr_assert_eq(lk__store_state_changelog(s, *db, member, partition), LK_OK);
    return s;
}

Test(changelog, every_state_write_of_a_batch_goes_to_its_changelog_in_the_same_txn) {
    lk__state_db_t db;
    lk__store_t *s = open_counts(&db, "counts", 2);
    lk__store_txn_t *t = tu_begin(s, 1);
    lk__store_txn_capture(t, 5, 1000);
    CHECK(lk__store_state_put(t, db, "a", 1, "one", 3, 111, ES));
    CHECK(lk__store_state_put(t, db, "b", 1, "two", 3, 222, ES));
    CHECK(lk__store_state_del(t, db, "a", 1, ES));
    tu_commit(t);

    t = tu_begin(s, 0);
    seen_t seen = {0};
    cr_assert_eq(lk__store_outbox_foreach(t, "counts", 5, collect, &seen), LK_OK);
    lk__store_txn_abort(t);
    cr_assert_eq(seen.n, 3, "%d changelog records", seen.n);
    const char *keys[] = {"a", "b", "a"};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(seen.partition[i], 2, "the task's partition");
        cr_assert_str_eq(seen.key[i], keys[i]);
        cr_assert_eq(seen.ts[i], 1000, "the batch time");
    }
    cr_assert(seen.has_value[0] && seen.has_value[1]);
    cr_assert_not(seen.has_value[2], "a delete is a tombstone");

    /* the value is the envelope as stored: the restore puts back value and update time */
    lk__store_close(s);
    tu_rmrf(tu_dir);
    lk__state_db_t db2;
    lk__store_t *s2 = open_counts(&db2, NULL, 0);
    t = tu_begin(s2, 1);
    CHECK(lk__store_state_apply(t, db2, "b", 1, seen.value[1], seen.value_len[1], ES));
    CHECK(lk__store_state_apply(t, db2, "x", 1, seen.value[0], seen.value_len[0], ES));
    CHECK(lk__store_state_apply(t, db2, "x", 1, NULL, 0, ES)); /* the tombstone */
    tu_commit(t);
    t = tu_begin(s2, 0);
    const void *v;
    size_t vl;
    int64_t upd;
    cr_assert_eq(lk__store_state_get(t, db2, "b", 1, &v, &vl, &upd), LK_OK);
    cr_assert_eq(vl, 3);
    cr_assert(!memcmp(v, "two", 3));
    cr_assert_eq(upd, 222);
    cr_assert_eq(lk__store_state_get(t, db2, "x", 1, &v, &vl, &upd), LK_ERR_NOT_FOUND);
    lk__store_txn_abort(t);
    /* what the capture does not write is refused, naming the operator */
    t = tu_begin(s2, 1);
    cr_assert_eq(lk__store_state_apply(t, db2, "b", 1, "\x01\x02", 2, ES), LK_ERR_CORRUPT);
    cr_assert(strstr(tu_err, "'counts'"), "%s", tu_err);
    lk__store_txn_abort(t);
    lk__store_close(s2);
}

Test(changelog, writes_outside_a_batch_and_of_other_databases_are_not_captured) {
    lk__state_db_t db, other;
    lk__store_t *s = open_counts(&db, "counts", 0);
    CHECK(lk__store_state_open(s, "plain", &other, ES));
    lk__store_txn_t *t = tu_begin(s, 1);
    /* no lk__store_txn_capture: e.g. the plan's record of event-time windows */
    CHECK(lk__store_state_put(t, db, "a", 1, "1", 1, 1, ES));
    tu_commit(t);
    t = tu_begin(s, 1);
    lk__store_txn_capture(t, 7, 1);
    CHECK(lk__store_state_put(t, other, "a", 1, "1", 1, 1, ES)); /* no changelog */
    tu_commit(t);
    t = tu_begin(s, 0);
    uint64_t first;
    cr_assert_eq(lk__store_outbox_first_batch(t, "counts", &first), LK_ERR_NOT_FOUND);
    cr_assert_eq(lk__store_outbox_first_batch(t, "plain", &first), LK_ERR_NOT_FOUND);
    lk__store_txn_abort(t);
    /* an aborted batch leaves no changelog record behind */
    t = tu_begin(s, 1);
    lk__store_txn_capture(t, 8, 1);
    CHECK(lk__store_state_put(t, db, "b", 1, "1", 1, 1, ES));
    lk__store_txn_abort(t);
    t = tu_begin(s, 0);
    cr_assert_eq(lk__store_outbox_first_batch(t, "counts", &first), LK_ERR_NOT_FOUND);
    lk__store_txn_abort(t);
    lk__store_close(s);
}

Test(changelog, clear_removes_every_entry) {
    lk__state_db_t db;
    lk__store_t *s = open_counts(&db, NULL, 0);
    lk__store_txn_t *t = tu_begin(s, 1);
    char k[8];
    for (int i = 0; i < 300; i++) {
        snprintf(k, sizeof k, "k%03d", i);
        CHECK(lk__store_state_put(t, db, k, strlen(k), "v", 1, 1, ES));
    }
    tu_commit(t);
    t = tu_begin(s, 1);
    uint64_t cleared;
    CHECK(lk__store_state_clear(t, db, &cleared, ES));
    cr_assert_eq(cleared, 300);
    tu_commit(t);
    t = tu_begin(s, 0);
    const void *v;
    size_t vl;
    cr_assert_eq(lk__store_state_get(t, db, "k000", 4, &v, &vl, NULL), LK_ERR_NOT_FOUND);
    lk__store_txn_abort(t);
    lk__store_close(s);
}

Test(changelog, the_changelog_position_is_kept_with_the_fence) {
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__store_txn_t *t = tu_begin(s, 1);
    CHECK(lk__store_fence_put_offset(t, "counts", 4, 120, ES));
    tu_commit(t);
    t = tu_begin(s, 1);
    /* unknown in this process (-1): the recorded position stays */
    CHECK(lk__store_fence_put_offset(t, "counts", 6, -1, ES));
    tu_commit(t);
    t = tu_begin(s, 0);
    uint64_t b;
    int64_t off;
    cr_assert_eq(lk__store_fence_get_offset(t, "counts", &b, &off, NULL), LK_OK);
    cr_assert_eq(b, 6);
    cr_assert_eq(off, 120);
    /* the fence reads as before (older versions read elements 1 and 2 only) */
    cr_assert_eq(lk__store_fence_get(t, "counts", &b), LK_OK);
    cr_assert_eq(b, 6);
    cr_assert_eq(lk__store_fence_get_offset(t, "none", &b, &off, NULL), LK_ERR_NOT_FOUND);
    lk__store_txn_abort(t);
    t = tu_begin(s, 1);
    CHECK(lk__store_fence_put(t, "plain", 3, ES)); /* no position recorded */
    tu_commit(t);
    t = tu_begin(s, 0);
    cr_assert_eq(lk__store_fence_get_offset(t, "plain", &b, &off, NULL), LK_OK);
    cr_assert_eq(off, -1);
    lk__store_txn_abort(t);
    lk__store_close(s);
}

static lk_err_t failing_restore(lk__store_txn_t *t, void *o, char *errstr, size_t errstr_size) {
    lk__state_db_t *db = o;
    lk_err_t e = lk__store_state_put(t, *db, "restored", 8, "x", 1, 1, errstr, errstr_size);
    return e ? e : lk__err(LK_ERR_KAFKA, errstr, errstr_size, "the changelog is unreachable");
}

static lk_err_t good_restore(lk__store_txn_t *t, void *o, char *errstr, size_t errstr_size) {
    lk__state_db_t *db = o;
    uint64_t cleared;
    lk_err_t e = lk__store_state_clear(t, *db, &cleared, errstr, errstr_size);
    return e ? e : lk__store_state_put(t, *db, "restored", 8, "x", 1, 1, errstr, errstr_size);
}

Test(changelog, offsets_never_move_without_the_state) {
    lk__state_db_t db;
    lk__store_t *s = open_counts(&db, NULL, 0);
    lk__store_txn_t *t = tu_begin(s, 1);
    CHECK(lk__store_offset_put(t, "in", 1, 100, ES));
    CHECK(lk__store_state_put(t, db, "local", 5, "y", 1, 1, ES));
    tu_commit(t);
    lk__range_t to[1] = {{"in", 1, 250, 250}};
    uint64_t lo, hi;
    cr_assert_eq(lk__store_task_handoff(s, to, 1, failing_restore, &db, &lo, &hi, ES),
                 LK_ERR_KAFKA);
    t = tu_begin(s, 0);
    int64_t off;
    const void *v;
    size_t vl;
    cr_assert_eq(lk__store_offset_get(t, "in", 1, &off), LK_OK);
    cr_assert_eq(off, 100, "the offsets moved although the restore failed");
    cr_assert_eq(lk__store_state_get(t, db, "restored", 8, &v, &vl, NULL), LK_ERR_NOT_FOUND);
    cr_assert_eq(lk__store_state_get(t, db, "local", 5, &v, &vl, NULL), LK_OK);
    lk__store_txn_abort(t);
    CHECK(lk__store_task_handoff(s, to, 1, good_restore, &db, &lo, &hi, ES));
    t = tu_begin(s, 0);
    cr_assert_eq(lk__store_offset_get(t, "in", 1, &off), LK_OK);
    cr_assert_eq(off, 250);
    cr_assert_eq(lk__store_state_get(t, db, "restored", 8, &v, &vl, NULL), LK_OK);
    cr_assert_eq(lk__store_state_get(t, db, "local", 5, &v, &vl, NULL), LK_ERR_NOT_FOUND);
    lk__store_txn_abort(t);
    lk__store_close(s);
}

Test(changelog, full_unless_the_state_is_exactly_the_last_delivered_batch) {
    lk__changelog_plan_t p;
    lk__changelog_plan(0, 0, 0, -1, 0, &p); /* a new checkpoint */
    cr_assert(p.full);
    cr_assert_eq(p.start, 0);
    cr_assert_eq(p.after, 0);
    lk__changelog_plan(12, 1, 12, 340, 1000, &p); /* delivered what it committed */
    cr_assert_not(p.full);
    cr_assert_eq(p.after, 12);
    cr_assert_eq(p.start, 340);
    lk__changelog_plan(12, 1, 12, -1, 1000, &p); /* no position recorded: from the start */
    cr_assert_not(p.full);
    cr_assert_eq(p.start, 0);
    lk__changelog_plan(13, 1, 12, 340, 1000, &p); /* batch 13 committed, never delivered */
    cr_assert(p.full, "state holding an undelivered batch must be rebuilt");
    lk__changelog_plan(13, 0, 0, -1, 0, &p); /* committed, nothing ever delivered */
    cr_assert(p.full);
    /* delivered too long ago: compaction may have removed tombstones of later batches */
    lk__changelog_plan(12, 1, 12, 340, LK__CHANGELOG_TAIL_MAX_AGE_MS + 1, &p);
    cr_assert(p.full, "a tail would miss deletes compaction removed");
    lk__changelog_plan(12, 1, 12, 340, LK__CHANGELOG_TAIL_MAX_AGE_MS, &p);
    cr_assert_not(p.full);
}

static lk__prov_t prov(uint64_t batch, const char *app, const char *sink) {
    lk__prov_t p = {.batch = batch, .app = app, .app_len = strlen(app), .sink = sink,
                    .sink_len = strlen(sink)};
    return p;
}

Test(changelog, a_tail_applies_only_batches_after_the_local_state_up_to_the_handoff) {
    lk__prov_t p = prov(12, "app", "counts");
    cr_assert_not(lk__changelog_applies(&p, "app", "counts", 12, 20), "state holds 12");
    p = prov(13, "app", "counts");
    cr_assert(lk__changelog_applies(&p, "app", "counts", 12, 20));
    p = prov(20, "app", "counts");
    cr_assert(lk__changelog_applies(&p, "app", "counts", 12, 20));
    p = prov(21, "app", "counts"); /* past the handoff: an aborted attempt's */
    cr_assert_not(lk__changelog_applies(&p, "app", "counts", 12, 20));
    p = prov(15, "app", "other");
    cr_assert_not(lk__changelog_applies(&p, "app", "counts", 12, 20), "another writer");
    p = prov(15, "ap", "counts");
    cr_assert_not(lk__changelog_applies(&p, "app", "counts", 12, 20), "another app");
    p = prov(1, "app", "counts"); /* a full restore: after 0 */
    cr_assert(lk__changelog_applies(&p, "app", "counts", 0, 20));
}

Test(changelog, the_last_attempt_of_each_batch_is_the_delivered_one) {
    lk__changelog_attempts_t a = {0};
    cr_assert_eq(lk__changelog_attempts_see(&a, 11, "aaaaaaaaaaaaaaaa"), 0);
    cr_assert_eq(lk__changelog_attempts_see(&a, 11, "aaaaaaaaaaaaaaaa"), 0, "same attempt");
    cr_assert_eq(lk__changelog_attempts_see(&a, 12, "bbbbbbbbbbbbbbbb"), 0);
    /* a zombie's aborted 11 and 12, then the new owner's 11 and 12 */
    cr_assert_eq(lk__changelog_attempts_see(&a, 11, "cccccccccccccccc"), 1, "a second attempt");
    cr_assert_eq(lk__changelog_attempts_see(&a, 12, "dddddddddddddddd"), 1);
    cr_assert_eq(lk__changelog_attempts_see(&a, 3, "eeeeeeeeeeeeeeee"), 0, "out of order");
    cr_assert_not(lk__changelog_attempts_last(&a, 11, "aaaaaaaaaaaaaaaa"));
    cr_assert(lk__changelog_attempts_last(&a, 11, "cccccccccccccccc"));
    cr_assert(lk__changelog_attempts_last(&a, 12, "dddddddddddddddd"));
    cr_assert(lk__changelog_attempts_last(&a, 3, "eeeeeeeeeeeeeeee"));
    cr_assert_not(lk__changelog_attempts_last(&a, 4, "eeeeeeeeeeeeeeee"), "never seen");
    cr_assert_eq(a.n, 3);
    lk__changelog_attempts_free(&a);
}
