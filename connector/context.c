/*
 * context.c — an application's lifetime (DESIGN.md, Recovery step 1 and Identity):
 * lk_context_get_or_create (define the pipeline, open or create the checkpoint, check the
 * pipeline against the recorded topology, open the receiver, the sinks and the metrics),
 * lk_context_destroy, and the small accessors. The batch loop is context_loop.c; the
 * sinks' side of it, delivery thread included, is context_delivery.c.
 */
#define _GNU_SOURCE
#include "context_priv.h"
#include "window_int.h"
#include "../core/conf_int.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

lk_err_t lk__ctx_fail(lk_context_t *ctx, lk_err_t e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    lk__vfmt(ctx->errstr, sizeof ctx->errstr, fmt, ap);
    va_end(ap);
    return e;
}

const char *lk_context_errstr(const lk_context_t *ctx) {
    return ctx ? ctx->errstr : "";
}

void lk_context_on_progress(lk_context_t *ctx, void (*cb)(const lk_progress_t *p, void *opaque),
                            void *opaque) {
    if (!ctx)
        return;
    ctx->progress_cb = cb;
    ctx->progress_opaque = opaque;
}

uint64_t lk_context_last_batch(const lk_context_t *ctx) {
    return ctx && ctx->store ? lk__store_committed_batch(ctx->store) : 0;
}

typedef struct {
    lk_pipeline_t *p;
    int task;
    char *errstr;
    size_t errstr_size;
    lk_err_t err;
} orphan_ctx_t;

/* A stage with a state.<uid> database (lk__pipeline_open_state): in a task, its writes
 * are captured into its changelog, delivered by the Kafka sink (DESIGN.md, Scale-out). */
static int has_state(const lk_stream_t *st) {
    return st->kind == LK__ST_UPDATE || st->kind == LK__ST_WINDOW;
}

static int check_orphan(const lk__outbox_stat_t *st, void *o) {
    orphan_ctx_t *c = o;
    for (size_t i = 0; i < c->p->nstages; i++)
        if ((c->p->stages[i]->kind == LK__ST_OUTBOX || (c->task >= 0 && has_state(c->p->stages[i]))) &&
            !strcmp(c->p->stages[i]->uid, st->sink))
            return 0; /* a sink's, or a task's changelog of the operator's state */
    c->err = lk__err(LK_ERR_TOPOLOGY, c->errstr, c->errstr_size,
                     "sink '%s' has %llu undelivered batches (%llu..%llu) in the checkpoint's "
                     "outbox but is not in the pipeline: keep the sink until it has "
                     "delivered them",
                     st->sink, (unsigned long long)st->batches,
                     (unsigned long long)st->first_batch, (unsigned long long)st->last_batch);
    return 1;
}

/* Undelivered output must not be stranded by removing its sink. */
static lk_err_t check_orphaned_outbox(lk_context_t *ctx, lk__store_txn_t *t, char *errstr,
                                      size_t errstr_size) {
    orphan_ctx_t c = {ctx->pipeline, ctx->task, errstr, errstr_size, LK_OK};
    lk_err_t e = lk__store_outbox_stats(t, check_orphan, &c);
    if (!c.err && e) /* say what is wrong (errstr was left unwritten) */
        return lk__err(e, errstr, errstr_size, "%s", lk__store_txn_errstr(t)[0]
                                                         ? lk__store_txn_errstr(t)
                                                         : lk_err_str(e));
    return c.err ? c.err : e;
}

static int count_state(const lk__state_stat_t *st, void *o) {
    *(uint64_t *)o += st->entries;
    return 0;
}

/* Whether a task's checkpoint holds no state the recorded topology could describe: no
 * batch committed and every state database empty. A handoff refused for state of another
 * definition (kafka_progress.c, check_state) leaves such a checkpoint, with only the
 * refused version's topology recorded at its start: running the version the message
 * advises on the same checkpoint.dir must not be refused for state it never held. */
