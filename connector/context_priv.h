/*
 * context_priv.h — what the context's own files share: struct lk_context and the
 * functions one file calls in another. context.c opens and closes an application
 * (getOrCreate, the topology check, the sinks); context_loop.c runs the batch loop;
 * context_delivery.c drains the sinks and hands durable batches to the delivery thread.
 * Nothing outside connector/context*.c includes it: the public API is lockstep.h.
 * DESIGN.md, A batch's life and Threads.
 */
#ifndef LK_CONTEXT_PRIV_H
#define LK_CONTEXT_PRIV_H

#include "lockstep.h"
#include "metrics_int.h"
#include "pipeline_int.h"
#include "receiver_int.h"
#include "../core/util_int.h"
#include "../sink/sink_int.h"
#include "../state/store_int.h"

#include <pthread.h>
#include <stdatomic.h>

struct lk_context {
    lk_conf_t *conf;
    lk_pipeline_t *pipeline;
    lk_store_t *store;
    lk_receiver_t *receiver;
    lk_batch_t batch;
    int64_t last_batch_time_ms;
    int has_ttl;
    int64_t default_ttl_ms;
    /* lock-free atomics: set from signal handlers and other threads */
    atomic_int stop_graceful; /* finish the batch in flight, then return */
    atomic_int stop_now;      /* abandon the batch in flight */
    /* monotonic ms by which a stop must be done, delivery included (0: no stop yet); set
     * where the stop is requested (signal handler: clock_gettime is async-signal-safe),
     * read by the sinks' blocking calls on any thread */
    _Atomic int64_t stop_deadline_ms;
    int64_t graceful_seen_ms; /* when the loop first saw stop_graceful, 0: not yet */
    int64_t shutdown_timeout_ms;
    int skip_loss;
    lk_sink_t **sinks;
    size_t nsinks;
    int64_t sink_retry_ms;     /* sinks are not tried again before this (backoff) */
    int64_t sink_backoff_ms;
    int backpressure_logged;
    void (*progress_cb)(const lk_progress_t *p, void *opaque);
    void *progress_opaque;
    double last_commit_ms;     /* of the last process_and_commit */
    uint64_t last_records_out;
    /* delivery overlapped with the next batch (lk_context_run with sink.overlap): a
     * thread delivers the durable batches up to dl_upto for the sinks marked in dl_mine
     * while the loop writes the next batch; the loop joins it after that commit and
     * acknowledges the last batch each sink delivered (dl_last) */
    int overlap;
    int dl_running;
    pthread_t dl_thread;
    uint64_t dl_upto;
    unsigned char *dl_mine;
    uint64_t *dl_last;
    lk_err_t *dl_err;
    char (*dl_errstr)[1024];
    int64_t dl_started_ns, dl_done_ns;
    /* the progress report of batch dl_upto, held back until its delivery is settled */
    int dl_report;
    lk_progress_t dl_progress;
    char **dl_topics;
    int64_t *dl_lag;
    int fatal;
    lk_err_t fatal_err; /* the first fatal error's code; errstr keeps its message */
    unsigned sink_failures; /* retriable delivery failures in a row (for the log line) */
    char errstr[1024];
    lk_metrics_t *metrics; /* /metrics, /healthz, /progress (metrics.c) */
};

/* Record e with its message in ctx->errstr (the message the application reports);
 * returns e. context.c. */
lk_err_t lk__ctx_fail(lk_context_t *ctx, lk_err_t e, const char *fmt, ...) LK__PRINTF(3, 4);

/* context_loop.c: a context being destroyed stops being the one signals stop. */
void lk__ctx_release_signals(lk_context_t *ctx);

/* context_delivery.c */
lk_err_t lk__ctx_drain_sinks(lk_context_t *ctx, int force);
lk_err_t lk__ctx_finish_delivery(lk_context_t *ctx);
lk_err_t lk__ctx_drain_overlapped(lk_context_t *ctx);
void lk__ctx_report_progress(lk_context_t *ctx, uint64_t id, int64_t time_ms,
                             const lk__fetch_t *f, const double ms[5], int defer);

#endif
