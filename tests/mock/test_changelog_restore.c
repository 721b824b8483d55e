/*
 * test_changelog_restore.c — the Kafka sink's restore (lk__kafka_restore, DESIGN.md
 * Scale-out) on an in-process mock cluster, against changelog partitions written here
 * record by record, so that what no run of processes produces on demand is shown:
 *   - a batch in two attempts (a zombie's aborted attempt, which the mock cluster shows
 *     to read_committed readers, then the delivered one with other content): the restore
 *     starts again in full and keeps only the last attempt of each batch;
 *   - records past the handoff's batch, of another writer, and without provenance are not
 *     applied;
 *   - a tail reads from the position recorded with the checkpoint's last delivery and
 *     applies what came after it;
 *   - a partition that no longer holds what the restore must read is refused, nothing
 *     modified: records deleted before a full restore's or a tail's start (the mock
 *     keeps about 5 MiB per partition and deletes the oldest records past it: the log
 *     start moves as it would with retention or DeleteRecords, which the mock does not
 *     implement), and a tail's position past the end (the topic recreated).
 */
#define _GNU_SOURCE
#include "mockutil.h"
#include "sink/kafka_priv.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

TestSuite(changelog_restore, .init = mu_fixture_init, .fini = mu_fixture_fini, .timeout = 120);

#define APP "cr"
#define TOPIC "cr.counts.changelog"

/* A changelog record as the capture writes it: value v (NULL: a delete) in the envelope,
 * provenance (batch, attempt) of writer `sink` (NULL: no header). */
static void put(const char *key, const char *v, uint64_t batch, const char *attempt,
                const char *sink) {
    unsigned char env[64] = {0x93, 0x01, 0x01, 0xc4};
    size_t vl = v ? strlen(v) : 0, el = 5 + vl;
    env[4] = (unsigned char)vl;
    if (v)
        memcpy(env + 5, v, vl);
    rd_kafka_headers_t *h = NULL;
    if (sink) {
        char prov[256];
        size_t pl = lk__prov_format(prov, sizeof prov, batch, attempt, APP, sink);
        h = rd_kafka_headers_new(1);
        rd_kafka_header_add(h, LK__PROV_HEADER, -1, prov, (ssize_t)pl);
    }
    rd_kafka_resp_err_t e =
        rd_kafka_producev(mu_cl.producer, RD_KAFKA_V_TOPIC(TOPIC), RD_KAFKA_V_PARTITION(0),
                          RD_KAFKA_V_KEY(key, strlen(key)),
                          RD_KAFKA_V_VALUE(v ? (void *)env : NULL, v ? el : 0),
                          RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                          RD_KAFKA_V_END);
    cr_assert_eq(e, 0, "%s", rd_kafka_err2str(e));
}

/* Restore "counts" of a checkpoint in tu_dir at the handoff of batch upto; the
 * checkpoint delivered batch `delivered` (0: new) with position `pos`, and its state
 * holds key "local". Committed if it succeeds, aborted (as the handoff does) if not:
 * the error, its message in err. */
static lk_err_t try_restore(uint64_t upto, uint64_t delivered, int64_t pos,
                            lk__store_t **store_out, lk__state_db_t *db,
                            lk__restore_report_t *rep, char *err, size_t err_size) {
    lk__store_t *s = tu_open(tu_dir, APP);
    CHECK(lk__store_state_open(s, "counts", db, ES));
    lk__store_txn_t *t = tu_begin(s, 1);
    CHECK(lk__store_state_put(t, *db, "local", 5, "x", 1, 1, ES));
    if (delivered) {
        lk__range_t r = {"in", 0, 0, 1};
        lk__batch_rec_t b = {.id = delivered, .batch_time_ms = 1, .nranges = 1, .ranges = &r};
        CHECK(lk__store_batch_put(t, &b, ES));
        CHECK(lk__store_fence_put_offset(t, "counts", delivered, pos, ES));
    }
    tu_commit(t);
    lk_conf_t *conf = mu_conf(&mu_cl, APP, tu_dir);
    lk__sink_t *k = lk__sink_new(&lk__sink_kafka_ops, "counts", TOPIC, NULL, APP);
    cr_assert_not_null(k);
    k->members[0].changelog_of = strdup("counts");
    k->task = 0;
    k->handoff_batch = upto;
    CHECK(k->ops->open(k, conf, ES));
    t = tu_begin(s, 1);
    err[0] = 0;
    lk_err_t e = lk__kafka_restore(k, s, t, err, err_size);
    if (e)
        lk__store_txn_abort(t);
    else
        tu_commit(t);
    *rep = k->restore;
    lk__sink_destroy(k);
    lk_conf_destroy(conf);
    *store_out = s;
    return e;
}