static int task_holds_no_state(lk_context_t *ctx, lk__store_txn_t *t) {
    uint64_t entries = 0;
    return ctx->task >= 0 && lk__store_committed_batch(ctx->store) == 0 &&
           lk__store_state_stats(t, count_state, &entries) == LK_OK && entries == 0;
}

/* Check the pipeline against the recorded topology, then record the new one. */
static lk_err_t check_topology(lk_context_t *ctx, char *errstr, size_t errstr_size) {
    lk_pipeline_t *p = ctx->pipeline;
    lk__topo_op_t *now = calloc(p->nstages ? p->nstages : 1, sizeof *now);
    if (!now)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    size_t nnow = lk__pipeline_topology(p, now, p->nstages);
    lk__store_txn_t *t;
    lk_err_t err = lk__store_txn_begin(ctx->store, 1, &t, errstr, errstr_size);
    if (err) {
        free(now);
        return err;
    }
    lk__topo_op_t *old;
    size_t nold;
    if ((err = lk__store_topology_get(t, &old, &nold))) {
        err = lk__err(err, errstr, errstr_size, "checkpoint %s: topology unreadable: %s",
                      lk__store_dir(ctx->store), lk_err_str(err));
        goto out;
    }
    int allow_drop = lk__conf_bool(ctx->conf, LK__P_TOPOLOGY_ALLOW_STATE_DROP);
    if (nold && task_holds_no_state(ctx, t)) {
        lk__log(LK_LOG_INFO, "checkpoint %s holds no state yet: its recorded topology is "
                "replaced by this pipeline's", lk__store_dir(ctx->store));
        nold = 0;
    }
    for (size_t i = 0; i < nold && !err; i++) {
        const lk__topo_op_t *o = &old[i];
        const lk__topo_op_t *n = NULL;
        for (size_t j = 0; j < nnow; j++)
            if (!strcmp(now[j].uid, o->uid))
                n = &now[j];
        if (!n) {
            if (o->schema_version > 0 && !allow_drop)
                err = lk__err(LK_ERR_TOPOLOGY, errstr, errstr_size,
                              "operator '%s' (%s, state schema v%d) is in the checkpoint but "
                              "not in the pipeline: its state would be orphaned. Keep the "
                              "operator, or set topology.allow.state.drop=true to leave its "
                              "state unused",
                              o->uid, o->kind, (int)o->schema_version);
            else if (o->schema_version > 0)
                lk__log(LK_LOG_WARNING,
                        "operator '%s' removed; its state stays in the checkpoint, unused "
                        "(topology.allow.state.drop=true)",
                        o->uid);
            continue;
        }
        if (strcmp(n->kind, o->kind))
            err = lk__err(LK_ERR_TOPOLOGY, errstr, errstr_size,
                          "operator '%s' was a %s and is now a %s; give the new operator a "
                          "new uid",
                          o->uid, o->kind, n->kind);
        else if (!strncmp(o->kind, "to_", 3) && strcmp(n->params, o->params) &&
                 lk__store_outbox_first_batch(t, o->uid, &(uint64_t){0}) == LK_OK)
            /* pending output was captured for the old target */
            err = lk__err(LK_ERR_TOPOLOGY, errstr, errstr_size,
                          "sink '%s' changed (%s -> %s) while it has undelivered output in "
                          "the checkpoint; let it deliver with the old settings first, or "
                          "give the new sink a new uid",
                          o->uid, o->params, n->params);
        else if (lk__window_is_kind(o->kind) && strcmp(n->params, o->params))
            /* the slices and running values mean something else under another window */
            err = lk__err(LK_ERR_TOPOLOGY, errstr, errstr_size,
                          "operator '%s' (%s): window definition changed from %s to %s; "
                          "keep the old definition, or give the new window a new uid (it "
                          "starts empty)",
                          o->uid, o->kind, o->params, n->params);
        else if (n->schema_version != o->schema_version)
            err = lk__err(LK_ERR_TOPOLOGY, errstr, errstr_size,
                          "operator '%s' (%s): state schema version changed from v%d to v%d; "
                          "the checkpoint holds v%d state. Keep v%d, or use a new uid to "
                          "start from empty state",
                          o->uid, o->kind, (int)o->schema_version, (int)n->schema_version,
                          (int)o->schema_version, (int)o->schema_version);
    }
    if (!err)
        err = check_orphaned_outbox(ctx, t, errstr, errstr_size);
    if (!err)
        for (size_t j = 0; j < nnow; j++) {
            int known = 0;
            for (size_t i = 0; i < nold && !known; i++)
                known = !strcmp(now[j].uid, old[i].uid);
            if (!known && nold)
                lk__log(LK_LOG_NOTICE, "new operator '%s' (%s)%s", now[j].uid, now[j].kind,
                        now[j].schema_version ? ": starts with empty state" : "");
        }
    if (!err)
        err = lk__store_topology_put(t, now, nnow, errstr, errstr_size);
    if (!err) /* recorded only once the checks passed: a refused start writes nothing */
        err = lk__store_config_put(t, ctx->conf, errstr, errstr_size);
out:
    if (err) {
        lk__store_txn_abort(t);
    } else {
        err = lk__store_txn_commit(t, errstr, errstr_size);
    }
    free(now);
    return err;
}

