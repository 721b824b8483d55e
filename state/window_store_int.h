/*
 * window_store_int.h — the layout of a window operator's database in the checkpoint.
 * A window operator keeps everything in its own LMDB database (state.<uid>, opened with
 * lk__store_state_open), written only inside the batch's transaction, so its slices,
 * running values and position in time commit atomically with the offsets they came
 * from. The layout (byte strings, big-endian integers so LMDB's order is time order):
 *
 *   'M' name                        -> meta value (e.g. the last closed slide, the
 *                                      watermark, per-partition event-time maxima)
 *   'S' be64(slice) be16(klen) key  -> the key's partial aggregate in slice. Ordered by
 *                                      slice: the keys of a slice, and expiry, are one
 *                                      cursor range each (the expiry index is the key
 *                                      order itself: one write per aggregate)
 *   'L' be64(slice)                 -> empty: the slices that hold data
 *   'V' be16(klen) key              -> be32(live slices) u8(visible) value: the running
 *                                      (or last emitted) windowed value of key
 *   'P' be16(tlen) topic be32(part)  -> be64(max event time) be64(batch time it was last
 *                                      raised): per input partition, for the watermark
 *   'W' be16(klen) key be64(start)  -> be64(end) aggregate: an open session of key
 *   'C' be64(end) be16(klen) key be64(start) -> empty: open sessions by end, so that the
 *                                      ones the watermark closes are one cursor range
 *   'I'                             -> be64(batch id) then [be16(tlen) topic be32(part)]...:
 *                                      the input partitions the plan of that batch left
 *                                      records unread in (log end at planning past the
 *                                      range's end). Written with the plan, before the
 *                                      batch (see lk__window_record_plan), not in it
 *
 * Slices are signed (event time may precede the epoch); they are stored with the sign
 * bit flipped so that byte order is numeric order. A slice is one slide (batch-time
 * windows) or one advance (event-time windows): state is one partial aggregate per
 * (key, slice), never one copy per record per window.
 */
#ifndef LK_WINDOW_STORE_INT_H
#define LK_WINDOW_STORE_INT_H

#include "store_int.h"

/** Meta value name -> int64 (LK_ERR_NOT_FOUND when never written). */
lk_err_t lk__wstore_meta_get(lk__store_txn_t *t, lk__state_db_t db, const char *name,
                             int64_t *v);
lk_err_t lk__wstore_meta_put(lk__store_txn_t *t, lk__state_db_t db, const char *name,
                             int64_t v, int64_t now_ms, char *errstr, size_t errstr_size);

/** The partial aggregate of key in slice; *val valid until the next write in t. */
lk_err_t lk__wstore_slice_get(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                              size_t klen, int64_t slice, const void **val, size_t *vlen);
/** Write key's aggregate in slice. */
lk_err_t lk__wstore_slice_put(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                              size_t klen, int64_t slice, const void *val, size_t vlen,
                              int64_t now_ms, char *errstr, size_t errstr_size);
/** Record that slice holds data (once per slice is enough; repeating it is harmless). */
lk_err_t lk__wstore_slice_mark(lk__store_txn_t *t, lk__state_db_t db, int64_t slice,
                               int64_t now_ms, char *errstr, size_t errstr_size);

/** Visit the slices holding data, ascending, from slice `from` (inclusive); a non-zero
 * return of cb stops. No write in t may happen during the visit. */
lk_err_t lk__wstore_slices(lk__store_txn_t *t, lk__state_db_t db, int64_t from,
                           int (*cb)(int64_t slice, void *opaque), void *opaque);
/** Visit the keys with data in slice, in key order (pointers valid during cb). */
lk_err_t lk__wstore_slice_keys(lk__store_txn_t *t, lk__state_db_t db, int64_t slice,
                               int (*cb)(const void *key, size_t klen, void *opaque),
                               void *opaque);
/**
 * Delete every slice <= upto (its aggregates and live-slice entry): the range delete of
 * expiry, inside t. *deleted (may be NULL) counts the aggregates removed.
 */