static lk__restore_report_t restore(uint64_t upto, uint64_t delivered, int64_t pos,
                                    lk__store_t **store_out, lk__state_db_t *db) {
    lk__restore_report_t rep;
    char err[2048];
    lk_err_t e = try_restore(upto, delivered, pos, store_out, db, &rep, err, sizeof err);
    cr_assert_eq(e, LK_OK, "%s (%s)", err, lk_err_name(e));
    return rep;
}

/* The value of key in db ("" with *found 0 when absent). */
static const char *value_of(lk__store_t *s, lk__state_db_t db, const char *key, int *found) {
    static char buf[64];
    lk__store_txn_t *t = tu_begin(s, 0);
    const void *v;
    size_t vl;
    lk_err_t e = lk__store_state_get(t, db, key, strlen(key), &v, &vl, NULL);
    cr_assert(e == LK_OK || e == LK_ERR_NOT_FOUND);
    *found = e == LK_OK;
    buf[0] = 0;
    if (*found) {
        cr_assert_lt(vl, sizeof buf);
        memcpy(buf, v, vl);
        buf[vl] = 0;
    }
    lk__store_txn_abort(t);
    return buf;
}

Test(changelog_restore, a_batch_in_two_attempts_keeps_only_the_last) {
    mu_topic(&mu_cl, TOPIC, 1);
    put("a", "1", 1, "aaaaaaaaaaaaaaaa", "counts");
    put("b", "1", 1, "aaaaaaaaaaaaaaaa", "counts");
    /* a zombie's attempt of batch 2, aborted (visible on the mock), then batch 3 of it */
    put("a", "zombie", 2, "bbbbbbbbbbbbbbbb", "counts");
    put("z", "zombie", 2, "bbbbbbbbbbbbbbbb", "counts");
    put("z", "zombie3", 3, "cccccccccccccccc", "counts");
    /* the new owner's batch 2, delivered, other content; and its batch 3 */
    put("b", "2", 2, "dddddddddddddddd", "counts");
    put("b", NULL, 3, "eeeeeeeeeeeeeeee", "counts");
    put("c", "3", 3, "eeeeeeeeeeeeeeee", "counts");
    /* not applied: past the handoff, another writer, no provenance */
    put("a", "future", 4, "ffffffffffffffff", "counts");
    put("a", "other", 3, "ffffffffffffffff", "other-op");
    put("a", "anonymous", 0, NULL, NULL);
    mu_flush(&mu_cl);
    lk__store_t *s;
    lk__state_db_t db;
    lk__restore_report_t r = restore(3, 0, -1, &s, &db);
    cr_assert(r.full);
    cr_assert_eq(r.read, 11, "read %llu", (unsigned long long)r.read);
    /* batch 1 (2), the new owner's 2 (1) and 3 (2) */
    cr_assert_eq(r.applied, 5, "applied %llu", (unsigned long long)r.applied);
    int found;
    cr_assert_str_eq(value_of(s, db, "a", &found), "1");
    cr_assert_not(value_of(s, db, "z", &found)[0] || found, "the zombie's key restored");
    value_of(s, db, "b", &found);
    cr_assert_not(found, "b's delete lost");
    cr_assert_str_eq(value_of(s, db, "c", &found), "3");
    lk__store_close(s);
}

