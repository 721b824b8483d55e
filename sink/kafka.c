/*
 * kafka.c — the Kafka sink: every Kafka output of the application (each lk_to_kafka, dead
 * letters included: the members of one lk_sink_t) is delivered in ONE Kafka transaction
 * per batch by ONE transactional producer per task (today the application is one task:
 * transactional.id = <app.id>), together with ONE progress record in partition 0 of the
 * compacted topic <app.id>.progress naming the batch, the attempt, the input offsets and
 * each member's record count. Outputs across topics become atomic together, and a batch
 * costs one commit whatever the number of Kafka sinks.
 *
 * Recovery: init_transactions fences zombies with the same transactional.id and aborts
 * this task's own orphan transaction. The progress partition is written by this
 * transactional id only (a task's progress records go to a partition no other task
 * writes), so an open transaction still holding back its last stable offset (LSO) is
 * someone else's (an old version's, per-sink transactional ids): the sink waits, with
 * backoff and a log line, until the LSO reaches the high watermark, and never decides
 * from a fence read below it (a read_committed reader stops at the LSO and would miss
 * later committed progress records). Then the last committed progress record tells which
 * batches Kafka holds, per member (older progress records of the per-sink format count
 * for the sink they name, which migrates an undelivered outbox of an older version).
 *
 * Errors: fencing codes (_FENCED, PRODUCER_FENCED, INVALID_PRODUCER_EPOCH,
 * TRANSACTIONAL_ID_AUTHORIZATION_FAILED) are LK_ERR_FENCED whatever class librdkafka
 * gives them. A delivery report callback watches every record: a permanent error (record
 * too large, unknown topic or partition, invalid record or timestamp, authorization)
 * stops the application naming the member, the topic/partition, the batch and its input,
 * and the setting to change — or, with errors.tolerance=all and a Kafka
 * errors.deadletter, sends that record to the dead letter topic with the error text on
 * the next attempt of the batch (same transaction, so exactly once). Retriable and
 * abortable errors end the delivery; the batch is delivered again from the outbox.
 */
#define _GNU_SOURCE
#include "sink_int.h"
#include "../core/conf_int.h"
#include "../core/util_int.h"
#include "fault_int.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A record whose delivery failed permanently in an attempt of the batch in progress. */
typedef struct {
    size_t member;  /* index in s->members */
    uint64_t index; /* the record's position in the member's outbox of the batch */
    rd_kafka_resp_err_t err;
    int client; /* refused by the producer before sending, not by a broker */
    int32_t partition;
    char errstr[256];
} failed_rec_t;

typedef struct {
    const lk_sink_t *owner;
    const lk_conf_t *conf; /* the context's, alive as long as the sink */
    int64_t batch_size;    /* the producer's batch.size */
    int sized;             /* request_sizing() done */
    rd_kafka_queue_t *dc_q; /* its answer, until applied */
    int txn_open;          /* begin_transaction succeeded, not yet committed/aborted */
    rd_kafka_t *producer;
    rd_kafka_t *reader; /* reads the progress topic (read_committed) */
    rd_kafka_t *probe;  /* read_uncommitted: its ListOffsets answers the high watermark */
    char progress_topic[512];
    char txn_id[512];
    int inited; /* init_transactions done */
    int send_offsets;
    int timeout_ms;
    int fence_known; /* fence is what Kafka holds (read once per producer) */
    uint64_t fence;
    /* delivery reports of the attempt in progress (served on the delivering thread) */
    uint64_t attempt_records; /* records produced in this attempt */
    uint64_t dr_failed;       /* records whose delivery report carried an error */
    failed_rec_t first_failed;
    int have_failed;
    /* records diverted to the dead letter topic (errors.tolerance=all), of batch div_batch */
    failed_rec_t *divert;
    size_t ndivert, divert_cap;
    uint64_t div_batch;
    char deadletter[256]; /* errors.deadletter when it is a Kafka topic and tolerance=all */
    uint64_t next_index;  /* position of the next record of the current member */
    size_t index_member;
    /* the provenance headers' values, made once per attempt (kafka_begin), not per record */
    char hdr_batch[24];
    size_t hdr_batch_len, hdr_app_len;
} kafka_sink_t;

/* ---- error classes ---- */

static int is_fencing(rd_kafka_resp_err_t c) {
    return c == RD_KAFKA_RESP_ERR__FENCED || c == RD_KAFKA_RESP_ERR_PRODUCER_FENCED ||
           c == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH ||
           c == RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
}

/* ---- bounded blocking: a stop's deadline and an immediate stop (sink_int.h) ---- */

static int abandoned(const lk_sink_t *s) {
    return s->abandon && atomic_load(s->abandon);
}

/* How long a blocking call may take now: sink.kafka.timeout.ms, cut to what is left
 * before a stop's deadline (at least 1 ms: librdkafka reads 0 as "do not wait" in some
 * calls and as "forever" in none of those used here). */
static int budget_ms(const lk_sink_t *s, int timeout_ms) {
    int64_t b = timeout_ms;
    int64_t d = s->deadline_ms ? atomic_load(s->deadline_ms) : 0;
    if (d) {
        int64_t left = d - lk__mono_ms();
        if (left < b)
            b = left;
    }
    return b < 1 ? 1 : (int)b;
}

static int k_budget(const kafka_sink_t *k) {
    return budget_ms(k->owner, k->timeout_ms);
}

/* A resumable transactional call (init, commit, abort) in slices of at most 200 ms,
 * called again after each retriable timeout (librdkafka resumes it), until it finishes,
 * its budget ends, or the stop is immediate: a second signal is answered in well under
 * a second even while a coordinator does not answer. */
