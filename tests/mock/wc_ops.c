/*
 * wc_ops.c — the word count's operator callbacks (see wc_ops.h).
 */
#include "wc_ops.h"

#include <string.h>

void wc_split_words(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    const char *p = in->value, *end = p + in->value_len;
    while (p < end) {
        while (p < end && *p == ' ')
            p++;
        const char *w = p;
        while (p < end && *p != ' ')
            p++;
        if (p > w)
            lk_emit(b, w, (size_t)(p - w), "1", 1);
    }
    lk_accumulator_add(b, "lines", 1);
}

void wc_add_counts(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *vals, size_t n,
                   const lk_bytes_t *state, lk_bytes_t *next, void *opaque) {
    (void)key;
    (void)vals;
    (void)opaque;
    int64_t c = 0;
    if (state)
        memcpy(&c, state->data, sizeof c);
    c += (int64_t)n;
    int64_t *out = lk_alloc(b, sizeof *out);
    if (!out)
        return; /* the batch fails with LK_ERR_NOMEM */
    *out = c;
    next->data = out;
    next->len = sizeof *out;
}
