/*
 * kafka_delivery.c — what the Kafka sink learns about each record it produced
 * (docs/DESIGN.md, "Sinks" and "Errors"): the delivery report callback, which keeps the
 * first (or first permanent) failure of an attempt; the permanent per-record errors, which
 * stop the application naming the record, its batch's input and the setting to change, or
 * with errors.tolerance=all and a Kafka errors.deadletter divert the record there in the
 * next attempt of the batch; and the producer's batch sizing from the output topics'
 * max.message.bytes (a batch the broker refuses is never split by librdkafka). The rest of
 * the sink is in kafka.c and kafka_progress.c (kafka_priv.h).
 */
#define _GNU_SOURCE
#include "kafka_priv.h"
#include "../core/util_int.h"

#include <stdlib.h>
#include <string.h>

/* A per-record delivery error that no retry can fix. */
int lk__kafka_is_permanent(rd_kafka_resp_err_t c) {
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
static void setting_for(const lk__kafka_failed_rec_t *f, const char *topic, char *buf,
                        size_t size) {
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

/* Delivery reports: served by the delivering thread (rd_kafka_poll, flush, commit). */
void lk__kafka_on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    lk__sink_t *s = opaque;
    lk__kafka_sink_t *k = s->impl;
    if (!m->err && k) {
        /* where the member's records went: a changelog member's position is recorded with
         * its fence once the transaction commits (the start of a later tail restore) */
        void *o = m->_private;
        size_t mi = o == OPAQUE_PROGRESS || !o ? SIZE_MAX : OPAQUE_MEMBER(o);
        if (mi < s->nmembers && m->offset >= 0 && m->offset + 1 > s->members[mi].attempt_next)
            s->members[mi].attempt_next = m->offset + 1;
        return;
    }
    if (!m->err || !k || m->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE ||
        m->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT)
        return; /* purged by an abort: the abort is what is reported */
    k->dr_failed++;
    void *o = m->_private;
    if (k->have_failed && !lk__kafka_is_permanent(m->err))
        return; /* keep the first, or the first permanent one */
    if (k->have_failed && lk__kafka_is_permanent(k->first_failed.err))
        return;
    lk__kafka_failed_rec_t f = {0};
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
 * controller), without waiting: the answer is applied by lk__kafka_apply_sizing() before a later
 * transaction. librdkafka does not split a batch the broker refuses, so records each
 * under a topic's limit would be refused together forever if the producer's batch.size
 * were larger than the limit. */
void lk__kafka_request_sizing(lk__sink_t *s) {
    lk__kafka_sink_t *k = s->impl;
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

/* If the answer to lk__kafka_request_sizing() has come: where a topic's limit is below the
 * producer's batch.size, replace the producer by one whose batches fit (between
 * transactions: init_transactions again). A broker that does not answer (librdkafka's
 * mock cluster has no controller) leaves batch.size as it is, with a log line. */
lk_err_t lk__kafka_apply_sizing(lk__sink_t *s, char *errstr, size_t errstr_size) {
    lk__kafka_sink_t *k = s->impl;
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
    lk_err_t e = lk__kafka_producer_new(s, b, errstr, errstr_size);
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
    return lk__kafka_init_txn(s, errstr, errstr_size);
}

const lk__kafka_failed_rec_t *lk__kafka_diverted(const lk__kafka_sink_t *k, size_t member,
                                                 uint64_t index) {
    for (size_t i = 0; i < k->ndivert; i++)
        if (k->divert[i].member == member && k->divert[i].index == index)
            return &k->divert[i];
    return NULL;
}

/* After a failed attempt: a permanent per-record error stops the application naming the
 * record and the setting, or (errors.tolerance=all with a Kafka dead letter) marks the
 * record for the dead letter topic in the next attempt. Returns the error to report. */
lk_err_t lk__kafka_record_failed(lk__sink_t *s, lk_err_t e, char *errstr,
                                 size_t errstr_size) {
    lk__kafka_sink_t *k = s->impl;
    const lk__batch_rec_t *b = s->batch_rec;
    if (!k->have_failed || e == LK_ERR_FENCED || e == LK_ERR_FATAL)
        return e;
    lk__kafka_failed_rec_t f = k->first_failed;
    if (!lk__kafka_is_permanent(f.err)) {
        size_t n = strlen(errstr);
        lk__fmt(errstr + n, errstr_size - n, "; %llu of %llu records not delivered, first: %s",
                (unsigned long long)k->dr_failed, (unsigned long long)k->attempt_records,
                f.errstr);
        return e;
    }
    const char *uid = f.member == SIZE_MAX ? s->name : s->members[f.member].uid;
    const char *topic = f.member == SIZE_MAX ? k->progress_topic : s->members[f.member].target;
    /* a changelog record is keyed state, not output: diverted, the batch would commit
     * without it and the next process to restore the task's changelog would hold other
     * state than this checkpoint (DESIGN.md Scale-out); it stops the application instead */
    const char *state_of = f.member == SIZE_MAX ? NULL : s->members[f.member].changelog_of;
    if (f.member != SIZE_MAX && !state_of && k->deadletter[0] && strcmp(topic, k->deadletter)) {
        lk__kafka_failed_rec_t *d =
            lk__vec_reserve(k->divert, &k->divert_cap, k->ndivert + 1, sizeof *d, 8);
        if (!d)
            return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        k->divert = d;
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
                   "delivered: %s (a permanent error, not retried); the batch's input: %s; "
                   "%s%s%s%s",
                   uid, (unsigned long long)f.index, (unsigned long long)s->batch, topic,
                   part, f.errstr, input[0] ? input : "unknown", setting,
                   state_of ? "; a changelog record (keyed state of operator '" : "",
                   state_of ? state_of : "",
                   state_of ? "') is never sent to a dead letter topic: its state would not "
                              "move with the task"
                   : k->deadletter[0] ? ""
                                      : "; or set errors.tolerance=all and errors.deadletter to "
                                        "a topic to divert such records there");
}