static rd_kafka_error_t *txn_call(lk_sink_t *s, rd_kafka_t *rk,
                                  rd_kafka_error_t *(*fn)(rd_kafka_t *, int), int timeout_ms) {
#ifndef LK_NO_FAULTPOINTS
    /* error injection (sink/fault_int.h): the fault point is named after the call */
    const char *name = fn == rd_kafka_init_transactions     ? "init_transactions"
                       : fn == rd_kafka_commit_transaction ? "commit_transaction"
                                                           : "abort_transaction";
    rd_kafka_error_t *injected = LK__FAULT_KAFKA(name, NULL);
    if (injected)
        return injected;
#endif
    int64_t end = lk__mono_ms() + budget_ms(s, timeout_ms);
    for (;;) {
        int64_t left = end - lk__mono_ms();
        int slice = left > 200 ? 200 : left < 1 ? 1 : (int)left;
        rd_kafka_error_t *e = fn(rk, slice);
        if (!e || !rd_kafka_error_is_retriable(e) || is_fencing(rd_kafka_error_code(e)) ||
            lk__mono_ms() >= end || abandoned(s) ||
            (s->deadline_ms && atomic_load(s->deadline_ms) &&
             lk__mono_ms() >= atomic_load(s->deadline_ms)))
            return e;
        rd_kafka_error_destroy(e);
    }
}

/* Map a transactional API error; the message says which class it is. Fencing codes stop
 * the application whatever class librdkafka gives them: librdkafka 2.0.2 marks
 * PRODUCER_FENCED on AddOffsetsToTxn abortable, and a zombie would retry forever. */
static lk_err_t txn_error(kafka_sink_t *k, rd_kafka_error_t *e, const char *what,
                          char *errstr, size_t errstr_size) {
    rd_kafka_resp_err_t code = rd_kafka_error_code(e);
    int fatal = rd_kafka_error_is_fatal(e);
    int abortable = rd_kafka_error_txn_requires_abort(e);
    int retriable = rd_kafka_error_is_retriable(e);
    char fatal_why[256] = "";
    rd_kafka_resp_err_t fcode = fatal ? rd_kafka_fatal_error(k->producer, fatal_why,
                                                             sizeof fatal_why)
                                      : RD_KAFKA_RESP_ERR_NO_ERROR;
    int fenced = is_fencing(code) || is_fencing(fcode);
    /* An error librdkafka marks neither retriable, abortable nor fatal is treated as
     * fatal (rdkafka.h): retrying on a guess could deliver a batch twice. */
    lk_err_t r = fenced                 ? LK_ERR_FENCED
                 : fatal                ? LK_ERR_FATAL
                 : abortable || retriable ? LK_ERR_KAFKA
                                          : LK_ERR_FATAL;
    const char *auth = code == RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED ||
                               fcode == RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED
                           ? "; this principal may not use it: grant it WRITE on the "
                             "TransactionalId resource"
                           : "; another instance with the same transactional.id took over";
    /* a setting the broker refuses: name lockstep's property, not only the broker's */
    const char *hint = code == RD_KAFKA_RESP_ERR_INVALID_TRANSACTION_TIMEOUT ||
                               fcode == RD_KAFKA_RESP_ERR_INVALID_TRANSACTION_TIMEOUT
                           ? "; set kafka.transaction.timeout.ms at or below the broker's "
                             "transaction.max.timeout.ms (900000 by default)"
                           : "";
    lk__fmt(errstr, errstr_size, "%s: %s (%s)%s%s%s%s%s", what, rd_kafka_error_string(e),
            fatal ? "fatal" : abortable ? "transaction aborted" : retriable ? "retriable"
                                                                : "unclassified, treated as fatal",
            fenced ? "; fenced: transactional.id '" : "", fenced ? k->txn_id : "",
            fenced ? "'" : "", fenced ? auth : "", hint);
    rd_kafka_error_destroy(e);
    return r;
}

/* A per-record delivery error that no retry can fix. */
static int is_permanent(rd_kafka_resp_err_t c) {
    switch (c) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_POLICY_VIOLATION:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT:
        return 1;
    default:
        return 0;
    }
}

/* The setting to change for a permanent delivery error of a record for topic. */
static void setting_for(const failed_rec_t *f, const char *topic, char *buf, size_t size) {
    if (f->client && f->err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) {
        lk__fmt(buf, size, "raise kafka.message.max.bytes (the producer's own limit; and "
                "topic %s's max.message.bytes if it is lower), or make the record smaller",
                topic);
        return;
    }
    switch (f->err) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
        lk__fmt(buf, size, "the broker refused it: raise topic %s's max.message.bytes "
                "(kafka-configs --alter --entity-type topics --entity-name %s --add-config "
                "max.message.bytes=N), or make the record smaller", topic, topic);
        break;
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
        lk__fmt(buf, size, "topic %s has no such partition: give it more partitions, or "
                "change how the output partition is chosen (e.g. output.partition)", topic);
        break;
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
        lk__fmt(buf, size, "create topic %s (the broker does not create it: "
                "auto.create.topics.enable is off), or fix the sink's topic name", topic);
        break;
    case RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP:
        lk__fmt(buf, size, "the record's timestamp is outside topic %s's "
                "message.timestamp.difference.max.ms: raise it, or use "
                "message.timestamp.type=LogAppendTime", topic);
        break;
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
        lk__fmt(buf, size, "grant this principal WRITE on topic %s (or check kafka.sasl.* / "
                "kafka.security.protocol)", topic);
        break;
    default:
        lk__fmt(buf, size, "check topic %s's configuration (the broker refused the record)",
                topic);
    }
}

/* Which member and which record of it a produced message is (its opaque). */
#define OPAQUE(member, index) ((void *)(uintptr_t)((((uint64_t)(index)) << 8) | ((member) + 1)))
#define OPAQUE_MEMBER(o) ((size_t)(((uintptr_t)(o) & 0xff) - 1))
#define OPAQUE_INDEX(o) ((uint64_t)((uintptr_t)(o) >> 8))
#define OPAQUE_PROGRESS ((void *)(uintptr_t)0xff)

