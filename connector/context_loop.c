/*
 * context_loop.c — the batch loop (DESIGN.md, The batch protocol and A batch's life:
 * planned → fetched → committed): per batch, plan (or replay a pending plan), fetch
 * exactly the planned ranges, process them inside one LMDB write transaction and commit
 * offsets + state + outbox + accumulators + batch record together, then hand the durable
 * batches to the sinks (context_delivery.c). Also graceful and immediate stop (SIGTERM,
 * SIGINT, lk_context_stop) and retry with backoff (DESIGN.md, Errors).
 */
#define _GNU_SOURCE
#include "context_priv.h"
#include "window_int.h"
#include "../core/conf_int.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* The context whose lk_context_run() owns SIGTERM/SIGINT. */
static lk_context_t *volatile signal_ctx;

void lk__ctx_release_signals(lk_context_t *ctx) {
    if (signal_ctx == ctx)
        signal_ctx = NULL;
}

/* Request a stop (also from a signal handler: only atomics and clock_gettime). A graceful
 * stop must be done, delivery included, within shutdown.timeout.ms; an immediate one
 * abandons what blocks at once. @locality any thread, signal handlers included */
static void request_stop(lk_context_t *ctx, int graceful) {
    int64_t now = lk__mono_ms();
    if (graceful) {
        int64_t none = 0;
        atomic_compare_exchange_strong(&ctx->stop_deadline_ms, &none,
                                       now + ctx->shutdown_timeout_ms);
        atomic_store(&ctx->stop_graceful, 1);
    } else {
        atomic_store(&ctx->stop_deadline_ms, now);
        atomic_store(&ctx->stop_now, 1);
    }
}

void lk_context_stop(lk_context_t *ctx, int graceful) {
    if (!ctx)
        return;
    request_stop(ctx, graceful);
}

typedef struct {
    lk__store_txn_t *t;
} lookup_ctx_t;

static lk_err_t lookup_offset(const char *topic, int32_t partition, int64_t *off,
                              lk__fingerprint_t *fp, int *has_fp, void *o, char *errstr,
                              size_t errstr_size) {
    lookup_ctx_t *l = o;
    lk_err_t e = lk__store_offset_get_fp(l->t, topic, partition, off, fp, has_fp);
    if (e && e != LK_ERR_NOT_FOUND) /* corrupt is refused, never read as "no offset" */
        return lk__err(e, errstr, errstr_size, "%s", lk__store_txn_errstr(l->t));
    return e;
}

/* Plan batch `id`: reuse its pending plan if the last run left one, else plan afresh.
 * @locality loop thread */
static lk_err_t plan_batch(lk_context_t *ctx, uint64_t id, lk__fetch_t *f, int64_t *time_ms,
                           int *replay) {
    lk__store_txn_t *t;
    lk_err_t e = lk__store_txn_begin(ctx->store, 0, &t, ctx->errstr, sizeof ctx->errstr);
    if (e)
        return e;
    lk__batch_rec_t pending;
    *replay = 0;
    *time_ms = 0;
    lookup_ctx_t l = {t};
    e = lk__store_plan_get(t, &pending);
    if (e && e != LK_ERR_NOT_FOUND) { /* a corrupt plan is refused, not ignored */
        e = lk__ctx_fail(ctx, e, "%s", lk__store_txn_errstr(t));
        lk__store_txn_abort(t);
        return e;
    }
    if (e == LK_OK && pending.id == id) {
        e = lk__receiver_use_plan(ctx->receiver, pending.ranges, pending.nranges, lookup_offset,
                                  &l, f, ctx->errstr, sizeof ctx->errstr);
        if (e && e != LK_ERR_NOT_FOUND) { /* e.g. the plan reaches past the log end */
            lk__store_txn_abort(t);
            char err[256];
            /* with on.data.loss=skip the retry plans afresh, where the policy applies */
            if (e == LK_ERR_DATA_LOSS && ctx->skip_loss &&
                lk__store_plan_clear(ctx->store, err, sizeof err))
                lk__log(LK_LOG_WARNING, "cannot clear the batch plan: %s", err);
            return e;
        }
    } else {
        e = LK_ERR_NOT_FOUND;
    }
    if (e == LK_OK) {
        *time_ms = pending.batch_time_ms;
        f->data_loss_skipped += pending.records_out; /* see record_plan */
        *replay = 1;
        lk__log(LK_LOG_INFO, "batch %llu: processing again with its recorded plan",
                (unsigned long long)id);
        lk__store_txn_abort(t);
        return LK_OK;
    }
    e = lk__receiver_plan(ctx->receiver, lookup_offset, &l, f, ctx->errstr, sizeof ctx->errstr);
    lk__store_txn_abort(t);
    /* batch time: the wall clock at planning, strictly increasing */
    int64_t now = lk__wall_ms();
    *time_ms = now > ctx->last_batch_time_ms ? now : ctx->last_batch_time_ms + 1;
    return e;
}

