/*
 * kafka_progress.c — the Kafka sink's recovery (docs/DESIGN.md, "Recovery" 2 and
 * "Sinks"): the progress topic <app.id>.progress (created compacted, one partition, unless
 * it exists), the wait until no foreign transaction holds back its last stable offset
 * (lk__kafka_wait_stable, behind a seam the unit tests drive), the progress records'
 * formats (per batch with a checkpoint id, and the per-sink format of older versions), and
 * the reader that finds every member's fence in the last committed records. A record of
 * another checkpoint after this one's is refused unless checkpoint.adopt.output is set.
 * The rest of the sink is in kafka.c and kafka_delivery.c (kafka_priv.h).
 */
#define _GNU_SOURCE
#include "kafka_priv.h"
#include "../core/util_int.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

lk_err_t lk__kafka_create_topic(rd_kafka_t *rk, const char *what, const char *topic,
                                int partitions, const char *const (*configs)[2],
                                size_t nconfigs, int timeout_ms, int *existed, char *errstr,
                                size_t errstr_size) {
    char kerr[512];
    *existed = 0;
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(topic, partitions, -1, kerr, sizeof kerr);
    if (!nt)
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "%s: %s", what, kerr);
    char settings[512] = ""; /* "k=v, ..." for the messages */
    for (size_t i = 0; i < nconfigs; i++) {
        rd_kafka_resp_err_t ce = rd_kafka_NewTopic_set_config(nt, configs[i][0], configs[i][1]);
        if (ce) {
            rd_kafka_NewTopic_destroy(nt);
            return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "%s: %s", what,
                           rd_kafka_err2str(ce));
        }
        size_t len = strlen(settings);
        lk__fmt(settings + len, sizeof settings - len, "%s%s=%s", len ? ", " : "",
                configs[i][0], configs[i][1]);
    }
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_AdminOptions_t *opt = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    /* the callers' timeouts are within librdkafka's range (sink.kafka.timeout.ms is
     * validated; the group's is 30 s) */
    (void)rd_kafka_AdminOptions_set_request_timeout(opt, timeout_ms, kerr, sizeof kerr);
    rd_kafka_CreateTopics(rk, &nt, 1, opt, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, timeout_ms + 200);
    lk_err_t r = LK_OK;
    if (!ev) {
        r = lk__err(LK_ERR_KAFKA, errstr, errstr_size, "creating %s: timed out", topic);
    } else if (rd_kafka_event_error(ev)) {
        r = lk__err(LK_ERR_KAFKA, errstr, errstr_size, "creating %s: %s", topic,
                    rd_kafka_event_error_string(ev));
    } else {
        size_t cnt;
        const rd_kafka_topic_result_t **tr =
            rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &cnt);
        rd_kafka_resp_err_t te = cnt == 1 ? rd_kafka_topic_result_error(tr[0]) : 0;
        if (te == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
            *existed = 1; /* made meanwhile by another instance */
        else if (te)
            r = lk__err(LK_ERR_KAFKA, errstr, errstr_size, "creating %s: %s", topic,
                        rd_kafka_topic_result_error_string(tr[0]));
        else
            lk__log(LK_LOG_NOTICE, "created %s %s (%d partition%s, %s)", what, topic,
                    partitions, partitions == 1 ? "" : "s", settings);
    }
    if (r) { /* what to do when the cluster will not make it (ACLs, the mock cluster) */
        char why[768];
        lk__fmt(why, sizeof why, "%s", errstr);
        lk__fmt(errstr, errstr_size,
                "%s. Create it yourself with %d partition%s and %s (with "
                "`lockstep mock-broker`: --topic %s:%d)",
                why, partitions, partitions == 1 ? "" : "s", settings, topic, partitions);
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(opt);
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy(nt);
    return r;
}

lk_err_t lk__kafka_create_progress_topic(rd_kafka_t *rk, const char *topic, int partitions,
                                         int timeout_ms, int *existed, char *errstr,
                                         size_t errstr_size) {
    static const char *const compact[][2] = {{"cleanup.policy", "compact"}};
    return lk__kafka_create_topic(rk, "progress topic", topic, partitions, compact, 1,
                                  timeout_ms, existed, errstr, errstr_size);
}

