/*
 * receiver.c — the pull-based Kafka receiver (see receiver_int.h).
 *
 * One consumer, no group membership, no offset commits. Every known partition is
 * assigned and read from its own queue, and only while its range needs records, so
 * librdkafka's read-ahead waits in its queue for the next batch and nothing is paused.
 * For each partition, `cursor` is the offset from which everything received so far is
 * contiguous: a batch starting where the cursor stands reuses what was read ahead;
 * otherwise the partition is sought to the range start (after an abandoned batch, a
 * restart, or a data-loss skip). Records received past a range after a gap (compacted
 * records, transaction markers) are held for the next batch.
 *
 * A range can hold no visible record at all (aborted records and transaction markers
 * only, under read_committed). Such a range ends at the partition's end-of-partition
 * event; but librdkafka reports the end of a partition once per offset reached, so when
 * the previous range already took that event, `eof_at` remembers where it was: a range
 * of a contiguous partition that ends at or before `eof_at` is complete with whatever was
 * held for it (found on a real broker: the batch waited for fetch.timeout.ms, forever).
 */
#define _GNU_SOURCE
#include "receiver_int.h"
#include "../core/conf_int.h"
#include "../core/util_int.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LK__KAFKA_TIMEOUT_MS 5000

typedef struct {
    const char *topic; /* points into r->topics */
    int32_t partition;
    int64_t cursor; /* -1: unknown, seek before use */
    rd_kafka_message_t **held; /* received past the last range (after a gap) */
    size_t nheld, capheld;
    rd_kafka_queue_t *queue;   /* the partition's own message queue */
    long range; /* index into the current fetch, -1: none */
    int done;
    int64_t eof_at; /* end-of-partition offset reported since the last seek; -1: none */
    int checked;                /* the checkpointed fingerprint was compared (or none) */
    int64_t seen_low, seen_high; /* watermarks at the last plan; -1: none yet */
} part_t;

struct lk_receiver {
    rd_kafka_t *rk;      /* fetches */
    rd_kafka_t *planner; /* metadata and watermarks: its own connections, so planning
                          * never queues behind the fetcher's long-poll requests */
    char **topics;
    rd_kafka_topic_t **prkts; /* topic handles of the planner */
    size_t ntopics;
    part_t *parts;
    size_t nparts, capparts;
    int assigned; /* the assignment matches parts[] */
    int64_t max_records, max_bytes, fetch_timeout_ms;
    int auto_latest, skip_loss;
    int64_t last_err_log_ms;
};

static void drop_held(part_t *p) {
    for (size_t i = 0; i < p->nheld; i++)
        rd_kafka_message_destroy(p->held[i]);
    p->nheld = 0;
}

static int hold(part_t *p, rd_kafka_message_t *m) {
    if (p->nheld == p->capheld) {
        size_t cap = p->capheld ? p->capheld * 2 : 64;
        rd_kafka_message_t **n = realloc(p->held, cap * sizeof *n);
        if (!n)
            return -1;
        p->held = n;
        p->capheld = cap;
    }
    p->held[p->nheld++] = m;
    return 0;
}

static part_t *find_part(lk_receiver_t *r, const char *topic, int32_t partition) {
    for (size_t i = 0; i < r->nparts; i++)
        if (r->parts[i].partition == partition && !strcmp(r->parts[i].topic, topic))
            return &r->parts[i];
    return NULL;
}

static part_t *add_part(lk_receiver_t *r, const char *topic, int32_t partition) {
    if (r->nparts == r->capparts) {
        size_t cap = r->capparts ? r->capparts * 2 : 16;
        part_t *n = realloc(r->parts, cap * sizeof *n);
        if (!n)
            return NULL;
        r->parts = n;
        r->capparts = cap;
    }
    part_t *p = &r->parts[r->nparts++];
    memset(p, 0, sizeof *p);
    p->topic = topic;
    p->partition = partition;
    p->cursor = -1;
    p->eof_at = -1;
    p->range = -1;
    p->seen_low = p->seen_high = -1;
    r->assigned = 0; /* a new partition must join the assignment */
    return p;
}

static const char *own_topic(lk_receiver_t *r, const char *topic) {
    for (size_t i = 0; i < r->ntopics; i++)
        if (!strcmp(r->topics[i], topic))
            return r->topics[i];
    return NULL;
}

/* A consumer with kafka.* applied and what exactly-once needs on top. The fetching
 * one gets a group id: assign() needs one, though the receiver never joins a group
 * or commits. */
