/*
 * test_inject.c — error injection at every instrumented operation (LOCKSTEP_FAULTPOINT
 * NAME=ERROR[@N][*], core/util_int.h), on the mock cluster: a word count delivered to a
 * Kafka topic and to files. For each point the test asserts what the user sees: the
 * error names the operation and carries the OS or library message; retriable failures
 * (a disk that is full for a while, a produce refused) are retried and the output
 * completes in the same process; failures after which nothing can be trusted (a failed
 * checkpoint sync, a librdkafka transactional call failing without a retriable flag) are
 * sticky: every later batch reports the same error. In every case the application is
 * then restarted without the fault and the output is checked exactly once: the latest
 * count of every word is the input's, no word twice in one batch's committed attempt, no
 * batch missing, and the files hold exactly the records Kafka holds.
 *
 * Injected librdkafka errors come from rd_kafka_error_new, which cannot be marked
 * retriable: the sink treats them as unclassified, i.e. fatal (sink/fault_int.h).
 */
#define _GNU_SOURCE
#include "lockstep.h"
#include "core/util_int.h"
#include "eos.h"
#include "mockutil.h"
#include "testutil.h"
#include "wc_ops.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static mu_cluster_t cl;
static char dir[256], outdir[300];
static int64_t expected[6];
static const char *const vocab[] = {"ant", "bee", "cat", "dog", "eel", "fox"};

static void produce(int n) {
    unsigned seed = 7;
    for (int i = 0; i < n; i++) {
        char line[64] = "";
        for (int w = 0; w < 3; w++) {
            int k = (int)(rand_r(&seed) % 6);
            expected[k]++;
            strcat(line, vocab[k]);
            strcat(line, " ");
        }
        mu_produce(&cl, "lines", i % 2, NULL, line);
    }
    mu_flush(&cl);
}

static void setup(void) {
    mu_start(&cl, 1);
    tu_tmpdir(dir, sizeof dir);
    snprintf(outdir, sizeof outdir, "%s/out", dir);
    mu_topic(&cl, "lines", 2);
    mu_topic(&cl, "counts", 2);
    mu_topic(&cl, "inj.progress", 1);
    memset(expected, 0, sizeof expected);
    produce(60);
}
static void teardown(void) {
    unsetenv("LOCKSTEP_FAULTPOINT");
    lk__fault_reset();
    mu_stop(&cl);
    tu_rmrf(dir);
}
TestSuite(inject, .init = setup, .fini = teardown, .timeout = 180);

static void define(lk_pipeline_t *p, void *o) {
    (void)o;
    lk_stream_t *words = lk_flat_map(lk_kafka_stream(p, "lines"), "split-words", wc_split_words,
                                     NULL);
    lk_stream_t *counts = lk_update_state_by_key(words, "word-counts", 1, wc_add_counts, NULL);
    lk_to_kafka(counts, "counts-out", "counts");
    lk_to_files(counts, "files-out", outdir, "jsonl");
}

static lk_conf_t *conf_with(const char *key, const char *value) {
    lk_conf_t *conf = mu_conf(&cl, "inj", dir);
    mu_set(conf, "max.records.per.partition", "10");
    mu_set(conf, "sink.kafka.timeout.ms", "10000");
    mu_set(conf, "retry.backoff.ms", "1");
    mu_set(conf, "retry.backoff.max.ms", "20");
    /* with checkpoint.sync=interval every commit syncs: a sync fault fires at the first
     * batch, however fast the batches run */
    mu_set(conf, "checkpoint.sync.interval.ms", "1");
    if (key)
        mu_set(conf, key, value);
    return conf;
}

/* Open the application; takes conf (the context keeps its own copy). */
static lk_context_t *open_ctx(lk_conf_t *conf) {
    char err[1024];
    lk_context_t *ctx = lk_context_get_or_create(conf, define, NULL, err, sizeof err);
    lk_conf_destroy(conf);
    cr_assert_not_null(ctx, "%s", err);
    return ctx;
}

/* Set LOCKSTEP_FAULTPOINT (NULL: none) and count hits from zero. */
static void arm(const char *spec) {
    if (spec)
        setenv("LOCKSTEP_FAULTPOINT", spec, 1);
    else
        unsetenv("LOCKSTEP_FAULTPOINT");
    lk__fault_reset();
}

static void assert_says(const char *msg, const char *a, const char *b) {
    cr_assert(strstr(msg, a), "'%s' does not say '%s'", msg, a);
    cr_assert(strstr(msg, b), "'%s' does not say '%s'", msg, b);
}

