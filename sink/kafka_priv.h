/*
 * kafka_priv.h — what the Kafka sink's three files share, and nothing else includes: the
 * sink's state (lk__kafka_sink_t), a record whose delivery failed, the opaque that names a
 * produced record, and the calls one file makes into another (docs/DESIGN.md, "Sinks" and
 * "Recovery"). The rest of the engine reaches the Kafka sink only through sink_int.h
 * (lk__sink_kafka_ops and the seams declared there).
 *
 *   kafka.c           the producer and its clients, bounded blocking, the transactional
 *                     calls and their error classes, one delivery (begin, write, commit)
 *   kafka_progress.c  the progress topic, the stable-offset wait, the progress reader and
 *                     fence recovery (recover)
 *   kafka_delivery.c  delivery reports, permanent per-record errors and the dead letter
 *                     diversion, producer batch sizing
 */
#ifndef LK_KAFKA_PRIV_H
#define LK_KAFKA_PRIV_H

#include "sink_int.h"
#include "provenance_int.h"

#include <librdkafka/rdkafka.h>
#include <stdint.h>

/* A record whose delivery failed permanently in an attempt of the batch in progress. */
typedef struct {
    size_t member;  /* index in s->members */
    uint64_t index; /* the record's position in the member's outbox of the batch */
    rd_kafka_resp_err_t err;
    int client; /* refused by the producer before sending, not by a broker */
    int32_t partition;
    char errstr[256];
} lk__kafka_failed_rec_t;

typedef struct {
    const lk__sink_t *owner;
    const lk_conf_t *conf; /* the context's, alive as long as the sink */
    int64_t batch_size;    /* the producer's batch.size */
    int sized;             /* lk__kafka_request_sizing() done */
    rd_kafka_queue_t *dc_q; /* its answer, until applied */
    int txn_open;          /* begin_transaction succeeded, not yet committed/aborted */
    rd_kafka_t *producer;
    rd_kafka_t *reader; /* reads the progress topic (read_committed) */
    rd_kafka_t *probe;  /* read_uncommitted: its ListOffsets answers the high watermark */
    char progress_topic[512];
    char txn_id[512];
    int32_t progress_partition; /* the task's (single mode: 0) */
    int inited; /* init_transactions done */
    int send_offsets;
    int timeout_ms;
    int fence_known; /* fence is what Kafka holds (read once per producer) */
    uint64_t fence;
    /* delivery reports of the attempt in progress (served on the delivering thread) */
    uint64_t attempt_records; /* records produced in this attempt */
    uint64_t dr_failed;       /* records whose delivery report carried an error */
    lk__kafka_failed_rec_t first_failed;
    int have_failed;
    /* records diverted to the dead letter topic (errors.tolerance=all), of batch div_batch */
    lk__kafka_failed_rec_t *divert;
    size_t ndivert, divert_cap;
    uint64_t div_batch;
    char deadletter[256]; /* errors.deadletter when it is a Kafka topic and tolerance=all */
    uint64_t next_index;  /* position of the next record of the current member */
    size_t index_member;
    /* the provenance header's value (provenance_int.h) for member prov_member of the
     * attempt in progress (s->nmembers: the progress record): formatted when the member
     * changes, copied into each record (never formatted per record); kafka_begin makes it
     * stale (prov_member SIZE_MAX) */
    char *prov;
    size_t prov_len, prov_cap, prov_member;
    uint64_t prov_batch; /* the batch kafka_begin started */
} lk__kafka_sink_t;

/* Which member and which record of it a produced message is (its opaque). */
#define OPAQUE(member, index) ((void *)(uintptr_t)((((uint64_t)(index)) << 8) | ((member) + 1)))
#define OPAQUE_MEMBER(o) ((size_t)(((uintptr_t)(o) & 0xff) - 1))
#define OPAQUE_INDEX(o) ((uint64_t)((uintptr_t)(o) >> 8))
#define OPAQUE_PROGRESS ((void *)(uintptr_t)0xff)

/* ---- kafka.c ---- */

/** Whether an immediate stop was asked (s->abandon). */
int lk__kafka_abandoned(const lk__sink_t *s);
/** sink.kafka.timeout.ms, cut to what is left before a stop's deadline (>= 1 ms). */
int lk__kafka_budget(const lk__kafka_sink_t *k);
/** A resumable transactional call (init, commit, abort) in slices, within the budget. */
rd_kafka_error_t *lk__kafka_txn_call(lk__sink_t *s, rd_kafka_t *rk,
                                     rd_kafka_error_t *(*fn)(rd_kafka_t *, int),
                                     int timeout_ms);
/** Map a transactional API error (destroyed here) to LK_ERR_FENCED / LK_ERR_FATAL /
 * LK_ERR_KAFKA, the message naming its class. */
lk_err_t lk__kafka_txn_error(lk__kafka_sink_t *k, rd_kafka_error_t *e, const char *what,
                             char *errstr, size_t errstr_size);
