/*
 * kafka.c — the Kafka sink: one Kafka transaction per batch with the batch's records
 * and a progress record (sink -> batch) in the compacted topic <app.id>.progress, using
 * transactional.id <app.id>.<sink> so that init_transactions fences zombies and aborts
 * their open transaction. On recovery the last committed progress record tells which
 * batches Kafka already holds.
 *
 * Errors are classified as librdkafka classifies them: retriable and abortable ones end
 * the delivery (the batch is delivered again, from the outbox); fatal ones (fenced by a
 * newer instance, authorization) make the sink FATAL and stop the application.
 */
#define _GNU_SOURCE
#include "sink_int.h"
#include "../core/conf_int.h"
#include "../core/util_int.h"
#include "fault_int.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>

/* A transactional call that timed out keeps running inside librdkafka: it must be called
 * again to finish (it is resumable), and until then librdkafka refuses every other
 * transactional call ("Conflicting commit_transaction API call is already in
 * progress"). */
typedef enum { PENDING_NONE, PENDING_COMMIT, PENDING_ABORT } pending_t;

typedef struct {
    rd_kafka_t *producer;
    rd_kafka_t *reader; /* reads the progress topic (read_committed) */
    char progress_topic[512];
    int inited; /* init_transactions done */
    int send_offsets;
    int timeout_ms;
    pending_t pending;       /* a timed-out commit or abort to finish first */
    uint64_t pending_batch;  /* the batch of a pending commit */
    int fence_known;         /* fence is what Kafka holds (read once per producer) */
    uint64_t fence;
    char abort_failed[512];  /* a failed abort: the transaction's state is unknown */
} kafka_sink_t;

/* Map a transactional API error; the message says which class it is. */
static lk_err_t txn_error(rd_kafka_error_t *e, const char *what, char *errstr,
                          size_t errstr_size) {
    rd_kafka_resp_err_t code = rd_kafka_error_code(e);
    int fatal = rd_kafka_error_is_fatal(e);
    int abortable = rd_kafka_error_txn_requires_abort(e);
    int retriable = rd_kafka_error_is_retriable(e);
    int fenced = code == RD_KAFKA_RESP_ERR__FENCED || code == RD_KAFKA_RESP_ERR_PRODUCER_FENCED ||
                 code == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH;
    /* An error librdkafka marks neither retriable, abortable nor fatal is treated as
     * fatal (rdkafka.h): retrying on a guess could deliver a batch twice. */
    lk_err_t r = fatal ? (fenced ? LK_ERR_FENCED : LK_ERR_FATAL)
                 : abortable || retriable ? LK_ERR_KAFKA
                                          : LK_ERR_FATAL;
    lk__fmt(errstr, errstr_size, "%s: %s (%s)%s", what, rd_kafka_error_string(e),
            fatal ? "fatal" : abortable ? "transaction aborted" : retriable ? "retriable"
                                                                : "unclassified, treated as fatal",
            r == LK_ERR_FENCED ? "; another instance with the same transactional.id took over"
                               : "");
    rd_kafka_error_destroy(e);
    return r;
}

static rd_kafka_conf_t *client_conf(const lk_conf_t *conf, char *errstr, size_t errstr_size) {
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    char kerr[512];
    size_t n = conf ? lk__conf_kafka_count(conf) : 0;
    for (size_t i = 0; i < n; i++) {
        const char *k, *v;
        lk__conf_kafka_get(conf, i, &k, &v);
        if (rd_kafka_conf_set(kc, k, v, kerr, sizeof kerr) != RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(kc);
            lk__fmt(errstr, errstr_size, "kafka.%s: %s", k, kerr);
            return NULL;
        }
    }
    return kc;
}

