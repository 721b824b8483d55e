/*
 * context_group.c — scale-out on Kafka's consumer groups, stage 1 (DESIGN.md, Scale-out):
 * with group.mode=consumer an application is a set of tasks, task p = partition p of
 * every (co-partitioned) input topic, and the process is a member of consumer group
 * <app.id> whose assignment says which tasks it runs. Each task is a context of its own
 * (context.c's create with a task number): its checkpoint <checkpoint.dir>/task-<p>, its
 * transactional producer <app.id>.<p>, partition p of <app.id>.progress, and a thread
 * running its batch loop. The member itself (the "membership consumer") never fetches:
 * its partitions are assigned at their end and paused; it exists for the rebalance
 * protocol and its generation (the tasks send their offsets with it, KIP-447).
 *
 * Assignment starts the assigned tasks; revocation stops every task gracefully (the batch
 * in flight finishes and is delivered) before the rebalance goes on, or at once when the
 * assignment was lost. Kafka sinks only (a file written on one machine cannot be fenced by
 * another); keyed state moves with its task through each stateful operator's changelog
 * topic <app.id>.<uid>.changelog (one partition per task, checked or made at the join by
 * context_group_topics.c with the other task topics and the start's checks; written and
 * restored by the tasks' Kafka sinks, DESIGN.md Scale-out). The process's metrics.listen
 * serves the running tasks' metrics together, each sample labelled task="p" (metrics.c).
 *
 * lk_repartition cuts the pipeline into stages (DESIGN.md, Scale-out: stage 2): task p
 * of the stage after lk_repartition <uid> is another task context (checkpoint
 * task-<p>.<uid>, transactional.id <app.id>.<uid>.<p>, partition p of
 * <app.id>.<uid>.progress) reading partition p of <app.id>.<uid>.repartition, which the
 * stage before writes in its transactions. The member subscribes to the repartition
 * topics too (one partition per task: the range assignor gives it partition p of them
 * with partition p of the inputs), and runs every stage's task p where it runs task p.
 *
 * What needs the broker at the start (task count, progress topic, subscription) is done
 * by lk__group_run, retried like a failed batch while the broker cannot be reached; a
 * fatal error of the membership consumer (FENCED_INSTANCE_ID: another process has this
 * group.instance.id) stops the process, its tasks gracefully.
 */
#define _GNU_SOURCE
#include "context_group_priv.h"
#include "../core/conf_int.h"
#include "../sink/fault_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static lk_err_t group_fail(lk__group_t *g, lk_err_t e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static lk_err_t group_fail(lk__group_t *g, lk_err_t e, const char *fmt, ...) {
    if (g->err) /* the first error wins */
        return g->err;
    va_list ap;
    va_start(ap, fmt);
    lk__vfmt(g->errstr, sizeof g->errstr, fmt, ap);
    va_end(ap);
    g->err = e;
    return e;
}

/* ---- tasks ---- */

static void *task_thread(void *o) {
    task_t *t = o;
    t->err = lk_context_run(t->ctx);
    atomic_store(&t->done, 1);
    return NULL;
}

static void on_task_progress(const lk_progress_t *p, void *opaque) {
    lk__group_t *g = opaque;
    lk_context_t *parent = g->parent;
    if (!parent->progress_cb)
        return;
    pthread_mutex_lock(&g->progress_lock);
    parent->progress_cb(p, parent->progress_opaque);
    pthread_mutex_unlock(&g->progress_lock);
}

/* "task p" or "task p of stage <uid>", for messages. */
static const char *task_name(const lk__group_t *g, const task_t *t, char *buf, size_t size) {
    if (t->stage)
        lk__fmt(buf, size, "task %d of stage %s", t->p, g->stages[t->stage]);
    else
        lk__fmt(buf, size, "task %d", t->p);
    return buf;
}