/** init_transactions on k->producer (fences zombies; k->inited once done). */
lk_err_t lk__kafka_init_txn(lk__sink_t *s, char *errstr, size_t errstr_size);
/** Create the transactional producer (k->producer); batch_size > 0 overrides batch.size. */
lk_err_t lk__kafka_producer_new(lk__sink_t *s, int64_t batch_size, char *errstr,
                                size_t errstr_size);

/* ---- kafka_progress.c ---- */

/** The kind's recover(): init_transactions, the progress topic, the stable-offset wait
 * and the fences read from the last committed progress records (sink_int.h). */
lk_err_t lk__kafka_recover(lk__sink_t *s, uint64_t *fence, char *errstr, size_t errstr_size);
/** The stable-offset wait's Kafka calls on k's reader and probe (lk__kafka_wait_stable). */
void lk__kafka_real_offsets_io(lk__kafka_sink_t *k, lk__kafka_offsets_io_t *io);

/* ---- kafka_changelog.c ---- */

/** How one changelog member's state is restored at a handoff. */
typedef struct {
    int full;       /* clear the state, read from the partition's start */
    uint64_t after; /* apply only records of batches after this one (full: 0) */
    int64_t start;  /* the offset to read from: 0, or a tail's recorded position; a log
                     * starting later, or ending before it, is refused (kafka_changelog.c) */
} lk__changelog_plan_t;
/** The plan, from the checkpoint's last committed batch and the member's fence (found or
 * not: its batch, the changelog position recorded with it (-1: none) and its age in ms):
 * tail when the state is exactly the last delivered batch's and that delivery is at most
 * LK__CHANGELOG_TAIL_MAX_AGE_MS old, full otherwise. */
void lk__changelog_plan(uint64_t committed, int fence_found, uint64_t fence_batch,
                        int64_t fence_offset, int64_t fence_age_ms, lk__changelog_plan_t *out);
/** The oldest delivery a tail restore starts from (ms): half of Kafka's default
 * delete.retention.ms (24 h), which the changelog topics are created with. The log cleaner
 * removes a tombstone once it is older than that, so a reader further behind can miss a
 * delete; an older checkpoint restores in full. */
#define LK__CHANGELOG_TAIL_MAX_AGE_MS (12LL * 3600 * 1000)
/** The last attempt seen of each batch of a changelog partition, read in log order. */
typedef struct {
    uint64_t batch;
    char attempt[17];
} lk__changelog_attempt_t;
typedef struct {
    lk__changelog_attempt_t *v; /* sorted by batch */
    size_t n, cap;
} lk__changelog_attempts_t;
/** Note a record of (batch, attempt): 1 when the batch was seen before in another attempt
 * (which this one replaces), 0 when not, -1 out of memory. */
int lk__changelog_attempts_see(lk__changelog_attempts_t *a, uint64_t batch,
                               const char *attempt);
/** Whether attempt is the last one noted for batch. */
int lk__changelog_attempts_last(const lk__changelog_attempts_t *a, uint64_t batch,
                                const char *attempt);
void lk__changelog_attempts_free(lk__changelog_attempts_t *a);
/** Whether a changelog record of provenance p is applied: written by app's member
 * `member`, in a batch after `after` and at most `upto` (the handoff's). */
int lk__changelog_applies(const lk__prov_t *p, const char *app, const char *member,
                          uint64_t after, uint64_t upto);

/** The kind's restore() (sink_int.h): each changelog member's operator state brought to
 * the handoff's batch from its changelog partition, full or tail (DESIGN.md, Scale-out). */
lk_err_t lk__kafka_restore(lk__sink_t *s, lk__store_t *store, lk__store_txn_t *t, char *errstr,
                           size_t errstr_size);

/* ---- kafka_delivery.c ---- */

/** A per-record delivery error that no retry can fix. */
int lk__kafka_is_permanent(rd_kafka_resp_err_t c);
/** The producer's delivery report callback (runs on the delivering thread). */
void lk__kafka_on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque);
/** Ask for the output topics' max.message.bytes without waiting. */
void lk__kafka_request_sizing(lk__sink_t *s);
/** Apply the answer to lk__kafka_request_sizing() if it has come (between transactions). */
lk_err_t lk__kafka_apply_sizing(lk__sink_t *s, char *errstr, size_t errstr_size);
/** The record (member, index) diverted to the dead letter topic in this batch, or NULL. */
const lk__kafka_failed_rec_t *lk__kafka_diverted(const lk__kafka_sink_t *k, size_t member,
                                                 uint64_t index);
/** After a failed attempt: stop on a permanent record error naming the record and the
 * setting, or mark the record for the dead letter topic; returns the error to report. */
lk_err_t lk__kafka_record_failed(lk__sink_t *s, lk_err_t e, char *errstr, size_t errstr_size);

#endif
