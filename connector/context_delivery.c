/*
 * context_delivery.c — the sinks' side of the batch loop (DESIGN.md, A batch's life:
 * durable → delivered → acknowledged; Threads): draining the outbox up to the durable
 * batch, the backoff after a retriable sink failure, the delivery thread that delivers
 * durable batches while the loop works on the next one (sink.overlap), and the progress
 * report held back until the batch's own delivery is settled.
 */
#define _GNU_SOURCE
#include "context_priv.h"
#include "../core/conf_int.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

/* Hand a committed batch's report to the metrics and the progress callback.
 * @locality loop thread */
static void notify_progress(lk_context_t *ctx, const lk_progress_t *p) {
    lk__metrics_progress(ctx->metrics, p);
    if (ctx->progress_cb)
        ctx->progress_cb(p, ctx->progress_opaque);
}

/* What the committed batch f did; topics point into f. */
static lk_progress_t progress_of(lk_context_t *ctx, uint64_t id, int64_t time_ms,
                                 const lk__fetch_t *f, const double ms[5],
                                 const char **topics, int64_t *lag, size_t cap) {
    size_t nt = 0;
    int64_t total = 0;
    for (size_t i = 0; i < f->nranges; i++) {
        int64_t l = f->ranges[i].high - f->ranges[i].range.until;
        if (l < 0)
            l = 0;
        total += l;
        size_t t;
        for (t = 0; t < nt && strcmp(topics[t], f->ranges[i].range.topic); t++)
            ;
        if (t == nt && nt < cap) {
            topics[nt] = f->ranges[i].range.topic;
            lag[nt++] = 0;
        }
        if (t < nt)
            lag[t] += l;
    }
    return (lk_progress_t){id,        time_ms, f->records, f->bytes, ctx->last_records_out,
                           ms[0],     ms[1],   ms[2],      ms[3],    ms[4],
                           lk__store_outbox_bytes(ctx->store), total, nt, topics, lag,
                           ctx->task, ctx->stage};
}

static void drop_deferred_report(lk_context_t *ctx) {
    for (size_t i = 0; ctx->dl_topics && i < ctx->dl_progress.ntopics; i++)
        free(ctx->dl_topics[i]);
    free(ctx->dl_topics);
    free(ctx->dl_lag);
    ctx->dl_topics = NULL;
    ctx->dl_lag = NULL;
    ctx->dl_report = 0;
}

/* Keep a copy of p to report once the delivery in flight is settled; 0 if out of
 * memory. */
static int keep_report(lk_context_t *ctx, const lk_progress_t *p) {
    ctx->dl_topics = calloc(p->ntopics ? p->ntopics : 1, sizeof *ctx->dl_topics);
    ctx->dl_lag = malloc((p->ntopics ? p->ntopics : 1) * sizeof *ctx->dl_lag);
    int ok = ctx->dl_topics && ctx->dl_lag;
    for (size_t i = 0; ok && i < p->ntopics; i++)
        ok = (ctx->dl_topics[i] = strdup(p->topics[i])) != NULL;
    ctx->dl_progress = *p;
    if (!ok) {
        drop_deferred_report(ctx);
        return 0;
    }
    memcpy(ctx->dl_lag, p->topic_lag, p->ntopics * sizeof *p->topic_lag);
    ctx->dl_progress.topics = (const char *const *)ctx->dl_topics;
    ctx->dl_progress.topic_lag = ctx->dl_lag;
    ctx->dl_report = 1;
    return 1;
}

/* Tell the progress callback what the committed batch f did; with defer, once the
 * delivery in flight (the batch's own) is settled, so that its line says what the batch
 * did with its delivery included (at once if the copy fails). @locality loop thread */
void lk__ctx_report_progress(lk_context_t *ctx, uint64_t id, int64_t time_ms,
                             const lk__fetch_t *f, const double ms[5], int defer) {
    if (!ctx->progress_cb && !ctx->metrics)
        return;
    const char *topics[64];
    int64_t lag[64];
    lk_progress_t p = progress_of(ctx, id, time_ms, f, ms, topics, lag, LK_ARRAY_SIZE(topics));
    if (!defer || !keep_report(ctx, &p))
        notify_progress(ctx, &p);
}

/* A sink failed with e (message err): fenced or fatal errors stop the application; the
 * first retriable one is kept in *first for the backoff. @locality loop thread */
