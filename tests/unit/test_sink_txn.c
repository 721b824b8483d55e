/*
 * test_sink_txn.c — sink.c's transaction state machine without a broker, through a fake
 * sink kind whose commit and abort fail as told: "abort not finished" (ABORTING) and
 * "commit not finished" (COMMITTING) are states of their own, the abort / the commit is
 * called again by each later recovery until it completes (also a pending one resumed by
 * a later drain), then the batch is delivered again, once; fenced while aborting is
 * sticky; the one transition validator refuses what the table does not allow.
 *
 * Also the Kafka sink's wait for a stable progress partition, behind its seam
 * (lk__kafka_wait_stable with the Kafka calls replaced): librdkafka's mock cluster has
 * no last stable offset and writes no transaction markers, so the decision "an open
 * transaction holds back the LSO: wait, never read a fence below it" is tested here; the
 * real-broker tier (tests/kafka) tests it against Kafka.
 */
#define _GNU_SOURCE
#include "testutil.h"
#include "core/util_int.h"
#include "sink/kafka_priv.h"
#include "sink/sink_int.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define APP "app"

static char ckpt[1024];

static void setup(void) {
    tu_scratch_init();
    tu_path(ckpt, sizeof ckpt, tu_dir, "ckpt");
    lk__log_default_level = LK_LOG_INFO;
}

TestSuite(sink_txn, .init = setup, .fini = tu_scratch_fini, .timeout = 60);


/* ---- a fake sink kind: counts calls, fails as scripted ---- */

static struct {
    int commit_timeouts; /* commits / resumes answering "still running" */
    int commit_abortable; /* then one answer "must be aborted" */
    int abort_failures;  /* aborts answering "not finished" */
    lk_err_t abort_error; /* what those aborts answer */
    int begins, writes, commits, resumes, aborts;
    uint64_t delivered[16]; /* batches committed, in order */
    size_t ndelivered;
} fk;

static lk_err_t fk_open(lk__sink_t *s, const lk_conf_t *c, char *e, size_t n) {
    (void)s, (void)c, (void)e, (void)n;
    return LK_OK;
}
static lk_err_t fk_recover(lk__sink_t *s, uint64_t *fence, char *e, size_t n) {
    (void)s, (void)e, (void)n;
    *fence = fk.ndelivered ? fk.delivered[fk.ndelivered - 1] : 0;
    return LK_OK;
}
static lk_err_t fk_begin(lk__sink_t *s, uint64_t b, char *e, size_t n) {
    (void)s, (void)b, (void)e, (void)n;
    fk.begins++;
    return LK_OK;
}
static lk_err_t fk_write(lk__sink_t *s, const lk__out_record_t *r, char *e, size_t n) {
    (void)s, (void)r, (void)e, (void)n;
    fk.writes++;
    return LK_OK;
}
static lk_err_t finish(lk__sink_t *s, char *e, size_t n) {
    if (fk.commit_timeouts > 0) {
        fk.commit_timeouts--;
        return lk__err(LK_ERR_TIMED_OUT, e, n, "commit still running");
    }
    if (fk.commit_abortable > 0) {
        fk.commit_abortable--;
        return lk__err(LK_ERR_KAFKA, e, n, "commit failed: must be aborted");
    }
    fk.delivered[fk.ndelivered++] = s->batch;
    return LK_OK;
}
static lk_err_t fk_commit(lk__sink_t *s, const lk__batch_rec_t *b, char *e, size_t n) {
    (void)b;
    fk.commits++;
    return finish(s, e, n);
}
static lk_err_t fk_resume(lk__sink_t *s, char *e, size_t n) {
    fk.resumes++;
    return finish(s, e, n);
}
static lk_err_t fk_abort(lk__sink_t *s, char *e, size_t n) {
    (void)s;
    fk.aborts++;
    if (fk.abort_failures > 0) {
        fk.abort_failures--;
        return lk__err(fk.abort_error, e, n, "abort not finished (coordinator busy)");
    }
    return LK_OK;
}
static void fk_close(lk__sink_t *s) { (void)s; }

static const lk__sink_ops_t fake_ops = {"fake", 1, fk_open, fk_recover, fk_begin, fk_write,
                                        fk_commit, fk_resume, fk_abort, fk_close};