static rd_kafka_t *new_consumer(const lk_conf_t *conf, int fetcher, char *errstr,
                                size_t errstr_size) {
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    char kerr[512];
    size_t n = lk__conf_kafka_count(conf);
    int has_group = 0, has_queued = 0;
    for (size_t i = 0; i < n; i++) {
        const char *k, *v;
        lk__conf_kafka_get(conf, i, &k, &v);
        if (!strcmp(k, "group.id"))
            has_group = 1;
        if (!strcmp(k, "queued.max.messages.kbytes"))
            has_queued = 1;
        if (rd_kafka_conf_set(kc, k, v, kerr, sizeof kerr) != RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(kc);
            lk__fmt(errstr, errstr_size, "kafka.%s: %s", k, kerr);
            return NULL;
        }
    }
    static const char *const fixed[][2] = {
        {"enable.auto.commit", "false"},      {"enable.auto.offset.store", "false"},
        {"isolation.level", "read_committed"}, {"enable.partition.eof", "true"},
        {"auto.offset.reset", "error"},
    };
    for (size_t i = 0; i < LK_ARRAY_SIZE(fixed); i++)
        rd_kafka_conf_set(kc, fixed[i][0], fixed[i][1], kerr, sizeof kerr);
    /* With a queue per partition, librdkafka's read-ahead bound applies per partition:
     * its 64 MiB default times many partitions is too much to hold by default. */
    if (fetcher && !has_queued)
        rd_kafka_conf_set(kc, "queued.max.messages.kbytes", "8192", kerr, sizeof kerr);
    if (fetcher && !has_group)
        rd_kafka_conf_set(kc, "group.id", lk__conf_str(conf, LK__P_APP_ID), kerr, sizeof kerr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, kerr, sizeof kerr);
    if (!rk)
        lk__fmt(errstr, errstr_size, "cannot create the %s consumer: %s",
                fetcher ? "fetching" : "planning", kerr);
    return rk;
}

lk_err_t lk__receiver_new(lk_receiver_t **out, const lk_conf_t *conf, const char **topics,
                          size_t ntopics, char *errstr, size_t errstr_size) {
    *out = NULL;
    if (ntopics == 0)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size,
                       "the pipeline reads no topic (add lk_kafka_stream)");
    lk_receiver_t *r = calloc(1, sizeof *r);
    if (!r)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    r->max_records = lk__conf_int(conf, LK__P_MAX_RECORDS_PER_PARTITION);
    r->max_bytes = lk__conf_int(conf, LK__P_MAX_BYTES_PER_BATCH);
    r->fetch_timeout_ms = lk__conf_int(conf, LK__P_FETCH_TIMEOUT_MS);
    r->auto_latest = lk__conf_int(conf, LK__P_AUTO_OFFSET_RESET) == 1;
    r->skip_loss = lk__conf_int(conf, LK__P_ON_DATA_LOSS) == 1;

    if (!(r->rk = new_consumer(conf, 1, errstr, errstr_size)) ||
        !(r->planner = new_consumer(conf, 0, errstr, errstr_size))) {
        lk__receiver_destroy(r);
        return LK_ERR_KAFKA;
    }
    r->topics = calloc(ntopics, sizeof *r->topics);
    r->prkts = calloc(ntopics, sizeof *r->prkts);
    if (!r->topics || !r->prkts) {
        lk__receiver_destroy(r);
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    }
    for (size_t i = 0; i < ntopics; i++) {
        r->topics[i] = strdup(topics[i]);
        r->prkts[i] = rd_kafka_topic_new(r->planner, topics[i], NULL);
        r->ntopics++;
        if (!r->topics[i] || !r->prkts[i]) {
            lk__receiver_destroy(r);
            return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "cannot create topic handle %s",
                           topics[i]);
        }
    }
    *out = r;
    return LK_OK;
}

/*
 * Closing a librdkafka client, bounded. librdkafka 2.0.2's rd_kafka_destroy() can wait
 * forever for its own threads (seen on a real broker after an input topic was deleted
 * and recreated: the application had stopped with its error, then never exited;
 * librdkafka issues #3182, #3470 and #5434 describe the like). The close runs on a
 * thread of its own; after DESTROY_WAIT_MS the caller goes on without it, saying so, and
 * the client is left to its threads (freed with the process).
 */
#define DESTROY_WAIT_MS 10000

typedef struct {
    rd_kafka_t *rk;
    int consumer_close;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, abandoned;
} destroy_job_t;

