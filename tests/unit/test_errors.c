/*
 * test_errors.c — the error table: stable codes, names and descriptions for every
 * entry, and sane answers for codes outside the table.
 */
#include "lockstep.h"

#include <criterion/criterion.h>
#include <string.h>

Test(errors, codes_are_stable) {
    /* Codes are part of the ABI: these must never change. */
    cr_assert_eq(LK_ERR_OK, 0);
    cr_assert_eq(LK_ERR_LOCKED, 6);
    cr_assert_eq(LK_ERR_NOT_CHECKPOINT, 7);
    cr_assert_eq(LK_ERR_APP_MISMATCH, 8);
    cr_assert_eq(LK_ERR_FORMAT_TOO_NEW, 9);
    cr_assert_eq(LK_ERR_CORRUPT, 10);
    cr_assert_eq(LK_ERR_FENCED, 16);
}

Test(errors, every_code_has_name_and_text) {
#define CHECK(name, code, desc)                                                          \
    cr_assert_str_eq(lk_err_name(LK_ERR_##name), "LK_ERR_" #name);                         \
    cr_assert_str_eq(lk_err_str(LK_ERR_##name), desc);
    LK_ERRORS(CHECK)
#undef CHECK
}

Test(errors, unknown_code) {
    cr_assert_str_eq(lk_err_name((lk_err_t)9999), "LK_ERR_UNKNOWN");
    cr_assert_str_eq(lk_err_str((lk_err_t)9999), "Unknown error code");
}