static lk_err_t open_sinks(lk_context_t *ctx, char *errstr, size_t errstr_size) {
    lk_pipeline_t *p = ctx->pipeline;
    size_t cap = p->nstages ? p->nstages : 1;
    ctx->sinks = calloc(cap, sizeof *ctx->sinks);
    ctx->dl = calloc(cap, sizeof *ctx->dl);
    if (!ctx->sinks || !ctx->dl)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    lk__sink_t *kafka = NULL;
    for (size_t i = 0; i < p->nstages; i++) {
        lk_stream_t *st = p->stages[i];
        if (st->kind != LK__ST_OUTBOX)
            continue;
        /* every Kafka output goes in one transaction of one producer: one lk__sink_t
         * whose members are the Kafka sinks, in pipeline order */
        if (st->sink_ops == &lk__sink_kafka_ops && kafka) {
            if (lk__sink_add_member(kafka, st->uid, st->target))
                return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
            continue;
        }
        lk__sink_t *s = lk__sink_new(st->sink_ops, st->uid, st->target, st->format,
                                    lk__conf_str(ctx->conf, LK__P_APP_ID));
        if (!s)
            return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        s->abandon = &ctx->stop_now;
        s->deadline_ms = &ctx->stop_deadline_ms;
        ctx->sinks[ctx->nsinks++] = s;
        if (st->sink_ops == &lk__sink_kafka_ops)
            kafka = s;
    }
    /* a task's keyed state moves with it: each stateful operator's writes are captured
     * into a changelog member of the task's Kafka sink (one made when the pipeline has no
     * Kafka output), delivered in its transaction to partition task of
     * <app.id>.<uid>.changelog (DESIGN.md, Scale-out) */
    for (size_t i = 0; ctx->task >= 0 && i < p->nstages; i++) {
        lk_stream_t *st = p->stages[i];
        if (!has_state(st))
            continue;
        char topic[512];
        lk__fmt(topic, sizeof topic, "%s.%s.changelog", lk__conf_str(ctx->conf, LK__P_APP_ID),
                st->uid);
        if (!kafka) {
            if (!(kafka = lk__sink_new(&lk__sink_kafka_ops, st->uid, topic, NULL,
                                       lk__conf_str(ctx->conf, LK__P_APP_ID))))
                return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
            kafka->abandon = &ctx->stop_now;
            kafka->deadline_ms = &ctx->stop_deadline_ms;
            ctx->sinks[ctx->nsinks++] = kafka;
            kafka->members[0].changelog_of = strdup(st->uid);
            if (!kafka->members[0].changelog_of)
                return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        } else if (lk__sink_add_changelog(kafka, st->uid, topic, st->uid)) {
            return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        }
        /* what the changelog's records mean, carried by every progress record: a
         * handoff refuses state written under another definition (check_topology's
         * checks, against the process that ran the task before; DESIGN.md, Scale-out) */
        lk_err_t e = lk__sink_changelog_state(kafka, st->uid, lk__stage_name(st),
                                              st->schema_version,
                                              lk__window_is_kind(lk__stage_name(st))
                                                  ? st->params
                                                  : NULL);
        if (!e)
            e = lk__store_state_changelog(ctx->store, st->db, st->uid, ctx->task);
        if (e)
            return lk__err(e, errstr, errstr_size, "changelog of '%s': %s", st->uid,
                           lk_err_str(e));
    }
    for (size_t i = 0; i < ctx->nsinks; i++) {
        lk__sink_t *s = ctx->sinks[i];
        /* the checkpoint's identity: outputs carry it, recovery trusts only its own */
        lk__fmt(s->checkpoint_id, sizeof s->checkpoint_id, "%s",
                lk__store_checkpoint_id(ctx->store));
        s->checkpoint_created_ms = lk__store_created_ms(ctx->store);
        s->checkpoint_migrated = lk__store_migrated_from(ctx->store) != 0;
        s->adopt_output = lk__conf_bool(ctx->conf, LK__P_CHECKPOINT_ADOPT_OUTPUT);
        s->allow_state_drop = lk__conf_bool(ctx->conf, LK__P_TOPOLOGY_ALLOW_STATE_DROP);
        s->task = ctx->task;
        lk__fmt(s->stage, sizeof s->stage, "%s", ctx->stage ? ctx->stage : "");
        if (ctx->group_rk && s->ops == &lk__sink_kafka_ops &&
            !(s->group_md = rd_kafka_consumer_group_metadata(ctx->group_rk)))
            return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        char why[768];
        lk_err_t e = s->ops->open(s, ctx->conf, why, sizeof why);
        if (e)
            return lk__err(e, errstr, errstr_size, "sink '%s' (%s %s): %s", s->name,
                           s->ops->kind, s->target, why);
    }
    return LK_OK;
}

