/*
 * err.c — names and descriptions of lockstep error codes, generated from the one
 * LK_ERRORS table in lockstep.h so the enum, the names and the texts cannot drift.
 */
#include "lockstep.h"

/* The version comes from CMake's project(VERSION) (CMakeLists.txt), the one place it is
 * written; the public header's LK_VERSION is a literal (the header is installed as it
 * is), so a build whose two disagree stops here. */
#if !defined(LK__VERSION_STR) || !defined(LK__VERSION_NUM)
#error "build core/err.c with CMake: LK__VERSION_STR and LK__VERSION_NUM come from project(VERSION)"
#endif
_Static_assert(LK_VERSION == LK__VERSION_NUM,
               "LK_VERSION in include/lockstep.h differs from project(VERSION) in CMakeLists.txt");

const char *lk_version_str(void) {
    return LK__VERSION_STR;
}

const char *lk_err_name(lk_err_t err) {
    switch (err) {
#define LK__ERR_NAME(name, code, desc)                                                     \
    case LK_ERR_##name:                                                                    \
        return "LK_ERR_" #name;
        LK_ERRORS(LK__ERR_NAME)
#undef LK__ERR_NAME
    }
    return "LK_ERR_UNKNOWN";
}

const char *lk_err_str(lk_err_t err) {
    switch (err) {
#define LK__ERR_DESC(name, code, desc)                                                     \
    case LK_ERR_##name:                                                                    \
        return desc;
        LK_ERRORS(LK__ERR_DESC)
#undef LK__ERR_DESC
    }
    return "Unknown error code";
}
