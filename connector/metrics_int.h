/*
 * metrics_int.h — observability of a running context: the Prometheus exposition
 * (/metrics), the health probe (/healthz) and the recent progress reports (/progress),
 * served by libmicrohttpd on its own thread when metrics.listen is set, and written by
 * lk_context_metrics_write() for embedders that serve it themselves.
 *
 * Counters of processed data (batches, records, dead letters, late records, data loss)
 * are read from the checkpoint at every scrape, so a crash and restart never
 * double-counts them and they never go backwards; only what describes this process (phase durations, fencing, health) is
 * kept in memory. The batch loop feeds the module with one call per phase boundary;
 * every call takes a mutex for a few stores, never I/O.
 *
 * Threading: the lk__metrics_* feed calls come from the batch loop's thread (and the
 * delivery settling, on the same thread); writes and HTTP requests may come from any
 * thread. The store handle is only read (read transactions), which LMDB allows
 * alongside the loop's write transaction.
 */
#ifndef LK_METRICS_INT_H
#define LK_METRICS_INT_H

#include "lockstep.h"
#include "receiver_int.h"
#include "../sink/sink_int.h"
#include "../state/store_int.h"

#include <stdio.h>

typedef struct lk__metrics lk__metrics_t;

/** How many progress reports /progress keeps (the newest last). */
#define LK__METRICS_PROGRESS_KEEP 100

/**
 * Create the metrics of a context over its open store; with metrics.listen set, bind
 * it (refused with LK_ERR_CONF_INVALID for a malformed address, LK_ERR_IO when the
 * address cannot be bound, e.g. the port is taken, the OS reason kept) and serve on
 * libmicrohttpd's own thread. store, conf and the sinks (whose transaction counters it
 * reads) must outlive the metrics. late_ops names the pipeline's event-time windows
 * (copied): each gets lockstep_late_records_total{operator} from its accumulator
 * <uid>.late. LK_ERR_NOMEM when out of memory.
 */
lk_err_t lk__metrics_new(lk__metrics_t **out, lk__store_t *store, const lk_conf_t *conf,
                         lk__sink_t *const *sinks, size_t nsinks,
                         const char *const *late_ops, size_t nlate, char *errstr,
                         size_t errstr_size);
/**
 * The metrics of a group.mode=consumer process (store NULL): serves metrics.listen like
 * lk__metrics_new, and writes the metrics of the tasks running here (added with
 * lk__metrics_member_add), each sample labelled task="p", with the process's health.
 * The group feeds it lk__metrics_loop only.
 */
#define lk__metrics_new_group(out, conf, errstr, errstr_size)                              \
    lk__metrics_new((out), NULL, (conf), NULL, 0, NULL, 0, (errstr), (errstr_size))
/** A task's metrics: every sample carries task="task" (and stage="<uid>" for a task of
 * the stage after lk_repartition <uid>; stage NULL: stage 1). */
void lk__metrics_set_task(lk__metrics_t *m, int task, const char *stage);
/** Add a task's metrics m to group g's (LK_ERR_NOMEM); remove them before they are
 * destroyed (waits for a scrape reading them). NULL g or m: no-op. */
lk_err_t lk__metrics_member_add(lk__metrics_t *g, lk__metrics_t *m);
void lk__metrics_member_remove(lk__metrics_t *g, lk__metrics_t *m);
/** Stop serving (waits for a request in progress) and free. NULL is a no-op. */
void lk__metrics_destroy(lk__metrics_t *m);

/** A fresh plan: remember each partition's log end (lag = log end - checkpointed) and
 * the high watermark r last fetched (held back = high watermark - log end). */
void lk__metrics_planned(lk__metrics_t *m, const lk__fetch_t *f, lk__receiver_t *r);
/** A committed batch's report: phase durations and the /progress entry. */
void lk__metrics_progress(lk__metrics_t *m, const lk_progress_t *p);

/** lk_context_run() started (running 1) or returned (running 0, err its result). */
void lk__metrics_loop(lk__metrics_t *m, int running, lk_err_t err, const char *why);
/** A batch ended: LK_OK (committed or idle) or a retriable error (why says what). */
void lk__metrics_batch(lk__metrics_t *m, lk_err_t err, const char *why);
/** A round of deliveries ended: LK_OK, or the sinks' first error (LK_ERR_FENCED counts
 * a fencing). */
void lk__metrics_sink(lk__metrics_t *m, lk_err_t err, const char *why);

/** Write the exposition: Prometheus text 0.0.4, or OpenMetrics 1.0 text. */
lk_err_t lk__metrics_write(lk__metrics_t *m, FILE *fp, int openmetrics, char *errstr,
                           size_t errstr_size);
/** The health verdict: 1 healthy, 0 not, with a one-line reason in why. */
int lk__metrics_health(lk__metrics_t *m, char *why, size_t why_size);
/**
 * The progress.log line of p (a JSON object, no newline) at wall clock now (ms), secs
 * since the previous report (for inputRowsPerSecond); malloc'ed, NULL if out of memory.
 * /progress and `lockstep run`'s progress.log share it.
 */
char *lk__metrics_progress_line(const lk_progress_t *p, int64_t now, double secs);

/** The kept progress reports as a JSON array (the progress.log lines). */
void lk__metrics_progress_json(lk__metrics_t *m, FILE *fp);

/** The metrics reference as a Markdown table (README), from the metric table. */
void lk__metrics_markdown(FILE *fp);

#endif
