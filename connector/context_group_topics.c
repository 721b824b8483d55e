/*
 * context_group_topics.c — scale-out's checks before anything is created (DESIGN.md,
 * Scale-out): the pipeline can scale out (lk__group_check_pipeline), checkpoint.dir is a
 * group's (lk__group_check_dir, lk__group_check_single), the stages and the topics with one
 * partition per task (lk__group_find_stages), and at each join the task count, the
 * cleanup policy of the changelog and progress topics, and each task topic made or
 * checked (lk__group_check_topics). Membership, tasks and the rebalance are in
 * context_group.c.
 */
#define _GNU_SOURCE
#include "context_group_priv.h"
#include "../core/conf_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- checks before anything is created ---- */

/* A character Kafka allows in a topic name (the changelog's is made of the uid). */
static int topic_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '-';
}

/* Kafka sinks only (a file cannot be fenced across machines); keyed state through the
 * changelog, its topic named after the operator's uid. The built-in running totals
 * (wordcount, count-by-key, sum-by-key) key by what the input is not partitioned by
 * (words, a JSON field) and put lk_repartition in front of their keyed operator in this
 * mode (cli/builtin.c), so each key's state is in one task: they run. Their windows stay
 * refused: a window's state moves through the changelog like any other, but no test
 * proves a window scaled out yet (batch-time windows close by the clock of the task's
 * process, event-time ones by a watermark that is per task). */
lk_err_t lk__group_check_pipeline(const lk_context_t *ctx, char *errstr, size_t errstr_size) {
    const lk_pipeline_t *p = ctx->pipeline;
    lk__topo_op_t *ops = calloc(p->nstages ? p->nstages : 1, sizeof *ops);
    if (!ops)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    size_t n = lk__pipeline_topology(p, ops, p->nstages);
    const char *builtin = lk__conf_str(ctx->conf, LK__P_PIPELINE);
    const char *app = lk__conf_str(ctx->conf, LK__P_APP_ID);
    lk_err_t e = LK_OK;
    for (size_t i = 0; i < n && !e; i++) {
        if (ops[i].schema_version <= 0)
            continue;
        const char *bad = ops[i].uid;
        while (*bad && topic_char(*bad))
            bad++;
        if (builtin && builtin[0] && (!strcmp(ops[i].kind, "reduce_by_key_and_window") ||
                                      !strcmp(ops[i].kind, "window_late")))
            e = lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                        "group.mode=consumer: the built-in pipeline '%s' with windows "
                        "(operator '%s') is not supported scaled out in this version; unset "
                        "window.size.ms and window.gap.ms for running totals, or run it with "
                        "group.mode=single",
                        builtin, ops[i].uid);
        else if (*bad || strlen(app) + strlen(ops[i].uid) + 11 > 249)
            e = lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                        "group.mode=consumer: operator '%s' keeps keyed state, whose changelog "
                        "topic is %s.%s.changelog: %s. Give the operator a uid of letters, "
                        "digits, '.', '_' and '-'",
                        ops[i].uid, app, ops[i].uid,
                        *bad ? "a topic name cannot hold that uid's characters"
                             : "longer than Kafka's 249 characters");
    }
    free(ops);
    for (size_t i = 0; i < p->nstages && !e; i++) {
        const lk_stream_t *st = p->stages[i];
        if (st->kind == LK__ST_OUTBOX && st->sink_ops != &lk__sink_kafka_ops)
            e = lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                        "group.mode=consumer: sink '%s' writes %s; only Kafka sinks can be "
                        "fenced across processes (a file written on one machine cannot be "
                        "fenced by another). Use a Kafka sink, or group.mode=single",
                        st->uid, st->sink_ops->kind);
    }
    const char *dl = lk__conf_str(ctx->conf, LK__P_ERRORS_DEADLETTER);
    if (!e && dl && !strncmp(dl, "file:", 5))
        e = lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                    "group.mode=consumer: errors.deadletter=%s is a file; use a Kafka topic",
                    dl);
    return e;
}