static lk_err_t sink_failed(lk_context_t *ctx, lk_err_t e, const char *err, lk_err_t *first) {
    /* a corrupt checkpoint never heals by retrying, nor a handoff refused for state of
     * another definition (LK_ERR_TOPOLOGY, DESIGN.md Scale-out), nor a changelog that lost
     * what a task's restore must read (kafka_changelog.c), which on.data.loss=skip does
     * not skip: the state would be wrong */
    if (e == LK_ERR_FENCED || e == LK_ERR_FATAL || e == LK_ERR_STATE || e == LK_ERR_CORRUPT ||
        e == LK_ERR_TOPOLOGY || e == LK_ERR_DATA_LOSS) {
        lk__metrics_sink(ctx->metrics, e, err);
        /* the first fatal error wins, code and message together */
        if (!ctx->fatal) {
            ctx->fatal = 1;
            ctx->fatal_err = e;
            lk__ctx_fail(ctx, e, "%s", err);
        }
        return ctx->fatal_err;
    }
    if (!*first) {
        *first = e;
        if (!ctx->fatal) /* a fatal error's message stays the one reported */
            lk__ctx_fail(ctx, e, "%s", err);
    }
    return LK_OK;
}

/* After a round of deliveries: back off after a retriable failure, else reset.
 * @locality loop thread */
static lk_err_t sinks_backoff(lk_context_t *ctx, lk_err_t first) {
    lk__metrics_sink(ctx->metrics, first, ctx->errstr);
    if (first) {
        int64_t b0 = lk__conf_int(ctx->conf, LK__P_RETRY_BACKOFF_MS);
        int64_t bmax = lk__conf_int(ctx->conf, LK__P_RETRY_BACKOFF_MAX_MS);
        ctx->sink_backoff_ms = ctx->sink_backoff_ms ? ctx->sink_backoff_ms * 2 : b0;
        if (ctx->sink_backoff_ms > bmax)
            ctx->sink_backoff_ms = bmax;
        ctx->sink_retry_ms = lk__mono_ms() + ctx->sink_backoff_ms;
        ctx->sink_failures++;
        lk__log(LK_LOG_WARNING, "%s (failure %u in a row; retrying in %lld ms; the output "
                "waits in the outbox)", ctx->errstr, ctx->sink_failures,
                (long long)ctx->sink_backoff_ms);
    } else {
        ctx->sink_backoff_ms = 0;
        ctx->sink_retry_ms = 0;
        ctx->sink_failures = 0;
    }
    return first;
}

/*
 * The delivery thread's body: deliver the durable batches up to dl_upto for the sinks
 * marked mine in dl, leaving each sink's outcome in dl[i].err/.errstr and the last batch
 * it delivered in dl[i].last (read by the loop after the join). It opens only read
 * transactions, writes nothing else of ctx, and never acknowledges (acknowledgements are
 * checkpoint writes, the loop's).
 * @locality delivery thread
 */
static void *delivery_thread(void *o) {
    lk_context_t *ctx = o;
    (void)lk__log_bind(ctx->log_level); /* a thread of the context's own: never unbound */
    lk__phase_thread(1);
    for (size_t i = 0; i < ctx->nsinks; i++)
        if (ctx->dl[i].mine)
            ctx->dl[i].err = lk__sink_deliver_upto(ctx->sinks[i], ctx->store, ctx->dl_upto,
                                                   &ctx->dl[i].last, ctx->dl[i].errstr,
                                                   sizeof ctx->dl[i].errstr);
    lk__phase(LK__PH_IDLE);
    ctx->dl_done_ns = lk__mono_ns();
    return NULL;
}

/* Wait for the delivery in flight, then acknowledge what it delivered (on this thread:
 * acknowledgements are checkpoint writes): delivered → acknowledged. Errors as for
 * lk__ctx_drain_sinks. @locality loop thread (joins the delivery thread) */
lk_err_t lk__ctx_finish_delivery(lk_context_t *ctx) {
    if (!ctx->dl_running)
        return LK_OK;
    lk__phase(LK__PH_AWAITING_DELIVERY);
    pthread_join(ctx->dl_thread, NULL);
    ctx->dl_running = 0;
    lk_err_t first = LK_OK, fatal = LK_OK;
    for (size_t i = 0; i < ctx->nsinks; i++) {
        if (!ctx->dl[i].mine)
            continue;
        ctx->dl[i].mine = 0;
        lk_err_t e = ctx->dl[i].err;
        char ack_err[1024];
        lk_err_t ae = ctx->dl[i].last ? lk__sink_acknowledge(ctx->sinks[i], ctx->store,
                                                             ctx->dl[i].last, ack_err,
                                                             sizeof ack_err)
                                      : LK_OK;
        if (!e && ae) {
            e = ae;
            memcpy(ctx->dl[i].errstr, ack_err, sizeof ack_err);
        }
        if (e && !fatal && sink_failed(ctx, e, ctx->dl[i].errstr, &first))
            fatal = e; /* fenced or fatal */
    }
    if (ctx->dl_report) {
        if (!fatal) {
            ctx->dl_progress.deliver_ms = (double)(ctx->dl_done_ns - ctx->dl_started_ns) / 1e6;
            ctx->dl_progress.outbox_bytes = lk__store_outbox_bytes(ctx->store);
            notify_progress(ctx, &ctx->dl_progress);
        }
        drop_deferred_report(ctx);
    }
    return fatal ? fatal : sinks_backoff(ctx, first);
}