static void destroy_job_free(destroy_job_t *j) {
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

static void *destroy_thread(void *o) {
    destroy_job_t *j = o;
    sigset_t all; /* signals are for the application's threads */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    if (j->consumer_close)
        (void)rd_kafka_consumer_close(j->rk); /* no group, no offsets: nothing to report */
    rd_kafka_destroy(j->rk);
    pthread_mutex_lock(&j->mu);
    j->done = 1;
    int abandoned = j->abandoned;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
    if (abandoned)
        destroy_job_free(j);
    return NULL;
}

static void destroy_bounded(rd_kafka_t *rk, int consumer_close, const char *what) {
    destroy_job_t *j = calloc(1, sizeof *j);
    pthread_t th;
    if (j) {
        j->rk = rk;
        j->consumer_close = consumer_close;
        pthread_mutex_init(&j->mu, NULL);
        pthread_cond_init(&j->cv, NULL);
    }
    if (!j || pthread_create(&th, NULL, destroy_thread, j)) { /* no thread: unbounded */
        if (j)
            destroy_job_free(j);
        if (consumer_close)
            (void)rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
        return;
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until); /* pthread_cond_timedwait's default clock */
    until.tv_sec += DESTROY_WAIT_MS / 1000;
    pthread_mutex_lock(&j->mu);
    int rc = 0;
    while (!j->done && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&j->cv, &j->mu, &until);
    int done = j->done;
    if (!done)
        j->abandoned = 1;
    pthread_mutex_unlock(&j->mu);
    if (done) {
        pthread_join(th, NULL);
        destroy_job_free(j);
        return;
    }
    pthread_detach(th); /* it frees the job if it ever finishes */
    lk__log(LK_LOG_WARNING,
            "the %s did not close within %d s (a librdkafka 2.0.2 hang); going on without "
            "waiting for it",
            what, DESTROY_WAIT_MS / 1000);
}

void lk__receiver_destroy(lk_receiver_t *r) {
    if (!r)
        return;
    for (size_t i = 0; i < r->nparts; i++) {
        drop_held(&r->parts[i]);
        free(r->parts[i].held);
        if (r->parts[i].queue)
            rd_kafka_queue_destroy(r->parts[i].queue);
    }
    free(r->parts);
    for (size_t i = 0; i < r->ntopics; i++)
        if (r->prkts[i])
            rd_kafka_topic_destroy(r->prkts[i]);
    if (r->rk)
        destroy_bounded(r->rk, 1, "fetching consumer");
    if (r->planner)
        destroy_bounded(r->planner, 0, "planning consumer");
    for (size_t i = 0; i < r->ntopics; i++)
        free(r->topics[i]);
    free(r->topics);
    free(r->prkts);
    free(r);
}

void lk__receiver_invalidate(lk_receiver_t *r) {
    for (size_t i = 0; i < r->nparts; i++) {
        drop_held(&r->parts[i]);
        r->parts[i].cursor = -1;
        r->parts[i].eof_at = -1;
    }
}

void lk__fetch_release_messages(lk__fetch_t *f) {
    for (size_t i = 0; i < f->nranges; i++) {
        for (size_t j = 0; j < f->ranges[i].n; j++)
            rd_kafka_message_destroy(f->ranges[i].msgs[j]);
        free(f->ranges[i].msgs);
        f->ranges[i].msgs = NULL;
        f->ranges[i].n = f->ranges[i].cap = 0;
    }
}

void lk__fetch_clear(lk__fetch_t *f) {
    lk__fetch_release_messages(f);
    free(f->ranges);
    memset(f, 0, sizeof *f);
}

/* The fingerprint of a fetched record. */
static lk_fingerprint_t fingerprint_of(const rd_kafka_message_t *m) {
    rd_kafka_timestamp_type_t tt;
    lk_fingerprint_t fp = {m->offset, rd_kafka_message_timestamp(m, &tt),
                           lk__record_hash(m->key, m->key_len, m->payload, m->len)};
    return fp;
}

static void fp_text(char *buf, size_t size, const lk_fingerprint_t *fp) {
    lk__fmt(buf, size, "offset %lld, timestamp %lld, hash %016llx", (long long)fp->offset,
            (long long)fp->timestamp, (unsigned long long)fp->hash);
}

/*
 * Read the record at fp->offset of partition p (topic index ti) back with the planner's
 * simple consumer and compare it with fp. The same record: LK_OK. Another one, or none
 * where the log start (retention) cannot explain it: data loss — the topic was recreated
 * (or its log rewritten), so which of its records were read cannot be told.
 */
static lk_err_t verify_fingerprint(lk_receiver_t *r, size_t ti, part_t *p, int64_t low,
                                   int64_t from, const lk_fingerprint_t *fp, lk__fetch_t *f,
                                   char *errstr, size_t errstr_size) {
    const char *topic = r->topics[ti];
    int pid = (int)p->partition;
    if (fp->offset < low) /* deleted by retention: nothing left to compare with */
        return LK_OK;
    rd_kafka_topic_t *rkt = r->prkts[ti];
    if (rd_kafka_consume_start(rkt, p->partition, fp->offset) == -1)
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size,
                       "%s[%d]: cannot read back offset %lld to check it: %s", topic, pid,
                       (long long)fp->offset, rd_kafka_err2str(rd_kafka_last_error()));
    int64_t deadline = lk__mono_ms() + r->fetch_timeout_ms;
    rd_kafka_message_t *m = NULL;
    int missing = 0, timed_out = 0;
    while (!m && !missing) {
        if (lk__mono_ms() > deadline) {
            timed_out = 1;
            break;
        }
        rd_kafka_message_t *x = rd_kafka_consume(rkt, p->partition, 100);
        if (!x)
            continue;
        if (x->err == RD_KAFKA_RESP_ERR__PARTITION_EOF ||
            x->err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE ||
            x->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET)
            missing = 1;
        else if (!x->err && x->offset >= fp->offset)
            m = x; /* other errors are transient: retried until the deadline */
        if (x != m)
            rd_kafka_message_destroy(x);
    }
    rd_kafka_consume_stop(rkt, p->partition);
    if (timed_out)
        return lk__err(LK_ERR_TIMED_OUT, errstr, errstr_size,
                       "%s[%d]: could not read back offset %lld (the last record read) to "
                       "check it within fetch.timeout.ms",
                       topic, pid, (long long)fp->offset);
    lk_fingerprint_t got = {-1, -1, 0};
    if (m) {
        got = fingerprint_of(m);
        rd_kafka_message_destroy(m);
    }
    if (got.offset == fp->offset && got.timestamp == fp->timestamp && got.hash == fp->hash)
        return LK_OK;
    char want[128], found[160];
    fp_text(want, sizeof want, fp);
    if (got.offset == fp->offset) {
        char g[128];
        fp_text(g, sizeof g, &got);
        lk__fmt(found, sizeof found, "another record is there (%s)", g);
    } else if (got.offset > fp->offset) {
        lk__fmt(found, sizeof found, "no record is there (the next one is at offset %lld)",
                (long long)got.offset);
    } else {
        lk__fmt(found, sizeof found, "no record is there");
    }
    uint64_t unread = (uint64_t)(from - low);
    if (!r->skip_loss)
        return lk__err(LK_ERR_DATA_LOSS, errstr, errstr_size,
                       "%s[%d]: the last record read (%s) is not in the log any more: %s. The "
                       "topic was deleted and recreated, or its log rewritten, and its %llu "
                       "records before the checkpointed offset %lld were never read; set "
                       "on.data.loss=skip to continue at offset %lld with them counted as "
                       "skipped, or reset this partition's offset explicitly",
                       topic, pid, want, found, (unsigned long long)unread, (long long)from,
                       (long long)from);
    lk__log(LK_LOG_WARNING,
            "%s[%d]: the last record read (%s) is not in the log any more: %s; "
            "on.data.loss=skip: continuing at offset %lld, %llu records counted as skipped",
            topic, pid, want, found, (long long)from, (unsigned long long)unread);
    f->data_loss_skipped += unread;
    return LK_OK;
}