/* The Kafka headers of an input message as the record's headers (batch memory). */
static lk_err_t input_headers(lk_batch_t *b, rd_kafka_message_t *m, lk_record_t *r) {
    rd_kafka_headers_t *hdrs;
    if (rd_kafka_message_headers(m, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return LK_OK; /* none */
    size_t n = rd_kafka_header_cnt(hdrs);
    lk_record_header_t *hs = n ? lk__arena_alloc(&b->arena, n * sizeof *hs) : NULL;
    if (n && !hs) {
        lk__fmt(b->errstr, sizeof b->errstr, "out of memory for the headers of %s[%d] offset %lld",
                rd_kafka_topic_name(m->rkt), (int)m->partition, (long long)m->offset);
        return b->err = LK_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        const char *name;
        const void *val;
        size_t size;
        if (rd_kafka_header_get_all(hdrs, i, &name, &val, &size)) {
            lk__fmt(b->errstr, sizeof b->errstr, "cannot read header %zu of %s[%d] offset %lld",
                    i, rd_kafka_topic_name(m->rkt), (int)m->partition, (long long)m->offset);
            return b->err = LK_ERR_STATE;
        }
        hs[i] = (lk_record_header_t){name, val, val ? size : 0};
    }
    r->headers = hs;
    r->nheaders = n;
    return LK_OK;
}

/* Push every fetched record through the pipeline, in the batch's transaction (b was
 * begun on it), then flush the stages. @locality loop thread */
static lk_err_t process(lk_context_t *ctx, lk_batch_t *b, uint64_t id, int64_t time_ms,
                        const lk__fetch_t *f) {
    lk__phase(LK__PH_PROCESSING);
    lk__faultpoint("mid-processing");
    for (size_t i = 0; i < f->nranges && !b->err; i++) {
        const lk__range_msgs_t *rm = &f->ranges[i];
        for (size_t j = 0; j < rm->n && !b->err; j++) {
            rd_kafka_message_t *m = rm->msgs[j];
            rd_kafka_timestamp_type_t tt;
            int64_t ts = rd_kafka_message_timestamp(m, &tt);
            lk_record_t r = {m->key, m->key_len, m->payload, m->len,
                             ts >= 0 ? ts : time_ms, rm->range.topic, rm->range.partition,
                             m->offset};
            r.timestamp_type = ts >= 0 ? (lk_timestamp_type_t)tt : LK_TIMESTAMP_NOT_AVAILABLE;
            if (input_headers(b, m, &r)) /* b->err says why */
                break;
            lk__batch_push_input(b, ctx->pipeline, &r);
            if (atomic_load(&ctx->stop_now))
                break;
        }
        if (atomic_load(&ctx->stop_now))
            break;
    }
    if (!b->err && !atomic_load(&ctx->stop_now))
        lk__batch_end(b, ctx->pipeline);
    if (b->err)
        return lk__ctx_fail(ctx, b->err, "batch %llu: %s", (unsigned long long)id, b->errstr);
    if (atomic_load(&ctx->stop_now))
        return lk__ctx_fail(ctx, LK_ERR_STATE, "batch %llu abandoned: immediate stop requested",
                            (unsigned long long)id);
    return LK_OK;
}

/* Write what makes the batch a checkpoint into its transaction t, beside the state and
 * the outbox the operators wrote: each range's offset with the fingerprint of the last
 * record read, the record and data-loss accumulators, and the batch record.
 * @locality loop thread */
static lk_err_t record_batch(lk_context_t *ctx, lk__store_txn_t *t, lk_batch_t *b, uint64_t id,
                             int64_t time_ms, const lk__fetch_t *f) {
    lk__range_t *ranges =
        lk__arena_alloc(&b->arena, (f->nranges ? f->nranges : 1) * sizeof *ranges);
    if (!ranges)
        return lk__ctx_fail(ctx, LK_ERR_NOMEM, "out of memory");
    lk_err_t e = LK_OK;
    for (size_t i = 0; i < f->nranges && !e; i++) {
        ranges[i] = f->ranges[i].range;
        e = lk__store_offset_put_fp(t, ranges[i].topic, ranges[i].partition, ranges[i].until,
                                    f->ranges[i].has_fp ? &f->ranges[i].fp : NULL,
                                    ctx->errstr, sizeof ctx->errstr);
    }
    if (!e && f->data_loss_skipped)
        e = lk__store_acc_add(t, "lockstep.data.loss.skipped", (int64_t)f->data_loss_skipped,
                              ctx->errstr, sizeof ctx->errstr);
    /* the metrics' record counters: committed with the batch, exact across crashes */
    if (!e && f->records)
        e = lk__store_acc_add(t, "lockstep.records.in", (int64_t)f->records, ctx->errstr,
                              sizeof ctx->errstr);
    if (!e && b->records_out)
        e = lk__store_acc_add(t, "lockstep.records.out", (int64_t)b->records_out,
                              ctx->errstr, sizeof ctx->errstr);
    lk__batch_rec_t rec = {id, time_ms, 0, f->records, b->records_out, f->nranges, ranges};
    if (!e)
        e = lk__store_batch_put(t, &rec, ctx->errstr, sizeof ctx->errstr);
    return e;
}

/* fetched → committed (→ durable when the commit is fsynced): one LMDB write transaction
 * per batch, holding what process and record_batch write; its commit is the checkpoint.
 * @locality loop thread */
static lk_err_t process_and_commit(lk_context_t *ctx, uint64_t id, int64_t time_ms,
                                   lk__fetch_t *f) {
    lk__store_txn_t *t;
    lk_err_t e = lk__store_txn_begin(ctx->store, 1, &t, ctx->errstr, sizeof ctx->errstr);
    if (e)
        return e;
    lk_batch_t *b = &ctx->batch;
    /* state writes of this batch go to the changelogs too (a task's: DESIGN.md, Scale-out) */
    lk__store_txn_capture(t, id, time_ms);
    lk__batch_begin(b, ctx->pipeline, id, time_ms, t, ctx->default_ttl_ms);
    e = process(ctx, b, id, time_ms, f);
    if (!e)
        e = record_batch(ctx, t, b, id, time_ms, f);
    if (e) {
        lk__store_txn_abort(t);
        lk__batch_reset(b, ctx->pipeline);
        return e;
    }
    ctx->last_records_out = b->records_out;
    int64_t commit_start = lk__mono_ns();
    lk__phase(LK__PH_COMMITTING);
    e = lk__store_txn_commit(t, ctx->errstr, sizeof ctx->errstr);
    ctx->last_commit_ms = (double)(lk__mono_ns() - commit_start) / 1e6;
    if (!e)
        lk__pipeline_committed(ctx->pipeline);
    lk__batch_reset(b, ctx->pipeline);
    if (!e) {
        ctx->last_batch_time_ms = time_ms;
        lk__faultpoint("after-checkpoint-commit");
    }
    return e;
}

/* Abandon a fetch: an immediate stop, or a graceful one that has waited longer than
 * shutdown.timeout.ms for the batch in flight. @locality loop thread (inside the fetch) */
static int should_abandon(void *opaque) {
    lk_context_t *ctx = opaque;
    if (atomic_load(&ctx->stop_now))
        return 1;
    if (!atomic_load(&ctx->stop_graceful))
        return 0;
    int64_t now = lk__mono_ms();
    if (!ctx->graceful_seen_ms)
        ctx->graceful_seen_ms = now;
    return now - ctx->graceful_seen_ms > ctx->shutdown_timeout_ms;
}

/* Event-time windows: record which partitions the plan leaves records unread in (after
 * the fetch, whose byte cap may have cut ranges), before the plan itself, unsynced like
 * it, so that the batch and a replay of its recorded plan hold the watermark alike. */
static lk_err_t record_unread(lk_context_t *ctx, uint64_t id, const lk__fetch_t *f) {
    lk__wunread_t *u = malloc((f->nranges ? f->nranges : 1) * sizeof *u);
    if (!u)
        return lk__ctx_fail(ctx, LK_ERR_NOMEM, "out of memory");
    size_t n = 0;
    for (size_t i = 0; i < f->nranges; i++)
        if (f->ranges[i].high > f->ranges[i].range.until)
            u[n++] = (lk__wunread_t){f->ranges[i].range.topic, f->ranges[i].range.partition};
    lk__store_txn_t *t;
    lk_err_t e = lk__store_txn_begin(ctx->store, 1, &t, ctx->errstr, sizeof ctx->errstr);
    if (!e) {
        e = lk__window_record_plan(ctx->pipeline, t, id, lk__wall_ms(), u, n, ctx->errstr,
                                   sizeof ctx->errstr);
        if (e)
            lk__store_txn_abort(t);
        else
            e = lk__store_txn_commit_unsynced(t, ctx->errstr, sizeof ctx->errstr);
    }
    free(u);
    return e;
}

/* ---- one batch, as phases (DESIGN.md, A batch's life) ---- */

/* The batch in flight through run_batch's phases. */
typedef struct {
    uint64_t id;
    lk__fetch_t f;   /* its ranges, then its records */
    int64_t time_ms; /* the batch time (a replay keeps the recorded one) */
    int replay;      /* the plan is the recorded one of a crashed run */
    int64_t t0, t1, t2, t3; /* monotonic ns: planning began, planned, fetched, committed */
} inflight_t;

/* Back-pressure: with more than outbox.max.bytes waiting for the sinks, no new batch is
 * planned (input waits in Kafka). 1 if the loop must wait. @locality loop thread */
static int backpressured(lk_context_t *ctx) {
    uint64_t pending_bytes = lk__store_outbox_bytes(ctx->store);
    if (pending_bytes > (uint64_t)lk__conf_int(ctx->conf, LK__P_OUTBOX_MAX_BYTES)) {
        if (!ctx->backpressure_logged)
            lk__log(LK_LOG_WARNING, "outbox holds %llu bytes (over outbox.max.bytes): no new "
                    "batch until the sinks deliver; input waits in Kafka",
                    (unsigned long long)pending_bytes);
        ctx->backpressure_logged = 1;
        return 1;
    }
    ctx->backpressure_logged = 0;
    return 0;
}

/* Whether every sink knows its fence (recovered since open). @locality loop thread */
static int sinks_recovered(const lk_context_t *ctx) {
    for (size_t i = 0; i < ctx->nsinks; i++)
        if (!ctx->sinks[i]->recovered)
            return 0;
    return 1;
}

/* The next batch's number. @locality loop thread */
static uint64_t next_batch_id(lk_context_t *ctx) {
    uint64_t id = lk__store_committed_batch(ctx->store) + 1;
    /* checkpoint.adopt.output: a new checkpoint's batches are numbered after the output
     * of the checkpoint whose output it continues (its sinks recovered above) */
    /* a task's handoff (another process ran it): after that process's last batch, even
     * when this checkpoint committed batches of its own that were dropped */
    for (size_t i = 0; (id == 1 || ctx->task >= 0) && i < ctx->nsinks; i++)
        if (ctx->sinks[i]->adopted_after >= id) {
            id = ctx->sinks[i]->adopted_after + 1;
            /* once: an idle loop asks again every batch interval until a batch commits */
            if (ctx->first_batch_logged != id)
                lk__log(LK_LOG_NOTICE, "first batch of this checkpoint is %llu, after the %s",
                        (unsigned long long)id,
                        ctx->task >= 0 ? "output of the process that ran the task before"
                                       : "adopted output");
            ctx->first_batch_logged = id;
        }
    return id;
}

/* → planned: the ranges to read, in memory (recorded by record_plan once fetched).
 * @locality loop thread */
static lk_err_t plan(lk_context_t *ctx, inflight_t *b) {
    b->t0 = lk__mono_ns();
    lk__phase(LK__PH_PLANNING);
    lk_err_t e = plan_batch(ctx, b->id, &b->f, &b->time_ms, &b->replay);
    if (e)
        return e;
    b->t1 = lk__mono_ns();
    lk__faultpoint("after-plan");
    if (!b->replay)
        lk__metrics_planned(ctx->metrics, &b->f, ctx->receiver);
    return LK_OK;
}

/* 1 if the plan reads no input. */
static int plan_is_empty(const inflight_t *b) {
    int empty = 1;
    for (size_t i = 0; i < b->f.nranges; i++)
        empty &= b->f.ranges[i].range.from >= b->f.ranges[i].range.until;
    return empty;
}

/* 1 if the batch can be skipped: nothing to read and nothing to record. A partition seen
 * for the first time is recorded even when empty, or "latest" would move on every plan
 * and skip what arrives in between. A replayed plan is always committed: skipping it
 * would find it again forever. */
static int nothing_to_commit(const lk_context_t *ctx, const inflight_t *b) {
    return plan_is_empty(b) && !b->replay && !b->f.data_loss_skipped && !b->f.new_partitions &&
           !ctx->has_ttl;
}

/* planned → fetched: read exactly the planned ranges. @locality loop thread */
static lk_err_t fetch(lk_context_t *ctx, inflight_t *b) {
    lk__phase(LK__PH_FETCHING);
    lk_err_t e = lk__receiver_fetch(ctx->receiver, &b->f, !b->replay, should_abandon, ctx,
                                    ctx->errstr, sizeof ctx->errstr);
    if (e == LK_ERR_DATA_LOSS && b->replay) {
        /* The recorded plan reads offsets that are gone: plan afresh, where the data
         * loss policy applies. */
        char err[256];
        if (lk__store_plan_clear(ctx->store, err, sizeof err))
            lk__log(LK_LOG_WARNING, "cannot clear the batch plan: %s", err);
    }
    return e;
}

/* The plan is recorded before processing (unsynced), after the fetch whose byte cap may
 * have cut its ranges, so that a crashed batch is replayed alike. @locality loop thread */
static lk_err_t record_plan(lk_context_t *ctx, inflight_t *b) {
    lk__fetch_t *f = &b->f;
    lk_err_t e = LK_OK;
    lk__range_t *ranges = malloc((f->nranges ? f->nranges : 1) * sizeof *ranges);
    if (!ranges)
        e = lk__ctx_fail(ctx, LK_ERR_NOMEM, "out of memory");
    for (size_t i = 0; !e && i < f->nranges; i++)
        ranges[i] = f->ranges[i].range;
    /* a plan's records_out carries the offsets skipped for data loss, so a replay
     * counts them too */
    lk__batch_rec_t rec = {b->id, b->time_ms, 0, 0, f->data_loss_skipped, f->nranges, ranges};
    if (!e && lk__window_wants_plan(ctx->pipeline))
        e = record_unread(ctx, b->id, f);
    if (!e)
        e = lk__store_plan_put(ctx->store, &rec, ctx->errstr, sizeof ctx->errstr);
    free(ranges);
    return e;
}

/* After process_and_commit (e: its outcome): a failed batch leaves the receiver to seek
 * again; the records go, the ranges stay for the progress report. @locality loop thread */
static void release_input(lk_context_t *ctx, inflight_t *b, lk_err_t e) {
    if (e)
        lk__receiver_invalidate(ctx->receiver);
    else
        lk__log(LK_LOG_DEBUG,
                "batch %llu: %zu ranges, %llu records; plan %.1f ms, fetch %.1f ms, "
                "process+commit %.1f ms",
                (unsigned long long)b->id, b->f.nranges, (unsigned long long)b->f.records,
                (double)(b->t1 - b->t0) / 1e6, (double)(b->t2 - b->t1) / 1e6,
                (double)(lk__mono_ns() - b->t2) / 1e6);
    lk__fetch_release_messages(&b->f);
}

/* A failed sync, a corrupt checkpoint, MDB_PANIC: the store's fatal state stops the
 * application (the first fatal error wins). LK_OK if the store is sound.
 * @locality loop thread */
static lk_err_t check_store(lk_context_t *ctx) {
    const char *msg;
    if (!lk__store_fatal(ctx->store, &msg))
        return LK_OK;
    if (!ctx->fatal) {
        ctx->fatal = 1;
        ctx->fatal_err = LK_ERR_FATAL;
        lk__ctx_fail(ctx, LK_ERR_FATAL, "%s", msg);
    }
    return ctx->fatal_err;
}

/* durable → delivered: hand the durable batches to the sinks (the delivery thread with
 * sink.overlap, else at once), then report the batch if it committed (held back until
 * its own delivery is settled when that is in flight). A fenced or fatal sink error is
 * returned; a retriable one waits for the sinks' backoff. @locality loop thread */
static lk_err_t hand_over(lk_context_t *ctx, inflight_t *b, uint64_t committed_before) {
    lk_err_t se = ctx->overlap ? lk__ctx_drain_overlapped(ctx) : lk__ctx_drain_sinks(ctx, 1);
    if (ctx->fatal)
        return se;
    if (lk__store_committed_batch(ctx->store) != committed_before) {
        double ms[5] = {(double)(b->t1 - b->t0) / 1e6, (double)(b->t2 - b->t1) / 1e6,
                        (double)(b->t3 - b->t2) / 1e6 - ctx->last_commit_ms, ctx->last_commit_ms,
                        (double)(lk__mono_ns() - b->t3) / 1e6};
        lk__ctx_report_progress(ctx, b->id, b->time_ms, &b->f, ms,
                                ctx->dl_running && ctx->dl_upto == b->id);
    }
    return LK_OK;
}

/*
 * One batch, as phases: deliver what is durable (backoff permitting), wait while the
 * outbox is over its bound, plan, fetch, record the plan, process and commit, then hand
 * the durable batches to the sinks. *idle is set when it read no input (whether or not
 * it committed). @locality loop thread
 */
static lk_err_t run_batch(lk_context_t *ctx, int *idle) {
    *idle = 0;
    if (ctx->fatal) /* ctx->errstr still says why; formatting it into itself (vsnprintf
                     * with overlapping buffers) is undefined and lost the message */
        return LK_ERR_FATAL;
    lk_err_t e = lk__ctx_drain_sinks(ctx, 0);
    if (ctx->fatal)
        return e;
    if (ctx->task >= 0 && !sinks_recovered(ctx)) {
        /* a task plans only once its sinks know what Kafka holds: another process may
         * have run it since (the handoff, applied by the recovery) */
        if (e)
            return e;
        *idle = 1;
        return LK_OK;
    }
    if (backpressured(ctx)) {
        *idle = 1;
        return LK_OK;
    }
    inflight_t b = {.id = next_batch_id(ctx)};
    if ((e = plan(ctx, &b)))
        return e;
    *idle = plan_is_empty(&b);
    if (nothing_to_commit(ctx, &b)) {
        lk__fetch_clear(&b.f);
        return LK_OK;
    }
    e = fetch(ctx, &b);
    if (!e && !b.replay)
        e = record_plan(ctx, &b);
    b.t2 = lk__mono_ns();
    uint64_t committed_before = lk__store_committed_batch(ctx->store);
    if (!e)
        e = process_and_commit(ctx, b.id, b.time_ms, &b.f);
    b.t3 = lk__mono_ns();
    release_input(ctx, &b, e);
    lk_err_t fatal = check_store(ctx);
    if (fatal)
        e = fatal;
    else if (!e)
        e = hand_over(ctx, &b, committed_before);
    lk__fetch_clear(&b.f);
    return e;
}

lk_err_t lk_context_run_once(lk_context_t *ctx) {
    int idle;
    int prev = lk__log_bind(ctx->log_level);
    lk_err_t e = run_batch(ctx, &idle);
    lk__log_unbind(prev);
    return e;
}

static void on_signal(int sig) {
    (void)sig;
    lk_context_t *ctx = signal_ctx;
    if (!ctx)
        return;
    /* the second signal stops at once */
    request_stop(ctx, !atomic_load(&ctx->stop_graceful));
}

/* Wakes a nap (lk__nap_ms) of the batch loop while a graceful stop drains the deliveries:
 * only an immediate stop. */
static int stop_now_requested(const void *o) {
    const lk_context_t *ctx = o;
    return atomic_load(&ctx->stop_now);
}

static int retriable(const lk_context_t *ctx, lk_err_t e) {
    /* with on.data.loss=skip, input deleted after planning is skipped when re-planned;
     * a fatal error (a sink's data loss among them) is never retried */
    return !ctx->fatal && (e == LK_ERR_KAFKA || e == LK_ERR_TIMED_OUT || e == LK_ERR_IO ||
                           (e == LK_ERR_DATA_LOSS && ctx->skip_loss));
}

/* ---- the loop, as phases ---- */

/* SIGTERM/SIGINT as they were before lk_context_run took them (stop.gracefully). */
typedef struct {
    int own;
    struct sigaction term, intr;
} signals_t;

/* With stop.gracefully, the first SIGTERM/SIGINT stops ctx gracefully, the second at once.
 * @locality loop thread */
static void take_signals(lk_context_t *ctx, signals_t *s) {
    s->own = lk__conf_bool(ctx->conf, LK__P_STOP_GRACEFULLY);
    if (!s->own)
        return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    signal_ctx = ctx;
    sigaction(SIGTERM, &sa, &s->term);
    sigaction(SIGINT, &sa, &s->intr);
}

static void give_back_signals(const signals_t *s) {
    if (!s->own)
        return;
    sigaction(SIGTERM, &s->term, NULL);
    sigaction(SIGINT, &s->intr, NULL);
    signal_ctx = NULL;
}

/* Any stop (a graceful one too); also what wakes the batch loop's naps (lk__nap_ms). */
static int stop_requested(const void *o) {
    const lk_context_t *ctx = o;
    return atomic_load(&ctx->stop_graceful) || atomic_load(&ctx->stop_now);
}

/*
 * The batch failed with e. Settles the delivery in flight first (keeping the batch's
 * error as the one reported unless the delivery's was fatal). Returns 1 if the loop
 * stops (*result: LK_OK for a stop that abandoned the batch, else the error), 0 after
 * waiting *backoff (doubled for the next failure) to retry. @locality loop thread
 */
static int batch_failed(lk_context_t *ctx, lk_err_t e, int64_t *backoff, lk_err_t *result) {
    if (!ctx->fatal && ctx->dl_running) {
        char why[sizeof ctx->errstr];
        memcpy(why, ctx->errstr, sizeof why);
        if (lk__ctx_finish_delivery(ctx) && ctx->fatal)
            e = ctx->fatal_err;
        else
            memcpy(ctx->errstr, why, sizeof why);
    }
    if (ctx->fatal) /* the first fatal error wins, code and message together */
        e = ctx->fatal_err;
    if (atomic_load(&ctx->stop_now) || (atomic_load(&ctx->stop_graceful) && retriable(ctx, e))) {
        /* abandoned by an immediate stop: nothing of it was committed */
        lk__log(LK_LOG_NOTICE, "stopped; batch %llu abandoned (%s), it will be "
                "processed again on restart",
                (unsigned long long)lk__store_committed_batch(ctx->store) + 1, ctx->errstr);
        return 1;
    }
    if (!retriable(ctx, e)) {
        lk__log(LK_LOG_ERR, "%s (%s)", ctx->errstr, lk_err_name(e));
        *result = e;
        return 1;
    }
    lk__log(LK_LOG_WARNING, "batch failed, retrying in %lld ms: %s", (long long)*backoff,
            ctx->errstr);
    lk__nap_ms(*backoff, stop_requested, ctx);
    int64_t backoff_max = lk__conf_int(ctx->conf, LK__P_RETRY_BACKOFF_MAX_MS);
    *backoff = *backoff * 2 > backoff_max ? backoff_max : *backoff * 2;
    return 0;
}

/*
 * A batch that read no input has nothing to overlap delivery with: acknowledge the
 * delivery in flight now, and (group commit) make the last batches durable and let the
 * sinks deliver them. Retriable delivery errors are logged and retried by the sinks'
 * backoff; a fatal one is returned. @locality loop thread
 */
static lk_err_t settle_when_idle(lk_context_t *ctx) {
    if (ctx->dl_running && lk__ctx_drain_sinks(ctx, 1) && ctx->fatal)
        return ctx->fatal_err;
    if (lk__store_durable_batch(ctx->store) < lk__store_committed_batch(ctx->store)) {
        char err[256];
        if (lk__store_sync(ctx->store, err, sizeof err))
            lk__log(LK_LOG_WARNING, "group commit sync: %s (the sinks wait for it)", err);
        else if (lk__ctx_drain_sinks(ctx, 1) && ctx->fatal)
            return ctx->fatal_err;
    }
    return LK_OK;
}

/* Wait for the next batch: batch.interval.ms from the start of this one, or 100 ms
 * after an idle batch with no interval. A stop wakes it. @locality loop thread */
static void wait_for_next_batch(lk_context_t *ctx, int was_idle, int64_t started,
                                int64_t interval) {
    int64_t elapsed = lk__mono_ms() - started;
    lk__phase(LK__PH_IDLE);
    if (was_idle || elapsed < interval)
        lk__nap_ms(was_idle && interval == 0 ? 100 : interval - elapsed, stop_requested,
                   ctx);
}

/* A graceful stop after the loop: sync, then deliver what is pending within
 * shutdown.timeout.ms of the stop request. Returns result, or the fatal error a sink
 * met. @locality loop thread */
static lk_err_t stop_gracefully(lk_context_t *ctx, lk_err_t result) {
    char err[256];
    if (lk__store_sync(ctx->store, err, sizeof err))
        lk__log(LK_LOG_WARNING, "final sync: %s", err);
    lk__phase(LK__PH_STOPPING);
    lk__faultpoint("during-graceful-stop");
    int64_t until = atomic_load(&ctx->stop_deadline_ms);
    while (ctx->nsinks && lk__store_outbox_bytes(ctx->store) > 0 && !ctx->fatal &&
           !atomic_load(&ctx->stop_now) && lk__mono_ms() < until) {
        if (lk__ctx_drain_sinks(ctx, 1) == LK_OK)
            break;
        lk__nap_ms(ctx->sink_backoff_ms < until - lk__mono_ms() ? ctx->sink_backoff_ms
                                                                : until - lk__mono_ms(),
                   stop_now_requested, ctx);
    }
    if (lk__store_outbox_bytes(ctx->store) > 0)
        lk__log(LK_LOG_WARNING, "stopping with undelivered output in the outbox; it is "
                "delivered on the next start");
    if (ctx->fatal)
        result = ctx->fatal_err;
    lk__log(LK_LOG_INFO, "stopped gracefully after batch %llu",
            (unsigned long long)lk__store_committed_batch(ctx->store));
    return result;
}

/*
 * The loop, as phases: run a batch; on failure retry with backoff or stop; when idle
 * settle delivery; wait for the next batch. After a stop: deliver what is pending
 * (graceful), then settle the delivery in flight. @locality loop thread
 */
lk_err_t lk_context_run(lk_context_t *ctx) {
    int prev = lk__log_bind(ctx->log_level);
    signals_t sig;
    take_signals(ctx, &sig);
    if (ctx->group) { /* group.mode=consumer: the tasks run the batches */
        lk_err_t ge = lk__group_run(ctx->group, &ctx->stop_graceful, &ctx->stop_now);
        give_back_signals(&sig);
        lk__log_unbind(prev);
        return ge;
    }
    int64_t interval = lk__conf_int(ctx->conf, LK__P_BATCH_INTERVAL_MS);
    int64_t backoff0 = lk__conf_int(ctx->conf, LK__P_RETRY_BACKOFF_MS);
    int64_t backoff = backoff0;
    lk_err_t result = LK_OK;
    ctx->overlap = lk__conf_bool(ctx->conf, LK__P_SINK_OVERLAP);
    lk__metrics_loop(ctx->metrics, 1, LK_OK, NULL);
    while (!stop_requested(ctx)) {
        int64_t started = lk__mono_ms();
        int was_idle;
        lk_err_t e = run_batch(ctx, &was_idle);
        lk__metrics_batch(ctx->metrics, e, ctx->errstr);
        if (e) {
            if (batch_failed(ctx, e, &backoff, &result))
                break;
            continue;
        }
        backoff = backoff0;
        if (was_idle && (e = settle_when_idle(ctx))) {
            lk__log(LK_LOG_ERR, "%s (%s)", ctx->errstr, lk_err_name(e));
            result = e;
            break;
        }
        wait_for_next_batch(ctx, was_idle, started, interval);
    }
    if (atomic_load(&ctx->stop_graceful) && !atomic_load(&ctx->stop_now) && !result)
        result = stop_gracefully(ctx, result);
    if (lk__ctx_finish_delivery(ctx) && !result && ctx->fatal)
        result = ctx->fatal_err;
    ctx->overlap = 0;
    lk__metrics_loop(ctx->metrics, 0, result, ctx->errstr);
    give_back_signals(&sig);
    lk__log_unbind(prev);
    return result;
}