/* Open task p of stage s here and start its batch loop on a thread of its own. */
static lk_err_t start_task(lk__group_t *g, int s, int p) {
    task_t *t = &g->tasks[s * g->ntasks + p];
    if (t->ctx)
        return LK_OK;
    t->p = p;
    t->stage = s;
    char name[160];
    task_name(g, t, name, sizeof name);
    lk_context_t *parent = g->parent;
    lk_conf_t *c = lk_conf_dup(parent->conf);
    char dir[4200], err[1024] = "";
    lk__fmt(dir, sizeof dir, "%s/task-%d%s%s", lk__conf_str(parent->conf, LK__P_CHECKPOINT_DIR),
            p, s ? "." : "", s ? g->stages[s] : "");
    /* signals are the group's: it stops its tasks; metrics.listen is the group's: it
     * serves its tasks' metrics. A stage after lk_repartition reads its topic from the
     * first record the stage before wrote, whatever auto.offset.reset says for inputs. */
    if (!c || lk_conf_set(c, "checkpoint.dir", dir, err, sizeof err) != LK_CONF_OK ||
        lk_conf_set(c, "stop.gracefully.on.shutdown", "false", err, sizeof err) != LK_CONF_OK ||
        lk_conf_set(c, "metrics.listen", "", err, sizeof err) != LK_CONF_OK ||
        (s && lk_conf_set(c, "auto.offset.reset", "earliest", err, sizeof err) != LK_CONF_OK)) {
        lk_conf_destroy(c);
        return group_fail(g, LK_ERR_NOMEM, "%s: %s", name, err[0] ? err : "out of memory");
    }
    lk_context_t *ctx = lk__context_new_task(c, g->define, g->opaque, p, g->stages[s],
                                             g->ntasks, g->rk, err, sizeof err);
    lk_conf_destroy(c);
    if (!ctx)
        return group_fail(g, LK_ERR_FATAL, "%s: %s", name, err);
    lk_context_on_progress(ctx, on_task_progress, g);
    lk__metrics_set_task(ctx->metrics, p, g->stages[s]);
    if (lk__metrics_member_add(parent->metrics, ctx->metrics)) {
        lk_context_destroy(ctx);
        return group_fail(g, LK_ERR_NOMEM, "%s: out of memory", name);
    }
    atomic_store(&t->done, 0);
    t->err = LK_OK;
    t->ctx = ctx;
    if (pthread_create(&t->thread, NULL, task_thread, t)) {
        t->ctx = NULL;
        lk__metrics_member_remove(parent->metrics, ctx->metrics);
        lk_context_destroy(ctx);
        return group_fail(g, LK_ERR_FATAL, "%s: cannot start its thread", name);
    }
    lk__log(LK_LOG_NOTICE, "%s: started (checkpoint %s)", name, dir);
    return LK_OK;
}

/* Stop the task in slot i (graceful: its batch in flight finishes and is delivered),
 * join, close. A task that failed makes the group fail with its error. */
static void stop_task(lk__group_t *g, int i, int graceful) {
    task_t *t = &g->tasks[i];
    if (!t->ctx)
        return;
    char name[160];
    task_name(g, t, name, sizeof name);
    lk_context_stop(t->ctx, graceful);
    pthread_join(t->thread, NULL);
    if (t->err)
        group_fail(g, t->err, "%s: %s", name, lk_context_errstr(t->ctx));
    lk__metrics_member_remove(g->parent->metrics, t->ctx->metrics); /* before they go */
    lk_context_destroy(t->ctx);
    t->ctx = NULL;
    lk__log(LK_LOG_NOTICE, "%s: stopped%s", name, graceful ? "" : " (abandoned its batch)");
}

/* Stop every task: the graceful ones in parallel (each finishes its batch), then join. */
static void stop_all(lk__group_t *g, int graceful) {
    if (!g->tasks) /* not joined */
        return;
    int slots = g->ntasks * g->nstages;
    for (int p = 0; p < slots; p++)
        if (g->tasks[p].ctx)
            lk_context_stop(g->tasks[p].ctx, graceful);
    /* a graceful stop lasts up to shutdown.timeout.ms per task; an immediate stop of the
     * process meanwhile (a second SIGTERM, lk_context_stop(ctx, 0)) reaches the tasks */
    for (int waiting = graceful; waiting;) {
        waiting = 0;
        for (int p = 0; p < slots; p++)
            waiting |= g->tasks[p].ctx && !atomic_load(&g->tasks[p].done);
        if (waiting && atomic_load(&g->parent->stop_now)) {
            for (int p = 0; p < slots; p++)
                if (g->tasks[p].ctx)
                    lk_context_stop(g->tasks[p].ctx, 0);
            graceful = 0;
            break;
        }
        if (waiting)
            lk__nap_ms(10, NULL, NULL);
    }
    for (int p = 0; p < slots; p++)
        stop_task(g, p, graceful);
}

/* Whether the assignment gives every input topic the same partition numbers. The tasks
 * are taken from the first topic's partitions: a member whose input.topics differ from
 * the others' (a rolling upgrade adding a topic, a typo) gets, under the range assignor,
 * every partition of a topic only it subscribes to, and would run tasks another member
 * runs too. Fails the group naming each topic's partitions. */
