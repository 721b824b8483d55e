/*
 * receiver_int.h — the pull-based Kafka receiver (like Spark's direct stream): plans a
 * batch as exact offset ranges [from, until) per partition, capped per partition and
 * per batch, and fetches exactly those ranges with assign + seek. It never commits
 * offsets to Kafka: the checkpoint is the only record of progress.
 */
#ifndef LK_RECEIVER_INT_H
#define LK_RECEIVER_INT_H

#include "lockstep.h"
#include "../state/store_int.h"

#include <librdkafka/rdkafka.h>

typedef struct lk__receiver lk__receiver_t;

/** Messages of one planned range, in offset order. */
typedef struct lk__range_msgs {
    lk__range_t range; /**< topic points into the receiver */
    int64_t high;     /**< log end when planned (lag = high - until); until if unknown */
    lk__fingerprint_t fp; /**< the last record read below range.until (after the fetch: the
                              range's last record, else the one checkpointed) */
    int has_fp;          /**< 0: no fingerprint to record */
    rd_kafka_message_t **msgs;
    size_t n, cap;
} lk__range_msgs_t;

/** A planned and fetched batch. */
typedef struct lk__fetch {
    lk__range_msgs_t *ranges;
    size_t nranges;
    uint64_t records, bytes;
    uint64_t data_loss_skipped; /**< offsets skipped under on.data.loss=skip */
    size_t new_partitions;      /**< partitions without a checkpointed offset: their start
                                     must be committed even if the batch reads nothing */
} lk__fetch_t;

/**
 * Looks up the checkpointed next offset of a partition and the fingerprint kept with it:
 * LK_OK (*off set; *has_fp says whether *fp is), LK_ERR_NOT_FOUND (a partition new to
 * the checkpoint), or an error with errstr filled (e.g. LK_ERR_CORRUPT: never taken for
 * "not found").
 */
typedef lk_err_t(lk__offset_lookup_fn)(const char *topic, int32_t partition, int64_t *off,
                                       lk__fingerprint_t *fp, int *has_fp, void *opaque,
                                       char *errstr, size_t errstr_size);

lk_err_t lk__receiver_new(lk__receiver_t **out, const lk_conf_t *conf, const char **topics,
                          size_t ntopics, char *errstr, size_t errstr_size);
void lk__receiver_destroy(lk__receiver_t *r);

/**
 * Plan a batch: discover partitions (new ones included), read watermarks, and set each
 * range to [checkpointed offset, min(end, from + max.records.per.partition)).
 * A checkpointed offset below the log start is data loss: LK_ERR_DATA_LOSS, or with
 * on.data.loss=skip a logged, counted jump to the log start.
 *
 * At the first plan of a partition, and again after its log start or end moved backwards
 * or its topic was missing, the record whose fingerprint the checkpoint keeps is read back
 * and compared. Another record there (the topic was recreated), or none where retention
 * cannot explain it, is data loss: LK_ERR_DATA_LOSS naming the partition and both
 * fingerprints, or with on.data.loss=skip a logged continuation at the checkpointed
 * offset, the unread records before it counted as skipped.
 * Errors: LK_ERR_KAFKA (broker unreachable, unknown topic: retriable), LK_ERR_TIMED_OUT
 * (the record could not be read back in fetch.timeout.ms), LK_ERR_DATA_LOSS, and the
 * lookup's errors (LK_ERR_CORRUPT).
 */
lk_err_t lk__receiver_plan(lk__receiver_t *r, lk__offset_lookup_fn *lookup, void *opaque,
                           lk__fetch_t *f, char *errstr, size_t errstr_size);

/**
 * Use a given plan (a pending plan being processed again) instead of planning. The
 * plan's ranges are checked against the log as lk__receiver_plan() checks offsets (and
 * fingerprints are checked as there): a range reaching past the log end (the topic was
 * recreated shorter, or its log truncated) is LK_ERR_DATA_LOSS, never fetched in vain.
 * LK_ERR_NOT_FOUND: the plan reads a topic no longer an input (plan afresh instead).
 */
lk_err_t lk__receiver_use_plan(lk__receiver_t *r, const lk__range_t *ranges, size_t n,
                               lk__offset_lookup_fn *lookup, void *opaque, lk__fetch_t *f,
                               char *errstr, size_t errstr_size);

/**
 * Fetch exactly the planned ranges. With cap_bytes set, stops once max.bytes.per.batch
 * is reached and shrinks the ranges to what was fetched. Returns early with
 * LK_ERR_TIMED_OUT after fetch.timeout.ms or when abandon(opaque) returns non-zero (the
 * fetch is then abandoned; nothing of it is used). LK_ERR_DATA_LOSS when offsets of a
 * range no longer exist; LK_ERR_NOMEM.
 */
lk_err_t lk__receiver_fetch(lk__receiver_t *r, lk__fetch_t *f, int cap_bytes,
                            int (*abandon)(void *opaque), void *opaque, char *errstr,
                            size_t errstr_size);

/** Release the fetched messages and ranges. */
void lk__fetch_clear(lk__fetch_t *f);
/** Release the fetched messages only; the ranges stay for reporting. */
void lk__fetch_release_messages(lk__fetch_t *f);

/**
 * The high watermark of (topic, partition) as last reported by a fetch response (no
 * request: librdkafka's cached value), or -1 when not known yet. Unlike the planned log
 * end (read_committed: the last stable offset) it counts records of open transactions,
 * so the difference is input held back behind them (metrics.c). Any thread.
 */
int64_t lk__receiver_fetched_high(lk__receiver_t *r, const char *topic, int32_t partition);

/** Forget consumer positions (after an abandoned batch): the next fetch seeks. */
void lk__receiver_invalidate(lk__receiver_t *r);

/* Scale-out (DESIGN.md, Scale-out): plan only partition `task` of every input topic
 * (-1, the default: every partition). A topic without that partition fails the plan. */
void lk__receiver_set_task(lk__receiver_t *r, int task);

#endif