/* Count the records in the output files; none may be a temporary file. */
static uint64_t file_records(void) {
    uint64_t n = 0;
    DIR *d = opendir(outdir);
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char sub[600];
        snprintf(sub, sizeof sub, "%s/%s", outdir, e->d_name);
        DIR *pd = opendir(sub);
        cr_assert_not_null(pd, "%s", sub);
        struct dirent *f;
        while ((f = readdir(pd))) {
            if (f->d_name[0] == '.')
                continue;
            cr_assert_null(strstr(f->d_name, ".tmp"), "temporary file left: %s", f->d_name);
            char path[1000];
            snprintf(path, sizeof path, "%s/%s", sub, f->d_name);
            FILE *fp = fopen(path, "r");
            cr_assert_not_null(fp, "%s", path);
            int c;
            while ((c = fgetc(fp)) != EOF)
                n += c == '\n';
            fclose(fp);
        }
        closedir(pd);
    }
    closedir(d);
    return n;
}

/* Restart without the fault, run until everything is delivered, check exactly once. */
static void restart_and_check(lk_context_t *old) {
    lk_context_destroy(old);
    arm(NULL);
    lk_context_t *ctx = open_ctx(conf_with(NULL, NULL));
    eos_report_t r;
    int done = 0;
    for (int i = 0; i < 60 && !done; i++) {
        lk_err_t e = lk_context_run_once(ctx);
        cr_assert_eq(e, LK_OK, "after the restart: %s (%s)", lk_context_errstr(ctx),
                     lk_err_name(e));
        eos_read(cl.bootstraps, "inj", "counts-out", "counts", &r);
        done = r.batches && r.last == lk_context_last_batch(ctx) && r.nkeys == 6 &&
               eos_value(&r, "ant") == expected[0] && file_records() == r.records;
        for (int k = 0; done && k < 6; k++)
            done = eos_value(&r, vocab[k]) == expected[k];
    }
    for (int k = 0; k < 6; k++)
        cr_assert_eq(eos_value(&r, vocab[k]), expected[k], "'%s' counted %lld, input has %lld",
                     vocab[k], (long long)eos_value(&r, vocab[k]), (long long)expected[k]);
    cr_assert_eq(r.dup_keys, 0, "a word twice in one batch");
    cr_assert_eq(r.gaps, 0, "batches missing");
    cr_assert_eq(r.no_provenance, 0);
    cr_assert_eq(file_records(), r.records, "files hold %llu records, Kafka %llu",
                 (unsigned long long)file_records(), (unsigned long long)r.records);
    lk_context_destroy(ctx);
}

/* Run batches until one fails (the batch loop's error) or a sink reports one (its
 * retriable errors are logged and kept in the context's message, the batch succeeds). */
static lk_err_t run_until_error(lk_context_t *ctx, const char *says, char *msg, size_t size) {
    for (int i = 0; i < 40; i++) {
        lk_err_t e = lk_context_run_once(ctx);
        const char *m = lk_context_errstr(ctx);
        if (e || strstr(m, says)) {
            lk__fmt(msg, size, "%s", m);
            return e;
        }
    }
    cr_assert_fail("the injected fault never showed ('%s')", says);
    return LK_OK;
}

/* A retriable failure: the batch (or delivery) is retried in the same process, which
 * then gets further. */
static void retried(const char *spec, const char *key, const char *value, lk_err_t want,
                    const char *says, const char *oserr) {
    lk_context_t *ctx = open_ctx(conf_with(key, value));
    arm(spec);
    char msg[1024];
    lk_err_t e = run_until_error(ctx, says, msg, sizeof msg);
    cr_assert_eq(e, want, "%s: %s (%s)", spec, msg, lk_err_name(e));
    assert_says(msg, says, oserr);
    uint64_t before = lk_context_last_batch(ctx);
    for (int i = 0; i < 5; i++) {
        e = lk_context_run_once(ctx);
        cr_assert_eq(e, LK_OK, "the retry after %s: %s", spec, lk_context_errstr(ctx));
    }
    cr_assert_gt(lk_context_last_batch(ctx), before, "no batch after the retry");
    restart_and_check(ctx);
}

/* A sticky failure: the application stops; every later batch gets the same error (the
 * first message wins), even though the fault has cleared. */
static void sticky(const char *spec, const char *key, const char *value, lk_err_t want,
                   const char *says, const char *liberr) {
    lk_context_t *ctx = open_ctx(conf_with(key, value));
    arm(spec);
    char msg[1024];
    lk_err_t e = run_until_error(ctx, says, msg, sizeof msg);
    cr_assert_eq(e, want, "%s: %s (%s)", spec, msg, lk_err_name(e));
    assert_says(msg, says, liberr);
    arm(NULL);
    for (int i = 0; i < 3; i++) {
        e = lk_context_run_once(ctx);
        cr_assert_eq(e, want, "after %s a batch ran again: %s (%s)", spec,
                     lk_context_errstr(ctx), lk_err_name(e));
        assert_says(lk_context_errstr(ctx), says, liberr);
    }
    restart_and_check(ctx);
}

/* ---- files (sink/files.c) ---- */