Test(changelog_restore, a_tail_applies_what_came_after_its_delivery) {
    mu_topic(&mu_cl, TOPIC, 1);
    put("a", "1", 1, "aaaaaaaaaaaaaaaa", "counts");
    put("b", "1", 2, "bbbbbbbbbbbbbbbb", "counts");
    put("a", "3", 3, "cccccccccccccccc", "counts"); /* offset 2: the other process's */
    put("c", "4", 4, "dddddddddddddddd", "counts");
    mu_flush(&mu_cl);
    lk__store_t *s;
    lk__state_db_t db;
    /* delivered batch 2, position 2 recorded: reads offsets 2 and 3 only */
    lk__restore_report_t r = restore(4, 2, 2, &s, &db);
    cr_assert_not(r.full);
    cr_assert_eq(r.read, 2);
    cr_assert_eq(r.applied, 2);
    int found;
    cr_assert_str_eq(value_of(s, db, "a", &found), "3");
    cr_assert_str_eq(value_of(s, db, "c", &found), "4");
    lk__store_close(s);
}

/* A changelog record that can never be delivered stops the application even with
 * errors.tolerance=all and a Kafka dead letter topic: an output record of the same
 * failure goes to the dead letter topic, but a changelog record sent there would let the
 * batch commit without it, and the next process to restore the task would hold other
 * state than this checkpoint. Before the fix it was diverted like an output record. */
Test(changelog_restore, a_changelog_record_never_goes_to_the_dead_letter_topic) {
    mu_topic(&mu_cl, TOPIC, 1);
    mu_topic(&mu_cl, "out", 1);
    mu_topic(&mu_cl, "dlq", 1);
    lk_conf_t *conf = mu_conf(&mu_cl, APP, tu_dir);
    mu_set(conf, "errors.tolerance", "all");
    mu_set(conf, "errors.deadletter", "dlq");
    lk__sink_t *k = lk__sink_new(&lk__sink_kafka_ops, "out", "out", NULL, APP);
    cr_assert_not_null(k);
    cr_assert_eq(lk__sink_add_changelog(k, "counts", TOPIC, "counts"), LK_OK);
    k->task = 0;
    CHECK(k->ops->open(k, conf, ES));
    lk__kafka_sink_t *ks = k->impl;
    cr_assert_str_eq(ks->deadletter, "dlq");
    for (size_t m = 0; m < 2; m++) { /* member 0: the output; 1: the changelog */
        lk__kafka_failed_rec_t f = {m, 3, RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, 0, 0,
                                    "too large"};
        ks->first_failed = f;
        ks->have_failed = 1;
        char err[2048] = "producing: failed";
        lk_err_t e = lk__kafka_record_failed(k, LK_ERR_KAFKA, err, sizeof err);
        if (m == 0) {
            cr_assert_eq(e, LK_ERR_KAFKA, "the output record is retried: %s", err);
            cr_assert_eq(ks->ndivert, 1, "the output record goes to the dead letter topic");
        } else {
            cr_assert_eq(e, LK_ERR_FATAL, "the changelog record stops: %s (%s)", err,
                         lk_err_name(e));
            cr_assert_eq(ks->ndivert, 1, "a changelog record was marked for the dead letter");
            cr_assert(strstr(err, TOPIC) && strstr(err, "changelog record") &&
                          strstr(err, "operator 'counts'"),
                      "%s", err);
        }
    }
    lk__sink_destroy(k);
    lk_conf_destroy(conf);
}

/* The value of key "local", which try_restore put in the checkpoint's state: kept when a
 * refused restore modified nothing (a full restore clears it first). */
static void assert_untouched(lk__store_t *s, lk__state_db_t db) {
    int found;
    cr_assert_str_eq(value_of(s, db, "local", &found), "x", "a refused restore modified state");
    cr_assert(found);
}

/* Past the mock's ~5 MiB per partition: the oldest records are deleted and the log start
 * moves past offset `past` (the filler has no provenance: never applied). */
static int64_t delete_records_up_to(int64_t past) {
    static char big[10000];
    memset(big, 'y', sizeof big - 1);
    for (int i = 0; i < 800; i++)
        mu_produce(&mu_cl, TOPIC, 0, "pad", big);
    mu_flush(&mu_cl);
    int64_t lo, hi;
    cr_assert_eq(rd_kafka_query_watermark_offsets(mu_cl.producer, TOPIC, 0, &lo, &hi, 5000), 0);
    cr_assert_gt(lo, past, "the mock's retention must have deleted offsets up to %lld (log "
                 "start %lld)", (long long)past, (long long)lo);
    return lo;
}

