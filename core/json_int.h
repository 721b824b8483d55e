/*
 * json_int.h — bytes into JSON, the same way everywhere lockstep writes JSON for people
 * (file sinks, checkpoint export): text as a JSON string, other bytes as base64 in a
 * field named <name>_base64, absent (NULL) bytes as null.
 */
#ifndef LK_JSON_INT_H
#define LK_JSON_INT_H

#include <jansson.h>
#include <stddef.h>

/** Base64 (RFC 4648, padded) of n bytes; malloc'ed, NULL when out of memory. */
char *lk__base64(const void *in, size_t n);

/**
 * obj[name] = the bytes as a JSON string when they are valid UTF-8 (and, with
 * strict_text, free of control characters other than tab, newline and carriage
 * return), else obj[name_base64] = their base64; NULL bytes: obj[name] = null.
 * @returns 0, or -1 when out of memory.
 */
int lk__json_set_bytes(json_t *obj, const char *name, const void *p, size_t n, int strict_text);

#endif