/* Whether a stop (graceful or immediate) was asked of the group's context: the start's
 * waits for the broker end at once. */
int lk__group_stop_asked(const void *o) {
    const lk__group_t *g = o;
    return atomic_load(&g->parent->stop_graceful) || atomic_load(&g->parent->stop_now);
}

/* The membership consumer's metadata of all topics, in one request: a request naming
 * topics could have the cluster create them with its default partition count (the mock
 * cluster of librdkafka 2.0.2 answers Metadata v2, which has no AllowAutoTopicCreation
 * field, and creates every topic a request names; so does a broker older than 0.11), so
 * the input topics and the progress topic are all read from this one answer. Waits up to
 * GROUP_TIMEOUT_MS. While no broker is reachable librdkafka sends nothing (it waits for a
 * connection, then answers _TRANSPORT): that wait goes in steps of METADATA_STEP_MS, so a
 * stop request ends it at once; a request sent and not answered in its step (_TIMED_OUT)
 * is given the rest of the time. *md is the caller's (rd_kafka_metadata_destroy). */
static lk_err_t all_metadata(lk__group_t *g, const struct rd_kafka_metadata **md, char *errstr,
                             size_t errstr_size) {
    rd_kafka_resp_err_t ke = RD_KAFKA_RESP_ERR__TRANSPORT;
    int64_t step = METADATA_STEP_MS;
    for (int64_t until = lk__mono_ms() + GROUP_TIMEOUT_MS, left;
         (ke == RD_KAFKA_RESP_ERR__TRANSPORT || ke == RD_KAFKA_RESP_ERR__TIMED_OUT) &&
         !lk__group_stop_asked(g) && (left = until - lk__mono_ms()) > 0;) {
        if (ke == RD_KAFKA_RESP_ERR__TIMED_OUT)
            step = GROUP_TIMEOUT_MS; /* a broker was reachable: wait for its answer */
        ke = rd_kafka_metadata(g->rk, 1, NULL, md, (int)(left < step ? left : step));
    }
    if (ke)
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "metadata of the input topics: %s",
                       lk__group_stop_asked(g) ? "stop requested" : rd_kafka_err2str(ke));
    return LK_OK;
}

/* Partition count of topic in md (0: missing). */
static int partition_count(const struct rd_kafka_metadata *md, const char *topic) {
    for (int i = 0; i < md->topic_cnt; i++)
        if (!strcmp(md->topics[i].topic, topic) && !md->topics[i].err)
            return md->topics[i].partition_cnt;
    return 0;
}

/* The input topics are co-partitioned: g->ntasks is their one partition count. */
static lk_err_t count_tasks(lk__group_t *g, const struct rd_kafka_metadata *md, char *errstr,
                            size_t errstr_size) {
    char seen[1024] = "";
    int first = -1;
    int mismatch = 0;
    for (size_t i = 0; i < g->ntopics; i++) {
        int n = partition_count(md, g->topics[i]);
        if (n == 0)
            return lk__err(LK_ERR_KAFKA, errstr, errstr_size,
                           "input topic %s does not exist (or has no partitions)",
                           g->topics[i]);
        size_t len = strlen(seen);
        lk__fmt(seen + len, sizeof seen - len, "%s%s has %d", len ? ", " : "", g->topics[i], n);
        if (first < 0)
            first = n;
        else if (n != first)
            mismatch = 1;
    }
    if (mismatch)
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "group.mode=consumer: the input topics must be co-partitioned (task p "
                       "reads partition p of each): %s partitions. Repartition them to one "
                       "count, or use group.mode=single",
                       seen);
    g->ntasks = first;
    return LK_OK;
}


/* A topic of task_topic_t: made here on the first run, checked on every later one (a
 * changed partition count is refused before any task starts). */