static lk_err_t kafka_open(lk_sink_t *s, const lk_conf_t *conf, char *errstr,
                           size_t errstr_size) {
    kafka_sink_t *k = calloc(1, sizeof *k);
    if (!k)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    s->impl = k;
    k->send_offsets = conf ? lk__conf_bool(conf, LK__P_SINK_KAFKA_SEND_OFFSETS) : 1;
    k->timeout_ms = conf ? (int)lk__conf_int(conf, LK__P_SINK_KAFKA_TIMEOUT_MS) : 30000;
    lk__fmt(k->progress_topic, sizeof k->progress_topic, "%s.progress", s->app_id);
    char kerr[512], txn_id[600];
    lk__fmt(txn_id, sizeof txn_id, "%s.%s", s->app_id, s->name);
    rd_kafka_conf_t *pc = client_conf(conf, errstr, errstr_size);
    if (!pc)
        return LK_ERR_CONF_INVALID;
    if (rd_kafka_conf_set(pc, "transactional.id", txn_id, kerr, sizeof kerr) ||
        rd_kafka_conf_set(pc, "partitioner", "murmur2_random", kerr, sizeof kerr)) {
        rd_kafka_conf_destroy(pc);
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size, "producer: %s", kerr);
    }
    if (!(k->producer = rd_kafka_new(RD_KAFKA_PRODUCER, pc, kerr, sizeof kerr)))
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "cannot create the producer: %s",
                       kerr);
    rd_kafka_conf_t *rc = client_conf(conf, errstr, errstr_size);
    if (!rc)
        return LK_ERR_CONF_INVALID;
    static const char *const fixed[][2] = {
        {"enable.auto.commit", "false"}, {"isolation.level", "read_committed"},
        {"enable.partition.eof", "true"}, {"auto.offset.reset", "error"},
    };
    for (size_t i = 0; i < LK_ARRAY_SIZE(fixed); i++)
        rd_kafka_conf_set(rc, fixed[i][0], fixed[i][1], kerr, sizeof kerr);
    /* assign() needs a group id; the reader never joins the group or commits */
    char gid[600];
    lk__fmt(gid, sizeof gid, "%s.progress-reader", s->app_id);
    rd_kafka_conf_set(rc, "group.id", gid, kerr, sizeof kerr);
    if (!(k->reader = rd_kafka_new(RD_KAFKA_CONSUMER, rc, kerr, sizeof kerr)))
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "cannot create the progress reader: %s",
                       kerr);
    return LK_OK;
}

static void kafka_close(lk_sink_t *s) {
    kafka_sink_t *k = s->impl;
    if (!k)
        return;
    if (k->reader) {
        rd_kafka_consumer_close(k->reader);
        rd_kafka_destroy(k->reader);
    }
    if (k->producer)
        rd_kafka_destroy(k->producer);
    free(k);
    s->impl = NULL;
}