lk_err_t lk__wstore_expire(lk__store_txn_t *t, lk__state_db_t db, int64_t upto,
                           uint64_t *deleted, char *errstr, size_t errstr_size);

/** The running value record of key: live slice count, visibility and value. */
typedef struct lk__wvalue {
    uint32_t nslices; /**< slices of the current window holding the key */
    int visible;      /**< the last emission for key was a value (not a deletion) */
    const void *val;  /**< valid until the next write in t */
    size_t len;
} lk__wvalue_t;

lk_err_t lk__wstore_value_get(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                              size_t klen, lk__wvalue_t *out);
/** Write the value record; scratch is a caller buffer of at least 5 + v->len bytes. */
lk_err_t lk__wstore_value_put(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                              size_t klen, const lk__wvalue_t *v, void *scratch,
                              int64_t now_ms, char *errstr, size_t errstr_size);
lk_err_t lk__wstore_value_del(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                              size_t klen, char *errstr, size_t errstr_size);

/** Visit key's open sessions by start (pointers valid during cb; no write meanwhile). */
lk_err_t lk__wstore_sessions(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                             size_t klen,
                             int (*cb)(int64_t start, int64_t end, const void *val,
                                       size_t vlen, void *opaque),
                             void *opaque);
/** Write an open session (and its entry in the by-end index). */
lk_err_t lk__wstore_session_put(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                                size_t klen, int64_t start, int64_t end, const void *val,
                                size_t vlen, int64_t now_ms, char *errstr, size_t errstr_size);
/** Delete an open session (and its entry in the by-end index). */
lk_err_t lk__wstore_session_del(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                                size_t klen, int64_t start, int64_t end, char *errstr,
                                size_t errstr_size);
/** The aggregate of an open session; *val valid until the next write in t. */
lk_err_t lk__wstore_session_get(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                                size_t klen, int64_t start, const void **val, size_t *vlen);
/** Visit the open sessions with end <= upto, by end (pointers valid during cb). */
lk_err_t lk__wstore_sessions_ending(lk__store_txn_t *t, lk__state_db_t db, int64_t upto,
                                    int (*cb)(int64_t end, const void *key, size_t klen,
                                              int64_t start, void *opaque),
                                    void *opaque);

/** Per input partition: the highest event time seen and the batch time it last grew. */
lk_err_t lk__wstore_part_get(lk__store_txn_t *t, lk__state_db_t db, const char *topic,
                             int32_t partition, int64_t *max, int64_t *seen_ms);
lk_err_t lk__wstore_part_put(lk__store_txn_t *t, lk__state_db_t db, const char *topic,
                             int32_t partition, int64_t max, int64_t seen_ms, char *errstr,
                             size_t errstr_size);
/** Visit every partition's (max, seen) in (topic, partition) order. */
lk_err_t lk__wstore_parts(lk__store_txn_t *t, lk__state_db_t db,
                          int (*cb)(int64_t max, int64_t seen_ms, void *opaque), void *opaque);

/** An input partition (the topic is the caller's). */
typedef struct lk__wunread {
    const char *topic;
    int32_t partition;
} lk__wunread_t;

/** Record batch batch_id's partitions with records left unread (replaces the last). */
lk_err_t lk__wstore_unread_put(lk__store_txn_t *t, lk__state_db_t db, uint64_t batch_id,
                               const lk__wunread_t *parts, size_t n, int64_t now_ms,
                               char *errstr, size_t errstr_size);
/**
 * The recorded batch id (*batch_id) and its partitions with records left unread, each
 * visited by cb (topic not NUL-terminated; valid during cb; non-zero stops); cb may be
 * NULL. LK_ERR_NOT_FOUND when none is recorded, LK_ERR_CORRUPT when it does not decode.
 */
lk_err_t lk__wstore_unread_get(lk__store_txn_t *t, lk__state_db_t db, uint64_t *batch_id,
                               int (*cb)(const char *topic, size_t tlen, int32_t partition,
                                         void *opaque),
                               void *opaque);
/** Delete the record (missing is not an error). */
lk_err_t lk__wstore_unread_del(lk__store_txn_t *t, lk__state_db_t db, char *errstr,
                               size_t errstr_size);

#endif
