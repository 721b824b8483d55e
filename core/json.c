/*
 * json.c — bytes into JSON (see json_int.h).
 */
#include "json_int.h"
#include "util_int.h"

#include <stdlib.h>

char *lk__base64(const void *data, size_t n) {
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *in = data;
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
    if (!out)
        return NULL;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        *o++ = tbl[v >> 18 & 63];
        *o++ = tbl[v >> 12 & 63];
        *o++ = tbl[v >> 6 & 63];
        *o++ = tbl[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0);
        *o++ = tbl[v >> 18 & 63];
        *o++ = tbl[v >> 12 & 63];
        *o++ = i + 1 < n ? tbl[v >> 6 & 63] : '=';
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

static int is_text(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((p[i] < 0x20 && p[i] != '\t' && p[i] != '\n' && p[i] != '\r') || p[i] == 0x7f)
            return 0;
    return 1;
}

int lk__json_set_bytes(json_t *obj, const char *name, const void *p, size_t n, int strict_text) {
    if (!p)
        return json_object_set_new(obj, name, json_null());
    /* json_stringn returns NULL for bytes that are not valid UTF-8 */
    json_t *v = !strict_text || is_text(p, n) ? json_stringn(p, n) : NULL;
    if (v)
        return json_object_set_new(obj, name, v);
    char *enc = lk__base64(p, n), b64name[300];
    if (!enc)
        return -1;
    lk__fmt(b64name, sizeof b64name, "%s_base64", name);
    int rc = json_object_set_new(obj, b64name, json_string(enc));
    free(enc);
    return rc;
}