/* Create <app>.progress (compacted, one partition) unless it exists. */
static lk_err_t ensure_progress_topic(kafka_sink_t *k, char *errstr, size_t errstr_size) {
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(k->reader, k->progress_topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t ke = rd_kafka_metadata(k->reader, 0, rkt, &md, k->timeout_ms);
    rd_kafka_topic_destroy(rkt);
    if (ke)
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "metadata of %s: %s",
                       k->progress_topic, rd_kafka_err2str(ke));
    int exists = md->topic_cnt == 1 && !md->topics[0].err && md->topics[0].partition_cnt > 0;
    rd_kafka_metadata_destroy(md);
    if (exists)
        return LK_OK;
    char kerr[512];
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(k->progress_topic, 1, -1, kerr, sizeof kerr);
    if (!nt)
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "progress topic: %s", kerr);
    rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact");
    rd_kafka_queue_t *q = rd_kafka_queue_new(k->producer);
    rd_kafka_AdminOptions_t *opt = rd_kafka_AdminOptions_new(k->producer, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(opt, k->timeout_ms, kerr, sizeof kerr);
    rd_kafka_CreateTopics(k->producer, &nt, 1, opt, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, k->timeout_ms + 1000);
    lk_err_t r = LK_OK;
    if (!ev) {
        r = lk__err(LK_ERR_KAFKA, errstr, errstr_size, "creating %s: timed out",
                    k->progress_topic);
    } else if (rd_kafka_event_error(ev)) {
        r = lk__err(LK_ERR_KAFKA, errstr, errstr_size, "creating %s: %s", k->progress_topic,
                    rd_kafka_event_error_string(ev));
    } else {
        const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
        size_t cnt;
        const rd_kafka_topic_result_t **tr = rd_kafka_CreateTopics_result_topics(res, &cnt);
        if (cnt == 1 && rd_kafka_topic_result_error(tr[0]) &&
            rd_kafka_topic_result_error(tr[0]) != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
            r = lk__err(LK_ERR_KAFKA, errstr, errstr_size, "creating %s: %s",
                        k->progress_topic, rd_kafka_topic_result_error_string(tr[0]));
        else
            lk__log(LK_LOG_NOTICE, "created progress topic %s (compacted)", k->progress_topic);
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(opt);
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy(nt);
    return r;
}

/* Parse a progress value; returns the batch or 0. */
static uint64_t progress_batch(const void *v, size_t len, const char *app, const char *sink) {
    json_error_t je;
    json_t *doc = json_loadb(v, len, 0, &je);
    if (!doc)
        return 0;
    uint64_t batch = 0;
    json_t *a = json_object_get(doc, "app"), *s = json_object_get(doc, "sink"),
           *b = json_object_get(doc, "batch");
    if (json_is_string(a) && json_is_string(s) && json_is_integer(b) &&
        !strcmp(json_string_value(a), app) && !strcmp(json_string_value(s), sink) &&
        json_integer_value(b) > 0)
        batch = (uint64_t)json_integer_value(b);
    json_decref(doc);
    return batch;
}

/* Read the last committed progress record of this sink. */
static lk_err_t read_fence(lk_sink_t *s, uint64_t *fence, char *errstr, size_t errstr_size) {
    kafka_sink_t *k = s->impl;
    int64_t lo, hi;
    rd_kafka_resp_err_t ke = rd_kafka_query_watermark_offsets(k->reader, k->progress_topic, 0,
                                                              &lo, &hi, k->timeout_ms);
    if (ke)
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "offsets of %s[0]: %s",
                       k->progress_topic, rd_kafka_err2str(ke));
    *fence = 0;
    if (hi <= lo)
        return LK_OK;
    /* Each batch adds one record per sink: the last one of this sink is near the end.
     * Widen the window backwards until it is found or the log start is reached. */
    int resets = 0;
    for (int64_t window = 1024;; window *= 8) {
        int64_t start = hi - window > lo ? hi - window : lo;
        int reset = 0;
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
        rd_kafka_topic_partition_list_add(l, k->progress_topic, 0)->offset = start;
        ke = rd_kafka_assign(k->reader, l);
        rd_kafka_topic_partition_list_destroy(l);
        if (ke)
            return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "reading %s: %s",
                           k->progress_topic, rd_kafka_err2str(ke));
        int64_t deadline = lk__mono_ms() + k->timeout_ms;
        uint64_t found = 0;
        int done = 0;
        while (!done) {
            if (lk__mono_ms() > deadline) {
                rd_kafka_assign(k->reader, NULL);
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
                if (m->key && m->key_len == strlen(s->name) &&
                    !memcmp(m->key, s->name, m->key_len)) {
                    uint64_t b = progress_batch(m->payload, m->len, s->app_id, s->name);
                    if (b)
                        found = b; /* the last one wins */
                }
                done = m->offset + 1 >= hi;
            }
            rd_kafka_message_destroy(m);
        }
        rd_kafka_assign(k->reader, NULL);
        if (reset) {
            /* read the same window again from the new log start: what was read is not
             * known to be complete */
            int64_t nhi;
            if (++resets > 5 || rd_kafka_query_watermark_offsets(k->reader, k->progress_topic, 0,
                                                                 &lo, &nhi, k->timeout_ms))
                return lk__err(LK_ERR_KAFKA, errstr, errstr_size,
                               "reading %s: its log start keeps moving", k->progress_topic);
            window /= 8;
            continue;
        }
        if (found || start <= lo) {
            *fence = found;
            return LK_OK;
        }
    }
}