static lk__store_t *store_with_batches(int n) {
    lk__store_t *st = tu_open(ckpt, APP);
    for (int id = 1; id <= n; id++) {
        lk__store_txn_t *t = tu_begin(st, 1);
        lk__out_record_t r = {.partition = -1, .key = "k", .key_len = 1, .value = "v",
                             .value_len = 1};
        cr_assert_eq(lk__store_outbox_append(t, "out", (uint64_t)id, &r, ES), LK_OK, "%s", tu_err);
        lk__batch_rec_t b = {.id = (uint64_t)id, .records_out = 1};
        cr_assert_eq(lk__store_batch_put(t, &b, ES), LK_OK, "%s", tu_err);
        tu_commit(t);
    }
    return st;
}

static uint64_t fence_of(lk__store_t *st) {
    lk__store_txn_t *t = tu_begin(st, 0);
    uint64_t b = 0;
    if (lk__store_fence_get(t, "out", &b))
        b = 0;
    lk__store_txn_abort(t);
    return b;
}

static lk__sink_t *fake_sink(void) {
    memset(&fk, 0, sizeof fk);
    fk.abort_error = LK_ERR_KAFKA;
    lk__sink_t *s = lk__sink_new(&fake_ops, "out", "target", "", APP);
    cr_assert_not_null(s);
    return s;
}

/* A failed commit whose abort needs n more calls: ABORTING until the abort completes,
 * the application's next drains call it again, then the batch is delivered once. */
static void abort_needs(int n) {
    lk__store_t *st = store_with_batches(2);
    lk__sink_t *s = fake_sink();
    fk.commit_abortable = 1;
    fk.abort_failures = n;
    size_t delivered = 0;
    lk_err_t e = lk__sink_drain(s, st, 2, &delivered, ES);
    cr_assert_eq(e, LK_ERR_KAFKA, "%s", tu_err);
    cr_assert(strstr(tu_err, "must be aborted"), "the commit's error is reported: %s", tu_err);
    cr_assert_eq(s->state, n ? LK__TXN_ABORTING : LK__TXN_READY);
    cr_assert_eq(fk.aborts, 1);
    for (int i = 1; i < n; i++) {
        e = lk__sink_drain(s, st, 2, &delivered, ES);
        cr_assert_eq(e, LK_ERR_KAFKA, "%s", tu_err);
        cr_assert(strstr(tu_err, "abort not finished"), "%s", tu_err);
        cr_assert_eq(s->state, LK__TXN_ABORTING, "still aborting after %d calls", i + 1);
        cr_assert_eq(fk.begins, 1, "nothing begun while the abort is not finished");
    }
    cr_assert_eq(lk__sink_drain(s, st, 2, &delivered, ES), LK_OK, "%s", tu_err);
    cr_assert_eq(fk.aborts, n + 1, "abort called until it completed");
    cr_assert_eq(delivered, 2);
    cr_assert_eq(fk.ndelivered, 2);
    cr_assert_eq(fk.delivered[0], 1, "batch 1 delivered again after the abort");
    cr_assert_eq(fk.delivered[1], 2);
    cr_assert_eq(fence_of(st), 2);
    cr_assert_eq(s->state, LK__TXN_READY);
    lk__sink_destroy(s);
    lk__store_close(st);
}

Test(sink_txn, abort_finishing_at_once) { abort_needs(0); }
Test(sink_txn, abort_needing_one_more_call) { abort_needs(1); }
Test(sink_txn, abort_needing_two_more_calls) { abort_needs(2); }
Test(sink_txn, abort_needing_five_more_calls) { abort_needs(5); }

/* A commit still running (COMMITTING) is resumed, never aborted nor begun anew; once it
 * completes its batch is acknowledged without delivering it again. */