/* Delivery reports: served by the delivering thread (rd_kafka_poll, flush, commit). */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    lk_sink_t *s = opaque;
    kafka_sink_t *k = s->impl;
    if (!m->err || !k || m->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE ||
        m->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT)
        return; /* purged by an abort: the abort is what is reported */
    k->dr_failed++;
    void *o = m->_private;
    if (k->have_failed && !is_permanent(m->err))
        return; /* keep the first, or the first permanent one */
    if (k->have_failed && is_permanent(k->first_failed.err))
        return;
    failed_rec_t f = {0};
    f.err = m->err;
    f.partition = m->partition;
    f.member = o == OPAQUE_PROGRESS || !o ? SIZE_MAX : OPAQUE_MEMBER(o);
    f.index = o == OPAQUE_PROGRESS || !o ? 0 : OPAQUE_INDEX(o);
    if (f.member != SIZE_MAX && f.member >= s->nmembers)
        f.member = SIZE_MAX;
    lk__fmt(f.errstr, sizeof f.errstr, "%s", rd_kafka_err2str(m->err));
    k->first_failed = f;
    k->have_failed = 1;
}

/* ---- clients ---- */

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

/* Set fixed properties; on failure the conf is destroyed and the error names the
 * property. */
static lk_err_t conf_fixed(rd_kafka_conf_t *kc, const char *const (*kv)[2], size_t n,
                           const char *client, char *errstr, size_t errstr_size) {
    char kerr[512];
    for (size_t i = 0; i < n; i++)
        if (rd_kafka_conf_set(kc, kv[i][0], kv[i][1], kerr, sizeof kerr) != RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(kc);
            return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size, "%s: %s=%s: %s", client,
                           kv[i][0], kv[i][1], kerr);
        }
    return LK_OK;
}

/* rd_kafka_new, freeing the conf on failure (librdkafka takes it only on success). */
static lk_err_t client_new(rd_kafka_t **out, rd_kafka_type_t type, rd_kafka_conf_t *kc,
                           const char *client, char *errstr, size_t errstr_size) {
    char kerr[512];
    if (!(*out = rd_kafka_new(type, kc, kerr, sizeof kerr))) {
        rd_kafka_conf_destroy(kc);
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "cannot create the %s: %s", client,
                       kerr);
    }
    return LK_OK;
}

/* The transactional producer; batch_size > 0 overrides batch.size. */
static lk_err_t producer_new(lk_sink_t *s, int64_t batch_size, char *errstr,
                             size_t errstr_size) {
    kafka_sink_t *k = s->impl;
    lk_err_t e;
    rd_kafka_conf_t *pc = client_conf(k->conf, errstr, errstr_size);
    if (!pc)
        return LK_ERR_CONF_INVALID;
    char bs[32];
    lk__fmt(bs, sizeof bs, "%lld", (long long)batch_size);
    const char *const pfixed[][2] = {{"transactional.id", k->txn_id},
                                     {"partitioner", "murmur2_random"},
                                     {"batch.size", bs}};
    if ((e = conf_fixed(pc, pfixed, LK_ARRAY_SIZE(pfixed) - (batch_size > 0 ? 0 : 1),
                        "producer", errstr, errstr_size)))
        return e;
    rd_kafka_conf_set_dr_msg_cb(pc, on_delivery);
    rd_kafka_conf_set_opaque(pc, s);
    return client_new(&k->producer, RD_KAFKA_PRODUCER, pc, "producer", errstr, errstr_size);
}

int64_t lk__kafka_batch_size(int64_t configured, const int64_t *limits, size_t n) {
    int64_t b = configured;
    for (size_t i = 0; i < n; i++) {
        if (limits[i] <= 0)
            continue; /* unknown */
        /* batch.size counts librdkafka's framing; the broker's limit applies to the whole
         * record batch: keep a margin for its header */
        int64_t fit = limits[i] > 1024 ? limits[i] - 512 : limits[i] / 2;
        if (fit < b)
            b = fit;
    }
    return b < 1 ? 1 : b;
}

/* Ask for max.message.bytes of every output topic (DescribeConfigs, answered by the
 * controller), without waiting: the answer is applied by apply_sizing() before a later
 * transaction. librdkafka does not split a batch the broker refuses, so records each
 * under a topic's limit would be refused together forever if the producer's batch.size
 * were larger than the limit. */
static void request_sizing(lk_sink_t *s) {
    kafka_sink_t *k = s->impl;
    size_t n = s->nmembers + 1;
    rd_kafka_ConfigResource_t **res = calloc(n, sizeof *res);
    char kerr[256];
    if (!res)
        return; /* sizing is an optimisation of batch.size: without memory, skip it */
    for (size_t i = 0; i < n; i++)
        res[i] = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC,
                                             i < s->nmembers ? s->members[i].target
                                                             : k->progress_topic);
    k->dc_q = rd_kafka_queue_new(k->reader);
    rd_kafka_AdminOptions_t *opt =
        rd_kafka_AdminOptions_new(k->reader, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
    /* the timeout is within librdkafka's range (sink.kafka.timeout.ms is validated) */
    (void)rd_kafka_AdminOptions_set_request_timeout(opt, k->timeout_ms, kerr, sizeof kerr);
    rd_kafka_DescribeConfigs(k->reader, res, n, opt, k->dc_q);
    rd_kafka_AdminOptions_destroy(opt);
    for (size_t i = 0; i < n; i++)
        rd_kafka_ConfigResource_destroy(res[i]);
    free(res);
}

/* If the answer to request_sizing() has come: where a topic's limit is below the
 * producer's batch.size, replace the producer by one whose batches fit (between
 * transactions: init_transactions again). A broker that does not answer (librdkafka's
 * mock cluster has no controller) leaves batch.size as it is, with a log line. */