/* The metrics (metrics*.c), told which stages are event-time windows: their late
 * records (window_event.c's accumulator <uid>.late) are lockstep_late_records_total{operator}. */
static lk_err_t open_metrics(lk_context_t *ctx, char *errstr, size_t errstr_size) {
    const lk_pipeline_t *p = ctx->pipeline;
    const char **late = calloc(p->nstages ? p->nstages : 1, sizeof *late);
    if (!late)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    size_t nlate = 0;
    for (size_t i = 0; i < p->nstages; i++)
        if (p->stages[i]->kind == LK__ST_WINDOW &&
            p->stages[i]->win->domain == LK__WIN_EVENT_TIME)
            late[nlate++] = p->stages[i]->uid;
    lk_err_t e = lk__metrics_new(&ctx->metrics, ctx->store, ctx->conf, ctx->sinks, ctx->nsinks,
                                 late, nlate, errstr, errstr_size);
    free(late);
    return e;
}

/* lk_context_get_or_create with conf valid and the context's log level bound; task >= 0:
 * task `task` of a group.mode=consumer application (its conf's checkpoint.dir is the
 * task's), rk the group's membership consumer. */
static lk_context_t *create(const lk_conf_t *conf, lk_define_fn *define, void *opaque,
                            int task, const char *stage, int ntasks, rd_kafka_t *rk,
                            char *errstr, size_t errstr_size) {
    lk__phase(LK__PH_STARTING);
    lk_context_t *ctx = calloc(1, sizeof *ctx);
    if (ctx) {
        ctx->log_level = lk__conf_log_level(conf); /* first: lk_context_destroy binds it */
        ctx->task = task;
        ctx->group_rk = rk;
    }
    if (!ctx || !(ctx->conf = lk_conf_dup(conf)) || !(ctx->pipeline = lk__pipeline_new()) ||
        (stage && !(ctx->stage = strdup(stage)))) {
        lk__fmt(errstr, errstr_size, "out of memory");
        lk_context_destroy(ctx);
        return NULL;
    }
    ctx->default_ttl_ms = lk__conf_int(conf, LK__P_STATE_TTL_MS);
    ctx->shutdown_timeout_ms = lk__conf_int(conf, LK__P_SHUTDOWN_TIMEOUT_MS);
    ctx->skip_loss = lk__conf_int(conf, LK__P_ON_DATA_LOSS) == 1;

    define(ctx->pipeline, opaque);
    lk_pipeline_t *p = ctx->pipeline;
    if (p->failed) {
        lk__fmt(errstr, errstr_size, "pipeline: %s", p->err);
        lk_context_destroy(ctx);
        return NULL;
    }
    /* a task runs its stage of the pipeline (one stage when there is no lk_repartition) */
    if (task >= 0 && lk__pipeline_cut(p, stage, lk__conf_str(conf, LK__P_APP_ID), task, ntasks,
                                      errstr, errstr_size)) {
        lk_context_destroy(ctx);
        return NULL;
    }
    const char *topics[256];
    size_t ntopics = lk__pipeline_topics(p, topics, LK_ARRAY_SIZE(topics));
    if (ntopics == 0) {
        lk__fmt(errstr, errstr_size, "pipeline: no input (add lk_kafka_stream)");
        lk_context_destroy(ctx);
        return NULL;
    }
    if (lk__window_check_conf(p, lk__conf_int(conf, LK__P_BATCH_INTERVAL_MS), errstr,
                              errstr_size)) {
        lk_context_destroy(ctx);
        return NULL;
    }
    int group = task < 0 && lk__conf_int(conf, LK__P_GROUP_MODE) == 1;
    lk_err_t ge = group ? lk__group_new(&ctx->group, ctx, define, opaque, topics, ntopics,
                                       errstr, errstr_size)
                : task < 0 ? lk__group_check_single(lk__conf_str(conf, LK__P_CHECKPOINT_DIR),
                                                    errstr, errstr_size)
                           : LK_OK;
    if (!ge && group) /* the process's endpoint; the tasks open the rest */
        ge = lk__metrics_new_group(&ctx->metrics, ctx->conf, errstr, errstr_size);
    if (ge || group) {
        if (ge)
            lk_context_destroy(ctx);
        return ge ? NULL : ctx;
    }
    lk__store_opts_t o;
    lk__store_opts_from_conf(&o, ctx->conf);
    o.conf = NULL; /* recorded with the topology, after its checks */
    lk_err_t e = lk__store_open(&ctx->store, &o, errstr, errstr_size);
    if (!e)
        e = check_topology(ctx, errstr, errstr_size);
    if (!e)
        e = lk__pipeline_open_state(p, ctx->store, errstr, errstr_size);
    if (!e)
        e = lk__pipeline_build_broadcasts(p, errstr, errstr_size);
    if (!e)
        e = lk__receiver_new(&ctx->receiver, ctx->conf, topics, ntopics, errstr, errstr_size);
    if (!e && task >= 0)
        lk__receiver_set_task(ctx->receiver, task);
    if (!e)
        e = open_sinks(ctx, errstr, errstr_size);
    if (!e)
        e = open_metrics(ctx, errstr, errstr_size);
    if (e) {
        lk_context_destroy(ctx);
        return NULL;
    }
    ctx->has_ttl = lk__pipeline_has_ttl(p, ctx->default_ttl_ms);
    lk__store_txn_t *t;
    if (lk__store_txn_begin(ctx->store, 0, &t, NULL, 0) == LK_OK) {
        lk__batch_rec_t last;
        if (lk__store_batch_last(t, &last) == LK_OK) {
            ctx->last_batch_time_ms = last.batch_time_ms;
            lk__log(LK_LOG_INFO, "restored checkpoint %s at batch %llu", o.dir,
                    (unsigned long long)last.id);
        } else {
            lk__log(LK_LOG_INFO, "created checkpoint %s", o.dir);
        }
        lk__store_txn_abort(t);
    }
    return ctx;
}