/*
 * Deliver what is durable in the outbox, synchronously (after the delivery in flight,
 * if any, which an unforced call leaves running). Retriable sink errors are logged and
 * retried later with their own backoff (input keeps flowing until outbox.max.bytes);
 * fenced or fatal ones stop the application. durable → delivered → acknowledged, on
 * the loop's own thread. @locality loop thread
 */
lk_err_t lk__ctx_drain_sinks(lk_context_t *ctx, int force) {
    if (!ctx->nsinks)
        return LK_OK;
    if (ctx->dl_running) {
        if (!force)
            return LK_OK;
        lk_err_t e = lk__ctx_finish_delivery(ctx);
        if (e)
            return e;
    }
    if (!force && lk__mono_ms() < ctx->sink_retry_ms)
        return LK_OK;
    uint64_t upto = lk__store_durable_batch(ctx->store);
    lk_err_t first = LK_OK;
    for (size_t i = 0; i < ctx->nsinks; i++) {
        size_t n;
        char err[1024];
        lk_err_t e = lk__sink_drain(ctx->sinks[i], ctx->store, upto, &n, err, sizeof err);
        if (e && sink_failed(ctx, e, err, &first))
            return e; /* fenced or fatal */
    }
    return sinks_backoff(ctx, first);
}

/*
 * After a batch's commit with sink.overlap: acknowledge what the delivery thread
 * delivered, then hand it every durable batch waiting in the outbox, to deliver while
 * the loop plans, reads, processes and commits the next one. With checkpoint.sync=batch
 * that is the batch just committed; with group commit, the batches the last sync made
 * durable. A sink that must recover (first start, after an error) is drained
 * synchronously, as without overlap. durable → (delivery thread) delivered.
 * @locality loop thread (starts the delivery thread)
 */
lk_err_t lk__ctx_drain_overlapped(lk_context_t *ctx) {
    /* Group commit: a commit that made nothing new durable has nothing to hand over, so
     * the loop does not wait for the delivery in flight; it goes on with the next batch
     * and joins at the commit whose sync makes batches durable (or when idle). Waiting
     * here made checkpoint.sync=interval slower than a sync per batch: the delivery of
     * the several batches one sync made durable held up the loop at the next commit,
     * so loop and delivery took turns instead of overlapping (issue 18). */
    if (ctx->dl_running && lk__store_durable_batch(ctx->store) <= ctx->dl_upto)
        return LK_OK;
    lk_err_t e = lk__ctx_finish_delivery(ctx);
    if (e || ctx->fatal || !ctx->nsinks)
        return e;
    if (lk__mono_ms() < ctx->sink_retry_ms)
        return LK_OK;
    uint64_t upto = lk__store_durable_batch(ctx->store);
    int any = 0;
    for (size_t i = 0; i < ctx->nsinks; i++) {
        lk__sink_t *s = ctx->sinks[i];
        char err[1024];
        uint64_t first = 0;
        ctx->dl[i].mine = 0;
        if (!lk__sink_ready(s))
            return lk__ctx_drain_sinks(ctx, 1);
        e = lk__sink_first_pending(s, ctx->store, &first, err, sizeof err);
        if (e == LK_ERR_NOT_FOUND || (!e && first > upto))
            continue;
        if (e)
            return lk__ctx_drain_sinks(ctx, 1);
        ctx->dl[i].mine = 1;
        any = 1;
    }
    if (!any)
        return LK_OK;
    ctx->dl_upto = upto;
    ctx->dl_started_ns = lk__mono_ns();
    /* signals stay with the batch loop: SIGTERM/SIGINT are its to handle, and an
     * interrupted write in a sink would fail a delivery for nothing */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&ctx->dl_thread, NULL, delivery_thread, ctx);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        for (size_t i = 0; i < ctx->nsinks; i++)
            ctx->dl[i].mine = 0;
        return lk__ctx_drain_sinks(ctx, 1);
    }
    ctx->dl_running = 1;
    return LK_OK;
}
