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
 * abandons what blocks at once. */
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
    lk_store_txn_t *t;
} lookup_ctx_t;

static lk_err_t lookup_offset(const char *topic, int32_t partition, int64_t *off,
                              lk_fingerprint_t *fp, int *has_fp, void *o, char *errstr,
                              size_t errstr_size) {
    lookup_ctx_t *l = o;
    lk_err_t e = lk__store_offset_get_fp(l->t, topic, partition, off, fp, has_fp);
    if (e && e != LK_ERR_NOT_FOUND) /* corrupt is refused, never read as "no offset" */
        return lk__err(e, errstr, errstr_size, "%s", lk__store_txn_errstr(l->t));
    return e;
}

/* Plan batch `id`: reuse its pending plan if the last run left one, else plan afresh. */
static lk_err_t plan_batch(lk_context_t *ctx, uint64_t id, lk__fetch_t *f, int64_t *time_ms,
                           int *replay) {
    lk_store_txn_t *t;
    lk_err_t e = lk__store_txn_begin(ctx->store, 0, &t, ctx->errstr, sizeof ctx->errstr);
    if (e)
        return e;
    lk_batch_rec_t pending;
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
        f->data_loss_skipped += pending.records_out; /* see run_batch */
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

static lk_err_t process_and_commit(lk_context_t *ctx, uint64_t id, int64_t time_ms,
                                   lk__fetch_t *f) {
    lk_store_txn_t *t;
    lk_err_t e = lk__store_txn_begin(ctx->store, 1, &t, ctx->errstr, sizeof ctx->errstr);
    if (e)
        return e;
    lk_batch_t *b = &ctx->batch;
    lk__batch_begin(b, ctx->pipeline, id, time_ms, t, ctx->default_ttl_ms);
    lk__phase(LK__PH_PROCESSING);
    lk__faultpoint("mid-processing");
    for (size_t i = 0; i < f->nranges && !b->err; i++) {
        lk__range_msgs_t *rm = &f->ranges[i];
        for (size_t j = 0; j < rm->n && !b->err; j++) {
            rd_kafka_message_t *m = rm->msgs[j];
            rd_kafka_timestamp_type_t tt;
            int64_t ts = rd_kafka_message_timestamp(m, &tt);
            lk_record_t r = {m->key, m->key_len, m->payload, m->len,
                             ts >= 0 ? ts : time_ms, rm->range.topic, rm->range.partition,
                             m->offset};
            r.timestamp_type = ts >= 0 ? (lk_timestamp_type_t)tt : LK_TIMESTAMP_NOT_AVAILABLE;
            if ((e = input_headers(b, m, &r)))
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
    if (b->err) {
        e = lk__ctx_fail(ctx, b->err, "batch %llu: %s", (unsigned long long)id, b->errstr);
        goto abort;
    }
    if (atomic_load(&ctx->stop_now)) {
        e = lk__ctx_fail(ctx, LK_ERR_STATE, "batch %llu abandoned: immediate stop requested",
                 (unsigned long long)id);
        goto abort;
    }
    lk_range_t *ranges = lk__arena_alloc(&b->arena, (f->nranges ? f->nranges : 1) * sizeof *ranges);
    if (!ranges) {
        e = lk__ctx_fail(ctx, LK_ERR_NOMEM, "out of memory");
        goto abort;
    }
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
    lk_batch_rec_t rec = {id, time_ms, 0, f->records, b->records_out, f->nranges, ranges};
    if (!e)
        e = lk__store_batch_put(t, &rec, ctx->errstr, sizeof ctx->errstr);
    if (e)
        goto abort;
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
abort:
    lk__store_txn_abort(t);
    lk__batch_reset(b, ctx->pipeline);
    return e;
}

/* Abandon a fetch: an immediate stop, or a graceful one that has waited longer than
 * shutdown.timeout.ms for the batch in flight. */
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
    lk_store_txn_t *t;
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

/* One batch. *idle is set when it read no input (whether or not it committed). */
static lk_err_t run_batch(lk_context_t *ctx, int *idle) {
    *idle = 0;
    if (ctx->fatal) /* ctx->errstr still says why; formatting it into itself (vsnprintf
                     * with overlapping buffers) is undefined and lost the message */
        return LK_ERR_FATAL;
    lk_err_t se = lk__ctx_drain_sinks(ctx, 0);
    if (ctx->fatal)
        return se;
    uint64_t pending_bytes = lk__store_outbox_bytes(ctx->store);
    if (pending_bytes > (uint64_t)lk__conf_int(ctx->conf, LK__P_OUTBOX_MAX_BYTES)) {
        if (!ctx->backpressure_logged)
            lk__log(LK_LOG_WARNING, "outbox holds %llu bytes (over outbox.max.bytes): no new "
                    "batch until the sinks deliver; input waits in Kafka",
                    (unsigned long long)pending_bytes);
        ctx->backpressure_logged = 1;
        *idle = 1;
        return LK_OK;
    }
    ctx->backpressure_logged = 0;
    uint64_t id = lk__store_committed_batch(ctx->store) + 1;
    /* checkpoint.adopt.output: a new checkpoint's batches are numbered after the output
     * of the checkpoint whose output it continues (its sinks recovered above) */
    for (size_t i = 0; id == 1 && i < ctx->nsinks; i++)
        if (ctx->sinks[i]->adopted_after >= id) {
            id = ctx->sinks[i]->adopted_after + 1;
            lk__log(LK_LOG_NOTICE, "first batch of this checkpoint is %llu, after the adopted "
                    "output", (unsigned long long)id);
        }
    lk__fetch_t f;
    int64_t time_ms;
    int replay;
    int64_t t0 = lk__mono_ns();
    lk__phase(LK__PH_PLANNING);
    lk_err_t e = plan_batch(ctx, id, &f, &time_ms, &replay);
    if (e)
        return e;
    int64_t t1 = lk__mono_ns();
    lk__faultpoint("after-plan");
    int empty = 1;
    for (size_t i = 0; i < f.nranges; i++)
        empty &= f.ranges[i].range.from >= f.ranges[i].range.until;
    /* Nothing to read and nothing to record: skip the commit. A partition seen for the
     * first time is recorded even when empty, or "latest" would move on every plan and
     * skip what arrives in between. */
    /* A replayed plan is always committed: skipping it would find it again forever. */
    *idle = empty;
    if (!replay)
        lk__metrics_planned(ctx->metrics, &f, ctx->receiver);
    if (empty && !replay && !f.data_loss_skipped && !f.new_partitions && !ctx->has_ttl) {
        lk__fetch_clear(&f);
        return LK_OK;
    }
    lk__phase(LK__PH_FETCHING);
    e = lk__receiver_fetch(ctx->receiver, &f, !replay, should_abandon, ctx, ctx->errstr,
                           sizeof ctx->errstr);
    if (e == LK_ERR_DATA_LOSS && replay) {
        /* The recorded plan reads offsets that are gone: plan afresh, where the data
         * loss policy applies. */
        char err[256];
        if (lk__store_plan_clear(ctx->store, err, sizeof err))
            lk__log(LK_LOG_WARNING, "cannot clear the batch plan: %s", err);
    }
    if (!e && !replay) {
        lk_range_t *ranges = malloc((f.nranges ? f.nranges : 1) * sizeof *ranges);
        if (!ranges)
            e = lk__ctx_fail(ctx, LK_ERR_NOMEM, "out of memory");
        for (size_t i = 0; !e && i < f.nranges; i++)
            ranges[i] = f.ranges[i].range;
        /* a plan's records_out carries the offsets skipped for data loss, so a replay
         * counts them too */
        lk_batch_rec_t plan = {id, time_ms, 0, 0, f.data_loss_skipped, f.nranges, ranges};
        if (!e && lk__window_wants_plan(ctx->pipeline))
            e = record_unread(ctx, id, &f);
        if (!e)
            e = lk__store_plan_put(ctx->store, &plan, ctx->errstr, sizeof ctx->errstr);
        free(ranges);
    }
    int64_t t2 = lk__mono_ns();
    uint64_t committed_before = lk__store_committed_batch(ctx->store);
    if (!e)
        e = process_and_commit(ctx, id, time_ms, &f);
    int64_t t3 = lk__mono_ns();
    if (e)
        lk__receiver_invalidate(ctx->receiver);
    else
        lk__log(LK_LOG_DEBUG,
                "batch %llu: %zu ranges, %llu records; plan %.1f ms, fetch %.1f ms, "
                "process+commit %.1f ms",
                (unsigned long long)id, f.nranges, (unsigned long long)f.records,
                (double)(t1 - t0) / 1e6, (double)(t2 - t1) / 1e6,
                (double)(lk__mono_ns() - t2) / 1e6);
    lk__fetch_release_messages(&f); /* the ranges stay for the progress report */
    const char *msg;
    if (lk__store_fatal(ctx->store, &msg)) {
        lk__fetch_clear(&f);
        if (!ctx->fatal) {
            ctx->fatal = 1;
            ctx->fatal_err = LK_ERR_FATAL;
            lk__ctx_fail(ctx, LK_ERR_FATAL, "%s", msg);
        }
        return ctx->fatal_err;
    }
    if (!e) {
        se = ctx->overlap ? lk__ctx_drain_overlapped(ctx) : lk__ctx_drain_sinks(ctx, 1);
        if (ctx->fatal) {
            lk__fetch_clear(&f);
            return se;
        }
        if (lk__store_committed_batch(ctx->store) != committed_before) {
            double ms[5] = {(double)(t1 - t0) / 1e6, (double)(t2 - t1) / 1e6,
                            (double)(t3 - t2) / 1e6 - ctx->last_commit_ms, ctx->last_commit_ms,
                            (double)(lk__mono_ns() - t3) / 1e6};
            lk__ctx_report_progress(ctx, id, time_ms, &f, ms, ctx->dl_running && ctx->dl_upto == id);
        }
    }
    lk__fetch_clear(&f);
    return e;
}

lk_err_t lk_context_run_once(lk_context_t *ctx) {
    int idle;
    return run_batch(ctx, &idle);
}

static void on_signal(int sig) {
    (void)sig;
    lk_context_t *ctx = signal_ctx;
    if (!ctx)
        return;
    /* the second signal stops at once */
    request_stop(ctx, !atomic_load(&ctx->stop_graceful));
}

/* Sleep up to ms, waking early when a stop is requested. */
static void nap(lk_context_t *ctx, int64_t ms) {
    int64_t end = lk__mono_ms() + ms;
    while (!atomic_load(&ctx->stop_graceful) && !atomic_load(&ctx->stop_now)) {
        int64_t left = end - lk__mono_ms();
        if (left <= 0)
            break;
        struct timespec ts = {0, (left > 50 ? 50 : left) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* Sleep up to ms; only an immediate stop wakes it (used while a graceful stop drains). */
static void nap_ms(lk_context_t *ctx, int64_t ms) {
    int64_t end = lk__mono_ms() + ms;
    while (!atomic_load(&ctx->stop_now)) {
        int64_t left = end - lk__mono_ms();
        if (left <= 0)
            break;
        struct timespec ts = {0, (left > 50 ? 50 : left) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static int retriable(const lk_context_t *ctx, lk_err_t e) {
    /* with on.data.loss=skip, input deleted after planning is skipped when re-planned */
    return e == LK_ERR_KAFKA || e == LK_ERR_TIMED_OUT || e == LK_ERR_IO ||
           (e == LK_ERR_DATA_LOSS && ctx->skip_loss);
}

lk_err_t lk_context_run(lk_context_t *ctx) {
    struct sigaction sa, old_term, old_int;
    int own_signals = lk__conf_bool(ctx->conf, LK__P_STOP_GRACEFULLY);
    if (own_signals) {
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        signal_ctx = ctx;
        sigaction(SIGTERM, &sa, &old_term);
        sigaction(SIGINT, &sa, &old_int);
    }
    int64_t interval = lk__conf_int(ctx->conf, LK__P_BATCH_INTERVAL_MS);
    int64_t backoff0 = lk__conf_int(ctx->conf, LK__P_RETRY_BACKOFF_MS);
    int64_t backoff_max = lk__conf_int(ctx->conf, LK__P_RETRY_BACKOFF_MAX_MS);
    int64_t backoff = backoff0;
    lk_err_t result = LK_OK;
    ctx->overlap = lk__conf_bool(ctx->conf, LK__P_SINK_OVERLAP);
    lk__metrics_loop(ctx->metrics, 1, LK_OK, NULL);
    while (!atomic_load(&ctx->stop_graceful) && !atomic_load(&ctx->stop_now)) {
        int64_t started = lk__mono_ms();
        int idle;
        lk_err_t e = run_batch(ctx, &idle);
        lk__metrics_batch(ctx->metrics, e, ctx->errstr);
        if (e && !ctx->fatal && ctx->dl_running) {
            /* the batch failed: settle the delivery in flight before waiting to retry,
             * keeping the batch's error as the one reported unless that was fatal */
            char why[sizeof ctx->errstr];
            memcpy(why, ctx->errstr, sizeof why);
            if (lk__ctx_finish_delivery(ctx) && ctx->fatal)
                e = ctx->fatal_err;
            else
                memcpy(ctx->errstr, why, sizeof why);
        }
        if (e) {
            if (atomic_load(&ctx->stop_now) ||
                (atomic_load(&ctx->stop_graceful) && retriable(ctx, e))) {
                /* abandoned by an immediate stop: nothing of it was committed */
                lk__log(LK_LOG_NOTICE, "stopped; batch %llu abandoned (%s), it will be "
                        "processed again on restart",
                        (unsigned long long)lk__store_committed_batch(ctx->store) + 1,
                        ctx->errstr);
                break;
            }
            if (!retriable(ctx, e)) {
                lk__log(LK_LOG_ERR, "%s (%s)", ctx->errstr, lk_err_name(e));
                result = e;
                break;
            }
            lk__log(LK_LOG_WARNING, "batch failed, retrying in %lld ms: %s",
                    (long long)backoff, ctx->errstr);
            nap(ctx, backoff);
            backoff = backoff * 2 > backoff_max ? backoff_max : backoff * 2;
            continue;
        }
        backoff = backoff0;
        /* retriable delivery errors below are logged and retried by sinks_backoff; a
         * fatal one stops here, with its own code and message */
        if (idle && ctx->dl_running && lk__ctx_drain_sinks(ctx, 1) && ctx->fatal)
            goto fatal; /* nothing to overlap with: acknowledge it now */
        if (idle && lk__store_durable_batch(ctx->store) < lk__store_committed_batch(ctx->store)) {
            /* group commit: nothing new to do, so make the last batches durable now and
             * let the sinks deliver them */
            char err[256];
            if (lk__store_sync(ctx->store, err, sizeof err))
                lk__log(LK_LOG_WARNING, "group commit sync: %s (the sinks wait for it)", err);
            else if (lk__ctx_drain_sinks(ctx, 1) && ctx->fatal)
                goto fatal;
        }
        int64_t elapsed = lk__mono_ms() - started;
        lk__phase(LK__PH_IDLE);
        if (idle || elapsed < interval)
            nap(ctx, idle && interval == 0 ? 100 : interval - elapsed);
        continue;
    fatal:
        lk__log(LK_LOG_ERR, "%s (%s)", ctx->errstr, lk_err_name(ctx->fatal_err));
        result = ctx->fatal_err;
        break;
    }
    if (atomic_load(&ctx->stop_graceful) && !atomic_load(&ctx->stop_now) && !result) {
        char err[256];
        if (lk__store_sync(ctx->store, err, sizeof err))
            lk__log(LK_LOG_WARNING, "final sync: %s", err);
        lk__phase(LK__PH_STOPPING);
        lk__faultpoint("during-graceful-stop");
        /* deliver what is pending, within shutdown.timeout.ms of the stop request */
        int64_t until = atomic_load(&ctx->stop_deadline_ms);
        while (ctx->nsinks && lk__store_outbox_bytes(ctx->store) > 0 && !ctx->fatal &&
               !atomic_load(&ctx->stop_now) && lk__mono_ms() < until) {
            if (lk__ctx_drain_sinks(ctx, 1) == LK_OK)
                break;
            nap_ms(ctx, ctx->sink_backoff_ms < until - lk__mono_ms()
                            ? ctx->sink_backoff_ms : until - lk__mono_ms());
        }
        if (lk__store_outbox_bytes(ctx->store) > 0)
            lk__log(LK_LOG_WARNING, "stopping with undelivered output in the outbox; it is "
                    "delivered on the next start");
        if (ctx->fatal)
            result = ctx->fatal_err;
        lk__log(LK_LOG_INFO, "stopped gracefully after batch %llu",
                (unsigned long long)lk__store_committed_batch(ctx->store));
    }
    if (lk__ctx_finish_delivery(ctx) && !result && ctx->fatal)
        result = ctx->fatal_err;
    ctx->overlap = 0;
    lk__metrics_loop(ctx->metrics, 0, result, ctx->errstr);
    if (own_signals) {
        sigaction(SIGTERM, &old_term, NULL);
        sigaction(SIGINT, &old_int, NULL);
        signal_ctx = NULL;
    }
    return result;
}