/* Checks of a partition's log before a batch reads [from, ...) of it, for a fresh plan
 * and a replayed one alike: the fingerprint of the last record read is compared at the
 * first plan, and again whenever the log start or end moved backwards (a recreated
 * topic) or the topic was missing in between. The fast path costs two comparisons. */
static lk_err_t check_log(lk_receiver_t *r, size_t ti, part_t *p, int64_t low, int64_t high,
                          int64_t from, const lk_fingerprint_t *fp, int has_fp,
                          lk__fetch_t *f, char *errstr, size_t errstr_size) {
    if (p->seen_high >= 0 && (low < p->seen_low || high < p->seen_high)) {
        if (p->checked)
            lk__log(LK_LOG_NOTICE,
                    "%s[%d]: the log moved backwards (was %lld..%lld, now %lld..%lld): "
                    "checking the last record read",
                    p->topic, (int)p->partition, (long long)p->seen_low,
                    (long long)p->seen_high, (long long)low, (long long)high);
        p->checked = 0;
    }
    p->seen_low = low;
    p->seen_high = high;
    if (p->checked)
        return LK_OK;
    lk_err_t e = has_fp ? verify_fingerprint(r, ti, p, low, from, fp, f, errstr, errstr_size)
                        : LK_OK;
    if (!e)
        p->checked = 1;
    return e;
}

static size_t topic_index(lk_receiver_t *r, const char *own) {
    for (size_t i = 0; i < r->ntopics; i++)
        if (r->topics[i] == own)
            return i;
    return 0;
}

static lk_err_t add_range(lk__fetch_t *f, const char *topic, int32_t partition, int64_t from,
                          int64_t until, int64_t high, size_t *cap) {
    if (f->nranges == *cap) {
        size_t c = *cap ? *cap * 2 : 16;
        lk__range_msgs_t *n = realloc(f->ranges, c * sizeof *n);
        if (!n)
            return LK_ERR_NOMEM;
        f->ranges = n;
        *cap = c;
    }
    lk__range_msgs_t *rm = &f->ranges[f->nranges++];
    memset(rm, 0, sizeof *rm);
    rm->range = (lk_range_t){topic, partition, from, until};
    rm->high = high;
    return LK_OK;
}

