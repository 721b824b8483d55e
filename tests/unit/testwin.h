/*
 * testwin.h — the harness test_windows.c (batch time) and test_windows_event.c (event
 * time) share to drive window operators through the batch engine directly, with batch
 * times chosen by the test: an int64 sum, lines of captured output kept per batch only
 * when the batch commits, and one batch run and committed or aborted (a crash before the
 * commit) on a pipeline's checkpoint. DESIGN.md, Windows; Testing.
 */
#ifndef LK_TESTWIN_H
#define LK_TESTWIN_H

#include "testutil.h"
#include "connector/pipeline_int.h"

/** Captured output: malloc'ed lines. */
typedef struct {
    char **recs;
    size_t n, cap;
} lines_t;

/** Append s (malloc'ed; the list takes it). */
void lines_add(lines_t *l, char *s);
/** Free every line and the list; l is empty afterwards. */
void lines_free(lines_t *l);
/** qsort comparator of char * by strcmp. */
int cmp_str(const void *a, const void *b);
/** Assert got equals want line by line; what and seed name the case in the message. */
void assert_lines_eq(const lines_t *got, const lines_t *want, const char *what,
                     unsigned seed);
/** A batch ended: with commit, move each of the n staged lists, sorted (order within a
 * batch is the engine's), onto its committed list followed by a "|" line; without,
 * drop them. */
void tw_settle(lines_t *staged, lines_t *committed, size_t n, int commit);

/** Floor division (the model's slices). */
int64_t tw_fdiv(int64_t a, int64_t b);

/** lk_reduce_fn: the sum of two 8-byte int64 values (asserts their size). */
void sum(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *a, const lk_bytes_t *v,
         lk_bytes_t *out, void *opaque);

/** Open p's state on the store "win" in dir (asserting p was defined without error),
 * clear *b and set *id to the last committed batch. */
void tw_open(lk_pipeline_t *p, const char *dir, lk__store_t **st, lk_batch_t *b,
             uint64_t *id);
/** Free the batch, destroy p, close st. */
void tw_close(lk_pipeline_t *p, lk__store_t *st, lk_batch_t *b);
/** Run batch *id + 1 at batch time `time` over recs (asserting no error), record it, then
 * commit it (*id advances) or abort it (a crash before the commit). */
void tw_batch(lk_pipeline_t *p, lk__store_t *st, lk_batch_t *b, uint64_t *id, int64_t time,
              const lk_record_t *recs, size_t n, int commit);

#endif