static void check_copartitioned(lk__group_t *g, rd_kafka_topic_partition_list_t *parts) {
    char seen[768] = "";
    int mismatch = 0;
    for (size_t t = 0; t < g->ntopics; t++) {
        size_t len = strlen(seen);
        lk__fmt(seen + len, sizeof seen - len, "%s%s [", len ? ", " : "", g->topics[t]);
        int first = 1;
        for (int i = 0; i < parts->cnt; i++) {
            if (strcmp(parts->elems[i].topic, g->topics[t]))
                continue;
            len = strlen(seen);
            lk__fmt(seen + len, sizeof seen - len, "%s%d", first ? "" : " ",
                    (int)parts->elems[i].partition);
            first = 0;
            /* the same partition of the first topic must be assigned too */
            int has = 0;
            for (int j = 0; j < parts->cnt && !has; j++)
                has = !strcmp(parts->elems[j].topic, g->topics[0]) &&
                      parts->elems[j].partition == parts->elems[i].partition;
            mismatch |= !has;
        }
        len = strlen(seen);
        lk__fmt(seen + len, sizeof seen - len, "]");
    }
    /* and every partition of the first topic in every other topic */
    for (int i = 0; i < parts->cnt && !mismatch; i++) {
        if (strcmp(parts->elems[i].topic, g->topics[0]))
            continue;
        for (size_t t = 1; t < g->ntopics; t++) {
            int has = 0;
            for (int j = 0; j < parts->cnt && !has; j++)
                has = !strcmp(parts->elems[j].topic, g->topics[t]) &&
                      parts->elems[j].partition == parts->elems[i].partition;
            mismatch |= !has;
        }
    }
    if (mismatch)
        group_fail(g, LK_ERR_CONF_INVALID,
                   "group %s assigned this process %s: not the same partitions of every input "
                   "topic, so a task would run in two processes. Every process of app.id %s "
                   "must have the same input.topics; stop the processes whose input.topics "
                   "differ, or give them another app.id",
                   lk__conf_str(g->parent->conf, LK__P_APP_ID), seen,
                   lk__conf_str(g->parent->conf, LK__P_APP_ID));
}

/* The rebalance protocol (eager): @locality the membership consumer's poll, the loop
 * thread of the group's context */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
    lk__group_t *g = opaque;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        /* tasks: the partitions of the first input topic (range assignment gives a member
         * the same partition numbers of every co-partitioned topic) */
        char list[512] = "";
        for (int i = 0; i < parts->cnt; i++) {
            parts->elems[i].offset = RD_KAFKA_OFFSET_END; /* the member never fetches */
            if (strcmp(parts->elems[i].topic, g->topics[0]))
                continue;
            int p = parts->elems[i].partition;
            size_t len = strlen(list);
            lk__fmt(list + len, sizeof list - len, "%s%d", len ? " " : "", p);
            if (p < 0 || p >= g->ntasks)
                group_fail(g, LK_ERR_TOPOLOGY,
                           "assigned partition %d of %s, but the application has %d tasks: "
                           "the input's partition count changed while it ran; restart to "
                           "have it checked",
                           p, g->topics[0], g->ntasks);
        }
        if (!g->err)
            check_copartitioned(g, parts);
        rd_kafka_resp_err_t ae = rd_kafka_assign(rk, parts);
        if (!ae)
            (void)rd_kafka_pause_partitions(rk, parts); /* best effort: offsets at the end */
        lk__log(LK_LOG_NOTICE, "group %s: assigned tasks [%s]",
                lk__conf_str(g->parent->conf, LK__P_APP_ID), list);
        /* every stage's task p where task p runs: the repartition topics' partitions p
         * came with it (one partition per task, range assignment) */
        for (int i = 0; i < parts->cnt && !g->err; i++)
            for (int s = 0; s < g->nstages && !g->err &&
                            !strcmp(parts->elems[i].topic, g->topics[0]);
                 s++)
                (void)start_task(g, s, parts->elems[i].partition); /* failure: g->err */
    } else {
        int lost = rd_kafka_assignment_lost(rk);
        lk__log(LK_LOG_NOTICE, "group %s: tasks revoked%s",
                lk__conf_str(g->parent->conf, LK__P_APP_ID),
                lost ? " (assignment lost: batches in flight are abandoned)" : "");
        stop_all(g, !lost);
        (void)rd_kafka_assign(rk, NULL); /* unassigning cannot fail in a way to act on */
    }
}

