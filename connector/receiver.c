/*
 * receiver.c — the pull-based Kafka receiver (see receiver_int.h): its two clients, their
 * bounded close, and the partitions it knows. Planning is in receiver_plan.c, fetching in
 * receiver_fetch.c; the three share receiver_priv.h. DESIGN.md, The batch protocol (items
 * 1 and 3).
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
#include "receiver_priv.h"
#include "../core/conf_int.h"
#include "../core/util_int.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void lk__recv_drop_held(lk__recv_part_t *p) {
    for (size_t i = 0; i < p->nheld; i++)
        rd_kafka_message_destroy(p->held[i]);
    p->nheld = 0;
}

int lk__recv_hold(lk__recv_part_t *p, rd_kafka_message_t *m) {
    rd_kafka_message_t **n = lk__vec_reserve(p->held, &p->capheld, p->nheld + 1, sizeof *n, 64);
    if (!n)
        return -1;
    p->held = n;
    p->held[p->nheld++] = m;
    return 0;
}

lk__recv_part_t *lk__recv_find_part(lk__receiver_t *r, const char *topic, int32_t partition) {
    for (size_t i = 0; i < r->nparts; i++)
        if (r->parts[i].partition == partition && !strcmp(r->parts[i].topic, topic))
            return &r->parts[i];
    return NULL;
}

lk__recv_part_t *lk__recv_add_part(lk__receiver_t *r, const char *topic, int32_t partition) {
    lk__recv_part_t *n = lk__vec_reserve(r->parts, &r->capparts, r->nparts + 1, sizeof *n, 16);
    if (!n)
        return NULL;
    r->parts = n;
    lk__recv_part_t *p = &r->parts[r->nparts++];
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

const char *lk__recv_own_topic(lk__receiver_t *r, const char *topic) {
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
    int has_group = lk_conf_get(conf, "kafka.group.id") != NULL;
    int has_queued = lk_conf_get(conf, "kafka.queued.max.messages.kbytes") != NULL;
    if (lk__conf_kafka_apply(kc, conf, errstr, errstr_size)) {
        rd_kafka_conf_destroy(kc);
        return NULL;
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
    lk__conf_kafka_log(kc, conf); /* its log follows the context's log.level */
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, kerr, sizeof kerr);
    if (!rk)
        lk__fmt(errstr, errstr_size, "cannot create the %s consumer: %s",
                fetcher ? "fetching" : "planning", kerr);
    return rk;
}

lk_err_t lk__receiver_new(lk__receiver_t **out, const lk_conf_t *conf, const char **topics,
                          size_t ntopics, char *errstr, size_t errstr_size) {
    *out = NULL;
    if (ntopics == 0)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size,
                       "the pipeline reads no topic (add lk_kafka_stream)");
    lk__receiver_t *r = calloc(1, sizeof *r);
    if (!r)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    r->max_records = lk__conf_int(conf, LK__P_MAX_RECORDS_PER_PARTITION);
    r->max_bytes = lk__conf_int(conf, LK__P_MAX_BYTES_PER_BATCH);
    r->fetch_timeout_ms = lk__conf_int(conf, LK__P_FETCH_TIMEOUT_MS);
    r->auto_latest = lk__conf_int(conf, LK__P_AUTO_OFFSET_RESET) == 1;
    r->task = -1;
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

void lk__receiver_destroy(lk__receiver_t *r) {
    if (!r)
        return;
    for (size_t i = 0; i < r->nparts; i++) {
        lk__recv_drop_held(&r->parts[i]);
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

void lk__receiver_invalidate(lk__receiver_t *r) {
    for (size_t i = 0; i < r->nparts; i++) {
        lk__recv_drop_held(&r->parts[i]);
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
lk__fingerprint_t lk__recv_fingerprint_of(const rd_kafka_message_t *m) {
    rd_kafka_timestamp_type_t tt;
    lk__fingerprint_t fp = {m->offset, rd_kafka_message_timestamp(m, &tt),
                           lk__record_hash(m->key, m->key_len, m->payload, m->len)};
    return fp;
}


void lk__receiver_set_task(lk__receiver_t *r, int task) {
    r->task = task;
}