Test(sink_txn, commit_not_finished_is_resumed_then_acknowledged) {
    lk__store_t *st = store_with_batches(2);
    lk__sink_t *s = fake_sink();
    fk.commit_timeouts = 3;
    size_t delivered = 0;
    cr_assert_eq(lk__sink_drain(s, st, 2, &delivered, ES), LK_ERR_TIMED_OUT, "%s", tu_err);
    cr_assert_eq(s->state, LK__TXN_COMMITTING);
    cr_assert_eq(fk.aborts, 0, "a running commit is not aborted");
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(lk__sink_drain(s, st, 2, &delivered, ES), LK_ERR_TIMED_OUT, "%s", tu_err);
        cr_assert(strstr(tu_err, "resuming the commit"), "%s", tu_err);
        cr_assert_eq(s->state, LK__TXN_COMMITTING);
    }
    cr_assert_eq(fence_of(st), 0);
    cr_assert_eq(lk__sink_drain(s, st, 2, &delivered, ES), LK_OK, "%s", tu_err);
    cr_assert_eq(fk.resumes, 3);
    cr_assert_eq(fk.begins, 2, "batch 1 was not delivered again");
    cr_assert_eq(fk.ndelivered, 2);
    cr_assert_eq(fence_of(st), 2);
    lk__sink_destroy(s);
    lk__store_close(st);
}

/* A resumed commit that must be aborted goes COMMITTING -> ABORTING -> READY, then the
 * batch is delivered again. */
Test(sink_txn, resumed_commit_that_must_abort_is_aborted_then_delivered_again) {
    lk__store_t *st = store_with_batches(1);
    lk__sink_t *s = fake_sink();
    fk.commit_timeouts = 1;
    fk.commit_abortable = 1;
    fk.abort_failures = 1;
    size_t delivered = 0;
    cr_assert_eq(lk__sink_drain(s, st, 1, &delivered, ES), LK_ERR_TIMED_OUT, "%s", tu_err);
    cr_assert_eq(lk__sink_drain(s, st, 1, &delivered, ES), LK_ERR_KAFKA, "%s", tu_err);
    cr_assert_eq(s->state, LK__TXN_ABORTING, "%s", tu_err);
    cr_assert_eq(lk__sink_drain(s, st, 1, &delivered, ES), LK_OK, "%s", tu_err);
    cr_assert_eq(fk.aborts, 2);
    cr_assert_eq(fk.ndelivered, 1);
    cr_assert_eq(fence_of(st), 1);
    lk__sink_destroy(s);
    lk__store_close(st);
}

/* Fenced while aborting: sticky FATAL, the message kept. */
Test(sink_txn, fenced_while_aborting_is_fatal_and_sticky) {
    lk__store_t *st = store_with_batches(1);
    lk__sink_t *s = fake_sink();
    fk.commit_abortable = 1;
    fk.abort_failures = 1;
    fk.abort_error = LK_ERR_FENCED;
    size_t delivered = 0;
    cr_assert_eq(lk__sink_drain(s, st, 1, &delivered, ES), LK_ERR_FENCED, "%s", tu_err);
    cr_assert_eq(s->state, LK__TXN_FATAL);
    cr_assert_eq(lk__sink_drain(s, st, 1, &delivered, ES), LK_ERR_FATAL, "%s", tu_err);
    cr_assert(strstr(tu_err, "abort not finished"), "the first error is kept: %s", tu_err);
    cr_assert_eq(fk.ndelivered, 0);
    cr_assert_eq(fence_of(st), 0);
    lk__sink_destroy(s);
    lk__store_close(st);
}

