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

/*
 * An application. Three threads touch it (DESIGN.md, Threads): the loop thread (the one
 * in lk_context_run / lk_context_run_once, which owns everything not listed otherwise),
 * the delivery thread (sink.overlap; context_delivery.c's delivery_thread) and signal
 * handlers. The fields are grouped by who may touch them and what guards that.
 */
struct lk_context {
    /* ---- set by lk_context_get_or_create, read-only afterwards: any thread reads these
     * fields (what the receiver and pipeline point to is the loop's own). The store
     * handle is shared: the loop holds the one write transaction, the delivery thread
     * opens only read transactions (LMDB allows both at once). ---- */
    lk_conf_t *conf;
    lk_pipeline_t *pipeline;
    lk__store_t *store;
    lk__receiver_t *receiver;
    int has_ttl;
    int64_t default_ttl_ms;
    int64_t shutdown_timeout_ms;
    int skip_loss;
    /* log.level as LK_LOG_*: bound (lk__log_bind) by every public entry point taking the
     * context and by its threads, so its messages follow it and no other context's */
    int log_level;
    lk__sink_t **sinks; /* each sink is used by one thread at a time: see the dl_ group */
    size_t nsinks;
    lk__metrics_t *metrics; /* /metrics, /healthz, /progress (metrics.c, its own lock) */
    /* scale-out (context_group.c): a context of group.mode=consumer has a group (and no
     * store, receiver, sinks or metrics of its own: its tasks have them); a task's
     * context has its task number (-1: single mode, the application is one task) and
     * the group's membership consumer, whose generation its Kafka sink sends offsets
     * with */
    struct lk__group *group;
    int task;
    /* a task of the stage after lk_repartition <stage> (its pipeline cut to it,
     * pipeline_repartition.c); NULL: stage 1, or not a task */
    char *stage;
    rd_kafka_t *group_rk;
    uint64_t first_batch_logged; /* next_batch_id's notice, logged once per number */

    /* ---- atomics: written from signal handlers (lk_context_stop, request_stop) and read
     * on any thread, the sinks' blocking calls on the delivery thread included ---- */
    atomic_int stop_graceful; /* finish the batch in flight, then return */
    atomic_int stop_now;      /* abandon the batch in flight */
    /* monotonic ms by which a stop must be done, delivery included (0: no stop yet); set
     * where the stop is requested (signal handler: clock_gettime is async-signal-safe) */
    _Atomic int64_t stop_deadline_ms;

    /* ---- handed to the delivery thread and back, guarded by pthread_create and
     * pthread_join (no lock: the thread's start and its join order the accesses). The
     * loop writes dl_upto, dl[i].mine and dl_started_ns before pthread_create and reads
     * the rest after pthread_join; while dl_running, the thread alone writes dl[i].last,
     * .err and .errstr of the sinks marked mine, and dl_done_ns, and the
     * loop does not touch those sinks (lk__ctx_drain_sinks returns early or joins
     * first). ---- */
    int dl_running; /* the loop's own: a delivery thread was started and not joined */
    pthread_t dl_thread;
    uint64_t dl_upto;
    struct {
        unsigned char mine; /* sinks[i] delivers on the thread */
        uint64_t last;      /* the last batch it delivered there (0: none) */
        lk_err_t err;       /* its outcome, and why */
        char errstr[1024];
    } *dl; /* one per sink, as sinks */
    int64_t dl_started_ns, dl_done_ns;

    /* ---- the loop thread's own (never read by the delivery thread) ---- */
    lk_batch_t batch;
    int64_t last_batch_time_ms;
    int64_t graceful_seen_ms; /* when the loop first saw stop_graceful, 0: not yet */
    int overlap;              /* sink.overlap in this lk_context_run */
    int64_t sink_retry_ms;    /* sinks are not tried again before this (backoff) */
    int64_t sink_backoff_ms;
    unsigned sink_failures;   /* retriable delivery failures in a row (for the log line) */
    int backpressure_logged;
    void (*progress_cb)(const lk_progress_t *p, void *opaque);
    void *progress_opaque;
    double last_commit_ms; /* of the last process_and_commit */
    uint64_t last_records_out;
    /* the progress report of batch dl_upto, held back until its delivery is settled */
    int dl_report;
    lk_progress_t dl_progress;
    char **dl_topics;
    int64_t *dl_lag;
    int fatal;
    lk_err_t fatal_err; /* the first fatal error's code; errstr keeps its message */
    char errstr[1024];
};

/* Record e with its message in ctx->errstr (the message the application reports);
 * returns e. context.c. */
lk_err_t lk__ctx_fail(lk_context_t *ctx, lk_err_t e, const char *fmt, ...) LK__PRINTF(3, 4);

/* context_loop.c: a context being destroyed stops being the one signals stop. */
void lk__ctx_release_signals(lk_context_t *ctx);

/* context_delivery.c, all called on the loop thread. Deliver what is durable now
 * (force: even inside the sinks' backoff, joining the delivery in flight first). */
lk_err_t lk__ctx_drain_sinks(lk_context_t *ctx, int force);
/* Join the delivery thread, if running, and acknowledge what it delivered. */
lk_err_t lk__ctx_finish_delivery(lk_context_t *ctx);
/* After a commit with sink.overlap: hand the durable batches to the delivery thread. */
lk_err_t lk__ctx_drain_overlapped(lk_context_t *ctx);
/* Report committed batch id (ms: plan, fetch, process, commit, deliver); with defer,
 * once the delivery in flight is settled. */
void lk__ctx_report_progress(lk_context_t *ctx, uint64_t id, int64_t time_ms,
                             const lk__fetch_t *f, const double ms[5], int defer);

/* ---- scale-out (context_group.c, DESIGN.md Scale-out) ---- */
typedef struct lk__group lk__group_t;
/* The group of a group.mode=consumer context whose pipeline is defined: checks the
 * pipeline, the input's partition counts and the progress topic, prepares
 * checkpoint.dir and joins the group (tasks start at the first assignment). */
lk_err_t lk__group_new(lk__group_t **out, lk_context_t *parent, lk_define_fn *define,
                       void *opaque, const char **topics, size_t ntopics, char *errstr,
                       size_t errstr_size);
/* Run until *graceful or *now, or a task fails; the error is also in the parent's errstr. */
lk_err_t lk__group_run(lk__group_t *g, const atomic_int *graceful, const atomic_int *now);
void lk__group_destroy(lk__group_t *g);
/* group.mode=single refuses a checkpoint.dir holding task checkpoints. */
lk_err_t lk__group_check_single(const char *dir, char *errstr, size_t errstr_size);
/* Task p of `stage` (context.c): the pipeline keeps only that stage's operators
 * (lk__pipeline_cut: stage NULL, the inputs'; else those after lk_repartition `stage`),
 * its repartition writers routing by key over ntasks partitions; conf's checkpoint.dir is
 * the task's; rk the group's. */
lk_context_t *lk__context_new_task(const lk_conf_t *conf, lk_define_fn *define, void *opaque,
                                   int task, const char *stage, int ntasks, rd_kafka_t *rk,
                                   char *errstr, size_t errstr_size);

#endif
