/*
 * err.c — names and descriptions of lockstep error codes, generated from the one
 * LK_ERRORS table in lockstep.h so the enum, the names and the texts cannot drift.
 */
#include "lockstep.h"

const char *lk_version_str(void) {
    return "0.1.0";
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