Test(sink_txn, transition_table_for_unfinished_commit_and_abort) {
    lk__sink_t *s = fake_sink();
    static const struct {
        lk__txn_state_t from, to;
        int ok;
    } cases[] = {
        {LK__TXN_PRODUCED, LK__TXN_COMMITTING, 1}, {LK__TXN_BEGUN, LK__TXN_COMMITTING, 0},
        {LK__TXN_COMMITTING, LK__TXN_COMMITTED, 1}, {LK__TXN_COMMITTING, LK__TXN_ABORTING, 1},
        {LK__TXN_COMMITTING, LK__TXN_READY, 0},     {LK__TXN_COMMITTING, LK__TXN_BEGUN, 0},
        {LK__TXN_BEGUN, LK__TXN_ABORTING, 1},       {LK__TXN_PRODUCED, LK__TXN_ABORTING, 1},
        {LK__TXN_ABORTING, LK__TXN_READY, 1},       {LK__TXN_ABORTING, LK__TXN_BEGUN, 0},
        {LK__TXN_ABORTING, LK__TXN_COMMITTED, 0},   {LK__TXN_ABORTING, LK__TXN_FATAL, 1},
        {LK__TXN_BEGUN, LK__TXN_READY, 0},          {LK__TXN_PRODUCED, LK__TXN_READY, 0},
        {LK__TXN_READY, LK__TXN_ABORTING, 0},       {LK__TXN_COMMITTED, LK__TXN_ABORTING, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cr_assert_eq(lk__sink_transition_allowed(cases[i].from, cases[i].to), cases[i].ok,
                     "%s -> %s", lk__txn_state_name(cases[i].from),
                     lk__txn_state_name(cases[i].to));
        if (!cases[i].ok)
            continue; /* making it is a bug: invalid_transition_* below */
        s->state = cases[i].from; /* the test sets up the state the case starts from */
        lk_err_t e = lk__sink_transition(s, cases[i].to, ES);
        cr_assert_eq(e, LK_OK, "%s -> %s: %s", lk__txn_state_name(cases[i].from),
                     lk__txn_state_name(cases[i].to), tu_err);
        cr_assert_eq(s->state, cases[i].to);
    }
    lk__sink_destroy(s);
}

/* An invalid transition is a bug. Release builds (NDEBUG, the default RelWithDebInfo the
 * tests are built with) refuse it and make the sink FATAL, sticky, its message naming
 * both states, an open delivery undone; debug builds stop at the assert, which is what
 * this test expects there (Criterion runs each test in its own process). */
#ifdef NDEBUG
#define LK__T_INVALID_TRANSITION .timeout = 60
#else
#define LK__T_INVALID_TRANSITION .signal = SIGABRT
#endif
Test(sink_txn, invalid_transition_is_sticky_fatal_in_release, LK__T_INVALID_TRANSITION) {
    lk__store_t *st = store_with_batches(1);
    lk__sink_t *s = fake_sink();
    size_t delivered = 0;
    cr_assert_eq(lk__sink_drain(s, st, 1, &delivered, ES), LK_OK, "%s", tu_err);
    cr_assert(lk__sink_ready(s));
    CHECK(lk__sink_transition(s, LK__TXN_BEGUN, ES)); /* a delivery in progress */
    tu_err[0] = '\0';
    lk_err_t e = lk__sink_transition(s, LK__TXN_COMMITTED, ES); /* skips PRODUCED */
    cr_assert_eq(e, LK_ERR_STATE, "%s", lk_err_name(e));
    cr_assert(strstr(tu_err, "BEGUN -> COMMITTED") && strstr(tu_err, "out"), "%s", tu_err);
    cr_assert_eq(s->state, LK__TXN_FATAL, "refused and stopped, not left BEGUN");
    cr_assert_eq(fk.aborts, 1, "the open delivery is undone");
    cr_assert(!lk__sink_ready(s));
    /* sticky: later work is refused with the message naming both states */
    tu_err[0] = '\0';
    cr_assert_eq(lk__sink_transition(s, LK__TXN_READY, ES), LK_ERR_FATAL);
    cr_assert(strstr(tu_err, "BEGUN -> COMMITTED"), "%s", tu_err);
    tu_err[0] = '\0';
    cr_assert_eq(lk__sink_drain(s, st, 1, &delivered, ES), LK_ERR_FATAL, "%s", tu_err);
    cr_assert(strstr(tu_err, "BEGUN -> COMMITTED"), "%s", tu_err);
    cr_assert_eq(fk.ndelivered, 1, "nothing more delivered");
    lk__sink_destroy(s);
    lk__store_close(st);
}

/* lk__sink_ready: recovered and READY, nothing unfinished. */
Test(sink_txn, ready_means_recovered_and_nothing_unfinished) {
    lk__store_t *st = store_with_batches(2);
    lk__sink_t *s = fake_sink();
    cr_assert(!lk__sink_ready(s), "not recovered yet");
    size_t delivered = 0;
    cr_assert_eq(lk__sink_drain(s, st, 1, &delivered, ES), LK_OK, "%s", tu_err);
    cr_assert(lk__sink_ready(s));
    fk.commit_timeouts = 1; /* batch 2's commit is left running: COMMITTING */
    cr_assert_eq(lk__sink_drain(s, st, 2, &delivered, ES), LK_ERR_TIMED_OUT, "%s", tu_err);
    cr_assert_eq(s->state, LK__TXN_COMMITTING);
    cr_assert(!lk__sink_ready(s));
    cr_assert_eq(lk__sink_drain(s, st, 2, &delivered, ES), LK_OK, "%s", tu_err);
    cr_assert(lk__sink_ready(s));
    lk__sink_destroy(s);
    lk__store_close(st);
}

/* ---- the stable-offset wait (seam) ---- */

typedef struct {
    int64_t lso[8], hwm[8];
    int n, calls;
    int64_t now;
    int64_t sleeps[16];
    int nsleeps;
} fake_io_t;

static lk_err_t fio_offsets(void *o, const char *topic, int32_t p, int64_t *lso, int64_t *hwm,
                            char *e, size_t n) {
    (void)topic, (void)p, (void)e, (void)n;
    fake_io_t *f = o;
    int i = f->calls < f->n ? f->calls : f->n - 1;
    f->calls++;
    *lso = f->lso[i];
    *hwm = f->hwm[i];
    return LK_OK;
}
static void fio_sleep(void *o, int64_t ms) {
    fake_io_t *f = o;
    f->sleeps[f->nsleeps++] = ms;
    f->now += ms;
}
static int64_t fio_now(void *o) { return ((fake_io_t *)o)->now; }

/* Run the wait with stderr captured into log. */
static lk_err_t wait_logged(fake_io_t *f, int64_t timeout, int64_t *end, char *log, size_t size) {
    char path[1100];
    tu_path(path, sizeof path, tu_dir, "stderr.log");
    fflush(stderr);
    int saved = dup(2), fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);
    lk__kafka_offsets_io_t io = {fio_offsets, fio_sleep, fio_now, f};
    lk_err_t e = lk__kafka_wait_stable(&io, "app.progress", 0, timeout, end, ES);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    FILE *fp = fopen(path, "r");
    size_t got = fread(log, 1, size - 1, fp);
    log[got] = 0;
    fclose(fp);
    return e;
}

