/*
 * kafka.c — the Kafka sink: every Kafka output of the application (each lk_to_kafka, dead
 * letters included: the members of one lk__sink_t) is delivered in ONE Kafka transaction
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
 *
 * This file holds the producer and its clients, bounded blocking, the transactional calls
 * and their error classes, and one delivery (begin, write, commit, resume, abort)
 * (docs/DESIGN.md, "Sinks" and "The batch protocol"); kafka_progress.c holds recovery,
 * kafka_delivery.c delivery reports, permanent errors and batch sizing (kafka_priv.h).
 */
#define _GNU_SOURCE
#include "kafka_priv.h"
#include "../core/conf_int.h"
#include "../core/util_int.h"
#include "fault_int.h"
#include "provenance_int.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- error classes ---- */

static int is_fencing(rd_kafka_resp_err_t c) {
    return c == RD_KAFKA_RESP_ERR__FENCED || c == RD_KAFKA_RESP_ERR_PRODUCER_FENCED ||
           c == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH ||
           c == RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
}

/* ---- bounded blocking: a stop's deadline and an immediate stop (sink_int.h) ---- */

int lk__kafka_abandoned(const lk__sink_t *s) {
    return s->abandon && atomic_load(s->abandon);
}

/* How long a blocking call may take now: sink.kafka.timeout.ms, cut to what is left
 * before a stop's deadline (at least 1 ms: librdkafka reads 0 as "do not wait" in some
 * calls and as "forever" in none of those used here). */
static int budget_ms(const lk__sink_t *s, int timeout_ms) {
    int64_t b = timeout_ms;
    int64_t d = s->deadline_ms ? atomic_load(s->deadline_ms) : 0;
    if (d) {
        int64_t left = d - lk__mono_ms();
        if (left < b)
            b = left;
    }
    return b < 1 ? 1 : (int)b;
}

int lk__kafka_budget(const lk__kafka_sink_t *k) {
    return budget_ms(k->owner, k->timeout_ms);
}

/* A resumable transactional call (init, commit, abort) in slices of at most 200 ms,
 * called again after each retriable timeout (librdkafka resumes it), until it finishes,
 * its budget ends, or the stop is immediate: a second signal is answered in well under
 * a second even while a coordinator does not answer. */
/* librdkafka 2.0.2 can answer a commit_transaction call that resumes a timed-out one
 * with a plain _STATE error, "Operation not valid in state CommittingTransaction": the
 * call's first step ran while the EndTxn the earlier call sent was still unanswered
 * (later librdkafka versions accept that state there and wait). The commit is running,
 * not failed, and its outcome is still to come: it is waited for like a timeout, never
 * taken as fatal (a chaos run on a loaded machine stopped on it) nor aborted. */
static int commit_in_flight(const rd_kafka_error_t *e) {
    return e && rd_kafka_error_code(e) == RD_KAFKA_RESP_ERR__STATE &&
           !rd_kafka_error_is_fatal(e) && !rd_kafka_error_txn_requires_abort(e) &&
           strstr(rd_kafka_error_string(e), "CommittingTransaction") != NULL;
}

rd_kafka_error_t *lk__kafka_txn_call(lk__sink_t *s, rd_kafka_t *rk,
                                     rd_kafka_error_t *(*fn)(rd_kafka_t *, int),
                                     int timeout_ms) {
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
#ifndef LK_NO_FAULTPOINTS
        /* error injection: the answer librdkafka 2.0.2 gives a commit resumed while the
         * EndTxn of the call before is unanswered (a race that cannot be produced on cue;
         * see commit_in_flight) */
        rd_kafka_error_t *e =
            fn == rd_kafka_commit_transaction && lk__fault_word("commit-in-flight")
                ? rd_kafka_error_new(RD_KAFKA_RESP_ERR__STATE,
                                     "Operation not valid in state CommittingTransaction "
                                     "(injected at fault point commit-in-flight)")
                : fn(rk, slice);
#else
        rd_kafka_error_t *e = fn(rk, slice);
#endif
        int in_flight = fn == rd_kafka_commit_transaction && commit_in_flight(e);
        if (!e || !(rd_kafka_error_is_retriable(e) || in_flight) ||
            is_fencing(rd_kafka_error_code(e)) ||
            lk__mono_ms() >= end || lk__kafka_abandoned(s) ||
            (s->deadline_ms && atomic_load(s->deadline_ms) &&
             lk__mono_ms() >= atomic_load(s->deadline_ms)))
            return e;
        rd_kafka_error_destroy(e);
        if (in_flight) /* answered at once: give the EndTxn time */
            lk__nap_ms(10, NULL, NULL);
    }
}