static lk_err_t check_task_topic(lk__group_t *g, const struct rd_kafka_metadata *md,
                                 const task_topic_t *tt, int *again, char *errstr,
                                 size_t errstr_size) {
    *again = 0;
    const char *topic = tt->topic;
    int n = partition_count(md, topic);
    if (n == g->ntasks)
        return LK_OK;
    if (n > 0 && tt->kind == TT_CHANGELOG)
        return lk__err(LK_ERR_TOPOLOGY, errstr, errstr_size,
                       "group.mode=consumer: the input has %d partitions (tasks) but the "
                       "changelog of operator '%s', %s, has %d: task p's state is partition "
                       "p of it, so the counts must match; nothing was modified. Run with "
                       "the old partition count, or start a new app.id",
                       g->ntasks, tt->uid, topic, n);
    if (n > 0 && tt->kind == TT_REPARTITION)
        return lk__err(LK_ERR_TOPOLOGY, errstr, errstr_size,
                       "group.mode=consumer: the input has %d partitions (tasks) but %s, the "
                       "topic of lk_repartition '%s', has %d: task p after it reads its "
                       "partition p, so it needs one partition per task; nothing was "
                       "modified. Recreate it with %d partitions (once the stage after it "
                       "has read it to its end), or start a new app.id",
                       g->ntasks, topic, tt->uid, n, g->ntasks);
    if (n > 0)
        return lk__err(LK_ERR_TOPOLOGY, errstr, errstr_size,
                       "group.mode=consumer: the input has %d partitions (tasks) but %s has %d: "
                       "the application was created with %d task%s (or in group.mode=single, "
                       "which writes one). A task's checkpoint, transactional.id and "
                       "progress partition belong to its partition number, so the partition "
                       "count cannot change under an application; nothing was modified. Run "
                       "with the old partition count, or start a new app.id",
                       g->ntasks, topic, n, n, n == 1 ? "" : "s");
    if (tt->kind == TT_PROGRESS)
        return lk__kafka_create_progress_topic(g->rk, topic, g->ntasks, GROUP_TIMEOUT_MS,
                                               again, errstr, errstr_size);
    if (tt->kind == TT_CHANGELOG) { /* a key's last value is its state: compacted */
        const char *const configs[][2] = {{"cleanup.policy", "compact"}};
        return lk__kafka_create_topic(g->rk, "changelog topic", topic, g->ntasks, configs, 1,
                                      GROUP_TIMEOUT_MS, again, errstr, errstr_size);
    }
    /* records between the stages: deleted by time, never compacted (a key's records are
     * each needed once) */
    char retention[32];
    lk__fmt(retention, sizeof retention, "%lld",
            (long long)lk__conf_int(g->parent->conf, LK__P_REPARTITION_RETENTION_MS));
    const char *const configs[][2] = {{"cleanup.policy", "delete"}, {"retention.ms", retention}};
    return lk__kafka_create_topic(g->rk, "repartition topic", topic, g->ntasks, configs, 2,
                                  GROUP_TIMEOUT_MS, again, errstr, errstr_size);
}

/* Whether a topic's cleanup.policy value keeps each key's last record forever: exactly
 * "compact" (Kafka lists the policies comma-separated: "compact,delete" deletes by time
 * too). */
static int policy_compact(const char *v) {
    while (*v == ' ')
        v++;
    size_t n = strlen(v);
    while (n && v[n - 1] == ' ')
        n--;
    return n == 7 && !memcmp(v, "compact", 7);
}

/* The cleanup.policy of the changelog and progress topics that exist (in md) must be
 * compact: a changelog whose records are deleted by time cannot restore a task's state
 * (kafka_changelog.c refuses a partition whose log start moved, but only at a handoff,
 * after the topic lost data), and a progress topic's last record is a task's handoff.
 * One DescribeConfigs request for all of them, checked before anything is created. It
 * goes to the broker that answered the metadata: any broker answers topic configs, and
 * librdkafka's mock cluster (2.0.2), which names no controller and does not implement
 * DescribeConfigs, then answers "unsupported" at once instead of the request waiting
 * GROUP_TIMEOUT_MS for a controller; unsupported, the check is logged as not made and
 * the start goes on. Refused: LK_ERR_CONF_INVALID naming the topic, its policy and the
 * fix; a failed request LK_ERR_KAFKA (retried by join_with_retry). */
