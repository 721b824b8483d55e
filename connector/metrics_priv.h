/*
 * metrics_priv.h — what the metrics module's own files (metrics.c, metrics_text.c,
 * metrics_http.c) share: the metrics' fields and the lock that guards them, the phase
 * histograms' buckets, and the helpers across files. Nothing outside connector/metrics*.c
 * includes it: the rest of the engine uses metrics_int.h. DESIGN.md, Observability.
 */
#ifndef LK_METRICS_PRIV_H
#define LK_METRICS_PRIV_H

#include "metrics_int.h"
#include "../core/conf_int.h"
#include "../core/util_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static const char *const phase_names[5] = {"plan", "fetch", "process", "commit", "deliver"};
/* upper bounds in seconds: a 0.1 ms commit to a 30 s fetch timeout */
static const double bucket_le[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                   0.1,    0.25,  0.5,    1,     2.5,  5,     10,  30};
#define NBUCKETS (sizeof bucket_le / sizeof bucket_le[0])

typedef struct {
    uint64_t counts[NBUCKETS + 1]; /* per bucket (not cumulative); the last is +Inf */
    uint64_t count;
    double sum;
} lk__histogram_t;

typedef struct {
    char *topic;
    int32_t partition;
    int64_t high; /* log end of the last plan: the last stable offset (read_committed) */
    int64_t held; /* high watermark - last stable offset: behind open transactions */
    int64_t held_since_ms; /* monotonic: caught up to a held-back end since; 0: not */
    int warned;            /* the hold was logged */
} lk__part_high_t;

struct MHD_Daemon;

struct lk__metrics {
    lk__store_t *store; /* NULL: a group's metrics (lk__metrics_new_group) */
    char stage[104];    /* a task of the stage after lk_repartition <stage>: stage="<uid>" */
    int task;           /* a task's (group.mode=consumer): its samples carry task="p"; -1 */
    /* a group's: the metrics of the tasks running in this process, written together at
     * a scrape. The group adds and removes them under members_lock, which a scrape holds
     * while it writes them, so a task's metrics never go while they are read. */
    pthread_mutex_t members_lock;
    lk__metrics_t **members;
    size_t nmembers, members_cap;
    lk__sink_t *const *sinks;
    size_t nsinks;
    char **late_ops; /* uids of the event-time windows: lockstep_late_records_total */
    size_t nlate;
    char *app;
    int64_t stall_ms;
    int log_level; /* the context's log.level: libmicrohttpd's thread binds it per request */
    struct MHD_Daemon *daemon;
    pthread_mutex_t lock; /* everything below */
    lk__histogram_t phases[5];
    lk__part_high_t *highs;
    size_t nhighs;
    uint64_t fenced, sink_errors, batch_errors;
    int running;            /* inside lk_context_run() */
    int ended;              /* lk_context_run() returned */
    lk_err_t end_err;       /* ... with this */
    int64_t last_ok_ms;     /* monotonic: last batch committed or idle */
    int64_t retry_since_ms; /* monotonic: first of the current run of failed batches, 0 */
    int64_t sink_fail_since_ms;
    int sink_fatal;
    char why[512];      /* the last batch error */
    char sink_why[512]; /* the last sink error */
    char end_why[512];
    char *progress[LK__METRICS_PROGRESS_KEEP]; /* ring of JSON objects */
    size_t nprogress, progress_next;
    int64_t last_report_ms;
};

/* The health verdict with m->lock held (lk__metrics_health takes it): 1 healthy, 0 not,
 * with a one-line reason in why. */
int lk__metrics_health_locked(lk__metrics_t *m, char *why, size_t size);

/* metrics_http.c: bind listen_at (HOST:PORT, [IPv6]:PORT) and serve /metrics, /healthz
 * and /progress on libmicrohttpd's own thread, setting m->daemon. LK_ERR_CONF_INVALID
 * for a malformed address, LK_ERR_IO when it cannot be bound (the OS reason kept) or the
 * server does not start; m is left for the caller to destroy. */
lk_err_t lk__metrics_listen(lk__metrics_t *m, const char *listen_at, char *errstr,
                            size_t errstr_size);

#endif
