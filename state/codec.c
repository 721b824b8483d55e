/*
 * codec.c — msgpack encoding and defensive decoding for checkpoint values (see
 * codec_int.h). Every accessor checks types, so a corrupt value is reported, never
 * dereferenced blindly.
 */
#include "codec_int.h"
#include "../core/util_int.h"

#include <stdlib.h>
#include <string.h>

static int buf_write(void *data, const char *p, size_t n) {
    lk__buf_t *b = data;
    if (b->oom)
        return -1;
    if (b->len + n > b->cap) {
        char *d = n <= SIZE_MAX - b->len
                      ? lk__vec_reserve(b->data, &b->cap, b->len + n, 1, 256)
                      : NULL;
        if (!d) {
            b->oom = 1;
            return -1;
        }
        b->data = d;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void lk__buf_init(lk__buf_t *b) {
    memset(b, 0, sizeof *b);
    msgpack_packer_init(&b->pk, b, buf_write);
}

void lk__buf_reset(lk__buf_t *b) {
    b->len = 0;
    b->oom = 0;
}

void lk__buf_free(lk__buf_t *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void lk__buf_append(lk__buf_t *b, const void *p, size_t n) { buf_write(b, p, n); }

void lk__pack_array(lk__buf_t *b, size_t n) { msgpack_pack_array(&b->pk, n); }
void lk__pack_map(lk__buf_t *b, size_t n) { msgpack_pack_map(&b->pk, n); }
void lk__pack_i64(lk__buf_t *b, int64_t v) { msgpack_pack_int64(&b->pk, v); }

void lk__pack_strn(lk__buf_t *b, const char *s, size_t n) {
    msgpack_pack_str(&b->pk, n);
    msgpack_pack_str_body(&b->pk, s, n);
}

void lk__pack_str(lk__buf_t *b, const char *s) { lk__pack_strn(b, s, strlen(s)); }

void lk__pack_bin_or_nil(lk__buf_t *b, const void *p, size_t n) {
    if (!p) {
        msgpack_pack_nil(&b->pk);
        return;
    }
    msgpack_pack_bin(&b->pk, n);
    msgpack_pack_bin_body(&b->pk, p, n);
}

void lk__zone_init(lk__zone_t *z) { msgpack_zone_init(z, 1024); }
void lk__zone_destroy(lk__zone_t *z) { msgpack_zone_destroy(z); }
void lk__zone_clear(lk__zone_t *z) { msgpack_zone_clear(z); }
void *lk__zone_alloc(lk__zone_t *z, size_t n) { return msgpack_zone_malloc(z, n); }

/*
 * msgpack-c allocates a container's elements when it reads its header, before it knows
 * whether they follow: 5 bytes claiming a map of 4 billion entries made it ask for
 * 64 GiB (found by the fuzz target), and msgpack-c's C API has no size limit. So a value
 * from the checkpoint is walked once first, without allocating: every length must fit in
 * what is left, every container can hold at most as many elements as bytes are left, and
 * nesting is bounded. 0 and *off past the object, or -1.
 */
static int plausible(const unsigned char *p, size_t len, size_t *off, int depth) {
    if (depth > 32 || *off >= len)
        return -1;
    unsigned c = p[(*off)++];
    size_t left = len - *off, n = 0, skip = 0, items = 0;
#define NEED(k)                                                                          \
    do {                                                                                 \
        if (left < (k))                                                                  \
            return -1;                                                                   \
    } while (0)
#define BE(k) (k == 1 ? (size_t)p[*off] : k == 2 ? (size_t)p[*off] << 8 | p[*off + 1]    \
                                 : (size_t)p[*off] << 24 | (size_t)p[*off + 1] << 16 |   \
                                       (size_t)p[*off + 2] << 8 | p[*off + 3])
    if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3)
        return 0;
    if (c >= 0x80 && c <= 0x8f) {
        items = 2 * (c & 0x0f);
    } else if (c >= 0x90 && c <= 0x9f) {
        items = c & 0x0f;
    } else if (c >= 0xa0 && c <= 0xbf) {
        skip = c & 0x1f;
    } else {
        switch (c) {
        case 0xc4: case 0xd9: NEED(1); skip = BE(1); *off += 1; left -= 1; break;
        case 0xc5: case 0xda: NEED(2); skip = BE(2); *off += 2; left -= 2; break;
        case 0xc6: case 0xdb: NEED(4); skip = BE(4); *off += 4; left -= 4; break;
        case 0xc7: NEED(1); skip = BE(1) + 1; *off += 1; left -= 1; break;
        case 0xc8: NEED(2); skip = BE(2) + 1; *off += 2; left -= 2; break;
        case 0xc9: NEED(4); skip = BE(4) + 1; *off += 4; left -= 4; break;
        case 0xca: case 0xce: case 0xd2: skip = 4; break;
        case 0xcb: case 0xcf: case 0xd3: skip = 8; break;
        case 0xcc: case 0xd0: skip = 1; break;
        case 0xcd: case 0xd1: skip = 2; break;
        case 0xd4: skip = 2; break;
        case 0xd5: skip = 3; break;
        case 0xd6: skip = 5; break;
        case 0xd7: skip = 9; break;
        case 0xd8: skip = 17; break;
        case 0xdc: NEED(2); items = BE(2); *off += 2; left -= 2; break;
        case 0xdd: NEED(4); items = BE(4); *off += 4; left -= 4; break;
        case 0xde: NEED(2); items = 2 * BE(2); *off += 2; left -= 2; break;
        case 0xdf: NEED(4); items = 2 * BE(4); *off += 4; left -= 4; break;
        default: return -1; /* 0xc1: never used */
        }
    }
#undef NEED
#undef BE
    if (skip) {
        if (skip > left)
            return -1;
        *off += skip;
        return 0;
    }
    if (items > left) /* each element takes at least a byte */
        return -1;
    for (n = 0; n < items; n++)
        if (plausible(p, len, off, depth + 1))
            return -1;
    return 0;
}

int lk__unpack(lk__zone_t *z, const void *data, size_t len, lk__obj_t *out) {
    size_t off = 0, end = 0;
    if (plausible(data, len, &end, 0) || end != len)
        return -1;
    msgpack_unpack_return r = msgpack_unpack(data, len, &off, z, out);
    return r == MSGPACK_UNPACK_SUCCESS && off == len ? 0 : -1;
}

int lk__unpack_next(lk__zone_t *z, const void *data, size_t len, size_t *off, lk__obj_t *out) {
    size_t end = *off;
    if (plausible(data, len, &end, 0))
        return -1;
    msgpack_unpack_return r = msgpack_unpack(data, end, off, z, out);
    return r == MSGPACK_UNPACK_SUCCESS ? 0 : -1;
}

size_t lk__arr_len(const lk__obj_t *o) {
    return o->type == MSGPACK_OBJECT_ARRAY ? o->via.array.size : (size_t)-1;
}

const lk__obj_t *lk__arr_at(const lk__obj_t *o, size_t i) {
    if (o->type != MSGPACK_OBJECT_ARRAY || i >= o->via.array.size)
        return NULL;
    return &o->via.array.ptr[i];
}

int lk__arr_i64(const lk__obj_t *o, size_t i, int64_t *v) {
    const lk__obj_t *e = lk__arr_at(o, i);
    if (!e)
        return 0;
    if (e->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (e->via.u64 > (uint64_t)INT64_MAX)
            return 0;
        *v = (int64_t)e->via.u64;
        return 1;
    }
    if (e->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *v = e->via.i64;
        return 1;
    }
    return 0;
}

int lk__arr_str(const lk__obj_t *o, size_t i, const char **p, size_t *n) {
    const lk__obj_t *e = lk__arr_at(o, i);
    if (!e || e->type != MSGPACK_OBJECT_STR)
        return 0;
    *p = e->via.str.ptr;
    *n = e->via.str.size;
    return 1;
}

int lk__arr_bin_or_nil(const lk__obj_t *o, size_t i, const void **p, size_t *n) {
    const lk__obj_t *e = lk__arr_at(o, i);
    if (!e)
        return 0;
    if (e->type == MSGPACK_OBJECT_NIL) {
        *p = NULL;
        *n = 0;
        return 1;
    }
    if (e->type != MSGPACK_OBJECT_BIN)
        return 0;
    /* an empty bin may have a NULL pointer; callers read NULL as "absent" */
    *p = e->via.bin.ptr ? e->via.bin.ptr : "";
    *n = e->via.bin.size;
    return 1;
}

int lk__map_len(const lk__obj_t *o, size_t *n) {
    if (o->type != MSGPACK_OBJECT_MAP)
        return 0;
    *n = o->via.map.size;
    return 1;
}

int lk__map_str_at(const lk__obj_t *o, size_t i, const char **k, size_t *kl, const char **v,
                   size_t *vl) {
    if (o->type != MSGPACK_OBJECT_MAP || i >= o->via.map.size)
        return 0;
    const msgpack_object_kv *kv = &o->via.map.ptr[i];
    if (kv->key.type != MSGPACK_OBJECT_STR || kv->val.type != MSGPACK_OBJECT_STR)
        return 0;
    *k = kv->key.via.str.ptr;
    *kl = kv->key.via.str.size;
    *v = kv->val.via.str.ptr;
    *vl = kv->val.via.str.size;
    return 1;
}