static lk_err_t check_policies(lk__group_t *g, const struct rd_kafka_metadata *md,
                               char *errstr, size_t errstr_size) {
    rd_kafka_ConfigResource_t **rs = calloc(g->ntt ? g->ntt : 1, sizeof *rs);
    if (!rs)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    size_t n = 0;
    for (size_t i = 0; i < g->ntt; i++)
        if (g->tts[i].kind != TT_REPARTITION && partition_count(md, g->tts[i].topic) > 0)
            rs[n++] = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, g->tts[i].topic);
    if (!n) {
        free(rs);
        return LK_OK;
    }
    char kerr[512];
    rd_kafka_queue_t *q = rd_kafka_queue_new(g->rk);
    rd_kafka_AdminOptions_t *opt =
        rd_kafka_AdminOptions_new(g->rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
    (void)rd_kafka_AdminOptions_set_request_timeout(opt, GROUP_TIMEOUT_MS, kerr, sizeof kerr);
    if (md->orig_broker_id >= 0)
        (void)rd_kafka_AdminOptions_set_broker(opt, md->orig_broker_id, kerr, sizeof kerr);
    int64_t t0 = lk__mono_ns();
    rd_kafka_DescribeConfigs(g->rk, rs, n, opt, q);
    rd_kafka_event_t *ev = NULL;
    /* in steps, so that a stop request ends the wait */
    for (int64_t until = lk__mono_ms() + GROUP_TIMEOUT_MS + 200;
         !ev && !lk__group_stop_asked(g) && lk__mono_ms() < until;)
        ev = rd_kafka_queue_poll(q, METADATA_STEP_MS);
    rd_kafka_resp_err_t ke = ev ? rd_kafka_event_error(ev) : RD_KAFKA_RESP_ERR__TIMED_OUT;
    lk_err_t e = LK_OK;
    if (ke == RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE ||
        ke == RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION) {
        lk__log(LK_LOG_INFO, "group.mode=consumer: the cleanup.policy of %s%s could not be "
                "checked (%s: the cluster does not answer DescribeConfigs, e.g. librdkafka's "
                "mock cluster); going on", rd_kafka_ConfigResource_name(rs[0]),
                n > 1 ? " and the other changelog/progress topics" : "",
                ev ? rd_kafka_event_error_string(ev) : rd_kafka_err2str(ke));
    } else if (ke) {
        e = lk__err(LK_ERR_KAFKA, errstr, errstr_size, "describing the configs of %s%s: %s",
                    rd_kafka_ConfigResource_name(rs[0]), n > 1 ? " and others" : "",
                    lk__group_stop_asked(g) ? "stop requested"
                    : ev          ? rd_kafka_event_error_string(ev)
                                  : rd_kafka_err2str(ke));
    } else {
        size_t cnt;
        const rd_kafka_ConfigResource_t **res = rd_kafka_DescribeConfigs_result_resources(
            rd_kafka_event_DescribeConfigs_result(ev), &cnt);
        for (size_t i = 0; i < cnt && !e; i++) {
            const char *topic = rd_kafka_ConfigResource_name(res[i]);
            rd_kafka_resp_err_t re = rd_kafka_ConfigResource_error(res[i]);
            if (re == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED ||
                re == RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED) {
                lk__log(LK_LOG_WARNING, "group.mode=consumer: the cleanup.policy of %s could "
                        "not be checked (%s): allow DescribeConfigs on it; it must be "
                        "compact", topic, rd_kafka_err2str(re));
                continue;
            }
            if (re) {
                e = lk__err(LK_ERR_KAFKA, errstr, errstr_size, "describing the configs of %s: %s",
                            topic, rd_kafka_ConfigResource_error_string(res[i])
                                       ? rd_kafka_ConfigResource_error_string(res[i])
                                       : rd_kafka_err2str(re));
                break;
            }
            size_t nc;
            const rd_kafka_ConfigEntry_t **ce = rd_kafka_ConfigResource_configs(res[i], &nc);
            const char *policy = NULL;
            for (size_t j = 0; j < nc && !policy; j++)
                if (!strcmp(rd_kafka_ConfigEntry_name(ce[j]), "cleanup.policy"))
                    policy = rd_kafka_ConfigEntry_value(ce[j]);
            if (policy && policy_compact(policy))
                continue;
            int changelog = 0;
            for (size_t j = 0; j < g->ntt; j++)
                if (!strcmp(g->tts[j].topic, topic))
                    changelog = g->tts[j].kind == TT_CHANGELOG;
            e = lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                        "group.mode=consumer: %s %s has cleanup.policy=%s, not compact: %s; "
                        "nothing was created or modified. Make it compact (kafka-configs.sh "
                        "--bootstrap-server <broker> --alter --entity-type topics "
                        "--entity-name %s --add-config cleanup.policy=compact) and start "
                        "again",
                        changelog ? "changelog topic" : "progress topic", topic,
                        policy ? policy : "(not reported)",
                        changelog ? "records deleted by time take keys of the operator's "
                                    "state with them, so a task's state could not be "
                                    "restored at a handoff"
                                  : "a task's last progress record, deleted by time, is "
                                    "its position and output fence at a handoff",
                        topic);
        }
    }
    if (!ke && !e)
        lk__log(LK_LOG_DEBUG, "group.mode=consumer: cleanup.policy of %zu existing "
                "changelog/progress topic%s checked in one DescribeConfigs request (%.1f ms)",
                n, n == 1 ? "" : "s", (double)(lk__mono_ns() - t0) / 1e6);
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(opt);
    rd_kafka_queue_destroy(q);
    for (size_t i = 0; i < n; i++)
        rd_kafka_ConfigResource_destroy(rs[i]);
    free(rs);
    return e;
}