/* An open transaction holds the LSO below the high watermark twice: the wait checks
 * again after 100 then 200 ms, logs the stable phrase, and reads up to the watermark. */
Test(sink_txn, open_transaction_on_progress_partition_is_waited_for) {
    fake_io_t f = {.lso = {40, 40, 42}, .hwm = {42, 42, 42}, .n = 3};
    int64_t end = 0;
    char log[4096];
    cr_assert_eq(wait_logged(&f, 30000, &end, log, sizeof log), LK_OK, "%s", tu_err);
    cr_assert_eq(end, 42);
    cr_assert_eq(f.calls, 3);
    cr_assert_eq(f.nsleeps, 2);
    cr_assert_eq(f.sleeps[0], 100);
    cr_assert_eq(f.sleeps[1], 200);
    cr_assert(strstr(log, "waiting for an open transaction on app.progress[0] (last stable "
                          "offset 40 < high watermark 42"),
              "%s", log);
    cr_assert(strstr(log, "the open transaction on app.progress[0] ended after 300 ms"), "%s",
              log);
}

/* No open transaction: no wait, no log line. */
Test(sink_txn, stable_progress_partition_is_read_at_once) {
    fake_io_t f = {.lso = {7}, .hwm = {7}, .n = 1};
    int64_t end = 0;
    char log[4096];
    cr_assert_eq(wait_logged(&f, 30000, &end, log, sizeof log), LK_OK, "%s", tu_err);
    cr_assert_eq(end, 7);
    cr_assert_eq(f.nsleeps, 0);
    cr_assert_eq(strlen(log), 0, "%s", log);
}

/* Still open after the timeout: a retriable error saying what waits and why; no fence is
 * read (the caller delivers nothing). Backoff 100, 200, 400, 800, then what is left. */
