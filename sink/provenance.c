/*
 * provenance.c — formats and parses the provenance header of the records the Kafka sink
 * produces (the format and why it is one header: provenance_int.h; docs/DESIGN.md,
 * "Sinks"). The sink formats a value once per member and delivery attempt and copies it
 * into each record; readers (the CLI demo, the tests' independent readers) parse it here,
 * and read the four headers of older versions too.
 */
#include "provenance_int.h"

#include <stdio.h>
#include <string.h>

size_t lk__prov_format(char *buf, size_t size, uint64_t batch, const char *attempt,
                       const char *app_id, const char *uid) {
    int n = snprintf(buf, size, "v1 %llu %s %s %s", (unsigned long long)batch,
                     attempt ? attempt : "", app_id ? app_id : "", uid ? uid : "");
    return n < 0 ? 0 : (size_t)n;
}

/* A decimal batch id of [s, s + n): digits only, no sign, no overflow. */
static int parse_batch(const char *s, size_t n, uint64_t *out) {
    uint64_t b = 0;
    if (!n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9' || b > (UINT64_MAX - (uint64_t)(s[i] - '0')) / 10)
            return 0;
        b = b * 10 + (uint64_t)(s[i] - '0');
    }
    *out = b;
    return 1;
}

static int parse_attempt(const char *s, size_t n, char out[17]) {
    if (n != 16)
        return 0;
    for (size_t i = 0; i < 16; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    memcpy(out, s, 16);
    out[16] = 0;
    return 1;
}

int lk__prov_parse(const void *v, size_t n, lk__prov_t *p) {
    const char *s = v, *end = s + n;
    if (!v || n < 3 || memcmp(s, "v1 ", 3))
        return 0;
    /* the first three fields end at a space each; the uid is the rest, spaces included */
    const char *f[3];
    size_t len[3];
    const char *c = s + 3;
    for (int i = 0; i < 3; i++) {
        const char *sp = memchr(c, ' ', (size_t)(end - c));
        if (!sp)
            return 0;
        f[i] = c;
        len[i] = (size_t)(sp - c);
        c = sp + 1;
    }
    if (!parse_batch(f[0], len[0], &p->batch) || !parse_attempt(f[1], len[1], p->attempt) ||
        !len[2])
        return 0;
    p->app = f[2];
    p->app_len = len[2];
    p->sink = c;
    p->sink_len = (size_t)(end - c);
    p->old_format = 0;
    return 1;
}

/* The first header called name, as a pointer and length (a null value reads as empty);
 * 0 if there is none. */
static int first(const rd_kafka_headers_t *h, const char *name, const char **v, size_t *n) {
    const void *val;
    if (rd_kafka_header_get(h, 0, name, &val, n))
        return 0;
    *v = val ? val : "";
    if (!val)
        *n = 0;
    return 1;
}

int lk__prov_get(const rd_kafka_headers_t *h, lk__prov_t *p) {
    const char *v, *b, *a;
    size_t n, bn, an;
    if (!h)
        return 0;
    if (first(h, LK__PROV_HEADER, &v, &n))
        return lk__prov_parse(v, n, p);
    /* a record written before v1: four headers */
    if (!first(h, "lockstep.batch", &b, &bn) || !first(h, "lockstep.attempt", &a, &an) ||
        !first(h, "lockstep.app", &p->app, &p->app_len) ||
        !first(h, "lockstep.sink", &p->sink, &p->sink_len) ||
        !parse_batch(b, bn, &p->batch) || !parse_attempt(a, an, p->attempt))
        return 0;
    p->old_format = 1;
    return 1;
}
