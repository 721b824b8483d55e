/*
 * codec_int.h — the msgpack codec used for every value in the checkpoint, a thin layer
 * over msgpack-c: a growable output buffer with packers, and typed accessors over
 * decoded objects that refuse (return 0) instead of trusting a corrupt file.
 * Decoded strings and binaries point into the input buffer (zero copy).
 */
#ifndef LK_CODEC_INT_H
#define LK_CODEC_INT_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

typedef struct lk__buf {
    char *data;
    size_t len, cap;
    int oom; /* an allocation failed: the content is incomplete */
    msgpack_packer pk;
} lk__buf_t;

typedef msgpack_zone lk__zone_t;
typedef msgpack_object lk__obj_t;

void lk__buf_init(lk__buf_t *b);
void lk__buf_reset(lk__buf_t *b);
void lk__buf_free(lk__buf_t *b);

void lk__pack_array(lk__buf_t *b, size_t n);
void lk__pack_map(lk__buf_t *b, size_t n);
void lk__pack_i64(lk__buf_t *b, int64_t v);
void lk__pack_str(lk__buf_t *b, const char *s);
void lk__pack_strn(lk__buf_t *b, const char *s, size_t n);
/** Append n raw bytes (not msgpack: e.g. a checksum trailer). */
void lk__buf_append(lk__buf_t *b, const void *p, size_t n);
/** bin for p != NULL, nil for p == NULL. */
void lk__pack_bin_or_nil(lk__buf_t *b, const void *p, size_t n);

void lk__zone_init(lk__zone_t *z);
void lk__zone_destroy(lk__zone_t *z);
void lk__zone_clear(lk__zone_t *z);
void *lk__zone_alloc(lk__zone_t *z, size_t n);

/** Decode exactly one object filling [data, data+len); 0 on success. */
int lk__unpack(lk__zone_t *z, const void *data, size_t len, lk__obj_t *out);
/** Decode the object at *off in [data, data+len) and advance *off past it; 0 on success
 * (more objects may follow). */
int lk__unpack_next(lk__zone_t *z, const void *data, size_t len, size_t *off, lk__obj_t *out);

/** Array length, or (size_t)-1 if o is not an array. */
size_t lk__arr_len(const lk__obj_t *o);
/** Element i of array o, or NULL. */
const lk__obj_t *lk__arr_at(const lk__obj_t *o, size_t i);
/** Typed element accessors: 1 on success, 0 on a missing element or a wrong type. */
int lk__arr_i64(const lk__obj_t *o, size_t i, int64_t *v);
int lk__arr_str(const lk__obj_t *o, size_t i, const char **p, size_t *n);
int lk__arr_bin_or_nil(const lk__obj_t *o, size_t i, const void **p, size_t *n);
/** Map size (1 on success) and the i-th string pair. */
int lk__map_len(const lk__obj_t *o, size_t *n);
int lk__map_str_at(const lk__obj_t *o, size_t i, const char **k, size_t *kl, const char **v,
                   size_t *vl);

#endif