lk_err_t lk__receiver_plan(lk_receiver_t *r, lk__offset_lookup_fn *lookup, void *opaque,
                           lk__fetch_t *f, char *errstr, size_t errstr_size) {
    memset(f, 0, sizeof *f);
    size_t cap = 0;
    lk_err_t err = LK_OK;
    for (size_t t = 0; t < r->ntopics && !err; t++) {
        const char *topic = r->topics[t];
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t ke = rd_kafka_metadata(r->planner, 0, r->prkts[t], &md, LK__KAFKA_TIMEOUT_MS);
        if (ke) {
            err = lk__err(LK_ERR_KAFKA, errstr, errstr_size,
                          "cannot read metadata of topic %s: %s", topic, rd_kafka_err2str(ke));
            break;
        }
        if (md->topic_cnt != 1 || md->topics[0].err || md->topics[0].partition_cnt == 0) {
            /* the topic is missing: if it comes back, it may be another topic of the
             * same name, so its partitions are checked again */
            for (size_t i = 0; i < r->nparts; i++)
                if (r->parts[i].topic == topic)
                    r->parts[i].checked = 0;
            rd_kafka_resp_err_t te = md->topic_cnt == 1 ? md->topics[0].err
                                                        : RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
            err = lk__err(LK_ERR_KAFKA, errstr, errstr_size, "input topic %s: %s", topic,
                          te ? rd_kafka_err2str(te) : "no partitions");
            rd_kafka_metadata_destroy(md);
            break;
        }
        /* A topic with offsets in the checkpoint is being read: partitions new to it
         * start at the earliest offset. auto.offset.reset decides only for new topics. */
        int known_topic = 0;
        for (int i = 0; i < md->topics[0].partition_cnt && !known_topic && !err; i++) {
            int64_t o;
            lk_fingerprint_t fp;
            int has_fp;
            lk_err_t le = lookup(topic, md->topics[0].partitions[i].id, &o, &fp, &has_fp,
                                 opaque, errstr, errstr_size);
            known_topic = le == LK_OK;
            if (le && le != LK_ERR_NOT_FOUND)
                err = le; /* corrupt is never "not found" */
        }
        for (int i = 0; i < md->topics[0].partition_cnt && !err; i++) {
            int32_t pid = md->topics[0].partitions[i].id;
            int64_t low, high, from;
            ke = rd_kafka_query_watermark_offsets(r->planner, topic, pid, &low, &high,
                                                  LK__KAFKA_TIMEOUT_MS);
            if (ke) {
                err = lk__err(LK_ERR_KAFKA, errstr, errstr_size,
                              "cannot read offsets of %s[%d]: %s", topic, pid,
                              rd_kafka_err2str(ke));
                break;
            }
            lk_fingerprint_t fp = {0, 0, 0};
            int has_fp = 0;
            lk_err_t le = lookup(topic, pid, &from, &fp, &has_fp, opaque, errstr, errstr_size);
            if (le && le != LK_ERR_NOT_FOUND) {
                err = le;
                break;
            }
            int found = le == LK_OK;
            if (!found) {
                f->new_partitions++;
                from = known_topic || !r->auto_latest ? low : high;
                if (known_topic)
                    lk__log(LK_LOG_NOTICE, "new partition %s[%d]: reading from offset %lld",
                            topic, pid, (long long)from);
            }
            if (from > high) {
                /* The log was truncated or the topic recreated: which of its records
                 * were processed cannot be told, so no policy may guess. */
                err = lk__err(LK_ERR_DATA_LOSS, errstr, errstr_size,
                              "%s[%d]: checkpointed offset %lld is beyond the log end %lld: "
                              "the topic was recreated or its log truncated, and which "
                              "records were already processed cannot be told; reset this "
                              "partition's offset explicitly",
                              topic, pid, (long long)from, (long long)high);
                break;
            }
            if (from < low) {
                const char *why = "below the log start";
                if (!r->skip_loss) {
                    err = lk__err(LK_ERR_DATA_LOSS, errstr, errstr_size,
                                  "%s[%d]: checkpointed offset %lld is %s (log %lld..%lld): "
                                  "%lld records were deleted before they were read; set "
                                  "on.data.loss=skip to continue at %lld",
                                  topic, pid, (long long)from, why, (long long)low,
                                  (long long)high,
                                  (long long)(low - from), (long long)low);
                    break;
                }
                uint64_t lost = (uint64_t)(low - from);
                lk__log(LK_LOG_WARNING,
                        "%s[%d]: checkpointed offset %lld is %s (log %lld..%lld); "
                        "on.data.loss=skip: continuing at %lld, %llu offsets skipped",
                        topic, pid, (long long)from, why, (long long)low, (long long)high,
                        (long long)low, (unsigned long long)lost);
                f->data_loss_skipped += lost;
                from = low;
            }
            int64_t until = high - from > r->max_records ? from + r->max_records : high;
            const char *own = own_topic(r, topic);
            part_t *p = find_part(r, own, pid);
            if (!p && !(p = add_part(r, own, pid))) {
                err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
                break;
            }
            if ((err = check_log(r, t, p, low, high, from, &fp, found && has_fp, f, errstr,
                                 errstr_size)))
                break;
            if (add_range(f, own, pid, from, until, high, &cap)) {
                err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
                break;
            }
            f->ranges[f->nranges - 1].fp = fp;
            f->ranges[f->nranges - 1].has_fp = found && has_fp;
        }
        rd_kafka_metadata_destroy(md);
    }
    if (err)
        lk__fetch_clear(f);
    return err;
}

lk_err_t lk__receiver_use_plan(lk_receiver_t *r, const lk_range_t *ranges, size_t n,
                               lk__offset_lookup_fn *lookup, void *opaque, lk__fetch_t *f,
                               char *errstr, size_t errstr_size) {
    memset(f, 0, sizeof *f);
    size_t cap = 0;
    lk_err_t err = LK_OK;
    for (size_t i = 0; i < n && !err; i++) {
        const lk_range_t *rg = &ranges[i];
        const char *own = own_topic(r, rg->topic);
        if (!own) { /* the topic left the pipeline: the plan cannot be reused */
            err = lk__err(LK_ERR_NOT_FOUND, errstr, errstr_size,
                          "pending plan reads topic %s, no longer an input", rg->topic);
            break;
        }
        part_t *p = find_part(r, own, rg->partition);
        if (!p && !(p = add_part(r, own, rg->partition))) {
            err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
            break;
        }
        int64_t low, high;
        rd_kafka_resp_err_t ke = rd_kafka_query_watermark_offsets(
            r->planner, own, rg->partition, &low, &high, LK__KAFKA_TIMEOUT_MS);
        if (ke) {
            err = lk__err(LK_ERR_KAFKA, errstr, errstr_size, "cannot read offsets of %s[%d]: %s",
                          own, (int)rg->partition, rd_kafka_err2str(ke));
            break;
        }
        if (rg->until > high) {
            /* Like a checkpointed offset beyond the log end: the records the plan names
             * are not there, and fetching would wait for them forever. */
            err = lk__err(LK_ERR_DATA_LOSS, errstr, errstr_size,
                          "%s[%d]: the pending plan reads up to offset %lld, beyond the log "
                          "end %lld: the topic was recreated or its log truncated, and which "
                          "records were already processed cannot be told; reset this "
                          "partition's offset explicitly",
                          own, (int)rg->partition, (long long)rg->until, (long long)high);
            break;
        }
        lk_fingerprint_t fp = {0, 0, 0};
        int has_fp = 0;
        int64_t off;
        lk_err_t le = lookup ? lookup(own, rg->partition, &off, &fp, &has_fp, opaque, errstr,
                                      errstr_size)
                             : LK_ERR_NOT_FOUND;
        if (le && le != LK_ERR_NOT_FOUND) {
            err = le;
            break;
        }
        has_fp = le == LK_OK && has_fp && fp.offset < rg->from;
        if ((err = check_log(r, topic_index(r, own), p, low, high, rg->from, &fp, has_fp, f,
                             errstr, errstr_size)))
            break;
        if (add_range(f, own, rg->partition, rg->from, rg->until, high, &cap)) {
            err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
            break;
        }
        f->ranges[f->nranges - 1].fp = fp;
        f->ranges[f->nranges - 1].has_fp = has_fp;
    }
    if (err)
        lk__fetch_clear(f);
    return err;
}

