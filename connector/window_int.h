/*
 * window_int.h — windowed aggregation operators as the pipeline engine sees them: their
 * definition (kept on the stage, recorded in the topology), the admission of a record
 * into a slice during the batch, and the flush at the end of the batch that closes
 * windows, emits and expires, all inside the batch's checkpoint transaction.
 */
#ifndef LK_WINDOW_INT_H
#define LK_WINDOW_INT_H

#include "pipeline_int.h"
#include "../state/window_store_int.h"

typedef enum { LK__WIN_BATCH_TIME = 1, LK__WIN_EVENT_TIME = 2 } lk__win_domain_t;

/** This batch's highest event time of one input partition (event time). */
typedef struct lk__wpart {
    const char *topic; /* the input record's topic: valid until the batch ends */
    int32_t partition;
    int64_t max;
} lk__wpart_t;

typedef struct lk__window {
    lk__win_domain_t domain;
    int64_t size_ms;  /**< window length */
    int64_t slide_ms; /**< batch time: the slide; event time: the advance. One slice. */
    lk_reduce_fn *reduce, *inv;
    lk_window_filter_fn *filter;
    /* event time */
    int session;     /* session windows (gap_ms); size_ms and slide_ms unused */
    int64_t gap_ms;
    int64_t grace_ms, idle_ms;
    lk_window_emit_t emit;
    lk_event_time_fn *event_time;
    /* per batch (lk__window_reset) */
    int wm_loaded;
    int64_t wm; /* the watermark as committed before this batch */
    lk__wpart_t *parts;
    size_t nparts, capparts;
} lk__window_t;

/** Bytes of slice prefix in front of a window stage's collected keys. */
#define LK__WIN_KV_PREFIX 8

/**
 * Refuse window definitions that do not fit the configuration (size and slide multiples
 * of batch.interval.ms when it is > 0), naming the operator.
 * @returns LK_OK or LK_ERR_CONF_INVALID with errstr.
 */
lk_err_t lk__window_check_conf(const lk_pipeline_t *p, int64_t batch_interval_ms,
                               char *errstr, size_t errstr_size);

/**
 * The key under which a record is collected in the stage's per-batch table: its slice
 * (big-endian, LK__WIN_KV_PREFIX bytes) then its key, written into buf (at least
 * LK__WIN_KV_PREFIX + LK_WINDOW_KEY_MAX bytes). Returns the length, or 0 when the record
 * is not collected (a tombstone, counted; or an error, recorded in the batch).
 */
size_t lk__window_kv_key(lk_batch_t *b, lk_stream_t *s, const lk_record_t *r,
                         unsigned char *buf);

/** End of batch: close the windows whose boundary passed, emit, expire, then add the
 * batch's collected aggregates to their slices. Errors are recorded in the batch. */
void lk__window_flush(lk_batch_t *b, lk_stream_t *s);

/** The operator kind recorded in the topology: "reduce_by_key_and_window" (batch time)
 * or "window_by_event_time". */
const char *lk__window_kind(const lk_stream_t *s);
/** Non-zero if a recorded operator kind is a window's (its definition must not change). */
int lk__window_is_kind(const char *kind);

/** Non-zero if the window closes with batch time passing, without input (batch-time
 * windows; event-time ones whose partitions can go idle): batches must run then. */
int lk__window_needs_time(const lk_stream_t *s);

/** Non-zero if the pipeline has an event-time window: its batch plans must be recorded
 * with lk__window_record_plan(). */
int lk__window_wants_plan(const lk_pipeline_t *p);

/**
 * Record, for each event-time window, the input partitions (of the topics it reads) that
 * the plan of batch batch_id leaves records unread in: the log end seen at planning lies
 * past the range's end (max.records.per.partition, max.bytes.per.batch). Until such a
 * partition has sent a record its records may be older than anything the window saw, so
 * it holds the watermark. Written in t (the caller's own transaction, before the batch's
 * plan is recorded) so that the batch, and any replay of it with the recorded plan,
 * reads the same. Returns LK_OK or the store's error with errstr naming the operator.
 */
lk_err_t lk__window_record_plan(const lk_pipeline_t *p, lk__store_txn_t *t, uint64_t batch_id,
                                int64_t now_ms, const lk__wunread_t *unread, size_t n,
                                char *errstr, size_t errstr_size);

/** Forget the batch's per-batch data (after its commit or abort). */
void lk__window_reset(lk_stream_t *s);
/** Free the definition and its runtime data. */
void lk__window_free(lk__window_t *w);

#endif
