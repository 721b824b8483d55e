/*
 * test_log_level.c — the log level belongs to a context, not to the process (issue 20;
 * DESIGN.md, Threads): two contexts in one process, one at log.level=debug and one at
 * error, running at the same time on two threads over the mock cluster; each one's
 * messages appear or not by its own level, those its delivery thread logs (sink.overlap)
 * included, and creating a context leaves the process default alone. librdkafka's
 * clients take a context's level as their own log_level (kafka.log_level, when given,
 * wins) and write through lockstep's logger.
 *
 * The CLI: `lockstep run -X log.level=...` writes what that level lets through, its
 * librdkafka clients' lines included.
 *
 * stderr is redirected to a file for the test (Criterion runs each test in a process of
 * its own) and read back.
 */
#define _GNU_SOURCE
#include "cliproc.h"
#include "mockutil.h"
#include "testutil.h"
#include "core/conf_int.h"
#include "core/util_int.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

TestSuite(log_level, .init = mu_fixture_init, .fini = mu_fixture_fini, .timeout = 120);

/* ---- stderr to a file ---- */

static int saved_stderr = -1;
static char stderr_path[1024];

static void capture_stderr(void) {
    tu_path(stderr_path, sizeof stderr_path, tu_dir, "stderr.txt");
    fflush(stderr);
    saved_stderr = dup(2);
    int fd = open(stderr_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert(saved_stderr >= 0 && fd >= 0);
    dup2(fd, 2);
    close(fd);
}

/* What was written to stderr since capture_stderr (malloc'ed), stderr restored. */
static char *captured_stderr(void) {
    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    size_t len;
    char *text = tu_slurp(stderr_path, &len);
    cr_assert_not_null(text);
    return text;
}

/* Lines of text containing all of a, b (b may be NULL). */
static int lines_with(const char *text, const char *a, const char *b) {
    int n = 0;
    for (const char *l = text; *l;) {
        const char *end = strchr(l, '\n');
        size_t len = end ? (size_t)(end - l) : strlen(l);
        char *line = strndup(l, len);
        if (strstr(line, a) && (!b || strstr(line, b)))
            n++;
        free(line);
        l += len + (end ? 1 : 0);
    }
    return n;
}

/* ---- two contexts ---- */

typedef struct {
    const char *topic, *sink_uid, *outdir;
    lk_context_t *ctx;
    uint64_t stop_at; /* stop gracefully once this batch is reported */
    lk_err_t result;
} app_t;

static void define_copy(lk_pipeline_t *p, void *opaque) {
    app_t *a = opaque;
    lk_to_files(lk_kafka_stream(p, a->topic), a->sink_uid, a->outdir, "jsonl");
}

static void on_progress(const lk_progress_t *p, void *opaque) {
    app_t *a = opaque;
    if (p->batch >= a->stop_at)
        lk_context_stop(a->ctx, 1);
}

static void *run_app(void *o) {
    app_t *a = o;
    a->result = lk_context_run(a->ctx);
    return NULL;
}

/* A copy pipeline from topic to files, its sink named sink_uid, at log.level=level;
 * two records per batch, so the six records of its topic make three batches. */
static void make_app(app_t *a, const char *app, const char *topic, const char *sink_uid,
                     const char *level) {
    static char dirs[2][1024];
    static int n;
    a->topic = topic;
    a->sink_uid = sink_uid;
    a->outdir = tu_path(dirs[n++ % 2], sizeof dirs[0], tu_dir, sink_uid);
    a->stop_at = 3;
    char ckpt[1024];
    lk_conf_t *conf = mu_conf(&mu_cl, app, tu_path(ckpt, sizeof ckpt, tu_dir, app));
    mu_set(conf, "log.level", level);
    mu_set(conf, "max.records.per.partition", "2");
    mu_set(conf, "sink.overlap", "true"); /* deliveries on the delivery thread */
    char err[1024];
    a->ctx = lk_context_get_or_create(conf, define_copy, a, err, sizeof err);
    cr_assert_not_null(a->ctx, "%s: %s", app, err);
    lk_conf_destroy(conf);
    lk_context_on_progress(a->ctx, on_progress, a);
}

Test(log_level, two_contexts_each_logs_at_its_own_level) {
    mu_topic(&mu_cl, "in-debug", 1);
    mu_topic(&mu_cl, "in-error", 1);
    for (int i = 0; i < 6; i++) {
        char v[16];
        snprintf(v, sizeof v, "v%d", i);
        mu_produce(&mu_cl, "in-debug", 0, NULL, v);
        mu_produce(&mu_cl, "in-error", 0, NULL, v);
    }
    mu_flush(&mu_cl);
    cr_assert_eq(lk__log_default_level, LK_LOG_INFO);

    capture_stderr();
    app_t dbg, quiet;
    /* the quiet one last: when creating a context set the process's level, it won */
    make_app(&dbg, "app-debug", "in-debug", "sink-debug", "debug");
    make_app(&quiet, "app-error", "in-error", "sink-error", "error");
    int default_after_create = lk__log_default_level, threshold_after = lk__log_threshold();
    pthread_t t1, t2;
    cr_assert_eq(pthread_create(&t1, NULL, run_app, &dbg), 0);
    cr_assert_eq(pthread_create(&t2, NULL, run_app, &quiet), 0);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    uint64_t dbg_last = lk_context_last_batch(dbg.ctx);
    lk_context_destroy(dbg.ctx);
    lk_context_destroy(quiet.ctx);
    char *text = captured_stderr();

    cr_assert_eq(dbg.result, LK_OK, "%s", text);
    cr_assert_eq(quiet.result, LK_OK, "%s", text);
    cr_assert_geq(dbg_last, 3, "%s", text);
    /* creating a context leaves the process default and the caller's thread alone */
    cr_assert_eq(default_after_create, LK_LOG_INFO, "the process default became %d",
                 default_after_create);
    cr_assert_eq(threshold_after, LK_LOG_INFO, "the creating thread kept level %d bound",
                 threshold_after);

    /* the debug context: its creation's INFO line, and every batch's sink transitions
     * (DEBUG). With sink.overlap its delivery thread delivers the batches (READY ->
     * BEGUN -> PRODUCED -> COMMITTED); the loop thread only acknowledges (COMMITTED ->
     * READY): with the thread unbound, the process default (INFO) hid the first three. */
    cr_assert_eq(lines_with(text, "INFO lockstep: created checkpoint", "app-debug"), 1,
                 "---\n%s", text);
    for (uint64_t b = 1; b <= dbg_last; b++) {
        char what[80];
        snprintf(what, sizeof what, "sink 'sink-debug' batch %llu: READY -> BEGUN",
                 (unsigned long long)b);
        cr_assert_geq(lines_with(text, "DEBUG lockstep:", what), 1,
                      "no DEBUG line with \"%s\"\n---\n%s", what, text);
    }
    /* the error context: nothing below ERROR, though the other one logs at DEBUG */
    cr_assert_eq(lines_with(text, "app-error", NULL), 0, "---\n%s", text);
    cr_assert_eq(lines_with(text, "sink-error", NULL), 0, "---\n%s", text);
    free(text);
}

/* ---- librdkafka's clients ---- */

static void define_read(lk_pipeline_t *p, void *opaque) {
    lk_to_stdout(lk_kafka_stream(p, (const char *)opaque), "out");
}

/* A context whose consumers are named <app>#consumer-N, given kafka.acks (a producer
 * property: librdkafka warns, CONFWARN at level 4, when a consumer is created with it),
 * at log.level=level and, unless NULL, kafka.log_level=klevel. Not mu_conf: it sets
 * kafka.log_level. */
static lk_context_t *warned_context(const char *app, const char *level, const char *klevel) {
    char ckpt[1024];
    lk_conf_t *conf = lk_conf_new();
    mu_set(conf, "app.id", app);
    mu_set(conf, "checkpoint.dir", tu_path(ckpt, sizeof ckpt, tu_dir, app));
    mu_set(conf, "kafka.bootstrap.servers", mu_cl.bootstraps);
    mu_set(conf, "checkpoint.map.size", "4M");
    mu_set(conf, "kafka.client.id", app);
    mu_set(conf, "kafka.acks", "all");
    mu_set(conf, "log.level", level);
    if (klevel)
        mu_set(conf, "kafka.log_level", klevel);
    char err[1024];
    lk_context_t *ctx = lk_context_get_or_create(conf, define_read, "in", err, sizeof err);
    cr_assert_not_null(ctx, "%s: %s", app, err);
    lk_conf_destroy(conf);
    return ctx;
}

Test(log_level, librdkafka_clients_log_at_their_contexts_level) {
    mu_topic(&mu_cl, "in", 1);
    capture_stderr();
    lk_context_t *warn = warned_context("ctx-warning", "warning", NULL);
    /* the creating thread at debug changes nothing: the level is the client's own */
    int prev = lk__log_bind(LK_LOG_DEBUG);
    lk_context_t *quiet = warned_context("ctx-error", "error", NULL);
    lk__log_unbind(prev);
    /* kafka.log_level, given, is librdkafka's own threshold and wins */
    lk_context_t *own = warned_context("ctx-own", "error", "4");
    lk_context_destroy(warn);
    lk_context_destroy(quiet);
    lk_context_destroy(own);
    char *text = captured_stderr();
    /* two consumers each (planning and fetching), through lockstep's logger */
    cr_assert_eq(lines_with(text, "WARN lockstep: librdkafka ctx-warning#consumer-",
                            "CONFWARN: [thrd:app]: Configuration property request.required.acks is a producer"),
                 2, "---\n%s", text);
    cr_assert_eq(lines_with(text, "ctx-error", NULL), 0, "---\n%s", text);
    cr_assert_eq(lines_with(text, "WARN lockstep: librdkafka ctx-own#consumer-", "CONFWARN"),
                 2, "---\n%s", text);
    free(text);
}

/* ---- the CLI ---- */

TestSuite(log_level_cli, .init = cp_init, .fini = cp_fini, .timeout = 120);

/* `lockstep run` (copy pipeline from "in" to files) at log.level=level, stopped with
 * SIGTERM once its progress.log shows a batch; its stderr. */
static char *cli_run_stderr(const char *name, const char *level) {
    const char *err_file = cp_path(cp_fmt("%s.stderr", name));
    const char *plog = cp_path(cp_fmt("%s.progress", name));
    const char *argv[] = {cp_cli(), "run",
                          "-X", cp_fmt("app.id=%s", name),
                          "-X", cp_fmt("checkpoint.dir=%s", cp_path(cp_fmt("%s.ckpt", name))),
                          "-X", cp_fmt("kafka.bootstrap.servers=%s", cp_bootstraps),
                          "-X", "pipeline=copy",
                          "-X", "input.topics=in",
                          "-X", cp_fmt("output.dir=%s", cp_path(cp_fmt("%s.out", name))),
                          "-X", cp_fmt("progress.log=%s", plog),
                          "-X", "batch.interval.ms=0",
                          "-X", "kafka.fetch.wait.max.ms=10",
                          "-X", "checkpoint.map.size=4M",
                          "-X", "metrics.listen=",
                          "-X", "kafka.acks=all", /* librdkafka warns (CONFWARN) */
                          "-X", cp_fmt("log.level=%s", level),
                          NULL};
    cp_run_pid = fork();
    cr_assert_neq(cp_run_pid, -1);
    if (cp_run_pid == 0) {
        int e = open(err_file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int o = open("/dev/null", O_WRONLY);
        dup2(o, 1);
        dup2(e, 2);
        execv(argv[0], (char **)argv);
        _exit(127);
    }
    /* bounded wait for the first batch: a run that never gets there fails below */
    for (int i = 0; i < 300; i++) {
        char *p = cp_slurp(plog);
        int started = p[0] != 0;
        free(p);
        if (started)
            break;
        usleep(100 * 1000);
    }
    kill(cp_run_pid, SIGTERM);
    int rc = cp_wait_exit(&cp_run_pid, 30);
    char *text = cp_slurp(err_file);
    cr_assert_eq(rc, 0, "lockstep run (%s) exited with %d: %s", level, rc, text);
    char *p = cp_slurp(plog);
    cr_assert(p[0], "lockstep run (%s) committed no batch: %s", level, text);
    free(p);
    return text;
}

Test(log_level_cli, run_writes_what_log_level_lets_through) {
    cp_broker_start((const char *const[]){"in:1", NULL});
    cp_produce("in", 0, NULL, "v", 0);
    cp_flush();

    char *info = cli_run_stderr("at-info", "info");
    cr_assert_eq(lines_with(info, "INFO lockstep: created checkpoint", NULL), 1, "%s", info);
    cr_assert_eq(lines_with(info, "INFO lockstep: stopped gracefully", NULL), 1, "%s", info);
    cr_assert_geq(lines_with(info, "WARN lockstep: librdkafka", "CONFWARN"), 1, "%s", info);
    cr_assert_eq(lines_with(info, "DEBUG lockstep:", NULL), 0, "%s", info);

    char *dbg = cli_run_stderr("at-debug", "debug");
    cr_assert_geq(lines_with(dbg, "DEBUG lockstep: batch 1:", NULL), 1, "%s", dbg);

    char *err = cli_run_stderr("at-error", "error");
    static const char *const below[] = {" WARN lockstep:", " NOTICE lockstep:",
                                        " INFO lockstep:", " DEBUG lockstep:", "CONFWARN"};
    for (size_t i = 0; i < sizeof below / sizeof *below; i++)
        cr_assert_eq(lines_with(err, below[i], NULL), 0, "log.level=error wrote '%s': %s",
                     below[i], err);
    free(info);
    free(dbg);
    free(err);
}
