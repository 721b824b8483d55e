/*
 * cmd_run.c — `lockstep run -c app.properties [-X key=value ...]`: runs a built-in
 * pipeline or a plugin against any Kafka until SIGTERM/SIGINT, showing progress: a live
 * status line on a terminal, and one JSON line per batch in progress.log when set
 * (modelled on Spark's StreamingQueryProgress).
 */
#define _GNU_SOURCE
#include "cli_int.h"
#include "../core/conf_int.h"
#include "../core/util_int.h"
#include "../connector/metrics_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char run_usage[] =
    "Usage: lockstep run [-c FILE]... [-X key=value]...\n"
    "\n"
    "Run a pipeline exactly-once until SIGTERM or SIGINT (a second signal stops at once;\n"
    "either way nothing is lost and the next start resumes from the checkpoint).\n"
    "\n"
    "  -c FILE         read a .properties file (may repeat; later files win)\n"
    "  -X key=value    set one property (may repeat; applied in order, after -c files\n"
    "                  given before it)\n"
    "\n"
    "Required: app.id, checkpoint.dir, kafka.bootstrap.servers, and a pipeline:\n"
    "  pipeline=wordcount|count-by-key|sum-by-key|copy with input.topics and\n"
    "  output.topic and/or output.dir, or pipeline.plugin=./libmine.so.\n"
    "Scale-out: with group.mode=consumer the processes of one app.id share its tasks\n"
    "  (partition p of every input topic) through consumer group <app.id>; give each its\n"
    "  own checkpoint.dir, and its own group.instance.id if set (README, 'Scaling out').\n"
    "Run 'lockstep config' for every property.\n";

typedef struct {
    FILE *log;
    int tty;
    int64_t last_ms;
    uint64_t batches;
} progress_t;

static void human_bytes(uint64_t b, char *buf, size_t size) {
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int i = 0;
    while (v >= 1024 && i < 4) {
        v /= 1024;
        i++;
    }
    snprintf(buf, size, i ? "%.1f %s" : "%.0f %s", v, u[i]);
}

static void on_progress(const lk_progress_t *p, void *opaque) {
    progress_t *pr = opaque;
    int64_t now = lk__wall_ms();
    double secs = pr->last_ms ? (double)(now - pr->last_ms) / 1000.0 : 0;
    if (secs <= 0)
        secs = (p->plan_ms + p->fetch_ms + p->process_ms + p->commit_ms + p->deliver_ms) / 1000.0;
    if (secs <= 0)
        secs = 1e-3;
    pr->last_ms = now;
    pr->batches++;
    if (pr->log) {
        /* the same line as the /progress endpoint's entries (connector/metrics.c) */
        char *line = lk__metrics_progress_line(p, now, secs);
        if (line)
            fprintf(pr->log, "%s\n", line);
        free(line);
        fflush(pr->log);
    }
    if (pr->tty) {
        char ob[32], lag[256] = "";
        human_bytes(p->outbox_bytes, ob, sizeof ob);
        size_t off = 0;
        for (size_t i = 0; i < p->ntopics && off < sizeof lag - 40; i++)
            off += (size_t)snprintf(lag + off, sizeof lag - off, "%s%s %lld", i ? ", " : "",
                                    p->topics[i], (long long)p->topic_lag[i]);
        printf("\r\033[Kbatch %llu | in %.0f rec/s | out %.0f rec/s | lag %s | commit %.1f ms "
               "| outbox %s",
               (unsigned long long)p->batch, (double)p->records_in / secs,
               (double)p->records_out / secs, lag, p->commit_ms, ob);
        fflush(stdout);
    }
}

int lk__cli_run(int argc, char **argv) {
    if (lk__cli_has_help(argc, argv)) {
        fputs(run_usage, stdout);
        return 0;
    }
    lk_conf_t *conf = lk_conf_new();
    /* rest holds up to argc arguments: a fixed 64 used to drop every argument after
     * the 64th silently (settings ignored, errors not reported) */
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    int nrest = 0;
    int rc = rest ? lk__cli_conf_args(conf, argc, argv, run_usage, rest, &nrest) : 1;
    if (!rc && nrest) {
        fprintf(stderr, "lockstep run: unexpected argument '%s'\n\n%s", rest[0], run_usage);
        rc = 2;
    }
    free(rest);
    if (rc) {
        lk_conf_destroy(conf);
        return rc;
    }
    /* the command's own messages (loading a plugin, defining the pipeline) follow -X
     * log.level too; the context binds it for its own. Set before any thread starts. */
    lk__log_default_level = lk__conf_log_level(conf);
    char err[1024];
    lk__cli_define_t def;
    if (lk_conf_validate(conf, err, sizeof err) ||
        (!lk_conf_get(conf, "kafka.bootstrap.servers") &&
         lk__err(LK_ERR_CONF_INVALID, err, sizeof err,
                 "kafka.bootstrap.servers is required (the Kafka cluster to read)")) ||
        lk__cli_define(conf, &def, err, sizeof err)) {
        fprintf(stderr, "lockstep: %s\n", err);
        lk_conf_destroy(conf);
        return 2;
    }
    progress_t pr = {.tty = isatty(STDOUT_FILENO)};
    const char *plog = lk__conf_str(conf, LK__P_PROGRESS_LOG);
    if (plog[0] && !(pr.log = fopen(plog, "a"))) {
        fprintf(stderr, "lockstep: progress.log: cannot open %s: %m\n", plog);
        lk__cli_define_free(&def);
        lk_conf_destroy(conf);
        return 1;
    }
    void *opaque;
    lk_define_fn *define = lk__cli_define_fn(&def, &opaque);
    lk_context_t *ctx = lk_context_get_or_create(conf, define, opaque, err, sizeof err);
    lk_err_t e = LK_OK;
    if (!ctx) {
        fprintf(stderr, "lockstep: %s\n", err);
        rc = 1;
    } else {
        lk_context_on_progress(ctx, on_progress, &pr);
        e = lk_context_run(ctx);
        if (pr.tty && pr.batches)
            printf("\n");
        if (e)
            fprintf(stderr, "lockstep: %s (%s)\n", lk_context_errstr(ctx), lk_err_name(e));
        rc = e ? 1 : 0;
    }
    lk_context_destroy(ctx);
    if (pr.log)
        fclose(pr.log);
    lk__cli_define_free(&def);
    lk_conf_destroy(conf);
    return rc;
}