/* Create <app>.progress (compacted, one partition) unless it exists. */
static lk_err_t ensure_progress_topic(lk__kafka_sink_t *k, char *errstr, size_t errstr_size) {
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(k->reader, k->progress_topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t ke = rd_kafka_metadata(k->reader, 0, rkt, &md, lk__kafka_budget(k));
    rd_kafka_topic_destroy(rkt);
    if (ke)
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "metadata of %s: %s",
                       k->progress_topic, rd_kafka_err2str(ke));
    int exists = md->topic_cnt == 1 && !md->topics[0].err && md->topics[0].partition_cnt > 0;
    int nparts = exists ? md->topics[0].partition_cnt : 0;
    rd_kafka_metadata_destroy(md);
    if (exists && k->progress_partition >= nparts)
        /* scale-out: the group runner made it with one partition per task, and checked
         * the input's partition count against it before any task started */
        return lk__err(LK_ERR_TOPOLOGY, errstr, errstr_size,
                       "%s has %d partition%s: task %d has none (the input's partition count "
                       "changed since the application was created?)",
                       k->progress_topic, nparts, nparts == 1 ? "" : "s",
                       (int)k->progress_partition);
    if (exists)
        return LK_OK;
    int existed;
    return lk__kafka_create_progress_topic(k->producer, k->progress_topic, 1,
                                           lk__kafka_budget(k), &existed, errstr, errstr_size);
}

/* ---- the stable-offset wait (the seam: lk__kafka_wait_stable, tested in unit tests) ---- */

static int64_t real_now_ms(void *o) {
    (void)o;
    return lk__mono_ms();
}

/* Wakes real_sleep_ms's nap: the sink was abandoned (an immediate stop). */
static int abandoned(const void *o) {
    const lk__kafka_sink_t *k = o;
    return lk__kafka_abandoned(k->owner);
}

/* Sleep ms (lk__nap_ms: steps of 50 ms), ending early on an immediate stop. */
static void real_sleep_ms(void *o, int64_t ms) {
    lk__nap_ms(ms, abandoned, o);
}

static lk_err_t real_offsets(void *o, const char *topic, int32_t partition, int64_t *lso,
                             int64_t *hwm, char *errstr, size_t errstr_size) {
    lk__kafka_sink_t *k = o;
    int64_t lo;
    /* ListOffsets(latest) answers the LSO to a read_committed client and the high
     * watermark to a read_uncommitted one */
    rd_kafka_resp_err_t ke = rd_kafka_query_watermark_offsets(k->reader, topic, partition, &lo,
                                                              lso, lk__kafka_budget(k));
    if (!ke)
        ke = rd_kafka_query_watermark_offsets(k->probe, topic, partition, &lo, hwm,
                                              lk__kafka_budget(k));
    if (ke)
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "offsets of %s[%d]: %s", topic,
                       (int)partition, rd_kafka_err2str(ke));
    return LK_OK;
}

void lk__kafka_real_offsets_io(lk__kafka_sink_t *k, lk__kafka_offsets_io_t *io) {
    *io = (lk__kafka_offsets_io_t){real_offsets, real_sleep_ms, real_now_ms, k};
}

lk_err_t lk__kafka_wait_stable(const lk__kafka_offsets_io_t *io, const char *topic,
                               int32_t partition, int64_t timeout_ms, int64_t *end,
                               char *errstr, size_t errstr_size) {
    int64_t start = io->now_ms(io->opaque), backoff = 100;
    for (unsigned tries = 1;; tries++) {
        int64_t lso = 0, hwm = 0;
        lk_err_t e = io->offsets(io->opaque, topic, partition, &lso, &hwm, errstr, errstr_size);
        if (e)
            return e;
        if (lso >= hwm) {
            if (tries > 1)
                lk__log(LK_LOG_NOTICE, "the open transaction on %s[%d] ended after %lld ms; "
                        "reading the progress up to offset %lld", topic, (int)partition,
                        (long long)(io->now_ms(io->opaque) - start), (long long)hwm);
            *end = hwm;
            return LK_OK;
        }
        int64_t waited = io->now_ms(io->opaque) - start;
        if (waited >= timeout_ms)
            return lk__err(LK_ERR_TIMED_OUT, errstr, errstr_size,
                           "waiting for an open transaction on %s[%d] (last stable offset %lld "
                           "< high watermark %lld) for %lld ms, %u checks: another producer's "
                           "transaction is open there (an instance of an older version, or a "
                           "foreign writer); the broker aborts it after its "
                           "transaction.timeout.ms; nothing is delivered before, so that no "
                           "decision is made from a stale fence",
                           topic, (int)partition, (long long)lso, (long long)hwm,
                           (long long)waited, tries);
        lk__log(tries == 1 ? LK_LOG_WARNING : LK_LOG_INFO,
                "waiting for an open transaction on %s[%d] (last stable offset %lld < high "
                "watermark %lld; check %u, %lld ms so far, next in %lld ms)",
                topic, (int)partition, (long long)lso, (long long)hwm, tries, (long long)waited,
                (long long)backoff);
        int64_t nap = backoff < timeout_ms - waited ? backoff : timeout_ms - waited;
        io->sleep_ms(io->opaque, nap);
        backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
    }
}