static lk_err_t apply_sizing(lk_sink_t *s, char *errstr, size_t errstr_size) {
    kafka_sink_t *k = s->impl;
    if (!k->dc_q)
        return LK_OK;
    rd_kafka_event_t *ev = rd_kafka_queue_poll(k->dc_q, 0);
    if (!ev)
        return LK_OK; /* not yet */
    rd_kafka_queue_destroy(k->dc_q);
    k->dc_q = NULL;
    size_t n = s->nmembers + 1;
    int64_t *limits = calloc(n, sizeof *limits);
    if (!limits) {
        rd_kafka_event_destroy(ev);
        return LK_OK; /* an optimisation: skip it */
    }
    const char *why = rd_kafka_event_error(ev) ? rd_kafka_event_error_string(ev) : NULL;
    if (!why) {
        size_t cnt = 0;
        const rd_kafka_ConfigResource_t **rs =
            rd_kafka_DescribeConfigs_result_resources(rd_kafka_event_DescribeConfigs_result(ev),
                                                      &cnt);
        for (size_t i = 0; i < cnt; i++) {
            size_t cc = 0;
            const rd_kafka_ConfigEntry_t **ce = rd_kafka_ConfigResource_configs(rs[i], &cc);
            for (size_t j = 0; j < cc; j++)
                if (!strcmp(rd_kafka_ConfigEntry_name(ce[j]), "max.message.bytes") &&
                    rd_kafka_ConfigEntry_value(ce[j])) {
                    const char *name = rd_kafka_ConfigResource_name(rs[i]);
                    for (size_t m = 0; m < n; m++)
                        if (!strcmp(name, m < s->nmembers ? s->members[m].target
                                                          : k->progress_topic))
                            limits[m] = strtoll(rd_kafka_ConfigEntry_value(ce[j]), NULL, 10);
                }
        }
    } else {
        lk__log(LK_LOG_INFO, "sink '%s': cannot read the output topics' max.message.bytes "
                "(%s); producer batches stay at batch.size %lld", s->name, why,
                (long long)k->batch_size);
    }
    int64_t b = lk__kafka_batch_size(k->batch_size, limits, n);
    size_t m = 0;
    for (size_t i = 1; i < n; i++)
        if (limits[i] > 0 && (limits[m] <= 0 || limits[i] < limits[m]))
            m = i;
    int64_t limit = limits[m];
    free(limits);
    rd_kafka_event_destroy(ev); /* after the last use of its strings (why) */
    if (b >= k->batch_size)
        return LK_OK;
    rd_kafka_t *old = k->producer;
    k->producer = NULL;
    lk_err_t e = producer_new(s, b, errstr, errstr_size);
    if (e) {
        k->producer = old;
        return e;
    }
    rd_kafka_destroy(old); /* between transactions: nothing of it is pending */
    k->batch_size = b;
    k->inited = 0;
    lk__log(LK_LOG_NOTICE, "sink '%s': producer batches of at most %lld bytes: topic %s's "
            "max.message.bytes is %lld (batch.size was larger)", s->name, (long long)b,
            m < s->nmembers ? s->members[m].target : k->progress_topic, (long long)limit);
    rd_kafka_error_t *ie = txn_call(s, k->producer, rd_kafka_init_transactions, k->timeout_ms);
    if (ie)
        return txn_error(k, ie, "init_transactions", errstr, errstr_size);
    k->inited = 1;
    return LK_OK;
}

static lk_err_t kafka_open(lk_sink_t *s, const lk_conf_t *conf, char *errstr,
                           size_t errstr_size) {
    kafka_sink_t *k = calloc(1, sizeof *k);
    if (!k)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    s->impl = k;
    k->owner = s;
    k->send_offsets = conf ? lk__conf_bool(conf, LK__P_SINK_KAFKA_SEND_OFFSETS) : 1;
    k->timeout_ms = conf ? (int)lk__conf_int(conf, LK__P_SINK_KAFKA_TIMEOUT_MS) : 30000;
    lk__fmt(k->progress_topic, sizeof k->progress_topic, "%s.progress", s->app_id);
    /* one task today: the application's transactional id (scale-out: <app.id>.<task>) */
    lk__fmt(k->txn_id, sizeof k->txn_id, "%s", s->app_id);
    if (conf && lk__conf_int(conf, LK__P_ERRORS_TOLERANCE) == 0) {
        const char *dl = lk__conf_str(conf, LK__P_ERRORS_DEADLETTER);
        if (dl && dl[0] && strncmp(dl, "file:", 5))
            lk__fmt(k->deadletter, sizeof k->deadletter, "%s", dl);
    }
    k->conf = conf;
    k->batch_size = 1000000; /* librdkafka's default batch.size */
    for (size_t i = 0, n = conf ? lk__conf_kafka_count(conf) : 0; i < n; i++) {
        const char *key, *v;
        lk__conf_kafka_get(conf, i, &key, &v);
        if (!strcmp(key, "batch.size"))
            k->batch_size = strtoll(v, NULL, 10);
    }
    lk_err_t e = producer_new(s, 0, errstr, errstr_size);
    if (e)
        return e;
    /* assign() needs a group id; the reader never joins the group or commits */
    char gid[600];
    lk__fmt(gid, sizeof gid, "%s.progress-reader", s->app_id);
    const char *const rfixed[][2] = {
        {"enable.auto.commit", "false"}, {"isolation.level", "read_committed"},
        {"enable.partition.eof", "true"}, {"auto.offset.reset", "error"}, {"group.id", gid},
    };
    rd_kafka_conf_t *rc = client_conf(conf, errstr, errstr_size);
    if (!rc)
        return LK_ERR_CONF_INVALID;
    if ((e = conf_fixed(rc, rfixed, LK_ARRAY_SIZE(rfixed), "progress reader", errstr,
                        errstr_size)) ||
        (e = client_new(&k->reader, RD_KAFKA_CONSUMER, rc, "progress reader", errstr,
                        errstr_size)))
        return e;
    const char *const ufixed[][2] = {{"isolation.level", "read_uncommitted"}};
    rd_kafka_conf_t *uc = client_conf(conf, errstr, errstr_size);
    if (!uc)
        return LK_ERR_CONF_INVALID;
    if ((e = conf_fixed(uc, ufixed, 1, "progress probe", errstr, errstr_size)) ||
        (e = client_new(&k->probe, RD_KAFKA_CONSUMER, uc, "progress probe", errstr,
                        errstr_size)))
        return e;
    return LK_OK;
}