/*
 * Finish a commit or abort that timed out by calling it again (resuming it). A resumed
 * commit that succeeds delivered its batch: the fence moves to it directly, since a
 * read_committed reader may not see its progress record at once (the coordinator writes
 * the commit markers after answering). Until it is finished nothing else can be done with
 * this producer, and the batch's outcome is unknown.
 */
static lk_err_t finish_pending(lk_sink_t *s, char *errstr, size_t errstr_size) {
    kafka_sink_t *k = s->impl;
    while (k->pending != PENDING_NONE) {
        int commit = k->pending == PENDING_COMMIT;
        rd_kafka_error_t *e = commit ? LK__FAULT_KAFKA("commit_transaction", rd_kafka_commit_transaction(k->producer, k->timeout_ms))
                                     : LK__FAULT_KAFKA("abort_transaction", rd_kafka_abort_transaction(k->producer, k->timeout_ms));
        if (!e) {
            if (commit) {
                lk__log(LK_LOG_NOTICE, "sink '%s': the timed-out commit of batch %llu completed",
                        s->name, (unsigned long long)k->pending_batch);
                if (k->pending_batch > k->fence)
                    k->fence = k->pending_batch;
            }
            k->pending = PENDING_NONE;
            break;
        }
        if (rd_kafka_error_is_retriable(e))
            return txn_error(e, commit ? "resuming commit_transaction" : "resuming abort_transaction",
                             errstr, errstr_size);
        if (commit && rd_kafka_error_txn_requires_abort(e)) {
            rd_kafka_error_destroy(e);
            k->pending = PENDING_ABORT;
            continue;
        }
        k->pending = PENDING_NONE;
        return txn_error(e, commit ? "resuming commit_transaction" : "resuming abort_transaction",
                         errstr, errstr_size);
    }
    return LK_OK;
}

static lk_err_t kafka_recover(lk_sink_t *s, uint64_t *fence, char *errstr,
                              size_t errstr_size) {
    kafka_sink_t *k = s->impl;
    if (!k->inited) {
        /* fences zombies with the same transactional.id and aborts their transaction */
        rd_kafka_error_t *e = LK__FAULT_KAFKA("init_transactions", rd_kafka_init_transactions(k->producer, k->timeout_ms));
        if (e)
            return txn_error(e, "init_transactions", errstr, errstr_size);
        k->inited = 1;
    }
    lk_err_t r = finish_pending(s, errstr, errstr_size);
    if (!r)
        r = ensure_progress_topic(k, errstr, errstr_size);
    /* The progress topic is read once per producer. Afterwards this producer knows what it
     * committed: every failed delivery was aborted or its commit finished (finish_pending),
     * and another instance writing would have fenced it. Reading again after an abort
     * could only add what an aborted transaction left, which read_committed hides on a
     * broker, but the mock cluster shows (probe/mock/FINDINGS.md, Q2). */
    if (!r && !k->fence_known) {
        uint64_t f = 0;
        r = read_fence(s, &f, errstr, errstr_size);
        if (!r) {
            if (f > k->fence)
                k->fence = f;
            k->fence_known = 1;
        }
    }
    if (!r)
        *fence = k->fence;
    if (!r)
        lk__log(LK_LOG_INFO, "sink '%s': topic %s holds batches up to %llu", s->name,
                s->target, (unsigned long long)*fence);
    return r;
}