/* ---- the progress record ---- */

/* A committed progress record, parsed: its batch (0: not a progress record of app), its
 * checkpoint id ("" for the per-sink format of older versions, which has none). */
typedef struct {
    uint64_t batch;
    char checkpoint[48];
    json_t *doc;
} progress_t;

static int progress_parse(const rd_kafka_message_t *m, const char *app, progress_t *p) {
    json_error_t je;
    memset(p, 0, sizeof *p);
    if (!(p->doc = json_loadb(m->payload, m->len, 0, &je)))
        return 0;
    json_t *a = json_object_get(p->doc, "app"), *b = json_object_get(p->doc, "batch"),
           *c = json_object_get(p->doc, "checkpoint");
    if (!json_is_string(a) || strcmp(json_string_value(a), app) || !json_is_integer(b) ||
        json_integer_value(b) <= 0) {
        json_decref(p->doc);
        p->doc = NULL;
        return 0;
    }
    p->batch = (uint64_t)json_integer_value(b);
    if (json_is_string(c))
        lk__fmt(p->checkpoint, sizeof p->checkpoint, "%s", json_string_value(c));
    return 1;
}

/* Whether progress record p names member uid: the per-batch format ("sinks": {uid: ..})
 * every member it lists, the per-sink format of older versions ("sink": uid) one. */
static int progress_names(const progress_t *p, const char *uid) {
    json_t *s = json_object_get(p->doc, "sink"), *ss = json_object_get(p->doc, "sinks");
    return json_is_object(ss) ? json_object_get(ss, uid) != NULL
                              : json_is_string(s) && !strcmp(json_string_value(s), uid);
}

/* A record written by this checkpoint: its id, or no id (older format) and written by the
 * lineage of a checkpoint of that format: migrated by this open, or written after the
 * checkpoint was created (a newer checkpoint cannot have written before its creation). */
static int progress_ours(const lk__sink_t *s, const progress_t *p, const rd_kafka_message_t *m) {
    if (p->checkpoint[0])
        return !strcmp(p->checkpoint, s->checkpoint_id);
    rd_kafka_timestamp_type_t tt;
    int64_t ts = rd_kafka_message_timestamp(m, &tt);
    return s->checkpoint_migrated || (ts >= 0 && ts >= s->checkpoint_created_ms);
}

/* Why state written under the progress record's definition o (kind, schema, window)
 * cannot be restored into, or continued by, changelog member m's operator (into why);
 * NULL when it can. Single mode's checks (check_topology in context.c), made against the
 * process that ran the task before. */
static const char *state_mismatch(const lk__sink_member_t *m, json_t *o, char *why,
                                  size_t why_size) {
    json_t *k = json_object_get(o, "kind"), *v = json_object_get(o, "schema"),
           *w = json_object_get(o, "window");
    const char *kind = json_is_string(k) ? json_string_value(k) : "?";
    const char *window = json_is_string(w) ? json_string_value(w) : NULL;
    int schema = json_is_integer(v) ? (int)json_integer_value(v) : -1;
    if (strcmp(kind, m->state_kind))
        lk__fmt(why, why_size, "operator '%s' was a %s and is now a %s; give the new "
                "operator a new uid (it starts with empty state)",
                m->changelog_of, kind, m->state_kind);
    else if ((window || m->state_window) &&
             (!window || !m->state_window || strcmp(window, m->state_window)))
        lk__fmt(why, why_size, "operator '%s' (%s): window definition changed from %s to "
                "%s; keep the old definition, or give the new window a new uid (it starts "
                "empty)",
                m->changelog_of, kind, window ? window : "(none)",
                m->state_window ? m->state_window : "(none)");
    else if (schema != m->state_schema)
        lk__fmt(why, why_size, "operator '%s' (%s): state schema version changed from v%d to "
                "v%d; the task's state is v%d state. Keep v%d, or use a new uid to start "
                "from empty state",
                m->changelog_of, kind, schema, (int)m->state_schema, schema, schema);
    else
        return NULL;
    return why;
}