/* Map a transactional API error; the message says which class it is. Fencing codes stop
 * the application whatever class librdkafka gives them: librdkafka 2.0.2 marks
 * PRODUCER_FENCED on AddOffsetsToTxn abortable, and a zombie would retry forever. */
lk_err_t lk__kafka_txn_error(lk__kafka_sink_t *k, rd_kafka_error_t *e, const char *what,
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

/* ---- clients ---- */

/* A client's librdkafka conf: lockstep's defaults for this client (n_defaults pairs, each
 * overridden by the user's kafka.* property of the same name), then the user's kafka.*. */
static rd_kafka_conf_t *client_conf(const lk_conf_t *conf, const char *const (*defaults)[2],
                                    size_t n_defaults, char *errstr, size_t errstr_size) {
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    char kerr[512];
    for (size_t i = 0; i < n_defaults; i++)
        if (rd_kafka_conf_set(kc, defaults[i][0], defaults[i][1], kerr, sizeof kerr) !=
            RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(kc);
            lk__fmt(errstr, errstr_size, "%s=%s: %s", defaults[i][0], defaults[i][1], kerr);
            return NULL;
        }
    if (lk__conf_kafka_apply(kc, conf, errstr, errstr_size)) {
        rd_kafka_conf_destroy(kc);
        return NULL;
    }
    lk__conf_kafka_log(kc, conf); /* its log follows the context's log.level */
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

/* A transactional call of the producer (lk__kafka_txn_call), its error mapped. */
static lk_err_t txn_run(lk__sink_t *s, rd_kafka_error_t *(*fn)(rd_kafka_t *, int),
                        const char *what, char *errstr, size_t errstr_size) {
    lk__kafka_sink_t *k = s->impl;
    rd_kafka_error_t *e = lk__kafka_txn_call(s, k->producer, fn, k->timeout_ms);
    return e ? lk__kafka_txn_error(k, e, what, errstr, errstr_size) : LK_OK;
}

/* init_transactions on the current producer: fences zombies with the same
 * transactional.id and aborts their transaction (and this task's orphan one). */
lk_err_t lk__kafka_init_txn(lk__sink_t *s, char *errstr, size_t errstr_size) {
    lk__kafka_sink_t *k = s->impl;
    lk_err_t e = txn_run(s, rd_kafka_init_transactions, "init_transactions", errstr,
                         errstr_size);
    if (!e)
        k->inited = 1;
    return e;
}

/* The transactional producer; batch_size > 0 overrides batch.size. */
lk_err_t lk__kafka_producer_new(lk__sink_t *s, int64_t batch_size, char *errstr,
                                size_t errstr_size) {
    lk__kafka_sink_t *k = s->impl;
    lk_err_t e;
    /* A transaction begun right after the last one's EndTxn finds the coordinator still
     * writing that one's markers: its first request (AddOffsetsToTxn, or AddPartitionsToTxn)
     * is answered CONCURRENT_TRANSACTIONS and retried after retry.backoff.ms, librdkafka's
     * 100 ms by default -- a tenth of a second added to every back-to-back delivery on a
     * real broker (librdkafka's eos debug log; the mock never answers so). The Java
     * producer retries that error after 20 ms (KAFKA-5477); so does this one, unless
     * kafka.retry.backoff.ms says otherwise. */
    static const char *const pdefaults[][2] = {{"retry.backoff.ms", "20"}};
    rd_kafka_conf_t *pc =
        client_conf(k->conf, pdefaults, LK_ARRAY_SIZE(pdefaults), errstr, errstr_size);
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
    rd_kafka_conf_set_dr_msg_cb(pc, lk__kafka_on_delivery);
    rd_kafka_conf_set_opaque(pc, s);
    return client_new(&k->producer, RD_KAFKA_PRODUCER, pc, "producer", errstr, errstr_size);
}

static lk_err_t kafka_open(lk__sink_t *s, const lk_conf_t *conf, char *errstr,
                           size_t errstr_size) {
    lk__kafka_sink_t *k = calloc(1, sizeof *k);
    if (!k)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    s->impl = k;
    k->owner = s;
    k->prov_member = SIZE_MAX; /* no provenance value before kafka_begin */
    k->send_offsets = conf ? lk__conf_bool(conf, LK__P_SINK_KAFKA_SEND_OFFSETS) : 1;
    k->timeout_ms = conf ? (int)lk__conf_int(conf, LK__P_SINK_KAFKA_TIMEOUT_MS) : 30000;
    /* single mode: the application is one task with the application's transactional id;
     * scale-out: task p is <app.id>.<p> and writes partition p of the progress topic,
     * which no other transactional id writes (DESIGN.md, Scale-out); the stage after
     * lk_repartition <uid> has its own progress topic and transactional ids */
    const char *dot = s->stage[0] ? "." : "";
    lk__fmt(k->progress_topic, sizeof k->progress_topic, "%s%s%s.progress", s->app_id, dot,
            s->stage);
    if (s->task >= 0)
        lk__fmt(k->txn_id, sizeof k->txn_id, "%s%s%s.%d", s->app_id, dot, s->stage, s->task);
    else
        lk__fmt(k->txn_id, sizeof k->txn_id, "%s", s->app_id);
    k->progress_partition = s->task >= 0 ? s->task : 0;
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
    lk_err_t e = lk__kafka_producer_new(s, 0, errstr, errstr_size);
    if (e)
        return e;
    /* assign() needs a group id; the reader never joins the group or commits */
    char gid[600];
    lk__fmt(gid, sizeof gid, "%s.progress-reader", s->app_id);
    const char *const rfixed[][2] = {
        {"enable.auto.commit", "false"}, {"isolation.level", "read_committed"},
        {"enable.partition.eof", "true"}, {"auto.offset.reset", "error"}, {"group.id", gid},
    };
    /* The reader also reads a task's changelog at its restore (kafka_changelog.c), from one
     * queue: with librdkafka's queued.min.messages (100000) a restore of more records than
     * that stops fetching whenever the queue holds 100k, until librdkafka's next
     * one-second wakeup (2.0.2; 2.4 made it fetch.queue.backoff.ms): a restore of 1M
     * records took ~7 s instead of ~1.7 (bench/run, restore). Memory stays bounded by
     * queued.max.messages.kbytes (64 MiB by default). A default: kafka.* overrides it. */
    static const char *const rdefaults[][2] = {{"queued.min.messages", "10000000"}};
    rd_kafka_conf_t *rc = client_conf(conf, rdefaults, LK_ARRAY_SIZE(rdefaults), errstr,
                                      errstr_size);
    if (!rc)
        return LK_ERR_CONF_INVALID;
    if ((e = conf_fixed(rc, rfixed, LK_ARRAY_SIZE(rfixed), "progress reader", errstr,
                        errstr_size)) ||
        (e = client_new(&k->reader, RD_KAFKA_CONSUMER, rc, "progress reader", errstr,
                        errstr_size)))
        return e;
    const char *const ufixed[][2] = {{"isolation.level", "read_uncommitted"}};
    rd_kafka_conf_t *uc = client_conf(conf, NULL, 0, errstr, errstr_size);
    if (!uc)
        return LK_ERR_CONF_INVALID;
    if ((e = conf_fixed(uc, ufixed, 1, "progress probe", errstr, errstr_size)) ||
        (e = client_new(&k->probe, RD_KAFKA_CONSUMER, uc, "progress probe", errstr,
                        errstr_size)))
        return e;
    return LK_OK;
}

static void kafka_close(lk__sink_t *s) {
    lk__kafka_sink_t *k = s->impl;
    if (s->group_md) /* the sink owns it from the moment it is set, opened or not */
        rd_kafka_consumer_group_metadata_destroy(s->group_md);
    s->group_md = NULL;
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
    free(k->prov);
    free(k);
    s->impl = NULL;
}

/* ---- one delivery ---- */

/* The batch's input offsets, committed for group <app.id> in the transaction, so that
 * standard lag tools see the application's progress (lockstep itself reads its progress
 * records, never these). Sent at the start of the transaction, before any record: the
 * offsets are atomic with the transaction wherever they are sent in it, and sent first
 * their round trips (AddOffsetsToTxn, TxnOffsetCommit) do not queue behind the records'
 * AddPartitionsToTxn and produce requests; sent after the progress record they waited
 * for those and cost a third of a 10,000-record batch's delivery (issue 18). */
static lk_err_t send_offsets(lk__sink_t *s, const lk__batch_rec_t *b, char *errstr,
                             size_t errstr_size) {
    lk__kafka_sink_t *k = s->impl;
    if (!k->send_offsets || !b || !b->nranges)
        return LK_OK;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)b->nranges);
    for (size_t i = 0; i < b->nranges; i++)
        rd_kafka_topic_partition_list_add(l, b->ranges[i].topic, b->ranges[i].partition)
            ->offset = b->ranges[i].until;
    /* scale-out: the group member's metadata (generation and member id: the broker
     * refuses offsets of a member the group has moved on from, KIP-447) */
    rd_kafka_consumer_group_metadata_t *g =
        s->group_md ? s->group_md : rd_kafka_consumer_group_metadata_new(s->app_id);
    rd_kafka_error_t *e = LK__FAULT_KAFKA("send_offsets_to_transaction",
                                          rd_kafka_send_offsets_to_transaction(
                                              k->producer, l, g, budget_ms(s, k->timeout_ms)));
    if (g != s->group_md)
        rd_kafka_consumer_group_metadata_destroy(g);
    rd_kafka_topic_partition_list_destroy(l);
    return e ? lk__kafka_txn_error(k, e, "send_offsets_to_transaction", errstr, errstr_size)
             : LK_OK;
}