/* ---- the group ---- */

static void free_topics(lk__group_t *g) {
    for (size_t i = 0; i < g->ntopics; i++)
        free(g->topics[i]);
    free(g->topics);
}

void lk__group_destroy(lk__group_t *g) {
    if (!g)
        return;
    if (g->tasks)
        stop_all(g, 0);
    if (g->rk) {
        if (!g->closed) /* leaving the group: nothing to act on */
            (void)rd_kafka_consumer_close(g->rk);
        rd_kafka_destroy(g->rk);
    }
    free(g->tasks);
    free_topics(g);
    free(g->tts);
    for (int s = 0; g->stages && s < g->nstages; s++)
        free(g->stages[s]);
    free(g->stages);
    pthread_mutex_destroy(&g->progress_lock);
    free(g);
}

static rd_kafka_t *membership_consumer(const lk_conf_t *conf, lk__group_t *g, char *errstr,
                                       size_t errstr_size) {
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    char kerr[512];
    if (lk__conf_kafka_apply(kc, conf, errstr, errstr_size)) {
        rd_kafka_conf_destroy(kc);
        return NULL;
    }
    const char *instance = lk__conf_str(conf, LK__P_GROUP_INSTANCE_ID);
    char session[32], heartbeat[32];
    int64_t session_ms = lk__conf_int(conf, LK__P_GROUP_SESSION_TIMEOUT_MS);
    lk__fmt(session, sizeof session, "%lld", (long long)session_ms);
    /* three heartbeats per session (the Java consumer's rule of thumb), unless
     * kafka.heartbeat.interval.ms says otherwise: librdkafka's 3 s default would let a
     * short session expire between two heartbeats */
    int heartbeat_given = 0;
    for (size_t i = 0, n = lk__conf_kafka_count(conf); i < n; i++) {
        const char *k, *v;
        lk__conf_kafka_get(conf, i, &k, &v);
        heartbeat_given |= !strcmp(k, "heartbeat.interval.ms");
    }
    lk__fmt(heartbeat, sizeof heartbeat, "%lld", (long long)(session_ms / 3));
    const char *const fixed[][2] = {
        {"group.id", lk__conf_str(conf, LK__P_APP_ID)},
        {"partition.assignment.strategy", "range"}, /* co-partitioned topics stay together */
        {"enable.auto.commit", "false"},
        {"enable.auto.offset.store", "false"},
        {"session.timeout.ms", session},
        {"heartbeat.interval.ms", heartbeat_given ? NULL : heartbeat},
        {"group.instance.id", instance && instance[0] ? instance : NULL},
    };
    for (size_t i = 0; i < LK_ARRAY_SIZE(fixed); i++)
        if (fixed[i][1] &&
            rd_kafka_conf_set(kc, fixed[i][0], fixed[i][1], kerr, sizeof kerr) != RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(kc);
            lk__fmt(errstr, errstr_size, "membership consumer: %s: %s", fixed[i][0], kerr);
            return NULL;
        }
    rd_kafka_conf_set_rebalance_cb(kc, on_rebalance);
    rd_kafka_conf_set_opaque(kc, g);
    lk__conf_kafka_log(kc, conf);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, kerr, sizeof kerr);
    if (!rk)
        lk__fmt(errstr, errstr_size, "cannot create the membership consumer: %s", kerr);
    return rk;
}

lk_err_t lk__group_new(lk__group_t **out, lk_context_t *parent, lk_define_fn *define,
                       void *opaque, const char **topics, size_t ntopics, char *errstr,
                       size_t errstr_size) {
    *out = NULL;
    lk_err_t e = lk__group_check_pipeline(parent, errstr, errstr_size);
    if (e)
        return e;
    lk__group_t *g = calloc(1, sizeof *g);
    if (!g || !(g->topics = calloc(ntopics, sizeof *g->topics))) {
        free(g);
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    }
    pthread_mutex_init(&g->progress_lock, NULL);
    g->parent = parent;
    g->define = define;
    g->opaque = opaque;
    for (size_t i = 0; i < ntopics; i++, g->ntopics++)
        if (!(g->topics[i] = strdup(topics[i]))) {
            lk__group_destroy(g);
            return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        }
    const char *dir = lk__conf_str(parent->conf, LK__P_CHECKPOINT_DIR);
    /* first: the local, most specific refusal */
    e = lk__group_check_dir(dir, errstr, errstr_size);
    g->ninputs = g->ntopics;
    if (!e)
        e = lk__group_find_stages(g, lk__conf_str(parent->conf, LK__P_APP_ID), &g->tts,
                                  &g->ntt, errstr, errstr_size);
    if (!e && !(g->rk = membership_consumer(parent->conf, g, errstr, errstr_size)))
        e = LK_ERR_CONF_INVALID;
    if (e) {
        lk__group_destroy(g);
        return e;
    }
    /* what needs the broker is done by lk__group_run (join), retried while the broker
     * cannot be reached, as single mode retries its batches */
    *out = g;
    return LK_OK;
}