Test(sink_txn, open_transaction_past_the_timeout_is_a_retriable_error) {
    fake_io_t f = {.lso = {5}, .hwm = {9}, .n = 1};
    int64_t end = -1;
    char log[8192];
    cr_assert_eq(wait_logged(&f, 2000, &end, log, sizeof log), LK_ERR_TIMED_OUT, "%s", tu_err);
    cr_assert_eq(end, -1, "no end offset when the partition never became stable");
    cr_assert_eq(f.nsleeps, 5);
    static const int64_t want[] = {100, 200, 400, 800, 500};
    for (int i = 0; i < 5; i++)
        cr_assert_eq(f.sleeps[i], want[i], "sleep %d: %lld", i, (long long)f.sleeps[i]);
    cr_assert(strstr(tu_err, "waiting for an open transaction on app.progress[0] (last stable "
                        "offset 5 < high watermark 9) for 2000 ms, 6 checks"),
              "%s", tu_err);
    cr_assert(strstr(tu_err, "transaction.timeout.ms"), "%s", tu_err);
}

/* ---- producer batches sized from the output topics' max.message.bytes ---- */

/* Five 30 kB records into a topic with max.message.bytes 100000 were refused as one
 * ~150 kB batch forever (librdkafka does not split a refused batch): the producer's
 * batch.size must fit the smallest limit of the output topics. The mock cluster does not
 * answer DescribeConfigs in librdkafka 2.0.2; the sizing rule is tested here, the real
 * broker tier reads the limits for real. */
Test(sink_txn, producer_batches_fit_the_smallest_topic_limit) {
    const int64_t limits[] = {1048588, 100000, 0 /* unknown */, 2000000};
    cr_assert_eq(lk__kafka_batch_size(1000000, limits, 4), 100000 - 512);
    cr_assert_eq(lk__kafka_batch_size(50000, limits, 4), 50000, "a smaller batch.size stays");
    cr_assert_eq(lk__kafka_batch_size(1000000, limits, 1), 1000000, "1 MiB topic: fits");
    const int64_t tiny[] = {800};
    cr_assert_eq(lk__kafka_batch_size(1000000, tiny, 1), 400);
    const int64_t unknown[] = {0, -1};
    cr_assert_eq(lk__kafka_batch_size(1000000, unknown, 2), 1000000);
}

/* The sinks' transactional producer retries after 20 ms, not librdkafka's 100: a
 * transaction begun right after the last one's EndTxn is answered
 * CONCURRENT_TRANSACTIONS by a real broker still writing the markers, and the retry's
 * backoff was added to every back-to-back delivery. kafka.retry.backoff.ms still wins.
 * (Creating the clients needs no broker: librdkafka connects in the background.) */
static char *producer_retry_backoff(const char *user_value) {
    lk_conf_t *conf = lk_conf_new();
    char err[512];
    cr_assert_eq(lk_conf_set(conf, "kafka.bootstrap.servers", "127.0.0.1:1", err, sizeof err),
                 LK_CONF_OK);
    if (user_value)
        cr_assert_eq(lk_conf_set(conf, "kafka.retry.backoff.ms", user_value, err, sizeof err),
                     LK_CONF_OK, "%s", err);
    lk__sink_t *s = lk__sink_new(&lk__sink_kafka_ops, "out", "topic", "", APP);
    cr_assert_not_null(s);
    cr_assert_eq(lk__sink_kafka_ops.open(s, conf, err, sizeof err), LK_OK, "%s", err);
    const lk__kafka_sink_t *k = s->impl;
    char v[64];
    size_t n = sizeof v;
    cr_assert_eq(rd_kafka_conf_get(rd_kafka_conf(k->producer), "retry.backoff.ms", v, &n),
                 RD_KAFKA_CONF_OK);
    lk__sink_destroy(s);
    lk_conf_destroy(conf);
    return strdup(v);
}

Test(sink_txn, transactional_producer_retries_concurrent_transactions_after_20_ms) {
    char *v = producer_retry_backoff(NULL);
    cr_assert_str_eq(v, "20");
    free(v);
    v = producer_retry_backoff("150");
    cr_assert_str_eq(v, "150", "kafka.retry.backoff.ms overrides lockstep's default");
    free(v);
}
