/*
 * test_faults.c — the receiver and driver under faults, on the mock cluster: input
 * deleted by retention (data loss: refused, or skipped and counted), broker down (no
 * offset moves, recovery after), a partition new to a topic being read (read from the
 * start, whatever auto.offset.reset says), and SIGTERM graceful stop of a real process
 * (the batch in flight finishes; a second signal abandons it; nothing is half done).
 */
#define _GNU_SOURCE
#include "lockstep.h"
#include "mockutil.h"
#include "state/store_int.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

TestSuite(faults, .init = mu_fixture_init, .fini = mu_fixture_fini, .timeout = 180);

static uint64_t seen;
static void count(lk_batch_t *b, const lk_record_t *r, size_t n, void *o) {
    (void)b;
    (void)r;
    (void)o;
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

static int64_t offset_of(int32_t partition) {
    lk__store_opts_t o = {.dir = tu_dir, .readonly = 1};
    lk__store_t *s;
    lk__store_txn_t *t;
    char err[512];
    cr_assert_eq(lk__store_open(&s, &o, err, sizeof err), LK_OK, "%s", err);
    cr_assert_eq(lk__store_txn_begin(s, 0, &t, err, sizeof err), LK_OK);
    int64_t off = -1;
    lk__store_offset_get(t, "lines", partition, &off);
    lk__store_txn_abort(t);
    lk__store_close(s);
    return off;
}

Test(faults, data_loss_refused_then_skipped_and_counted) {
    mu_topic(&mu_cl, "lines", 1);
    for (int i = 0; i < 20; i++)
        mu_produce(&mu_cl, "lines", 0, NULL, "x");
    mu_flush(&mu_cl);
    lk_conf_t *conf = mu_conf(&mu_cl, "loss", tu_dir);
    mu_set(conf, "max.records.per.partition", "10");
    lk_context_t *ctx = open_count(conf);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(offset_of(0), 10);
    /* ~8 MB: the mock keeps ~5 MiB per partition, so offsets 10.. are deleted */
    static char big[10000];
    memset(big, 'y', sizeof big - 1);
    for (int i = 0; i < 800; i++)
        mu_produce(&mu_cl, "lines", 0, NULL, big);
    mu_flush(&mu_cl);
    int64_t low, high;
    cr_assert_eq(
        rd_kafka_query_watermark_offsets(mu_cl.producer, "lines", 0, &low, &high, 5000), 0);
    cr_assert_gt(low, 10, "retention must have deleted unread input (low %lld)", (long long)low);

    cr_assert_eq(lk_context_run_once(ctx), LK_ERR_DATA_LOSS);
    cr_assert(strstr(lk_context_errstr(ctx), "lines[0]: checkpointed offset 10 is below the log start") &&
                  strstr(lk_context_errstr(ctx), "on.data.loss=skip"),
              "%s", lk_context_errstr(ctx));
    cr_assert_eq(offset_of(0), 10, "a refused batch moves no offset");
    lk_context_destroy(ctx);

    mu_set(conf, "on.data.loss", "skip");
    ctx = open_count(conf);
    seen = 0;
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(offset_of(0), low + 10, "continues at the log start, capped");
    cr_assert_eq(seen, 10);
    int64_t skipped;
    cr_assert_eq(lk_context_accumulator(ctx, "lockstep.data.loss.skipped", &skipped), LK_OK);
    cr_assert_eq(skipped, low - 10);
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

Test(faults, broker_down_moves_nothing_then_recovers) {
    mu_topic(&mu_cl, "lines", 2);
    for (int i = 0; i < 40; i++)
        mu_produce(&mu_cl, "lines", i % 2, NULL, "x");
    mu_flush(&mu_cl);
    lk_conf_t *conf = mu_conf(&mu_cl, "down", tu_dir);
    mu_set(conf, "max.records.per.partition", "10");
    mu_set(conf, "fetch.timeout.ms", "1500");
    mu_set(conf, "kafka.reconnect.backoff.ms", "10");
    mu_set(conf, "kafka.reconnect.backoff.max.ms", "100");
    lk_context_t *ctx = open_count(conf);
    seen = 0;
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(seen, 20);
    rd_kafka_mock_broker_set_down(mu_cl.mc, 1);
    lk_err_t e = lk_context_run_once(ctx);
    cr_assert(e == LK_ERR_KAFKA || e == LK_ERR_TIMED_OUT, "broker down: %s (%s)", lk_err_name(e),
              lk_context_errstr(ctx));
    cr_assert_eq(lk_context_last_batch(ctx), 1, "nothing committed while the broker is down");
    cr_assert_eq(offset_of(0), 10);
    cr_assert_eq(offset_of(1), 10);
    rd_kafka_mock_broker_set_up(mu_cl.mc, 1);
    int tries = 0;
    while ((e = lk_context_run_once(ctx)) != LK_OK && tries++ < 20)
        cr_assert(e == LK_ERR_KAFKA || e == LK_ERR_TIMED_OUT, "%s", lk_context_errstr(ctx));
    cr_assert_eq(e, LK_OK, "recovers once the broker is back: %s", lk_context_errstr(ctx));
    cr_assert_eq(offset_of(0), 20);
    cr_assert_eq(offset_of(1), 20);
    cr_assert_eq(seen, 40, "every record exactly once across the outage");
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

Test(faults, new_partition_of_known_topic_starts_at_earliest) {
    mu_topic(&mu_cl, "lines", 2);
    for (int i = 0; i < 10; i++)
        mu_produce(&mu_cl, "lines", i % 2, NULL, "x");
    mu_flush(&mu_cl);
    /* A checkpoint from a run that knew partition 0 only (partition 1 was added later). */
    lk__store_t *s = tu_open(tu_dir, "newpart");
    lk__store_txn_t *t;
    char err[512];
    cr_assert_eq(lk__store_txn_begin(s, 1, &t, err, sizeof err), LK_OK);
    cr_assert_eq(lk__store_offset_put(t, "lines", 0, 2, err, sizeof err), LK_OK);
    cr_assert_eq(lk__store_txn_commit(t, err, sizeof err), LK_OK);
    lk__store_close(s);

    lk_conf_t *conf = mu_conf(&mu_cl, "newpart", tu_dir);
    mu_set(conf, "auto.offset.reset", "latest");
    lk_context_t *ctx = open_count(conf);
    seen = 0;
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(seen, 3 + 5, "partition 0 from its offset, partition 1 from the start");
    cr_assert_eq(offset_of(0), 5);
    cr_assert_eq(offset_of(1), 5);
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

Test(faults, latest_on_a_new_topic_is_recorded_at_once) {
    mu_topic(&mu_cl, "lines", 1);
    for (int i = 0; i < 4; i++)
        mu_produce(&mu_cl, "lines", 0, NULL, "old");
    mu_flush(&mu_cl);
    lk_conf_t *conf = mu_conf(&mu_cl, "latest", tu_dir);
    mu_set(conf, "auto.offset.reset", "latest");
    lk_context_t *ctx = open_count(conf);
    seen = 0;
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(seen, 0);
    cr_assert_eq(offset_of(0), 4, "the starting point is committed even though empty");
    for (int i = 0; i < 3; i++)
        mu_produce(&mu_cl, "lines", 0, NULL, "new");
    mu_flush(&mu_cl);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(seen, 3, "what arrived after the start is read, not skipped");
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

/* ---- graceful stop of a real process ---- */

static char lines_of[2][400][64];
static int nlines[2];

static void produce_wc(int n) {
    static const char *const words[] = {"red", "green", "blue", "cyan", "magenta"};
    for (int i = 0; i < n; i++) {
        int p = i % 2;
        char *l = lines_of[p][nlines[p]++];
        snprintf(l, 64, "%s %s", words[i % 5], words[(i * 3) % 5]);
        mu_produce(&mu_cl, "lines", p, NULL, l);
    }
    mu_flush(&mu_cl);
}

/* The checkpoint is consistent: offsets, last batch and state agree. */
static void check_consistent(void) {
    lk__store_opts_t o = {.dir = tu_dir, .readonly = 1};
    lk__store_t *s;
    lk__store_txn_t *t;
    char err[512];
    cr_assert_eq(lk__store_open(&s, &o, err, sizeof err), LK_OK, "%s", err);
    lk__state_db_t db;
    cr_assert_eq(lk__store_state_open(s, "word-counts", &db, err, sizeof err), LK_OK, "%s", err);
    cr_assert_eq(lk__store_txn_begin(s, 0, &t, err, sizeof err), LK_OK);
    lk__batch_rec_t b;
    cr_assert_eq(lk__store_batch_last(t, &b), LK_OK);
    int64_t off[2];
    for (int p = 0; p < 2; p++) {
        cr_assert_eq(lk__store_offset_get(t, "lines", p, &off[p]), LK_OK);
        for (size_t r = 0; r < b.nranges; r++)
            if (b.ranges[r].partition == p)
                cr_assert_eq(b.ranges[r].until, off[p], "offsets are those of the last batch");
    }
    static const char *const words[] = {"red", "green", "blue", "cyan", "magenta"};
    for (int w = 0; w < 5; w++) {
        int64_t want = 0;
        for (int p = 0; p < 2; p++)
            for (int64_t i = 0; i < off[p]; i++) {
                char copy[64];
                snprintf(copy, sizeof copy, "%s", lines_of[p][i]);
                for (char *save, *x = strtok_r(copy, " ", &save); x; x = strtok_r(NULL, " ", &save))
                    want += !strcmp(x, words[w]);
            }
        const void *v;
        size_t vl;
        int64_t got = 0;
        if (lk__store_state_get(t, db, words[w], strlen(words[w]), &v, &vl, NULL) == LK_OK)
            memcpy(&got, v, sizeof got);
        cr_assert_eq(got, want, "%s: state %lld, input up to the offsets says %lld", words[w],
                     (long long)got, (long long)want);
    }
    int64_t lines;
    if (lk__store_acc_get(t, "lines", &lines) != LK_OK)
        lines = 0;
    cr_assert_eq(lines, off[0] + off[1], "accumulator matches the offsets");
    lk__store_txn_abort(t);
    lk__store_close(s);
}

static pid_t spawn_runner(const char *slow_ms, int *out_fd) {
    const char *runner = getenv("LK_WC_RUNNER");
    cr_assert_not_null(runner, "LK_WC_RUNNER is not set (run through ctest)");
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        execl(runner, runner, mu_cl.bootstraps, tu_dir, slow_ms, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char buf[16] = "";
    cr_assert_gt(read(fds[0], buf, sizeof buf - 1), 0, "runner did not start");
    cr_assert(strstr(buf, "ready"), "%s", buf);
    *out_fd = fds[0];
    return pid;
}

static int wait_exit(pid_t pid, int seconds) {
    for (int i = 0; i < seconds * 100; i++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    cr_assert_fail("runner did not exit within %d s", seconds);
    return -1;
}

static uint64_t last_batch_id(void) {
    lk__store_opts_t o = {.dir = tu_dir, .readonly = 1};
    lk__store_t *s;
    char err[512];
    if (lk__store_open(&s, &o, err, sizeof err))
        return 0;
    lk__store_txn_t *t;
    lk__batch_rec_t b;
    uint64_t id = 0;
    if (lk__store_txn_begin(s, 0, &t, err, sizeof err) == LK_OK) {
        if (lk__store_batch_last(t, &b) == LK_OK)
            id = b.id;
        lk__store_txn_abort(t);
    }
    lk__store_close(s);
    return id;
}

Test(faults, sigterm_finishes_the_batch_in_flight) {
    mu_topic(&mu_cl, "lines", 2);
    produce_wc(300); /* 150 per partition, 20 per batch: 8 batches of ~200 ms */
    unsigned seed = (unsigned)time(NULL);
    for (int round = 0; round < 3; round++) {
        int fd;
        pid_t pid = spawn_runner("200", &fd);
        /* let it commit at least one batch, then signal at a random instant */
        uint64_t before = last_batch_id();
        for (int i = 0; i < 500 && last_batch_id() == before; i++)
            usleep(10000);
        usleep((useconds_t)(rand_r(&seed) % 200000));
        uint64_t at_signal = last_batch_id();
        kill(pid, SIGTERM);
        cr_assert_eq(wait_exit(pid, 20), 0, "graceful stop exits 0");
        close(fd);
        check_consistent();
        cr_assert_geq(last_batch_id(), at_signal);
    }
    /* a second signal stops at once, still consistent */
    int fd;
    pid_t pid = spawn_runner("400", &fd);
    usleep(300000);
    kill(pid, SIGTERM);
    usleep(20000);
    kill(pid, SIGTERM);
    cr_assert_eq(wait_exit(pid, 10), 0);
    close(fd);
    check_consistent();
    /* and the rest drains exactly */
    pid = spawn_runner("0", &fd);
    for (int i = 0; i < 1000 && (offset_of(0) < 150 || offset_of(1) < 150); i++)
        usleep(10000);
    kill(pid, SIGTERM);
    cr_assert_eq(wait_exit(pid, 20), 0);
    close(fd);
    cr_assert_eq(offset_of(0), 150);
    cr_assert_eq(offset_of(1), 150);
    check_consistent();
}

/* ---- regressions: a crashed batch must never stall the application ---- */

static void run_runner_until_fault(const char *fault, const char *extra_conf) {
    const char *runner = getenv("LK_WC_RUNNER");
    cr_assert_not_null(runner, "LK_WC_RUNNER is not set (run through ctest)");
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "LOCKSTEP_FAULTPOINT=%s '%s' '%s' '%s' 0 %s >/dev/null 2>&1", fault,
             runner, mu_cl.bootstraps, tu_dir, extra_conf);
    int st = system(cmd);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 128 + SIGKILL,
              "runner should die at fault point %s (status %d)", fault, st);
}

static void define_count_two(lk_pipeline_t *p, void *o) {
    (void)o;
    lk_foreach_batch(lk_kafka_stream(p, "lines,extra"), "count", count, NULL);
}

Test(faults, empty_first_plan_replayed_after_crash_still_progresses) {
    mu_topic(&mu_cl, "lines", 2);
    produce_wc(10);
    /* latest: the first plan is empty; the crash leaves it recorded */
    run_runner_until_fault("mid-processing@1", "auto.offset.reset=latest");
    lk_conf_t *conf = mu_conf(&mu_cl, "wc", tu_dir);
    mu_set(conf, "auto.offset.reset", "latest");
    mu_set(conf, "topology.allow.state.drop", "true");
    lk_context_t *ctx = open_count(conf);
    seen = 0;
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(lk_context_last_batch(ctx), 1, "the replayed empty plan is committed");
    produce_wc(6);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(seen, 6, "input after the start is read");
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

Test(faults, reassignment_after_replay_resumes_paused_partitions) {
    mu_topic(&mu_cl, "lines", 2);
    mu_topic(&mu_cl, "extra", 1);
    produce_wc(60); /* the runner reads 20 per partition per batch */
    run_runner_until_fault("mid-processing@2", "");
    lk_conf_t *conf = mu_conf(&mu_cl, "wc", tu_dir);
    mu_set(conf, "topology.allow.state.drop", "true");
    mu_set(conf, "fetch.timeout.ms", "3000");
    lk_context_t *ctx = lk_context_get_or_create(conf, define_count_two, NULL, (char[512]){0}, 512);
    cr_assert_not_null(ctx);
    seen = 0;
    /* the replay reads lines only and pauses its partitions when done ... */
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(seen, 20);
    /* ... the next plan adds extra's partition: a new assignment must resume them */
    produce_wc(4);
    mu_produce(&mu_cl, "extra", 0, NULL, "x");
    mu_flush(&mu_cl);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_eq(seen, 20 + 4 + 1);
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}