/* A handoff continues the state another process wrote (the changelog restore, or this
 * checkpoint's own state when it is exactly where the changelog is): refuse it
 * (LK_ERR_TOPOLOGY, before anything is read or modified) when that process defined a
 * stateful operator otherwise than this one does under the same uid (kind, state schema
 * version, window), or had one this pipeline lacks (its state would be orphaned, as
 * single mode refuses unless topology.allow.state.drop). The record's "state" names its
 * writer's stateful operators; a record of an older version has none and is accepted:
 * nothing tells what its state is. */
static lk_err_t check_state(const lk__sink_t *s, json_t *doc, const char *from,
                            uint64_t batch, char *errstr, size_t errstr_size) {
    json_t *state = json_object_get(doc, "state");
    if (!json_is_object(state)) {
        lk__log(LK_LOG_INFO, "task %d: the progress record of batch %llu (checkpoint %s) "
                "predates state definitions in progress records: the state's operators "
                "are not checked against this pipeline's", s->task,
                (unsigned long long)batch, from);
        return LK_OK;
    }
    const char *of = s->stage[0] ? " of stage " : "";
    char why[640];
    for (size_t i = 0; i < s->nmembers; i++) {
        const lk__sink_member_t *m = &s->members[i];
        json_t *o = m->changelog_of && m->state_kind ? json_object_get(state, m->changelog_of)
                                                     : NULL;
        if (o && state_mismatch(m, o, why, sizeof why))
            return lk__err(LK_ERR_TOPOLOGY, errstr, errstr_size,
                           "%s (the task's state was written by another process, up to "
                           "batch %llu of checkpoint %s, changelog %s). Nothing was "
                           "restored or modified",
                           why, (unsigned long long)batch, from, m->target);
    }
    const char *uid;
    json_t *o;
    json_object_foreach(state, uid, o) {
        size_t i;
        for (i = 0; i < s->nmembers; i++)
            if (s->members[i].changelog_of && !strcmp(s->members[i].changelog_of, uid))
                break;
        if (i < s->nmembers)
            continue;
        json_t *k = json_object_get(o, "kind"), *v = json_object_get(o, "schema");
        const char *kind = json_is_string(k) ? json_string_value(k) : "?";
        int schema = json_is_integer(v) ? (int)json_integer_value(v) : -1;
        if (!s->allow_state_drop)
            return lk__err(LK_ERR_TOPOLOGY, errstr, errstr_size,
                           "operator '%s' (%s, state schema v%d) kept state in the process "
                           "that ran the task before (up to batch %llu of checkpoint %s) but "
                           "is not in this pipeline: its state would be orphaned. Keep the "
                           "operator, or set topology.allow.state.drop=true to leave its "
                           "state unused. Nothing was restored or modified",
                           uid, kind, schema, (unsigned long long)batch, from);
        lk__log(LK_LOG_WARNING, "task %d%s%s: operator '%s' (%s) of the process that ran the "
                "task before is not in this pipeline; its changelog stays, unused "
                "(topology.allow.state.drop=true)", s->task, of, s->stage, uid, kind);
    }
    return LK_OK;
}

/* Task mode: record the handoff of the last committed progress record doc (written by
 * checkpoint `from`, batch `batch`) for the context to apply before its next plan. */
static lk_err_t handoff_from(lk__sink_t *s, json_t *doc, const char *from, uint64_t batch,
                             char *errstr, size_t errstr_size) {
    json_t *offs = json_object_get(doc, "offsets");
    size_t n = json_is_array(offs) ? json_array_size(offs) : 0;
    lk__sink_clear_handoff(s);
    lk_err_t ce = check_state(s, doc, from, batch, errstr, errstr_size);
    if (ce)
        return ce;
    if (!json_is_array(offs))
        return lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                       "the progress record of batch %llu (checkpoint %s) has no input "
                       "offsets: cannot tell where task %d continues",
                       (unsigned long long)batch, from, s->task);
    if (n && !(s->handoff_ranges = calloc(n, sizeof *s->handoff_ranges)))
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(offs, i), *t = json_object_get(o, "topic"),
               *p = json_object_get(o, "partition"), *u = json_object_get(o, "until");
        if (!json_is_string(t) || !json_is_integer(p) || !json_is_integer(u) ||
            json_integer_value(u) < 0 || json_integer_value(p) < 0 ||
            json_integer_value(p) > INT32_MAX) {
            lk__sink_clear_handoff(s);
            return lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                           "the progress record of batch %llu (checkpoint %s): input offset "
                           "%zu is not {topic, partition, until}",
                           (unsigned long long)batch, from, i);
        }
        lk__range_t *r = &s->handoff_ranges[s->nhandoff];
        if (!(r->topic = strdup(json_string_value(t)))) {
            lk__sink_clear_handoff(s);
            return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        }
        r->partition = (int32_t)json_integer_value(p);
        r->from = r->until = json_integer_value(u);
        s->nhandoff++;
    }
    s->handoff = 1;
    s->handoff_batch = batch;
    lk__fmt(s->handoff_checkpoint, sizeof s->handoff_checkpoint, "%s", from);
    s->adopted_after = batch;
    return LK_OK;
}