static rd_kafka_topic_partition_list_t *plist(size_t n) {
    return rd_kafka_topic_partition_list_new((int)(n ? n : 1));
}

static void mark_done(part_t *p) {
    p->done = 1;
}

/* Each partition is read from its own queue, and only while its range needs records, so
 * librdkafka's read-ahead (queued.max.messages.kbytes per partition) bounds what waits
 * in memory and no partition is ever paused (librdkafka 2.0.2 notices a resume only at
 * its next I/O wakeup, up to a second later). */
static lk_err_t open_queue(lk_receiver_t *r, part_t *p, char *errstr, size_t errstr_size) {
    if (p->queue)
        return LK_OK;
    p->queue = rd_kafka_queue_get_partition(r->rk, p->topic, p->partition);
    if (!p->queue)
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "no queue for %s[%d]", p->topic,
                       (int)p->partition);
    rd_kafka_queue_forward(p->queue, NULL); /* its messages stay on its own queue */
    return LK_OK;
}

/* Append m to the range of its partition, or hold it for the next batch (a record past
 * the range, after a gap of compacted records or transaction markers). -1: out of
 * memory with m inside the range (the batch must fail: committing it would skip m). */
static int take(lk__fetch_t *f, part_t *p, rd_kafka_message_t *m) {
    lk__range_msgs_t *rm = &f->ranges[p->range];
    if (m->offset < rm->range.from) { /* stale: from before a seek */
        rd_kafka_message_destroy(m);
        return 0;
    }
    if (p->done || m->offset >= rm->range.until) {
        if (m->offset >= rm->range.until)
            mark_done(p);
        if (hold(p, m)) { /* losing a held message only costs a seek next batch */
            rd_kafka_message_destroy(m);
            p->cursor = -1;
        }
        return 0;
    }
    if (rm->n == rm->cap) {
        size_t cap = rm->cap ? rm->cap * 2 : 256;
        rd_kafka_message_t **n = realloc(rm->msgs, cap * sizeof *n);
        if (!n) {
            rd_kafka_message_destroy(m);
            return -1;
        }
        rm->msgs = n;
        rm->cap = cap;
    }
    rm->msgs[rm->n++] = m;
    f->records++;
    f->bytes += m->len + m->key_len;
    if (m->offset + 1 >= rm->range.until)
        mark_done(p);
    return 0;
}

/* The batch is full (max.bytes.per.batch) and m, received for p, waits for the next one:
 * if m lies inside p's range, the range ends before it, now. Later events must not find
 * the range open: an end-of-partition event would otherwise complete it with m only held,
 * the cursor would move past m and the next batch would drop it as stale (a loss found
 * in review). Every visible record before m was received already (one queue per
 * partition, in offset order), so ending the range at m is exact. */
static void end_range_at(lk__fetch_t *f, part_t *p, const rd_kafka_message_t *m) {
    lk__range_msgs_t *rm = &f->ranges[p->range];
    if (m->offset >= rm->range.from && m->offset < rm->range.until) {
        rm->range.until = m->offset;
        mark_done(p);
    }
}