lk_context_t *lk_context_get_or_create(const lk_conf_t *conf, lk_define_fn *define,
                                       void *opaque, char *errstr, size_t errstr_size) {
    if (!conf || !define) {
        lk__fmt(errstr, errstr_size, "lk_context_get_or_create: conf and define are required");
        return NULL;
    }
    if (lk_conf_validate(conf, errstr, errstr_size))
        return NULL;
    /* the process's level is left alone: only this thread, while it works for the new
     * context, logs at the context's */
    int prev = lk__log_bind(lk__conf_log_level(conf));
    lk_context_t *ctx = create(conf, define, opaque, -1, NULL, 0, NULL, errstr, errstr_size);
    lk__log_unbind(prev);
    return ctx;
}

lk_context_t *lk__context_new_task(const lk_conf_t *conf, lk_define_fn *define, void *opaque,
                                   int task, const char *stage, int ntasks, rd_kafka_t *rk,
                                   char *errstr, size_t errstr_size) {
    int prev = lk__log_bind(lk__conf_log_level(conf));
    lk_context_t *ctx =
        create(conf, define, opaque, task, stage, ntasks, rk, errstr, errstr_size);
    lk__log_unbind(prev);
    return ctx;
}

static void destroy(lk_context_t *ctx);

void lk_context_destroy(lk_context_t *ctx) {
    if (!ctx)
        return;
    int prev = lk__log_bind(ctx->log_level);
    destroy(ctx);
    lk__log_unbind(prev);
}