/* Read the last committed progress record of every member: fences[i] for members[i].
 * The partition must be stable up to hi (lk__kafka_wait_stable). */
static lk_err_t read_fences(lk__sink_t *s, int64_t hi, uint64_t *fences, char *errstr,
                            size_t errstr_size) {
    char foreign[48] = "";  /* the other checkpoint whose record is the last one read */
    json_t *foreign_doc = NULL; /* that record */
    uint64_t foreign_batch = 0;
    int64_t last_own = -1, last_foreign = -1;
    lk__kafka_sink_t *k = s->impl;
    int64_t lo, hi0;
    rd_kafka_resp_err_t ke = rd_kafka_query_watermark_offsets(k->reader, k->progress_topic, k->progress_partition,
                                                              &lo, &hi0, lk__kafka_budget(k));
    if (ke)
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "offsets of %s[%d]: %s",
                       k->progress_topic, (int)k->progress_partition, rd_kafka_err2str(ke));
    for (size_t i = 0; i < s->nmembers; i++)
        fences[i] = 0;
    if (hi <= lo)
        return LK_OK;
    /* Each batch adds one record: the last ones are near the end. Widen the window
     * backwards until every member's is found or the log start is reached. */
    int resets = 0;
    for (int64_t window = 1024;; window *= 8) {
        int64_t start = hi - window > lo ? hi - window : lo;
        int reset = 0;
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, k->progress_topic, k->progress_partition)->offset =
            start;
        ke = rd_kafka_assign(k->reader, l);
        rd_kafka_topic_partition_list_destroy(l);
        if (ke) {
            json_decref(foreign_doc);
            return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "reading %s: %s",
                           k->progress_topic, rd_kafka_err2str(ke));
        }
        int64_t deadline = lk__mono_ms() + lk__kafka_budget(k);
        int done = 0;
        size_t found = 0;
        while (!done) {
            if (lk__mono_ms() > deadline || lk__kafka_abandoned(s)) {
                (void)rd_kafka_assign(k->reader, NULL); /* the timeout is the error */
                json_decref(foreign_doc);
                return lk__err(LK_ERR_KAFKA, errstr, errstr_size,
                               "reading %s: timed out before offset %lld",
                               k->progress_topic, (long long)hi);
            }
            rd_kafka_message_t *m = rd_kafka_consumer_poll(k->reader, 100);
            if (!m)
                continue;
            if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                done = m->offset >= hi;
            } else if (m->err) {
                if (m->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET)
                    reset = done = 1; /* retention moved the log start past `start` */
            } else {
                progress_t p;
                if (progress_parse(m, s->app_id, &p)) {
                    if (progress_ours(s, &p, m)) {
                        for (size_t i = 0; i < s->nmembers; i++)
                            if (progress_names(&p, s->members[i].uid))
                                fences[i] = p.batch; /* the last one wins */
                        last_own = m->offset;
                    } else {
                        lk__fmt(foreign, sizeof foreign, "%s",
                                p.checkpoint[0] ? p.checkpoint : "(older format, no id)");
                        foreign_batch = p.batch;
                        last_foreign = m->offset;
                        json_decref(foreign_doc);
                        foreign_doc = json_incref(p.doc);
                    }
                    json_decref(p.doc);
                }
                done = m->offset + 1 >= hi;
            }
            rd_kafka_message_destroy(m);
        }
        (void)rd_kafka_assign(k->reader, NULL); /* unassigning a local assignment */
        if (reset) {
            /* read the same window again from the new log start: what was read is not
             * known to be complete */
            int64_t nhi;
            if (++resets > 5 ||
                rd_kafka_query_watermark_offsets(k->reader, k->progress_topic,
                                                 k->progress_partition, &lo, &nhi,
                                                 lk__kafka_budget(k))) {
                json_decref(foreign_doc);
                return lk__err(LK_ERR_KAFKA, errstr, errstr_size,
                               "reading %s: its log start keeps moving", k->progress_topic);
            }
            window /= 8;
            continue;
        }
        for (size_t i = 0; i < s->nmembers; i++)
            found += fences[i] != 0;
        if (found == s->nmembers || start <= lo)
            break;
    }
    /* Output of another checkpoint after this one's (or with none of this one's): the
     * usual "new checkpoint directory, same app.id". Its fence is never trusted. */
    if (last_foreign > last_own && s->task >= 0) {
        /* scale-out: another process ran this task after this checkpoint last delivered
         * (or this checkpoint is new): continue from that record's input offsets */
        lk_err_t he = handoff_from(s, foreign_doc, foreign, foreign_batch, errstr,
                                   errstr_size);
        json_decref(foreign_doc);
        return he;
    }
    json_decref(foreign_doc);
    if (last_foreign > last_own) {
        if (!s->adopt_output)
            return lk__err(LK_ERR_FATAL, errstr, errstr_size,
                           "%s holds output of another checkpoint (id %s, batches up to %llu) "
                           "under app.id '%s'; this checkpoint is %s. Its fence cannot be "
                           "trusted for this checkpoint's batches. Either give this "
                           "checkpoint a new app.id, or set checkpoint.adopt.output=true to "
                           "continue after the existing output (batch numbering continues "
                           "after batch %llu)",
                           k->progress_topic, foreign, (unsigned long long)foreign_batch,
                           s->app_id, s->checkpoint_id[0] ? s->checkpoint_id : "(no id)",
                           (unsigned long long)foreign_batch);
        lk__log(LK_LOG_NOTICE, "checkpoint.adopt.output: continuing after the output of "
                "checkpoint %s (batches up to %llu) in %s; this checkpoint is %s", foreign,
                (unsigned long long)foreign_batch, k->progress_topic, s->checkpoint_id);
        s->adopted_after = foreign_batch;
    }
    return LK_OK;
}

