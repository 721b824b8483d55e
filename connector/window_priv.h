/*
 * window_priv.h — what the window operator's own files (window.c, window_slice.c,
 * window_batch.c, window_event.c, window_session.c) share: the record framing, slice
 * numbers, the per-flush context and the helpers over it. Nothing outside
 * connector/window*.c includes it: the rest of the engine uses window_int.h.
 * DESIGN.md, Windows.
 */
#ifndef LK_WINDOW_PRIV_H
#define LK_WINDOW_PRIV_H

#include "window_int.h"
#include "../core/util_int.h"

#include <stdlib.h>
#include <string.h>

#define LK__EVENT_TIME_LIMIT (INT64_C(1) << 61) /* far beyond any real time; no overflow */

/* The kind byte of an event-time window's record (lk__wframe, lk_window_result_parse). */
enum { LK__FRAME_UPDATE = 0, LK__FRAME_FINAL = 1, LK__FRAME_DELETION = 2 };

static inline int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b) && ((a < 0) != (b < 0)))
        q--;
    return q;
}

/* the operator's name in messages and in the topology */
static inline const char *op_name(const lk_stream_t *s) {
    return s->win && s->win->domain == LK__WIN_EVENT_TIME ? "window_by_event_time"
                                                          : "reduce_by_key_and_window";
}

/* slice numbers in the collected keys: sign bit flipped, big-endian (as in the store) */
static inline void put_slice(unsigned char *p, int64_t s) {
    lk__put_be64(p, (uint64_t)s ^ (UINT64_C(1) << 63));
}
static inline int64_t get_slice(const unsigned char *p) {
    return (int64_t)(lk__get_be64(p) ^ (UINT64_C(1) << 63));
}

/* One end-of-batch flush of one window stage (lk__window_flush); slices and keys are
 * malloc'ed and freed by lk__window_flush. */
typedef struct {
    lk_batch_t *b;
    lk_stream_t *s;
    int64_t *slices; /* live slices (malloc'ed) */
    size_t n, cap;
    lk_bytes_t *keys; /* keys of one slice, bytes in the arena */
    size_t nkeys, capkeys;
    int64_t lo, hi; /* recomputation: the window's slices [lo, hi] */
    lk_bytes_t acc;
    int have;
    uint32_t count;
    int64_t marked[8]; /* slices marked live by this flush (a few per batch) */
    size_t nmarked;
    int oom;
    char err[400]; /* a store call's message, before it becomes the batch's */
} lk__wctx_t;

/* A (window, key) pair to emit; the key's bytes live in the batch's arena. */
typedef struct {
    int64_t k; /* window index: [k*advance, k*advance + size); sessions: the start */
    lk_bytes_t key;
} lk__wkey_t;

typedef struct {
    lk__wkey_t *v;
    size_t n, cap;
} lk__wkeys_t;

/* ---- window.c ---- */

/* The value of an event-time window's record: be64 start, be64 end, u8 kind
 * (LK__FRAME_*; a deletion has no bytes after it), bytes; in the batch's arena, NULL when
 * out of memory. */
void *lk__wframe(lk_batch_t *b, int64_t start, int64_t end, int kind, const void *v,
                 size_t vlen);

/* ---- window_slice.c: the slice table ---- */

/* lk__wstore_slices callback: append a live slice to c->slices (c->oom on failure). */
int lk__wadd_live(int64_t slice, void *o);
/* lk__wstore_slice_keys callback: append a copy of a slice's key to c->keys. */
int lk__wadd_key(const void *key, size_t klen, void *o);
/* Whether slice is among c->slices. */
int lk__whas_slice(const lk__wctx_t *c, int64_t slice);
/* reduce (or inverse-reduce) a and v with the user's function, as the stage */
lk_bytes_t lk__wcall_reduce(lk_batch_t *b, lk_stream_t *s, lk_reduce_fn *fn,
                            const lk_bytes_t *key, const lk_bytes_t *a, const lk_bytes_t *v);
/* A copy of key's aggregate in slice: 1, 0 when there is none, -1 with the batch failed. */
int lk__wslice_value(lk__wctx_t *c, const lk_bytes_t *key, int64_t slice, lk_bytes_t *out);
/* Reduce key's aggregates in the live slices [c->lo, c->hi], in slice order, into
 * c->acc (c->have: any; c->count: how many). 0, or -1 with the batch failed. */
int lk__wfold_slices(lk__wctx_t *c, const lk_bytes_t *key);
/* Add the batch's aggregates, collected per (slice, key), to the slices. */
void lk__wadd_collected(lk__wctx_t *c);

/* ---- window_batch.c ---- */

/* Batch time: close the boundaries passed since the last batch, then add the batch's
 * aggregates to its slide. Errors are recorded in the batch. */
void lk__wflush_batch(lk__wctx_t *c);

/* ---- window_event.c: event time and the watermark ---- */

/* The watermark committed before this batch, into s->win->wm (read once per batch).
 * 1, or 0 with the batch failed. */
int lk__wload_wm(lk_batch_t *b, lk_stream_t *s);
/* Event time: the record's slice (1), or 0 when it is late (counted, sent to the side
 * output) or an error was recorded. */
int lk__wevent_slice(lk_batch_t *b, lk_stream_t *s, const lk_record_t *r, int64_t *slice);
/* Append (k, key) to l: 0, or -1 when out of memory. */
int lk__wkeys_add(lk__wkeys_t *l, int64_t k, lk_bytes_t key);
/* sort by (k, key) and drop duplicates */
void lk__wkeys_unique(lk__wkeys_t *l);
/* Commit this batch's per-partition maxima and compute the new watermark (never lower
 * than wm_old). 0, or -1 with the batch failed. */
int lk__wadvance_wm(lk__wctx_t *c, int64_t wm_old, int64_t *wm_new);
/* Tumbling and hopping windows: add the batch, advance the watermark, emit, expire. */
void lk__wflush_event(lk__wctx_t *c);

/* ---- window_session.c ---- */

/* Sessions: merge the batch's records into the open sessions, then close (emit once,
 * delete) the sessions whose end the watermark reached. */
void lk__wflush_session(lk__wctx_t *c);

#endif