/* Make the consumer deliver every planned partition from its range start. */
static lk_err_t position(lk_receiver_t *r, lk__fetch_t *f, int cap_bytes, char *errstr,
                         size_t errstr_size) {
    for (size_t i = 0; i < r->nparts; i++)
        r->parts[i].range = -1;
    for (size_t i = 0; i < f->nranges; i++) {
        part_t *p = find_part(r, f->ranges[i].range.topic, f->ranges[i].range.partition);
        p->range = (long)i;
        p->done = 0;
    }
    rd_kafka_resp_err_t ke;
    if (!r->assigned) {
        /* (re)assign everything, each partition at its range start */
        rd_kafka_topic_partition_list_t *l = plist(r->nparts);
        for (size_t i = 0; i < r->nparts; i++) {
            part_t *p = &r->parts[i];
            drop_held(p);
            p->eof_at = -1;
            if (p->range < 0) {
                p->cursor = -1;
                continue;
            }
            rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset =
                f->ranges[p->range].range.from;
            p->cursor = f->ranges[p->range].range.from;
        }
        /* Every queue is opened and un-forwarded BEFORE assign: assign starts fetching
         * and forwards a partition's queue to the consumer queue unless the application
         * already took it over, and a record landing there would be missed. */
        for (size_t i = 0; i < r->nparts; i++) {
            lk_err_t e = r->parts[i].range >= 0
                             ? open_queue(r, &r->parts[i], errstr, errstr_size)
                             : LK_OK;
            if (e) {
                rd_kafka_topic_partition_list_destroy(l);
                return e;
            }
        }
        ke = rd_kafka_assign(r->rk, l);
        rd_kafka_topic_partition_list_destroy(l);
        if (ke)
            return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "cannot assign partitions: %s",
                           rd_kafka_err2str(ke));
        r->assigned = 1;
    } else {
        rd_kafka_topic_partition_list_t *l = plist(f->nranges);
        for (size_t i = 0; i < f->nranges; i++) {
            part_t *p = find_part(r, f->ranges[i].range.topic, f->ranges[i].range.partition);
            if (p->cursor == f->ranges[i].range.from)
                continue;
            drop_held(p);
            rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset =
                f->ranges[i].range.from;
            p->cursor = f->ranges[i].range.from;
            p->eof_at = -1;
        }
        if (l->cnt) {
            rd_kafka_error_t *e = rd_kafka_seek_partitions(r->rk, l, LK__KAFKA_TIMEOUT_MS);
            int bad = 0;
            for (int i = 0; i < l->cnt; i++)
                bad |= l->elems[i].err != 0;
            rd_kafka_topic_partition_list_destroy(l);
            if (e || bad) {
                char msg[256];
                lk__fmt(msg, sizeof msg, "%s", e ? rd_kafka_error_string(e) : "partition error");
                if (e)
                    rd_kafka_error_destroy(e);
                r->assigned = 0;
                lk__receiver_invalidate(r);
                return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "cannot seek: %s", msg);
            }
        } else {
            rd_kafka_topic_partition_list_destroy(l);
        }
    }
    /* Held messages first; then fetch whatever is still missing. */
    for (size_t i = 0; i < f->nranges; i++) {
        part_t *p = find_part(r, f->ranges[i].range.topic, f->ranges[i].range.partition);
        rd_kafka_message_t **held = p->held;
        size_t nheld = p->nheld;
        p->held = NULL;
        p->nheld = p->capheld = 0;
        if (f->ranges[i].range.from >= f->ranges[i].range.until)
            p->done = 1;
        int oom = 0;
        for (size_t j = 0; j < nheld; j++)
            if (oom) {
                rd_kafka_message_destroy(held[j]);
            } else if (cap_bytes && f->bytes >= (uint64_t)r->max_bytes) {
                /* the batch is already full: these wait for the next one */
                end_range_at(f, p, held[j]);
                if (hold(p, held[j])) {
                    rd_kafka_message_destroy(held[j]);
                    p->cursor = -1;
                }
            } else {
                oom = take(f, p, held[j]) != 0;
            }
        free(held);
        /* everything visible below eof_at was received already: what the range holds
         * was held for it, the rest of it is invisible (see the file comment) */
        if (!oom && p->eof_at >= f->ranges[i].range.until)
            p->done = 1;
        if (oom) {
            lk__receiver_invalidate(r);
            return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory fetching");
        }
    }
    return LK_OK;
}

/* Handle an event (not a message) from a partition or the consumer: 0 to go on. */
static lk_err_t on_event(lk_receiver_t *r, lk__fetch_t *f, rd_kafka_message_t *m,
                         char *errstr, size_t errstr_size) {
    const char *topic = m->rkt ? rd_kafka_topic_name(m->rkt) : NULL;
    part_t *p = topic ? find_part(r, topic, m->partition) : NULL;
    rd_kafka_resp_err_t ke = m->err;
    if (ke == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        if (p)
            p->eof_at = m->offset;
        if (p && p->range >= 0 && !p->done && m->offset >= f->ranges[p->range].range.until)
            mark_done(p);
        return LK_OK;
    }
    if (ke == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET || ke == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE) {
        lk__receiver_invalidate(r);
        return lk__err(LK_ERR_DATA_LOSS, errstr, errstr_size,
                       "%s[%d]: offsets to read no longer exist: %s", topic ? topic : "?",
                       (int)(p ? p->partition : -1), rd_kafka_message_errstr(m));
    }
    char fatal[512];
    if (rd_kafka_fatal_error(r->rk, fatal, sizeof fatal)) {
        lk__receiver_invalidate(r);
        return lk__err(LK_ERR_FATAL, errstr, errstr_size, "consumer fatal error: %s", fatal);
    }
    int64_t now = lk__mono_ms();
    if (now - r->last_err_log_ms > 5000) {
        lk__log(LK_LOG_WARNING, "consumer: %s (retrying until fetch.timeout.ms)",
                rd_kafka_message_errstr(m));
        r->last_err_log_ms = now;
    }
    return LK_OK;
}