lk_err_t lk__kafka_recover(lk__sink_t *s, uint64_t *fence, char *errstr,
                           size_t errstr_size) {
    lk__kafka_sink_t *k = s->impl;
    if (!k->sized) {
        lk__kafka_request_sizing(s);
        k->sized = 1;
    }
    lk_err_t ie = k->inited ? LK_OK : lk__kafka_init_txn(s, errstr, errstr_size);
    if (ie)
        return ie;
    lk_err_t r = ensure_progress_topic(k, errstr, errstr_size);
    /* The progress topic is read once per producer. Afterwards this producer knows what it
     * committed: every failed delivery was aborted or its commit finished (sink.c settles
     * them before recover), and another instance writing would have fenced it. Reading
     * again after an abort could only add what an aborted transaction left, which
     * read_committed hides on a broker, but the mock cluster shows (docs/DESIGN.md, "The
     * mock cluster's limits"). */
    if (!r && !k->fence_known) {
        lk__kafka_offsets_io_t io = {real_offsets, real_sleep_ms, real_now_ms, k};
        int64_t hi = 0;
        uint64_t *f = calloc(s->nmembers, sizeof *f);
        if (!f)
            return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        r = lk__kafka_wait_stable(&io, k->progress_topic, k->progress_partition,
                                  lk__kafka_budget(k), &hi, errstr,
                                  errstr_size);
        if (!r)
            r = read_fences(s, hi, f, errstr, errstr_size);
        if (!r) {
            /* one fence for the sink: the members' outboxes at or below it are delivered.
             * A member whose progress is older (per-sink progress of an older version)
             * delivers the rest of its outbox in the next transactions. */
            uint64_t lowest = UINT64_MAX;
            for (size_t i = 0; i < s->nmembers; i++) {
                s->members[i].fence = f[i];
                if (f[i] < lowest)
                    lowest = f[i];
            }
            if (lowest > k->fence)
                k->fence = lowest;
            if (s->handoff && s->handoff_batch > k->fence)
                k->fence = s->handoff_batch; /* the outbox goes with the handoff */
            k->fence_known = 1;
        }
        free(f);
    }
    if (!r)
        *fence = k->fence;
    if (!r)
        lk__log(LK_LOG_INFO, "sink '%s': topic %s holds batches up to %llu", s->name,
                s->target, (unsigned long long)*fence);
    return r;
}