static void kafka_close(lk_sink_t *s) {
    kafka_sink_t *k = s->impl;
    if (!k)
        return;
    if (k->dc_q) /* before its client */
        rd_kafka_queue_destroy(k->dc_q);
    if (k->reader) {
        rd_kafka_consumer_close(k->reader);
        rd_kafka_destroy(k->reader);
    }
    if (k->probe)
        rd_kafka_destroy(k->probe);
    if (k->producer)
        rd_kafka_destroy(k->producer);
    free(k->divert);
    free(k);
    s->impl = NULL;
}

/* Create <app>.progress (compacted, one partition) unless it exists. */
static lk_err_t ensure_progress_topic(kafka_sink_t *k, char *errstr, size_t errstr_size) {
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(k->reader, k->progress_topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t ke = rd_kafka_metadata(k->reader, 0, rkt, &md, k_budget(k));
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
    rd_kafka_resp_err_t ce = rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact");
    if (ce) {
        rd_kafka_NewTopic_destroy(nt);
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "progress topic: %s",
                       rd_kafka_err2str(ce));
    }
    rd_kafka_queue_t *q = rd_kafka_queue_new(k->producer);
    rd_kafka_AdminOptions_t *opt = rd_kafka_AdminOptions_new(k->producer, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    /* the timeout is within librdkafka's range (sink.kafka.timeout.ms is validated) */
    (void)rd_kafka_AdminOptions_set_request_timeout(opt, k_budget(k), kerr, sizeof kerr);
    rd_kafka_CreateTopics(k->producer, &nt, 1, opt, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, k_budget(k) + 200);
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

/* ---- the stable-offset wait (the seam: lk__kafka_wait_stable, tested in unit tests) ---- */

static int64_t real_now_ms(void *o) {
    (void)o;
    return lk__mono_ms();
}

/* Sleep ms in steps of 50 ms, ending early on an immediate stop. */
static void real_sleep_ms(void *o, int64_t ms) {
    kafka_sink_t *k = o;
    int64_t end = lk__mono_ms() + ms;
    for (int64_t left = ms; left > 0 && !abandoned(k->owner); left = end - lk__mono_ms()) {
        struct timespec ts = {0, (left > 50 ? 50 : left) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static lk_err_t real_offsets(void *o, const char *topic, int32_t partition, int64_t *lso,
                             int64_t *hwm, char *errstr, size_t errstr_size) {
    kafka_sink_t *k = o;
    int64_t lo;
    /* ListOffsets(latest) answers the LSO to a read_committed client and the high
     * watermark to a read_uncommitted one */
    rd_kafka_resp_err_t ke = rd_kafka_query_watermark_offsets(k->reader, topic, partition, &lo,
                                                              lso, k_budget(k));
    if (!ke)
        ke = rd_kafka_query_watermark_offsets(k->probe, topic, partition, &lo, hwm,
                                              k_budget(k));
    if (ke)
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "offsets of %s[%d]: %s", topic,
                       (int)partition, rd_kafka_err2str(ke));
    return LK_OK;
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
static int progress_ours(const lk_sink_t *s, const progress_t *p, const rd_kafka_message_t *m) {
    if (p->checkpoint[0])
        return !strcmp(p->checkpoint, s->checkpoint_id);
    rd_kafka_timestamp_type_t tt;
    int64_t ts = rd_kafka_message_timestamp(m, &tt);
    return s->checkpoint_migrated || (ts >= 0 && ts >= s->checkpoint_created_ms);
}

/* Read the last committed progress record of every member: fences[i] for members[i].
 * The partition must be stable up to hi (lk__kafka_wait_stable). */
static lk_err_t read_fences(lk_sink_t *s, int64_t hi, uint64_t *fences, char *errstr,
                            size_t errstr_size) {
    char foreign[48] = "";  /* the other checkpoint whose record is the last one read */
    uint64_t foreign_batch = 0;
    int64_t last_own = -1, last_foreign = -1;
    kafka_sink_t *k = s->impl;
    int64_t lo, hi0;
    rd_kafka_resp_err_t ke = rd_kafka_query_watermark_offsets(k->reader, k->progress_topic, 0,
                                                              &lo, &hi0, k_budget(k));
    if (ke)
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "offsets of %s[0]: %s",
                       k->progress_topic, rd_kafka_err2str(ke));
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
        rd_kafka_topic_partition_list_add(l, k->progress_topic, 0)->offset = start;
        ke = rd_kafka_assign(k->reader, l);
        rd_kafka_topic_partition_list_destroy(l);
        if (ke)
            return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "reading %s: %s",
                           k->progress_topic, rd_kafka_err2str(ke));
        int64_t deadline = lk__mono_ms() + k_budget(k);
        int done = 0;
        size_t found = 0;
        while (!done) {
            if (lk__mono_ms() > deadline || abandoned(s)) {
                (void)rd_kafka_assign(k->reader, NULL); /* the timeout is the error */
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
            if (++resets > 5 || rd_kafka_query_watermark_offsets(k->reader, k->progress_topic, 0,
                                                                 &lo, &nhi, k_budget(k)))
                return lk__err(LK_ERR_KAFKA, errstr, errstr_size,
                               "reading %s: its log start keeps moving", k->progress_topic);
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

static lk_err_t kafka_recover(lk_sink_t *s, uint64_t *fence, char *errstr,
                              size_t errstr_size) {
    kafka_sink_t *k = s->impl;
    if (!k->sized) {
        request_sizing(s);
        k->sized = 1;
    }
    if (!k->inited) {
        /* fences zombies with the same transactional.id and aborts their transaction */
        rd_kafka_error_t *e = txn_call(s, k->producer, rd_kafka_init_transactions, k->timeout_ms);
        if (e)
            return txn_error(k, e, "init_transactions", errstr, errstr_size);
        k->inited = 1;
    }
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
        r = lk__kafka_wait_stable(&io, k->progress_topic, 0, k_budget(k), &hi, errstr,
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

/* ---- one delivery ---- */

/* The batch's input offsets, committed for group <app.id> in the transaction, so that
 * standard lag tools see the application's progress (lockstep itself reads its progress
 * records, never these). Sent at the start of the transaction, before any record: the
 * offsets are atomic with the transaction wherever they are sent in it, and sent first
 * their round trips (AddOffsetsToTxn, TxnOffsetCommit) do not queue behind the records'
 * AddPartitionsToTxn and produce requests; sent after the progress record they waited
 * for those and cost a third of a 10,000-record batch's delivery (issue 18). */
static lk_err_t send_offsets(lk_sink_t *s, const lk_batch_rec_t *b, char *errstr,
                             size_t errstr_size) {
    kafka_sink_t *k = s->impl;
    if (!k->send_offsets || !b || !b->nranges)
        return LK_OK;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)b->nranges);
    for (size_t i = 0; i < b->nranges; i++)
        rd_kafka_topic_partition_list_add(l, b->ranges[i].topic, b->ranges[i].partition)
            ->offset = b->ranges[i].until;
    rd_kafka_consumer_group_metadata_t *g = rd_kafka_consumer_group_metadata_new(s->app_id);
    rd_kafka_error_t *e = LK__FAULT_KAFKA("send_offsets_to_transaction",
                                          rd_kafka_send_offsets_to_transaction(
                                              k->producer, l, g, budget_ms(s, k->timeout_ms)));
    rd_kafka_consumer_group_metadata_destroy(g);
    rd_kafka_topic_partition_list_destroy(l);
    return e ? txn_error(k, e, "send_offsets_to_transaction", errstr, errstr_size) : LK_OK;
}

static lk_err_t kafka_begin(lk_sink_t *s, uint64_t batch, char *errstr, size_t errstr_size) {
    kafka_sink_t *k = s->impl;
    /* serve what an aborted attempt's records still report (purged by the abort) before
     * counting this attempt's */
    (void)rd_kafka_poll(k->producer, 0);
    k->attempt_records = 0;
    k->dr_failed = 0;
    k->have_failed = 0;
    k->next_index = 0;
    k->index_member = 0;
    lk__fmt(k->hdr_batch, sizeof k->hdr_batch, "%llu", (unsigned long long)batch);
    k->hdr_batch_len = strlen(k->hdr_batch);
    k->hdr_app_len = s->app_id ? strlen(s->app_id) : 0;
    if (k->div_batch != batch)
        k->ndivert = 0; /* diverted records belong to one batch */
    lk_err_t r = apply_sizing(s, errstr, errstr_size);
    if (r)
        return r;
    rd_kafka_error_t *e = LK__FAULT_KAFKA("begin_transaction",
                                          rd_kafka_begin_transaction(k->producer));
    if (e)
        return txn_error(k, e, "begin_transaction", errstr, errstr_size);
    k->txn_open = 1;
    return send_offsets(s, s->batch_rec, errstr, errstr_size);
}

static lk_err_t produce(lk_sink_t *s, const char *topic, int32_t partition, const void *key,
                        size_t klen, const void *value, size_t vlen, int64_t ts,
                        rd_kafka_headers_t *hdrs, void *opaque, char *errstr,
                        size_t errstr_size) {
    kafka_sink_t *k = s->impl;
    for (;;) {
        rd_kafka_resp_err_t ke = LK__FAULT_KAFKA_RESP("produce", rd_kafka_producev(
            k->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
            RD_KAFKA_V_KEY(key, klen), RD_KAFKA_V_VALUE((void *)value, vlen),
            RD_KAFKA_V_TIMESTAMP(ts > 0 ? ts : 0), RD_KAFKA_V_HEADERS(hdrs),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE(opaque),
            RD_KAFKA_V_END));
        if (!ke) {
            k->attempt_records++;
            return LK_OK; /* the headers now belong to librdkafka */
        }
        if (ke == RD_KAFKA_RESP_ERR__QUEUE_FULL && !abandoned(s)) {
            rd_kafka_poll(k->producer, 50);
            continue;
        }
        rd_kafka_headers_destroy(hdrs);
        if (ke == RD_KAFKA_RESP_ERR__FENCED || ke == RD_KAFKA_RESP_ERR__FATAL) {
            char why[256] = "";
            rd_kafka_resp_err_t fe = rd_kafka_fatal_error(k->producer, why, sizeof why);
            return lk__err(is_fencing(fe) || is_fencing(ke) ? LK_ERR_FENCED : LK_ERR_FATAL,
                           errstr, errstr_size, "producing to %s: %s%s%s%s", topic,
                           why[0] ? why : rd_kafka_err2str(ke),
                           is_fencing(fe) || is_fencing(ke) ? "; fenced: transactional.id '"
                                                            : "",
                           is_fencing(fe) || is_fencing(ke) ? k->txn_id : "",
                           is_fencing(fe) || is_fencing(ke)
                               ? "'; another instance with the same transactional.id took over"
                               : "");
        }
        if (is_permanent(ke) && opaque != OPAQUE_PROGRESS) {
            /* refused before sending (client-side): the delivery report path decides, as
             * for a broker's refusal, so dead-lettering works the same */
            failed_rec_t f = {OPAQUE_MEMBER(opaque), OPAQUE_INDEX(opaque), ke, 1,
                              partition, ""};
            if (ke == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE)
                lk__fmt(f.errstr, sizeof f.errstr, "the record (%zu bytes of key and value) "
                        "is larger than the producer's message.max.bytes", klen + vlen);
            else
                lk__fmt(f.errstr, sizeof f.errstr, "%s", rd_kafka_err2str(ke));
            if (!k->have_failed || !is_permanent(k->first_failed.err)) {
                k->first_failed = f;
                k->have_failed = 1;
            }
            k->dr_failed++;
            return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "producing to %s: %s", topic,
                           f.errstr);
        }
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "producing to %s[%s]: %s", topic,
                       partition == RD_KAFKA_PARTITION_UA ? "by key" : "given",
                       rd_kafka_err2str(ke));
    }
}

/* Provenance headers of a record of the attempt kafka_begin started; NULL if out of memory
 * or a header was refused. Called once per output record: the values of the attempt are
 * formatted once, in kafka_begin, and their lengths passed (no snprintf per record). */
static rd_kafka_headers_t *provenance(const lk_sink_t *s, const char *uid, size_t uid_len,
                                      size_t extra) {
    const kafka_sink_t *k = s->impl;
    rd_kafka_headers_t *h = rd_kafka_headers_new(extra + 4);
    if (rd_kafka_header_add(h, "lockstep.app", 12, s->app_id, (ssize_t)k->hdr_app_len) ||
        rd_kafka_header_add(h, "lockstep.sink", 13, uid, (ssize_t)uid_len) ||
        rd_kafka_header_add(h, "lockstep.batch", 14, k->hdr_batch, (ssize_t)k->hdr_batch_len) ||
        rd_kafka_header_add(h, "lockstep.attempt", 16, s->attempt,
                            (ssize_t)strnlen(s->attempt, sizeof s->attempt))) {
        rd_kafka_headers_destroy(h);
        return NULL;
    }
    return h;
}

static const failed_rec_t *diverted(const kafka_sink_t *k, size_t member, uint64_t index) {
    for (size_t i = 0; i < k->ndivert; i++)
        if (k->divert[i].member == member && k->divert[i].index == index)
            return &k->divert[i];
    return NULL;
}

/* After a failed attempt: a permanent per-record error stops the application naming the
 * record and the setting, or (errors.tolerance=all with a Kafka dead letter) marks the
 * record for the dead letter topic in the next attempt. Returns the error to report. */
static lk_err_t record_failed(lk_sink_t *s, lk_err_t e, char *errstr, size_t errstr_size) {
    kafka_sink_t *k = s->impl;
    const lk_batch_rec_t *b = s->batch_rec;
    if (!k->have_failed || e == LK_ERR_FENCED || e == LK_ERR_FATAL)
        return e;
    failed_rec_t f = k->first_failed;
    if (!is_permanent(f.err)) {
        size_t n = strlen(errstr);
        lk__fmt(errstr + n, errstr_size - n, "; %llu of %llu records not delivered, first: %s",
                (unsigned long long)k->dr_failed, (unsigned long long)k->attempt_records,
                f.errstr);
        return e;
    }
    const char *uid = f.member == SIZE_MAX ? s->name : s->members[f.member].uid;
    const char *topic = f.member == SIZE_MAX ? k->progress_topic : s->members[f.member].target;
    if (f.member != SIZE_MAX && k->deadletter[0] && strcmp(topic, k->deadletter)) {
        if (k->ndivert == k->divert_cap) {
            size_t cap = k->divert_cap ? k->divert_cap * 2 : 8;
            failed_rec_t *d = realloc(k->divert, cap * sizeof *d);
            if (!d)
                return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
            k->divert = d;
            k->divert_cap = cap;
        }
        k->divert[k->ndivert++] = f;
        k->div_batch = s->batch;
        lk__log(LK_LOG_WARNING, "sink '%s' batch %llu: record %llu of the batch for topic %s "
                "can never be delivered (%s); errors.tolerance=all: it goes to the dead "
                "letter topic %s in the next attempt of the batch", uid,
                (unsigned long long)s->batch, (unsigned long long)f.index, topic, f.errstr,
                k->deadletter);
        return e;
    }
    char setting[512], input[512] = "";
    setting_for(&f, topic, setting, sizeof setting);
    size_t n = 0;
    for (size_t i = 0; b && i < b->nranges && n + 1 < sizeof input; i++) {
        lk__fmt(input + n, sizeof input - n, "%s%s[%d] offsets %lld..%lld", i ? ", " : "",
                b->ranges[i].topic, (int)b->ranges[i].partition, (long long)b->ranges[i].from,
                (long long)b->ranges[i].until - 1);
        n = strlen(input);
    }
    char part[32];
    if (f.partition >= 0)
        lk__fmt(part, sizeof part, "%d", (int)f.partition);
    else
        lk__fmt(part, sizeof part, "(by key)");
    return lk__err(LK_ERR_FATAL, errstr, errstr_size,
                   "sink '%s': record %llu of batch %llu for topic %s partition %s can never be "
                   "delivered: %s (a permanent error, not retried); the batch's input: %s; %s%s",
                   uid, (unsigned long long)f.index, (unsigned long long)s->batch, topic,
                   part, f.errstr, input[0] ? input : "unknown", setting,
                   k->deadletter[0] ? ""
                                    : "; or set errors.tolerance=all and errors.deadletter to a "
                                      "topic to divert such records there");
}

static lk_err_t kafka_write(lk_sink_t *s, const lk_out_record_t *r, char *errstr,
                            size_t errstr_size) {
    kafka_sink_t *k = s->impl;
    if (k->index_member != s->cur) {
        k->index_member = s->cur;
        k->next_index = 0;
    }
    uint64_t index = k->next_index++;
    const lk__sink_member_t *m = &s->members[s->cur];
    const failed_rec_t *dv = diverted(k, s->cur, index);
    rd_kafka_headers_t *h = provenance(s, m->uid, strlen(m->uid), r->nheaders + (dv ? 3 : 0));
    if (!h)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "sink '%s': provenance headers: out "
                       "of memory", m->uid);
    for (size_t i = 0; i < r->nheaders; i++)
        if (rd_kafka_header_add(h, r->headers[i].name, -1, r->headers[i].value,
                                (ssize_t)r->headers[i].value_len)) {
            rd_kafka_headers_destroy(h);
            return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size,
                           "sink '%s': header '%s' refused by librdkafka", m->uid,
                           r->headers[i].name);
        }
    if (dv) {
        /* the record can never reach its topic: it goes to the dead letter topic in this
         * same transaction, with what was wrong */
        char part[16];
        lk__fmt(part, sizeof part, "%d", (int)dv->partition);
        if (rd_kafka_header_add(h, "lockstep.error", -1, dv->errstr, -1) ||
            rd_kafka_header_add(h, "lockstep.error.topic", -1, m->target, -1) ||
            rd_kafka_header_add(h, "lockstep.error.partition", -1, part, -1)) {
            rd_kafka_headers_destroy(h);
            return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        }
        return produce(s, k->deadletter, RD_KAFKA_PARTITION_UA, r->key, r->key_len, r->value,
                       dv->err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE ||
                               dv->err == RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE
                           ? 0 /* too large for the dead letter too: the headers say what */
                           : r->value_len,
                       r->timestamp_ms, h, OPAQUE_PROGRESS, errstr, errstr_size);
    }
    lk_err_t e = produce(s, m->target, r->partition >= 0 ? r->partition : RD_KAFKA_PARTITION_UA,
                         r->key, r->key_len, r->value, r->value_len, r->timestamp_ms, h,
                         OPAQUE(s->cur, index), errstr, errstr_size);
    return e ? record_failed(s, e, errstr, errstr_size) : LK_OK;
}

static lk_err_t kafka_commit(lk_sink_t *s, const lk_batch_rec_t *b, char *errstr,
                             size_t errstr_size) {
    kafka_sink_t *k = s->impl;
    /* the progress record: which batch this transaction completes, from what input, and
     * what each member wrote */
    json_t *offsets = json_array(), *sinks = json_object();
    for (size_t i = 0; b && i < b->nranges; i++)
        json_array_append_new(offsets, json_pack("{s:s, s:i, s:I}", "topic", b->ranges[i].topic,
                                                 "partition", (int)b->ranges[i].partition,
                                                 "until", (json_int_t)b->ranges[i].until));
    for (size_t i = 0; i < s->nmembers; i++)
        json_object_set_new(sinks, s->members[i].uid,
                            json_pack("{s:s, s:I}", "topic", s->members[i].target, "records",
                                      (json_int_t)s->members[i].records));
    json_t *doc = json_pack("{s:s, s:s, s:s, s:I, s:s, s:o, s:o}", "app", s->app_id, "task",
                            k->txn_id, "checkpoint", s->checkpoint_id, "batch",
                            (json_int_t)s->batch, "attempt", s->attempt, "offsets", offsets,
                            "sinks", sinks);
    char *value = doc ? json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(doc);
    if (!value)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    rd_kafka_headers_t *h = provenance(s, "", 0, 0);
    lk_err_t r = h ? produce(s, k->progress_topic, 0, s->app_id, strlen(s->app_id), value,
                             strlen(value), 0, h, OPAQUE_PROGRESS, errstr, errstr_size)
                   : lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    free(value);
    if (r)
        return record_failed(s, r, errstr, errstr_size);
    if (lk__faultpoint_armed("before-sink-commit")) {
        /* the kafka tier's orphaned transaction: killed with the batch's records in the
         * log and its transaction open (flushed first, or the kill could beat the sends) */
        (void)rd_kafka_flush(k->producer, budget_ms(s, k->timeout_ms)); /* best effort */
        lk__faultpoint("before-sink-commit");
    }
    rd_kafka_error_t *e = txn_call(s, k->producer, rd_kafka_commit_transaction, k->timeout_ms);
    if (!e) {
        k->fence = s->batch;
        k->txn_open = 0;
        return LK_OK;
    }
    if (rd_kafka_error_is_retriable(e) && !is_fencing(rd_kafka_error_code(e))) {
        /* still running inside librdkafka: it cannot be aborted, only finished by calling
         * it again (resume_commit); until then its outcome is unknown */
        txn_error(k, e, "commit_transaction", errstr, errstr_size);
        return LK_ERR_TIMED_OUT;
    }
    return record_failed(s, txn_error(k, e, "commit_transaction", errstr, errstr_size),
                         errstr, errstr_size);
}

/* Resume a commit that timed out (librdkafka's calls are resumable). A resumed commit
 * that succeeds delivered its batch: the fence moves to it directly, since a
 * read_committed reader may not see its progress record at once. */
static lk_err_t kafka_resume_commit(lk_sink_t *s, char *errstr, size_t errstr_size) {
    kafka_sink_t *k = s->impl;
    rd_kafka_error_t *e = txn_call(s, k->producer, rd_kafka_commit_transaction, k->timeout_ms);
    if (!e) {
        if (s->batch > k->fence)
            k->fence = s->batch;
        k->txn_open = 0;
        return LK_OK;
    }
    int retriable = rd_kafka_error_is_retriable(e) && !is_fencing(rd_kafka_error_code(e));
    lk_err_t r = txn_error(k, e, "resuming commit_transaction", errstr, errstr_size);
    return retriable ? LK_ERR_TIMED_OUT : r;
}

static lk_err_t kafka_abort(lk_sink_t *s, char *errstr, size_t errstr_size) {
    kafka_sink_t *k = s->impl;
    if (!k->txn_open)
        return LK_OK; /* nothing begun (e.g. begin_transaction itself failed) */
    rd_kafka_error_t *e = txn_call(s, k->producer, rd_kafka_abort_transaction, k->timeout_ms);
    if (e)
        return txn_error(k, e, "abort_transaction", errstr, errstr_size);
    k->txn_open = 0;
    return LK_OK;
}

const lk__sink_ops_t lk__sink_kafka_ops = {
    .kind = "kafka",
    .exactly_once = 1,
    .open = kafka_open,
    .recover = kafka_recover,
    .begin = kafka_begin,
    .write = kafka_write,
    .commit = kafka_commit,
    .resume_commit = kafka_resume_commit,
    .abort = kafka_abort,
    .close = kafka_close,
};