static void destroy(lk_context_t *ctx) {
    lk__ctx_release_signals(ctx);
    ctx->progress_cb = NULL; /* the callback's owner may be going away too */
    lk__group_destroy(ctx->group); /* stops its tasks */
    lk__metrics_destroy(ctx->metrics); /* before the store it reads */
    ctx->metrics = NULL;
    /* destroy reports nothing: a delivery that failed or was not acknowledged stays in
     * the outbox, and the next start's recovery (the fence) settles it */
    (void)lk__ctx_finish_delivery(ctx);
    lk__receiver_destroy(ctx->receiver);
    for (size_t i = 0; i < ctx->nsinks; i++)
        lk__sink_destroy(ctx->sinks[i]);
    free(ctx->sinks);
    free(ctx->dl);
    if (ctx->pipeline)
        lk__batch_reset(&ctx->batch, ctx->pipeline);
    lk__batch_free(&ctx->batch);
    lk__pipeline_destroy(ctx->pipeline);
    lk__store_close(ctx->store);
    lk_conf_destroy(ctx->conf);
    free(ctx->stage);
    free(ctx);
}

lk_err_t lk_context_accumulator(lk_context_t *ctx, const char *name, int64_t *value) {
    if (ctx->group)
        return lk__ctx_fail(ctx, LK_ERR_INVALID_ARG, "lk_context_accumulator: a context of "
                            "group.mode=consumer has no checkpoint of its own (each task has "
                            "one)");
    lk__store_txn_t *t;
    int prev = lk__log_bind(ctx->log_level); /* a read transaction may log (stale readers) */
    lk_err_t e = lk__store_txn_begin(ctx->store, 0, &t, ctx->errstr, sizeof ctx->errstr);
    if (!e) {
        e = lk__store_acc_get(t, name, value);
        lk__store_txn_abort(t);
    }
    lk__log_unbind(prev);
    return e;
}

lk_err_t lk_context_metrics_write(lk_context_t *ctx, FILE *fp, int openmetrics) {
    if (!ctx)
        return LK_ERR_INVALID_ARG;
    if (!fp)
        return lk__ctx_fail(ctx, LK_ERR_INVALID_ARG, "lk_context_metrics_write: fp is required");
    int prev = lk__log_bind(ctx->log_level);
    lk_err_t e = lk__metrics_write(ctx->metrics, fp, openmetrics, ctx->errstr,
                                   sizeof ctx->errstr);
    lk__log_unbind(prev);
    return e;
}