static lk_err_t kafka_begin(lk_sink_t *s, uint64_t batch, char *errstr, size_t errstr_size) {
    (void)batch;
    kafka_sink_t *k = s->impl;
    if (k->pending != PENDING_NONE) /* recover() finishes it first */
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size,
                       "the %s of batch %llu has not finished yet",
                       k->pending == PENDING_COMMIT ? "commit" : "abort",
                       (unsigned long long)k->pending_batch);
    if (k->abort_failed[0]) /* sticky: nothing more may be sent in an unknown transaction */
        return lk__err(LK_ERR_FATAL, errstr, errstr_size, "%s", k->abort_failed);
    rd_kafka_error_t *e = LK__FAULT_KAFKA("begin_transaction", rd_kafka_begin_transaction(k->producer));
    return e ? txn_error(e, "begin_transaction", errstr, errstr_size) : LK_OK;
}

static lk_err_t produce(kafka_sink_t *k, const char *topic, int32_t partition, const void *key,
                        size_t klen, const void *value, size_t vlen, int64_t ts,
                        rd_kafka_headers_t *hdrs, char *errstr, size_t errstr_size) {
    for (;;) {
        rd_kafka_resp_err_t ke = LK__FAULT_KAFKA_RESP("produce", rd_kafka_producev(
            k->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
            RD_KAFKA_V_KEY(key, klen), RD_KAFKA_V_VALUE((void *)value, vlen),
            RD_KAFKA_V_TIMESTAMP(ts > 0 ? ts : 0), RD_KAFKA_V_HEADERS(hdrs),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END));
        if (!ke)
            return LK_OK; /* the headers now belong to librdkafka */
        if (ke == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            rd_kafka_poll(k->producer, 50);
            continue;
        }
        rd_kafka_headers_destroy(hdrs);
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "producing to %s[%s]: %s", topic,
                       partition == RD_KAFKA_PARTITION_UA ? "by key" : "given",
                       rd_kafka_err2str(ke));
    }
}

static rd_kafka_headers_t *provenance(const lk_sink_t *s, size_t extra) {
    rd_kafka_headers_t *h = rd_kafka_headers_new(extra + 4);
    char batch[32];
    lk__fmt(batch, sizeof batch, "%llu", (unsigned long long)s->batch);
    rd_kafka_header_add(h, "lockstep.app", -1, s->app_id, -1);
    rd_kafka_header_add(h, "lockstep.sink", -1, s->name, -1);
    rd_kafka_header_add(h, "lockstep.batch", -1, batch, -1);
    rd_kafka_header_add(h, "lockstep.attempt", -1, s->attempt, -1);
    return h;
}

static lk_err_t kafka_write(lk_sink_t *s, const lk_out_record_t *r, char *errstr,
                            size_t errstr_size) {
    kafka_sink_t *k = s->impl;
    rd_kafka_headers_t *h = provenance(s, r->nheaders);
    for (size_t i = 0; i < r->nheaders; i++)
        rd_kafka_header_add(h, r->headers[i].name, -1, r->headers[i].value,
                            (ssize_t)r->headers[i].value_len);
    lk_err_t e = produce(k, s->target, r->partition >= 0 ? r->partition : RD_KAFKA_PARTITION_UA,
                         r->key, r->key_len, r->value, r->value_len, r->timestamp_ms, h, errstr,
                         errstr_size);
    return e;
}