/* The start's steps that need the broker: the task count, the progress topic, the
 * checkpoint directory, the subscription. A refusal (not co-partitioned, a progress topic
 * of another partition count) is LK_ERR_CONF_INVALID / LK_ERR_TOPOLOGY; an unreachable
 * broker, a missing topic or a failed request LK_ERR_KAFKA, which the caller retries.
 * errstr says why. */
static lk_err_t join(lk__group_t *g, char *errstr, size_t errstr_size) {
    const char *app = lk__conf_str(g->parent->conf, LK__P_APP_ID);
    const char *dir = lk__conf_str(g->parent->conf, LK__P_CHECKPOINT_DIR);
    while (g->ntopics > g->ninputs) /* the repartition topics of a join that failed */
        free(g->topics[--g->ntopics]);
    lk_err_t e = lk__group_check_topics(g, errstr, errstr_size);
    /* the member subscribes to the repartition topics too: task p of every stage (after
     * the inputs, which count_tasks counted; a retried join appends them again) */
    for (size_t i = 0; i < g->ntt && !e; i++) {
        if (g->tts[i].kind != TT_REPARTITION)
            continue;
        char **n = realloc(g->topics, (g->ntopics + 1) * sizeof *n);
        if (n)
            g->topics = n;
        if (!n || !(g->topics[g->ntopics] = strdup(g->tts[i].topic)))
            e = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        else
            g->ntopics++;
    }
    if (!e && lk__mkdir_p(dir))
        e = lk__err(LK_ERR_IO, errstr, errstr_size, "cannot create checkpoint.dir %s: %s", dir,
                    strerror(errno));
    if (!e && !(g->tasks = calloc((size_t)g->ntasks * (size_t)g->nstages, sizeof *g->tasks)))
        e = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    if (!e) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)g->ntopics);
        for (size_t i = 0; i < g->ntopics; i++)
            rd_kafka_topic_partition_list_add(l, g->topics[i], RD_KAFKA_PARTITION_UA);
        rd_kafka_resp_err_t ke = rd_kafka_subscribe(g->rk, l);
        rd_kafka_topic_partition_list_destroy(l);
        if (ke)
            e = lk__err(LK_ERR_KAFKA, errstr, errstr_size, "joining group %s: %s", app,
                        rd_kafka_err2str(ke));
    }
    if (e) {
        free(g->tasks); /* no task ran: the next try counts them again */
        g->tasks = NULL;
        return e;
    }
    char stages[32] = "";
    if (g->nstages > 1)
        lk__fmt(stages, sizeof stages, " in %d stages", g->nstages);
    lk__log(LK_LOG_INFO, "group.mode=consumer: %d tasks (partitions of %s)%s, joining group %s",
            g->ntasks, g->topics[0], stages, app);
    return LK_OK;
}

/* join, retried as single mode retries a failed batch (context_loop.c, batch_failed):
 * after retry.backoff.ms, doubling up to retry.backoff.max.ms, logging each failure; a
 * refusal fails at once; a stop request ends the wait at once (LK_OK: nothing ran). */
static lk_err_t join_with_retry(lk__group_t *g) {
    int64_t backoff = lk__conf_int(g->parent->conf, LK__P_RETRY_BACKOFF_MS);
    int64_t backoff_max = lk__conf_int(g->parent->conf, LK__P_RETRY_BACKOFF_MAX_MS);
    char err[sizeof g->errstr];
    for (;;) {
        lk_err_t e = join(g, err, sizeof err);
        if (!e)
            return LK_OK;
        if (lk__group_stop_asked(g)) {
            lk__log(LK_LOG_NOTICE, "group %s: stopped before joining (%s)",
                    lk__conf_str(g->parent->conf, LK__P_APP_ID), err);
            return LK_OK;
        }
        if (e != LK_ERR_KAFKA && e != LK_ERR_TIMED_OUT)
            return group_fail(g, e, "%s", err);
        lk__log(LK_LOG_WARNING, "group %s: joining failed, retrying in %lld ms: %s",
                lk__conf_str(g->parent->conf, LK__P_APP_ID), (long long)backoff, err);
        lk__nap_ms(backoff, lk__group_stop_asked, g);
        backoff = backoff * 2 > backoff_max ? backoff_max : backoff * 2;
    }
}

