/*
 * testwin.c — implementation of the window test harness in testwin.h.
 */
#define _GNU_SOURCE
#include "testwin.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

void lines_add(lines_t *l, char *s) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 256;
        l->recs = realloc(l->recs, l->cap * sizeof *l->recs);
    }
    l->recs[l->n++] = s;
}

void lines_free(lines_t *l) {
    for (size_t i = 0; i < l->n; i++)
        free(l->recs[i]);
    free(l->recs);
    memset(l, 0, sizeof *l);
}

int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void assert_lines_eq(const lines_t *got, const lines_t *want, const char *what,
                     unsigned seed) {
    size_t n = got->n < want->n ? got->n : want->n;
    for (size_t i = 0; i < n; i++)
        cr_assert_str_eq(got->recs[i], want->recs[i], "%s (seed %u): line %zu: %s != %s",
                         what, seed, i, got->recs[i], want->recs[i]);
    cr_assert_eq(got->n, want->n, "%s (seed %u): %zu lines, expected %zu", what, seed, got->n,
                 want->n);
}

void tw_settle(lines_t *staged, lines_t *committed, size_t n, int commit) {
    for (size_t i = 0; i < n; i++) {
        lines_t *st = &staged[i];
        if (commit) {
            /* order within a batch is the engine's; the model's order is by key */
            if (st->n)
                qsort(st->recs, st->n, sizeof *st->recs, cmp_str);
            for (size_t j = 0; j < st->n; j++)
                lines_add(&committed[i], st->recs[j]);
            lines_add(&committed[i], strdup("|"));
            free(st->recs);
            memset(st, 0, sizeof *st);
        } else {
            lines_free(st);
        }
    }
}

int64_t tw_fdiv(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b && (a < 0) != (b < 0)) ? q - 1 : q;
}

void sum(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *a, const lk_bytes_t *v,
         lk_bytes_t *out, void *opaque) {
    (void)key, (void)opaque;
    int64_t x, y;
    cr_assert_eq(a->len, 8);
    cr_assert_eq(v->len, 8);
    memcpy(&x, a->data, 8);
    memcpy(&y, v->data, 8);
    x += y;
    void *o = lk_alloc(b, 8);
    memcpy(o, &x, 8);
    *out = (lk_bytes_t){o, 8};
}

void tw_open(lk_pipeline_t *p, const char *dir, lk__store_t **st, lk_batch_t *b,
             uint64_t *id) {
    cr_assert(!p->failed, "%s", p->err);
    *st = tu_open(dir, "win");
    char err[512];
    cr_assert_eq(lk__pipeline_open_state(p, *st, err, sizeof err), LK_OK, "%s", err);
    memset(b, 0, sizeof *b);
    *id = lk__store_committed_batch(*st);
}

void tw_close(lk_pipeline_t *p, lk__store_t *st, lk_batch_t *b) {
    lk__batch_free(b);
    lk__pipeline_destroy(p);
    lk__store_close(st);
}

void tw_batch(lk_pipeline_t *p, lk__store_t *st, lk_batch_t *b, uint64_t *id, int64_t time,
              const lk_record_t *recs, size_t n, int commit) {
    lk__store_txn_t *t = tu_begin(st, 1);
    lk__batch_begin(b, p, *id + 1, time, t, 0);
    for (size_t i = 0; i < n && !b->err; i++)
        lk__batch_push_input(b, p, &recs[i]);
    if (!b->err)
        lk__batch_end(b, p);
    cr_assert_eq(b->err, LK_OK, "batch at %lld: %s", (long long)time, b->errstr);
    lk__batch_rec_t rec = {*id + 1, time, 0, n, 0, 0, NULL};
    char err[512];
    cr_assert_eq(lk__store_batch_put(t, &rec, err, sizeof err), LK_OK, "%s", err);
    if (commit) {
        tu_commit(t);
        lk__pipeline_committed(p);
        (*id)++;
    } else {
        lk__store_txn_abort(t);
    }
    lk__batch_reset(b, p);
}