static lk_err_t kafka_begin(lk__sink_t *s, uint64_t batch, char *errstr, size_t errstr_size) {
    lk__kafka_sink_t *k = s->impl;
    /* serve what an aborted attempt's records still report (purged by the abort) before
     * counting this attempt's */
    (void)rd_kafka_poll(k->producer, 0);
    k->attempt_records = 0;
    for (size_t i = 0; i < s->nmembers; i++)
        s->members[i].attempt_next = -1;
    k->dr_failed = 0;
    k->have_failed = 0;
    k->next_index = 0;
    k->index_member = 0;
    k->prov_batch = batch;
    k->prov_member = SIZE_MAX; /* a new attempt: the provenance value is formatted again */
    if (k->div_batch != batch)
        k->ndivert = 0; /* diverted records belong to one batch */
    lk_err_t r = lk__kafka_apply_sizing(s, errstr, errstr_size);
    if (r)
        return r;
    rd_kafka_error_t *e = LK__FAULT_KAFKA("begin_transaction",
                                          rd_kafka_begin_transaction(k->producer));
    if (e)
        return lk__kafka_txn_error(k, e, "begin_transaction", errstr, errstr_size);
    k->txn_open = 1;
    return send_offsets(s, s->batch_rec, errstr, errstr_size);
}

