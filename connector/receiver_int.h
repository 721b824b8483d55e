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

typedef struct lk_receiver lk_receiver_t;

/** Messages of one planned range, in offset order. */
typedef struct lk__range_msgs {
    lk_range_t range; /**< topic points into the receiver */
    int64_t high;     /**< log end when planned (lag = high - until); until if unknown */
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

/** Looks up the checkpointed next offset; returns 0 and sets *off if known. */
typedef int(lk__offset_lookup_fn)(const char *topic, int32_t partition, int64_t *off,
                                  void *opaque);

lk_err_t lk__receiver_new(lk_receiver_t **out, const lk_conf_t *conf, const char **topics,
                          size_t ntopics, char *errstr, size_t errstr_size);
void lk__receiver_destroy(lk_receiver_t *r);

/**
 * Plan a batch: discover partitions (new ones included), read watermarks, and set each
 * range to [checkpointed offset, min(end, from + max.records.per.partition)).
 * A checkpointed offset below the log start is data loss: LK_ERR_DATA_LOSS, or with
 * on.data.loss=skip a logged, counted jump to the log start.
 * Errors: LK_ERR_KAFKA (broker unreachable, unknown topic: retriable), LK_ERR_DATA_LOSS.
 */
lk_err_t lk__receiver_plan(lk_receiver_t *r, lk__offset_lookup_fn *lookup, void *opaque,
                           lk__fetch_t *f, char *errstr, size_t errstr_size);

/** Use a given plan (a pending plan being processed again) instead of planning. */
lk_err_t lk__receiver_use_plan(lk_receiver_t *r, const lk_range_t *ranges, size_t n,
                               lk__fetch_t *f, char *errstr, size_t errstr_size);

/**
 * Fetch exactly the planned ranges. With cap_bytes set, stops once max.bytes.per.batch
 * is reached and shrinks the ranges to what was fetched. Returns early with
 * LK_ERR_TIMED_OUT after fetch.timeout.ms or when abandon(opaque) returns non-zero (the
 * fetch is then abandoned; nothing of it is used). LK_ERR_DATA_LOSS when offsets of a
 * range no longer exist; LK_ERR_NOMEM.
 */
lk_err_t lk__receiver_fetch(lk_receiver_t *r, lk__fetch_t *f, int cap_bytes,
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
int64_t lk__receiver_fetched_high(lk_receiver_t *r, const char *topic, int32_t partition);

/** Forget consumer positions (after an abandoned batch): the next fetch seeks. */
void lk__receiver_invalidate(lk_receiver_t *r);

#endif