Test(inject, file_write_fails_then_is_retried) {
    retried("write=ENOSPC", NULL, NULL, LK_OK, "files-out", "No space left on device");
}
Test(inject, file_fsync_fails_then_the_batch_is_rewritten) {
    /* the failed temp file is discarded; the retry writes and syncs a new one */
    retried("fsync=EIO", NULL, NULL, LK_OK, "cannot fsync", "Input/output error");
}
Test(inject, file_rename_fails_then_is_retried) {
    retried("rename=EIO", NULL, NULL, LK_OK, "cannot rename", "Input/output error");
}
Test(inject, directory_fsync_fails_then_is_retried) {
    retried("fsync-dir=EIO", NULL, NULL, LK_OK, "files-out", "Input/output error");
}

/* ---- the checkpoint (state/store.c) ---- */

Test(inject, checkpoint_commit_fails_then_the_batch_is_retried) {
    retried("mdb_txn_commit=ENOSPC", NULL, NULL, LK_ERR_IO, "committing",
            "No space left on device");
}
Test(inject, checkpoint_sync_fails_sticky) {
    /* a failed fsync may have lost the pages it was to write: nothing since the last
     * good sync may be called durable, so no retry "as if nothing happened" */
    sticky("mdb_env_sync=EIO", "checkpoint.sync", "interval", LK_ERR_FATAL, "syncing",
           "Input/output error");
}
Test(inject, map_growth_fails_stops_with_the_os_error) {
    /* a 64 KiB map is full at once; growing it fails: a store error, not retried */
    lk_context_t *ctx = open_ctx(conf_with("checkpoint.map.size", "65536"));
    arm("map-growth=ENOMEM*");
    char msg[1024];
    lk_err_t e = run_until_error(ctx, "Cannot allocate memory", msg, sizeof msg);
    cr_assert_eq(e, LK_ERR_STORE, "%s (%s)", msg, lk_err_name(e));
    assert_says(msg, "committing", "Cannot allocate memory");
    lk_context_destroy(ctx);
    arm(NULL);
    /* without the fault the map grows (map.size is only the initial size) */
    ctx = open_ctx(conf_with("checkpoint.map.size", "65536"));
    restart_and_check(ctx);
}

/* ---- the Kafka sink (sink/kafka.c) ---- */

Test(inject, produce_fails_then_is_retried) {
    retried("produce=_TRANSPORT@3", NULL, NULL, LK_OK, "producing to counts",
            "Local: Broker transport failure");
}
Test(inject, init_transactions_fails_sticky) {
    sticky("init_transactions=_FAIL", NULL, NULL, LK_ERR_FATAL, "init_transactions",
           "injected at fault point init_transactions");
}
Test(inject, begin_transaction_fails_sticky) {
    sticky("begin_transaction=_FAIL@2", NULL, NULL, LK_ERR_FATAL, "begin_transaction",
           "injected at fault point begin_transaction");
}
Test(inject, send_offsets_fails_sticky) {
    sticky("send_offsets_to_transaction=_FAIL@2", NULL, NULL, LK_ERR_FATAL,
           "send_offsets_to_transaction", "injected at fault point send_offsets");
}
Test(inject, commit_transaction_fails_sticky) {
    sticky("commit_transaction=_FAIL@2", NULL, NULL, LK_ERR_FATAL, "commit_transaction",
           "injected at fault point commit_transaction");
}
Test(inject, commit_resumed_while_its_endtxn_is_unanswered_is_waited_for) {
    /* librdkafka 2.0.2 answers a commit_transaction call that resumes a timed-out one
     * while its EndTxn is still unanswered with a plain _STATE error ("Operation not
     * valid in state CommittingTransaction"). That is a commit still running: the call
     * is repeated until it finishes, the application keeps running, every batch once.
     * The race cannot be produced on cue, so the answer is injected (commit-in-flight);
     * the old code stopped the application with LK_ERR_FATAL, as a chaos run on a
     * loaded machine did. */
    lk_context_t *ctx = open_ctx(conf_with(NULL, NULL));
    arm("commit-in-flight=_STATE@2,commit-in-flight=_STATE@3");
    uint64_t before = lk_context_last_batch(ctx);
    for (int i = 0; i < 8; i++) {
        lk_err_t e = lk_context_run_once(ctx);
        cr_assert_eq(e, LK_OK, "run %d: %s (%s)", i, lk_context_errstr(ctx), lk_err_name(e));
    }
    cr_assert_gt(lk_context_last_batch(ctx), before, "no batch");
    restart_and_check(ctx);
}
Test(inject, abort_transaction_fails_sticky) {
    /* a produce fails, so the transaction is aborted; the abort fails too: the producer's
     * state is unknown, nothing more may be sent with it */
    sticky("produce=_FAIL@3,abort_transaction=_FAIL", NULL, NULL, LK_ERR_FATAL,
           "abort_transaction", "injected at fault point abort_transaction");
}