static lk_err_t produce(lk__sink_t *s, const char *topic, int32_t partition, const void *key,
                        size_t klen, const void *value, size_t vlen, int64_t ts,
                        rd_kafka_headers_t *hdrs, void *opaque, char *errstr,
                        size_t errstr_size) {
    lk__kafka_sink_t *k = s->impl;
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
        if (ke == RD_KAFKA_RESP_ERR__QUEUE_FULL && !lk__kafka_abandoned(s)) {
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
        if (lk__kafka_is_permanent(ke) && opaque != OPAQUE_PROGRESS) {
            /* refused before sending (client-side): the delivery report path decides, as
             * for a broker's refusal, so dead-lettering works the same */
            lk__kafka_failed_rec_t f = {OPAQUE_MEMBER(opaque), OPAQUE_INDEX(opaque), ke, 1,
                              partition, ""};
            if (ke == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE)
                lk__fmt(f.errstr, sizeof f.errstr, "the record (%zu bytes of key and value) "
                        "is larger than the producer's message.max.bytes", klen + vlen);
            else
                lk__fmt(f.errstr, sizeof f.errstr, "%s", rd_kafka_err2str(ke));
            if (!k->have_failed || !lk__kafka_is_permanent(k->first_failed.err)) {
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

/* The headers of a record of the attempt kafka_begin started, for member (s->nmembers:
 * the progress record), with room for extra more: the provenance header alone so far;
 * NULL if out of memory or the header was refused. Called once per output record, so the
 * value is formatted only when the member changes and copied otherwise: one header, not
 * one per fact, because librdkafka allocates and copies each header of each record
 * (provenance_int.h). */
static rd_kafka_headers_t *provenance(lk__sink_t *s, size_t member, size_t extra) {
    lk__kafka_sink_t *k = s->impl;
    if (k->prov_member != member) {
        const char *uid = member < s->nmembers ? s->members[member].uid : "";
        size_t n = lk__prov_format(k->prov, k->prov_cap, k->prov_batch, s->attempt,
                                   s->app_id, uid);
        if (n >= k->prov_cap) {
            char *b = realloc(k->prov, n + 1);
            if (!b)
                return NULL;
            k->prov = b;
            k->prov_cap = n + 1;
            (void)lk__prov_format(b, k->prov_cap, k->prov_batch, s->attempt, s->app_id, uid);
        }
        k->prov_len = n;
        k->prov_member = member;
    }
    rd_kafka_headers_t *h = rd_kafka_headers_new(extra + 1);
    if (rd_kafka_header_add(h, LK__PROV_HEADER, sizeof LK__PROV_HEADER - 1, k->prov,
                            (ssize_t)k->prov_len)) {
        rd_kafka_headers_destroy(h);
        return NULL;
    }
    return h;
}

static lk_err_t kafka_write(lk__sink_t *s, const lk__out_record_t *r, char *errstr,
                            size_t errstr_size) {
    lk__kafka_sink_t *k = s->impl;
    if (k->index_member != s->cur) {
        k->index_member = s->cur;
        k->next_index = 0;
    }
    uint64_t index = k->next_index++;
    const lk__sink_member_t *m = &s->members[s->cur];
    const lk__kafka_failed_rec_t *dv = lk__kafka_diverted(k, s->cur, index);
    rd_kafka_headers_t *h = provenance(s, s->cur, r->nheaders + (dv ? 3 : 0));
    if (!h)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "sink '%s': provenance header: out "
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
    return e ? lk__kafka_record_failed(s, e, errstr, errstr_size) : LK_OK;
}

/* A committed transaction: each member's records of it are in the log up to attempt_next
 * (its delivery reports were served by the commit's flush). */
static void committed_positions(lk__sink_t *s) {
    for (size_t i = 0; i < s->nmembers; i++)
        if (s->members[i].attempt_next >= 0)
            s->members[i].delivered_next = s->members[i].attempt_next;
}

static lk_err_t kafka_commit(lk__sink_t *s, const lk__batch_rec_t *b, char *errstr,
                             size_t errstr_size) {
    lk__kafka_sink_t *k = s->impl;
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
    /* a task's stateful operators as this process defines them (kind, state schema,
     * window): a handoff compares them with its own before restoring or continuing the
     * state (check_state in kafka_progress.c). Carried here, not on each changelog
     * record: the handoff reads this record anyway, it costs one small field per batch
     * where a header would cost bytes on every state write, and it also covers a task
     * whose changelog is empty or an operator the new pipeline no longer has. */
    json_t *state = s->task >= 0 ? json_object() : NULL;
    int oom = s->task >= 0 && !state; /* an operator left out would pass as a new one */
    for (size_t i = 0; state && !oom && i < s->nmembers; i++) {
        const lk__sink_member_t *m = &s->members[i];
        if (!m->changelog_of || !m->state_kind)
            continue;
        json_t *d = json_pack("{s:s, s:i}", "kind", m->state_kind, "schema",
                              (int)m->state_schema);
        oom = !d || (m->state_window &&
                     json_object_set_new(d, "window", json_string(m->state_window)));
        if (json_object_set_new(state, m->changelog_of, d))
            oom = 1;
    }
    if (state && !oom && doc)
        oom = json_object_set_new(doc, "state", state) != 0; /* takes state either way */
    else
        json_decref(state);
    char *value = doc && !oom ? json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(doc);
    if (!value)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    rd_kafka_headers_t *h = provenance(s, s->nmembers, 0);
    lk_err_t r = h ? produce(s, k->progress_topic, k->progress_partition, s->app_id, strlen(s->app_id), value,
                             strlen(value), 0, h, OPAQUE_PROGRESS, errstr, errstr_size)
                   : lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    free(value);
    if (r)
        return lk__kafka_record_failed(s, r, errstr, errstr_size);
    if (lk__faultpoint_armed("before-sink-commit")) {
        /* the kafka tier's orphaned transaction: killed with the batch's records in the
         * log and its transaction open (flushed first, or the kill could beat the sends) */
        (void)rd_kafka_flush(k->producer, budget_ms(s, k->timeout_ms)); /* best effort */
        lk__faultpoint("before-sink-commit");
    }
    rd_kafka_error_t *e = lk__kafka_txn_call(s, k->producer, rd_kafka_commit_transaction,
                                             k->timeout_ms);
    if (!e) {
        k->fence = s->batch;
        k->txn_open = 0;
        committed_positions(s);
        return LK_OK;
    }
    if ((rd_kafka_error_is_retriable(e) || commit_in_flight(e)) &&
        !is_fencing(rd_kafka_error_code(e))) {
        /* still running inside librdkafka: it cannot be aborted, only finished by calling
         * it again (resume_commit); until then its outcome is unknown */
        lk__kafka_txn_error(k, e, "commit_transaction", errstr, errstr_size);
        return LK_ERR_TIMED_OUT;
    }
    return lk__kafka_record_failed(s, lk__kafka_txn_error(k, e, "commit_transaction", errstr,
                                                         errstr_size),
                                   errstr, errstr_size);
}

/* Resume a commit that timed out (librdkafka's calls are resumable). A resumed commit
 * that succeeds delivered its batch: the fence moves to it directly, since a
 * read_committed reader may not see its progress record at once. */
static lk_err_t kafka_resume_commit(lk__sink_t *s, char *errstr, size_t errstr_size) {
    lk__kafka_sink_t *k = s->impl;
    rd_kafka_error_t *e = lk__kafka_txn_call(s, k->producer, rd_kafka_commit_transaction,
                                             k->timeout_ms);
    if (!e) {
        if (s->batch > k->fence)
            k->fence = s->batch;
        k->txn_open = 0;
        committed_positions(s);
        return LK_OK;
    }
    int retriable = (rd_kafka_error_is_retriable(e) || commit_in_flight(e)) &&
                    !is_fencing(rd_kafka_error_code(e));
    lk_err_t r = lk__kafka_txn_error(k, e, "resuming commit_transaction", errstr, errstr_size);
    return retriable ? LK_ERR_TIMED_OUT : r;
}

static lk_err_t kafka_abort(lk__sink_t *s, char *errstr, size_t errstr_size) {
    lk__kafka_sink_t *k = s->impl;
    if (!k->txn_open)
        return LK_OK; /* nothing begun (e.g. begin_transaction itself failed) */
    lk_err_t e = txn_run(s, rd_kafka_abort_transaction, "abort_transaction", errstr,
                         errstr_size);
    if (!e)
        k->txn_open = 0;
    return e;
}

const lk__sink_ops_t lk__sink_kafka_ops = {
    .kind = "kafka",
    .exactly_once = 1,
    .open = kafka_open,
    .recover = lk__kafka_recover,
    .begin = kafka_begin,
    .write = kafka_write,
    .commit = kafka_commit,
    .resume_commit = kafka_resume_commit,
    .abort = kafka_abort,
    .close = kafka_close,
    .restore = lk__kafka_restore,
};