/* The stages (one per lk_repartition after the first) and the topics with one partition
 * per task (*tts, malloc'ed): every stage's progress topic, every repartition topic, every
 * stateful operator's changelog. The names must be valid topic names (249 characters). */
lk_err_t lk__group_find_stages(lk__group_t *g, const char *app, task_topic_t **tts,
                               size_t *ntt, char *errstr, size_t errstr_size) {
    const lk_pipeline_t *p = g->parent->pipeline;
    size_t nrep = lk__pipeline_repartitions(p, NULL, 0);
    const char **uids = calloc(nrep + 1, sizeof *uids);
    g->stages = calloc(nrep + 1, sizeof *g->stages);
    size_t nstate = 0;
    for (size_t i = 0; i < p->nstages; i++)
        nstate += p->stages[i]->kind == LK__ST_UPDATE || p->stages[i]->kind == LK__ST_WINDOW;
    *tts = calloc(2 * nrep + 1 + nstate, sizeof **tts);
    if (!uids || !g->stages || !*tts) {
        free(uids);
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    }
    lk__pipeline_repartitions(p, uids, nrep);
    g->nstages = 1;
    task_topic_t *t = *tts;
    lk__fmt(t[0].topic, sizeof t[0].topic, "%s.progress", app);
    *ntt = 1;
    lk_err_t e = LK_OK;
    for (size_t i = 0; i < nrep && !e; i++) {
        if (!(g->stages[g->nstages] = strdup(uids[i]))) {
            e = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
            break;
        }
        g->nstages++;
        task_topic_t *pr = &t[(*ntt)++], *rt = &t[(*ntt)++];
        lk__fmt(pr->topic, sizeof pr->topic, "%s.%s.progress", app, uids[i]);
        lk__repartition_topic(rt->topic, sizeof rt->topic, app, uids[i]);
        pr->uid = rt->uid = g->stages[g->nstages - 1];
        rt->kind = TT_REPARTITION;
        if (strlen(rt->topic) > 249)
            e = lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                        "group.mode=consumer: lk_repartition '%s' needs topic %s, longer than "
                        "Kafka's 249 characters; use a shorter uid or app.id",
                        uids[i], rt->topic);
    }
    free(uids);
    for (size_t i = 0; i < p->nstages && !e; i++) {
        const lk_stream_t *st = p->stages[i];
        if (st->kind != LK__ST_UPDATE && st->kind != LK__ST_WINDOW)
            continue;
        task_topic_t *ct = &t[(*ntt)++];
        lk__fmt(ct->topic, sizeof ct->topic, "%s.%s.changelog", app, st->uid);
        ct->uid = st->uid;
        ct->kind = TT_CHANGELOG;
    }
    return e;
}

