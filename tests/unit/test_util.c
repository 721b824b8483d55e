/*
 * test_util.c — the growth helper every hand-written array uses (lk__vec_reserve): it
 * doubles, honours its minimum, leaves an array with room alone, and refuses a size that
 * overflows size_t without touching the array. DESIGN.md, Testing.
 */
#define _GNU_SOURCE
#include "core/util_int.h"

#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

Test(vec_reserve, grows_by_doubling_from_its_minimum) {
    size_t cap = 0;
    int *v = lk__vec_reserve(NULL, &cap, 1, sizeof *v, 16);
    cr_assert_not_null(v);
    cr_assert_eq(cap, 16);
    for (int i = 0; i < 16; i++)
        v[i] = i;
    cr_assert_eq(lk__vec_reserve(v, &cap, 16, sizeof *v, 16), v, "room left: moved");
    cr_assert_eq(cap, 16);
    v = lk__vec_reserve(v, &cap, 17, sizeof *v, 16);
    cr_assert_eq(cap, 32);
    v = lk__vec_reserve(v, &cap, 1000, sizeof *v, 16); /* more than twice: what is asked */
    cr_assert_eq(cap, 1000);
    for (int i = 0; i < 16; i++)
        cr_assert_eq(v[i], i, "content kept");
    free(v);
}

Test(vec_reserve, an_overflowing_size_is_refused_and_the_array_kept) {
    size_t cap = 0;
    uint64_t *v = lk__vec_reserve(NULL, &cap, 4, sizeof *v, 4);
    cr_assert_not_null(v);
    v[3] = 42;
    /* SIZE_MAX / 4 elements of 8 bytes: a product that wraps around */
    cr_assert_null(lk__vec_reserve(v, &cap, SIZE_MAX / 4, sizeof *v, 4));
    cr_assert_null(lk__vec_reserve(v, &cap, SIZE_MAX, sizeof *v, 4));
    cr_assert_eq(cap, 4, "capacity changed on a refusal");
    cr_assert_eq(v[3], 42);
    cr_assert_null(lk__vec_reserve(v, &cap, 0, sizeof *v, 4));
    cr_assert_null(lk__vec_reserve(v, &cap, 8, 0, 4));
    free(v);
}
