/*
 * wc_runner.c — a word count application for process-level tests (SIGTERM, SIGKILL):
 * reads topic "lines", counts words in update_state_by_key "word-counts", counts lines
 * in the accumulator "lines", and optionally sleeps in each batch to widen the window
 * in which a signal lands mid-batch.
 * The counts go to a sink when asked: sink=kafka:TOPIC, sink=files:DIR (jsonl) or
 * sink=stdout (uid "counts-out").
 *   usage: wc_runner BOOTSTRAPS CHECKPOINT_DIR [SLOW_MS] [sink=...] [key=value ...]
 * Exit status: 0 after a stop, 1 on error (message on stderr).
 */
#define _GNU_SOURCE
#include "lockstep.h"
#include "wc_ops.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static long slow_ms;
static const char *sink_spec;

static void slow(lk_batch_t *b, const lk_record_t *r, size_t n, void *opaque) {
    (void)b;
    (void)r;
    (void)n;
    (void)opaque;
    if (slow_ms > 0) {
        struct timespec ts = {slow_ms / 1000, (slow_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0)
            ; /* a signal must not shorten the batch: the test wants it mid-batch */
    }
}

static void define(lk_pipeline_t *p, void *opaque) {
    (void)opaque;
    lk_stream_t *lines = lk_kafka_stream(p, "lines");
    lk_foreach_batch(lines, "slow", slow, NULL);
    lk_stream_t *words = lk_flat_map(lines, "split-words", wc_split_words, NULL);
    lk_stream_t *counts = lk_update_state_by_key(words, "word-counts", 1, wc_add_counts, NULL);
    if (!sink_spec)
        return;
    if (!strncmp(sink_spec, "kafka:", 6))
        lk_to_kafka(counts, "counts-out", sink_spec + 6);
    else if (!strncmp(sink_spec, "files:", 6))
        lk_to_files(counts, "counts-out", sink_spec + 6, "jsonl");
    else if (!strcmp(sink_spec, "stdout"))
        lk_to_stdout(counts, "counts-out");
    else
        lk_pipeline_fail(p, "wc_runner: unknown sink '%s'", sink_spec);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s BOOTSTRAPS CHECKPOINT_DIR [SLOW_MS] [key=value ...]\n",
                argv[0]);
        return 2;
    }
    slow_ms = argc > 3 ? atol(argv[3]) : 0;
    char err[1024];
    lk_conf_t *conf = lk_conf_new();
    const char *base[][2] = {{"app.id", "wc"},
                             {"checkpoint.dir", argv[2]},
                             {"kafka.bootstrap.servers", argv[1]},
                             {"kafka.fetch.wait.max.ms", "10"},
                             {"kafka.log_level", "3"},
                             {"batch.interval.ms", "0"},
                             {"max.records.per.partition", "20"},
                             {"log.level", "warning"}};
    for (size_t i = 0; i < sizeof base / sizeof *base; i++)
        if (lk_conf_set(conf, base[i][0], base[i][1], err, sizeof err) != LK_CONF_OK) {
            fprintf(stderr, "wc_runner: %s\n", err);
            return 1;
        }
    for (int i = 4; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq)
            continue;
        if (!strncmp(argv[i], "sink=", 5)) {
            sink_spec = argv[i] + 5;
            continue;
        }
        *eq = 0;
        if (lk_conf_set(conf, argv[i], eq + 1, err, sizeof err) != LK_CONF_OK) {
            fprintf(stderr, "wc_runner: %s\n", err);
            return 1;
        }
    }
    lk_context_t *ctx = lk_context_get_or_create(conf, define, NULL, err, sizeof err);
    lk_conf_destroy(conf);
    if (!ctx) {
        fprintf(stderr, "wc_runner: %s\n", err);
        return 1;
    }
    /* lk_context_run handles SIGTERM/SIGINT while it runs and gives the previous
     * dispositions back when it returns: ignored here, so that a second signal landing
     * after a quick graceful stop (the tests send two 20 ms apart) cannot kill the
     * runner while it closes the context (exit status 143 instead of 0) */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    printf("ready\n");
    fflush(stdout);
    lk_err_t e = lk_context_run(ctx);
    if (e)
        fprintf(stderr, "wc_runner: %s (%s)\n", lk_context_errstr(ctx), lk_err_name(e));
    lk_context_destroy(ctx);
    return e ? 1 : 0;
}