static lk_err_t kafka_commit(lk_sink_t *s, const lk_batch_rec_t *b, char *errstr,
                             size_t errstr_size) {
    kafka_sink_t *k = s->impl;
    /* the progress record: which batch this transaction completes, and from what input */
    json_t *offsets = json_array();
    for (size_t i = 0; b && i < b->nranges; i++)
        json_array_append_new(offsets, json_pack("{s:s, s:i, s:I}", "topic", b->ranges[i].topic,
                                                 "partition", (int)b->ranges[i].partition,
                                                 "until", (json_int_t)b->ranges[i].until));
    json_t *doc = json_pack("{s:s, s:s, s:I, s:s, s:o}", "app", s->app_id, "sink", s->name,
                            "batch", (json_int_t)s->batch, "attempt", s->attempt, "offsets",
                            offsets);
    char *value = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(doc);
    if (!value)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    lk_err_t r = produce(k, k->progress_topic, 0, s->name, strlen(s->name), value,
                         strlen(value), 0, provenance(s, 0), errstr, errstr_size);
    free(value);
    if (r)
        return r;
    if (k->send_offsets && b && b->nranges) {
        /* standard lag tools see the application's progress as group <app.id> */
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)b->nranges);
        for (size_t i = 0; i < b->nranges; i++)
            rd_kafka_topic_partition_list_add(l, b->ranges[i].topic, b->ranges[i].partition)
                ->offset = b->ranges[i].until;
        rd_kafka_consumer_group_metadata_t *g = rd_kafka_consumer_group_metadata_new(s->app_id);
        rd_kafka_error_t *e = LK__FAULT_KAFKA("send_offsets_to_transaction", rd_kafka_send_offsets_to_transaction(k->producer, l, g, k->timeout_ms));
        rd_kafka_consumer_group_metadata_destroy(g);
        rd_kafka_topic_partition_list_destroy(l);
        if (e)
            return txn_error(e, "send_offsets_to_transaction", errstr, errstr_size);
    }
    for (int tries = 0;; tries++) {
        rd_kafka_error_t *e = LK__FAULT_KAFKA("commit_transaction", rd_kafka_commit_transaction(k->producer, k->timeout_ms));
        if (!e) {
            k->fence = s->batch;
            return LK_OK;
        }
        if (rd_kafka_error_is_retriable(e) && tries < 3) {
            lk__log(LK_LOG_WARNING, "sink '%s' batch %llu: commit_transaction: %s; retrying",
                    s->name, (unsigned long long)s->batch, rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
            continue;
        }
        if (rd_kafka_error_is_retriable(e)) {
            /* still running: it cannot be aborted, only finished (see finish_pending) */
            k->pending = PENDING_COMMIT;
            k->pending_batch = s->batch;
        }
        return txn_error(e, "commit_transaction", errstr, errstr_size);
    }
}

static void kafka_abort(lk_sink_t *s) {
    kafka_sink_t *k = s->impl;
    if (k->pending != PENDING_NONE)
        return; /* a timed-out commit: finished by recover(), which learns its outcome */
    for (int tries = 0; tries < 3; tries++) {
        rd_kafka_error_t *e = LK__FAULT_KAFKA("abort_transaction", rd_kafka_abort_transaction(k->producer, k->timeout_ms));
        if (!e)
            return;
        int retriable = rd_kafka_error_is_retriable(e);
        lk__log(LK_LOG_WARNING, "sink '%s' batch %llu: abort_transaction: %s", s->name,
                (unsigned long long)s->batch, rd_kafka_error_string(e));
        /* _STATE: there was no transaction to abort (begin failed); anything else leaves
         * the transaction open or unknown, so the next begin must not go ahead */
        if (!retriable && rd_kafka_error_code(e) != RD_KAFKA_RESP_ERR__STATE)
            lk__fmt(k->abort_failed, sizeof k->abort_failed,
                    "abort_transaction of batch %llu failed: %s; the transaction's state is "
                    "unknown, restart the application", (unsigned long long)s->batch,
                    rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        if (!retriable)
            return;
        if (tries == 2) {
            k->pending = PENDING_ABORT; /* still running: recover() finishes it */
            k->pending_batch = s->batch;
        }
    }
}

const lk__sink_ops_t lk__sink_kafka_ops = {
    .kind = "kafka",
    .exactly_once = 1,
    .open = kafka_open,
    .recover = kafka_recover,
    .begin = kafka_begin,
    .write = kafka_write,
    .commit = kafka_commit,
    .abort = kafka_abort,
    .close = kafka_close,
};