/* Whether dir holds name (a checkpoint's data.mdb, a group's task-0). */
static int dir_holds(const char *dir, const char *name) {
    char path[4200];
    struct stat st;
    lk__fmt(path, sizeof path, "%s/%s", dir, name);
    return lstat(path, &st) == 0;
}

/* checkpoint.dir holds task directories; a checkpoint of group.mode=single there (its
 * data.mdb) is another application's layout and is refused, as the single mode refuses
 * task directories (lk__group_check_single). */
lk_err_t lk__group_check_dir(const char *dir, char *errstr, size_t errstr_size) {
    if (dir_holds(dir, "data.mdb"))
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "checkpoint.dir %s holds a checkpoint of group.mode=single; "
                       "group.mode=consumer keeps one checkpoint per task in "
                       "task-<partition> directories under checkpoint.dir. Use another "
                       "checkpoint.dir (and a new app.id)",
                       dir);
    return LK_OK;
}

lk_err_t lk__group_check_single(const char *dir, char *errstr, size_t errstr_size) {
    if (dir_holds(dir, "task-0"))
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "checkpoint.dir %s holds the task checkpoints of group.mode=consumer "
                       "(task-0, ...); set group.mode=consumer to run them, or use another "
                       "checkpoint.dir",
                       dir);
    return LK_OK;
}

/* The task count and the task topics, before the member subscribes (join in
 * context_group.c): one metadata request of all topics, the input's partition count, the
 * cleanup policy of the changelog and progress topics that exist, then each task topic
 * made or checked. */
lk_err_t lk__group_check_topics(lk__group_t *g, char *errstr, size_t errstr_size) {
    const struct rd_kafka_metadata *md = NULL;
    lk_err_t e = all_metadata(g, &md, errstr, errstr_size);
    if (!e)
        e = count_tasks(g, md, errstr, errstr_size);
    if (!e) /* before anything is created */
        e = check_policies(g, md, errstr, errstr_size);
    /* again: another member created it first (replicas started together), and a broker
     * lists a new topic in its metadata only once the topic's partitions have leaders,
     * tens to hundreds of milliseconds later on a real broker: polled until then, bounded
     * like the requests. (Three immediate tries used to fail the start of every replica
     * but one: tests/mock/deploy_replicas.py on the kafka tier.) The first look uses the
     * metadata count_tasks read: one request for the whole check. */
    for (size_t i = 0; i < g->ntt && !e; i++) {
        int again = 1;
        for (int64_t until = lk__mono_ms() + GROUP_TIMEOUT_MS; !e && again;) {
            int listed = partition_count(md, g->tts[i].topic) == g->ntasks;
            e = check_task_topic(g, md, &g->tts[i], &again, errstr, errstr_size);
            /* made just now, here: polled too until the metadata lists it. The group
             * leader assigns only the topics its metadata lists; a repartition topic
             * subscribed before it is listed is left out of the assignment, and
             * check_copartitioned refuses the start (seen once in two runs on a real
             * broker) */
            again |= !e && !listed;
            if (!e && again) {
                if (lk__mono_ms() >= until)
                    break;
                lk__nap_ms(100, lk__group_stop_asked, g);
                rd_kafka_metadata_destroy(md);
                md = NULL;
                e = all_metadata(g, &md, errstr, errstr_size);
            }
        }
        if (!e && again)
            e = lk__err(LK_ERR_KAFKA, errstr, errstr_size, "%s: created but not listed in "
                        "the metadata after %d s", g->tts[i].topic, GROUP_TIMEOUT_MS / 1000);
    }
    if (md)
        rd_kafka_metadata_destroy(md);
    return e;
}