lk_err_t lk__receiver_fetch(lk_receiver_t *r, lk__fetch_t *f, int cap_bytes,
                            int (*abandon)(void *opaque), void *opaque, char *errstr,
                            size_t errstr_size) {
    lk_err_t err = position(r, f, cap_bytes, errstr, errstr_size);
    if (err)
        return err;
    int64_t deadline = lk__mono_ms() + r->fetch_timeout_ms;
    rd_kafka_message_t *msgs[1024];
    for (;;) {
        size_t pending = 0;
        part_t *wait_on = NULL;
        /* max.bytes.per.batch reached, possibly already by held records: then nothing
         * more may be taken from a queue, or a partition whose held records were put
         * off would skip past them */
        int full = cap_bytes && f->bytes >= (uint64_t)r->max_bytes;
        for (size_t i = 0; i < f->nranges && !err; i++) {
            lk__range_msgs_t *rm = &f->ranges[i];
            part_t *p = find_part(r, rm->range.topic, rm->range.partition);
            if (p->done)
                continue;
            if (full) {
                pending++;
                continue;
            }
            /* ask for no more than the range still needs: without gaps, nothing past it */
            int64_t last = rm->n ? rm->msgs[rm->n - 1]->offset + 1 : rm->range.from;
            int64_t want = rm->range.until - last;
            if (want > (int64_t)LK_ARRAY_SIZE(msgs))
                want = LK_ARRAY_SIZE(msgs);
            if (want < 1)
                want = 1;
            ssize_t n = rd_kafka_consume_batch_queue(p->queue, 0, msgs, (size_t)want);
            for (ssize_t j = 0; j < n; j++) {
                if (err || msgs[j]->err) {
                    if (!err)
                        err = on_event(r, f, msgs[j], errstr, errstr_size);
                    rd_kafka_message_destroy(msgs[j]);
                } else if (full) {
                    /* past the byte cap: the range ends before it, the next batch
                     * starts with it */
                    end_range_at(f, p, msgs[j]);
                    if (hold(p, msgs[j])) {
                        rd_kafka_message_destroy(msgs[j]);
                        p->cursor = -1;
                    }
                } else if (take(f, p, msgs[j])) {
                    lk__receiver_invalidate(r);
                    err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory fetching");
                } else if (cap_bytes && f->bytes >= (uint64_t)r->max_bytes) {
                    full = 1;
                }
            }
            if (!p->done) {
                pending++;
                if (!wait_on)
                    wait_on = p;
            }
        }
        if (err)
            return err;
        /* consumer-wide events (broker errors) arrive on the consumer queue */
        rd_kafka_message_t *ev;
        while ((ev = rd_kafka_consumer_poll(r->rk, 0))) {
            if (!ev->err) {
                /* every assigned partition has its own queue: a record here means one
                 * did not, and skipping it could lose input. Fail the batch instead. */
                char where[300];
                lk__fmt(where, sizeof where, "%s[%d] offset %lld",
                        ev->rkt ? rd_kafka_topic_name(ev->rkt) : "?", (int)ev->partition,
                        (long long)ev->offset);
                rd_kafka_message_destroy(ev);
                r->assigned = 0;
                lk__receiver_invalidate(r);
                return lk__err(LK_ERR_KAFKA, errstr, errstr_size,
                               "a record of %s arrived outside its partition queue; the "
                               "batch is planned again",
                               where);
            }
            err = on_event(r, f, ev, errstr, errstr_size);
            rd_kafka_message_destroy(ev);
            if (err)
                return err;
        }
        if (!pending)
            break;
        if (full || (cap_bytes && f->bytes >= (uint64_t)r->max_bytes)) {
            /* batch full: end every unfinished range where fetching stopped */
            for (size_t i = 0; i < f->nranges; i++) {
                lk__range_msgs_t *rm = &f->ranges[i];
                part_t *p = find_part(r, rm->range.topic, rm->range.partition);
                if (p->done)
                    continue;
                rm->range.until = rm->n ? rm->msgs[rm->n - 1]->offset + 1 : rm->range.from;
                mark_done(p);
            }
            break;
        }
        int abandoned = abandon && abandon(opaque);
        if (abandoned || lk__mono_ms() > deadline) {
            lk__receiver_invalidate(r);
            return lk__err(LK_ERR_TIMED_OUT, errstr, errstr_size,
                           abandoned ? "fetch abandoned (stop requested)"
                                     : "fetch timed out after %lld ms with %zu of %zu "
                                       "partitions incomplete (fetch.timeout.ms)",
                           (long long)r->fetch_timeout_ms, pending, f->nranges);
        }
        /* nothing ready: wait briefly on one partition that still needs records */
        ssize_t n = rd_kafka_consume_batch_queue(wait_on->queue, 10, msgs, 1);
        for (ssize_t j = 0; j < n && !err; j++) {
            if (msgs[j]->err) {
                err = on_event(r, f, msgs[j], errstr, errstr_size);
                rd_kafka_message_destroy(msgs[j]);
            } else if (take(f, wait_on, msgs[j])) {
                lk__receiver_invalidate(r);
                err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory fetching");
            }
        }
        if (err)
            return err;
    }
    for (size_t i = 0; i < f->nranges; i++) {
        lk__range_msgs_t *rm = &f->ranges[i];
        part_t *p = find_part(r, rm->range.topic, rm->range.partition);
        if (p->cursor >= 0)
            p->cursor = rm->range.until;
        if (rm->n) { /* the last record read, checked at the next start */
            rm->fp = fingerprint_of(rm->msgs[rm->n - 1]);
            rm->has_fp = 1;
        }
    }
    return LK_OK;
}

int64_t lk__receiver_fetched_high(lk_receiver_t *r, const char *topic, int32_t partition) {
    int64_t low, high;
    if (!r || rd_kafka_get_watermark_offsets(r->rk, topic, partition, &low, &high) ||
        high < 0)
        return -1;
    return high;
}