/* Before the fix the restore read from the log start: key "a" (offset 0, deleted) was
 * lost without a word and the state went on without it. */
Test(changelog_restore, a_full_restore_refuses_a_log_that_lost_its_start) {
    mu_topic(&mu_cl, TOPIC, 1);
    put("a", "1", 1, "aaaaaaaaaaaaaaaa", "counts");
    mu_flush(&mu_cl);
    int64_t lo = delete_records_up_to(0);
    lk__store_t *s;
    lk__state_db_t db;
    lk__restore_report_t r;
    char err[2048], want[128];
    lk_err_t e = try_restore(1, 0, -1, &s, &db, &r, err, sizeof err);
    cr_assert_eq(e, LK_ERR_DATA_LOSS, "%s (%s)", err, lk_err_name(e));
    snprintf(want, sizeof want, "log starts at offset %lld", (long long)lo);
    cr_assert(strstr(err, TOPIC "[0]") && strstr(err, "operator 'counts'") &&
                  strstr(err, "a full restore") && strstr(err, want) &&
                  strstr(err, "cannot be restored exactly") && strstr(err, "new app.id") &&
                  strstr(err, "nothing was modified"),
              "%s", err);
    assert_untouched(s, db);
    lk__store_close(s);
}

/* Before the fix the tail read from the log start, past the records of batch 3 that the
 * state never got, and the state stayed at batch 2. */
Test(changelog_restore, a_tail_refuses_a_log_that_lost_records_after_its_position) {
    mu_topic(&mu_cl, TOPIC, 1);
    put("a", "1", 1, "aaaaaaaaaaaaaaaa", "counts");
    put("b", "2", 2, "bbbbbbbbbbbbbbbb", "counts");
    put("a", "3", 3, "cccccccccccccccc", "counts"); /* offset 2: the tail's first */
    mu_flush(&mu_cl);
    int64_t lo = delete_records_up_to(2);
    lk__store_t *s;
    lk__state_db_t db;
    lk__restore_report_t r;
    char err[2048], want[160];
    lk_err_t e = try_restore(3, 2, 2, &s, &db, &r, err, sizeof err);
    cr_assert_eq(e, LK_ERR_DATA_LOSS, "%s (%s)", err, lk_err_name(e));
    snprintf(want, sizeof want, "records 2..%lld (changes after batch 2) were deleted",
             (long long)lo - 1);
    cr_assert(strstr(err, TOPIC "[0]") && strstr(err, "operator 'counts'") &&
                  strstr(err, "delivered up to offset 2") && strstr(err, want),
              "%s", err);
    assert_untouched(s, db);
    lk__store_close(s);
}

/* The topic deleted and recreated: the position recorded with the checkpoint's last
 * delivery is past the new partition's end. Before the fix the tail read nothing and the
 * state stayed at batch 5, without a word. At the end exactly, nothing is missing. */
Test(changelog_restore, a_tail_refuses_a_position_past_the_end) {
    mu_topic(&mu_cl, TOPIC, 1);
    put("a", "1", 1, "aaaaaaaaaaaaaaaa", "counts");
    put("b", "1", 2, "bbbbbbbbbbbbbbbb", "counts");
    mu_flush(&mu_cl);
    lk__store_t *s;
    lk__state_db_t db;
    lk__restore_report_t r;
    char err[2048];
    lk_err_t e = try_restore(7, 5, 10, &s, &db, &r, err, sizeof err);
    cr_assert_eq(e, LK_ERR_DATA_LOSS, "%s (%s)", err, lk_err_name(e));
    cr_assert(strstr(err, TOPIC "[0]") && strstr(err, "operator 'counts'") &&
                  strstr(err, "delivered up to offset 10, past the partition's end 2") &&
                  strstr(err, "recreated"),
              "%s", err);
    assert_untouched(s, db);
    lk__store_close(s);
    /* a checkpoint whose last delivery ended at the end: a tail with nothing to read */
    lk__store_t *s2;
    e = try_restore(2, 2, 2, &s2, &db, &r, err, sizeof err);
    cr_assert_eq(e, LK_OK, "%s (%s)", err, lk_err_name(e));
    cr_assert_not(r.full);
    cr_assert_eq(r.read, 0);
    lk__store_close(s2);
}
