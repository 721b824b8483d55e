/*
 * wc_ops.h — the word count's operator callbacks, shared by the mock tests and the
 * wc_runner process: split lines into (word, "1") and count them (int64 state), counting
 * lines in the accumulator "lines".
 */
#ifndef LK_WC_OPS_H
#define LK_WC_OPS_H

#include "lockstep.h"

void wc_split_words(lk_batch_t *b, const lk_record_t *in, void *opaque);
void wc_add_counts(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *vals, size_t n,
                   const lk_bytes_t *state, lk_bytes_t *next, void *opaque);

#endif