/* Any task whose loop returned on its own failed (or was fenced): the group stops. */
static void reap_tasks(lk__group_t *g) {
    if (!g->tasks)
        return;
    for (int p = 0; p < g->ntasks * g->nstages; p++)
        if (g->tasks[p].ctx && atomic_load(&g->tasks[p].done))
            stop_task(g, p, 1);
}

/* A fatal error of the membership consumer: librdkafka raises one when the broker fences
 * this member (FENCED_INSTANCE_ID: a process started with the same group.instance.id took
 * its place), and the consumer then takes no further part in the group. The group fails
 * with what to do; the run stops the tasks gracefully (their batches in flight finish). */
static void check_fatal(lk__group_t *g) {
    char why[512];
    rd_kafka_resp_err_t fe = rd_kafka_fatal_error(g->rk, why, sizeof why);
    if (!fe)
        return;
    const char *app = lk__conf_str(g->parent->conf, LK__P_APP_ID);
    if (fe == RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID)
        group_fail(g, LK_ERR_FENCED,
                   "group %s: group.instance.id %s is used by another process: the broker "
                   "fenced this one (%s). Give each process its own group.instance.id, then "
                   "start this one again",
                   app, lk__conf_str(g->parent->conf, LK__P_GROUP_INSTANCE_ID), why);
    else
        group_fail(g, LK_ERR_KAFKA,
                   "group %s: the membership consumer failed for good (%s: %s); its tasks "
                   "were stopped: start the process again",
                   app, rd_kafka_err2name(fe), why);
}

/* The fault point membership-fatal (test builds; README, error injection): while a task
 * runs here, librdkafka raises the injected error as a fatal error of the membership
 * consumer, the way it raises FENCED_INSTANCE_ID (rd_kafka_test_fatal_error: the mock
 * cluster of librdkafka 2.0.2 ignores group.instance.id and never fences a member). */
static void inject_fatal(lk__group_t *g) {
    int running = 0;
    for (int p = 0; p < g->ntasks && !running; p++)
        running = g->tasks[p].ctx != NULL;
    rd_kafka_resp_err_t fe =
        running ? LK__FAULT_KAFKA_RESP("membership-fatal", RD_KAFKA_RESP_ERR_NO_ERROR)
                : RD_KAFKA_RESP_ERR_NO_ERROR;
    if (fe)
        (void)rd_kafka_test_fatal_error(g->rk, fe, "injected at fault point membership-fatal");
}

lk_err_t lk__group_run(lk__group_t *g, const atomic_int *graceful, const atomic_int *now) {
    lk__metrics_loop(g->parent->metrics, 1, LK_OK, NULL);
    if (!g->tasks)
        (void)join_with_retry(g); /* its failure is in g->err */
    while (g->tasks && !g->err && !atomic_load(graceful) && !atomic_load(now)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(g->rk, 100);
        if (m) {
            /* a fatal error comes as _FATAL here too: check_fatal says what it was */
            if (m->err && m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF &&
                m->err != RD_KAFKA_RESP_ERR__FATAL)
                lk__log(LK_LOG_WARNING, "group %s: %s",
                        lk__conf_str(g->parent->conf, LK__P_APP_ID), rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m); /* paused at the end: nothing is fetched */
        }
        inject_fatal(g);
        check_fatal(g);
        reap_tasks(g);
    }
    /* graceful: each task finishes its batch and delivers, then the member leaves the
     * group (rd_kafka_consumer_close revokes through on_rebalance, which stops them) */
    stop_all(g, !atomic_load(now)); /* after a task's error too: the others deliver */
    (void)rd_kafka_consumer_close(g->rk); /* leaving: the group rebalances without us */
    g->closed = 1;
    if (g->err) {
        lk__log(LK_LOG_ERR, "%s (%s)", g->errstr, lk_err_name(g->err));
        lk__fmt(g->parent->errstr, sizeof g->parent->errstr, "%s", g->errstr);
    }
    lk__metrics_loop(g->parent->metrics, 0, g->err, g->errstr);
    return g->err;
}
