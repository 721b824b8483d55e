/*
 * test_operators.c — each operator through the real driver on the mock cluster: map,
 * filter, flat_map, reduce_by_key within a batch, update_state_by_key with deletion and
 * TTL expiry, foreach_batch, broadcasts, and misuse reported as batch errors.
 */
#define _GNU_SOURCE
#include "lockstep.h"
#include "mockutil.h"
#include "state/store_int.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void setup(void) {
    mu_fixture_init();
    mu_topic(&mu_cl, "in", 1);
}
TestSuite(operators, .init = setup, .fini = mu_fixture_fini, .timeout = 120);

/* What reaches the end of a pipeline, as "key=value" lines ("key=<tombstone>"). */
typedef struct {
    char out[8192];
    size_t batches;
    int mode;
    int64_t ttl;
    int map_twice;
} obs_t;

static void observe(lk_batch_t *b, const lk_record_t *recs, size_t n, void *opaque) {
    (void)b;
    obs_t *o = opaque;
    o->batches++;
    for (size_t i = 0; i < n; i++) {
        char line[256];
        if (recs[i].value && recs[i].value_len == 8) { /* int64 state */
            int64_t v;
            memcpy(&v, recs[i].value, 8);
            snprintf(line, sizeof line, "%.*s=%lld;", (int)recs[i].key_len,
                     (const char *)recs[i].key, (long long)v);
        } else {
            snprintf(line, sizeof line, "%.*s=%.*s;", (int)recs[i].key_len,
                     recs[i].key ? (const char *)recs[i].key : "",
                     recs[i].value ? (int)recs[i].value_len : 11,
                     recs[i].value ? (const char *)recs[i].value : "<tombstone>");
        }
        strncat(o->out, line, sizeof o->out - strlen(o->out) - 1);
    }
}

/* key = value's first character, value = whole value, upper-cased by a broadcast table */
static void *build_upper(void *opaque) {
    (void)opaque;
    char *t = malloc(256);
    for (int i = 0; i < 256; i++)
        t[i] = (char)(i >= 'a' && i <= 'z' ? i - 32 : i);
    return t;
}

static lk_broadcast_t *upper_bc;

static void to_upper_keyed(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    obs_t *o = opaque;
    const char *table = lk_broadcast_value(upper_bc);
    char *v = lk_alloc(b, in->value_len);
    for (size_t i = 0; i < in->value_len; i++)
        v[i] = table[(unsigned char)((const char *)in->value)[i]];
    lk_emit(b, v, 1, v, in->value_len);
    if (o->map_twice)
        lk_emit(b, v, 1, v, in->value_len);
}

static int not_x(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)b;
    (void)opaque;
    return ((const char *)in->value)[0] != 'X';
}

static void concat(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *a,
                   const lk_bytes_t *v, lk_bytes_t *out, void *opaque) {
    (void)key;
    (void)opaque;
    char *c = lk_alloc(b, a->len + 1 + v->len);
    memcpy(c, a->data, a->len);
    c[a->len] = '+';
    memcpy(c + a->len + 1, v->data, v->len);
    out->data = c;
    out->len = a->len + 1 + v->len;
}

/* counts values; a value ending in "DEL" deletes the key */
static void count_or_delete(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *vals,
                            size_t n, const lk_bytes_t *state, lk_bytes_t *next,
                            void *opaque) {
    (void)key;
    (void)opaque;
    if (lk_batch_state_expiring(b)) {
        cr_assert_eq(n, 0);
        cr_assert_not_null(state);
        return;
    }
    int64_t c = 0;
    if (state)
        memcpy(&c, state->data, 8);
    for (size_t i = 0; i < n; i++) {
        if (vals[i].len >= 3 && !memcmp((const char *)vals[i].data + vals[i].len - 3, "DEL", 3)) {
            next->data = NULL;
            return;
        }
        c++;
    }
    int64_t *p = lk_alloc(b, 8);
    *p = c;
    next->data = p;
    next->len = 8;
}

static void define(lk_pipeline_t *p, void *opaque) {
    obs_t *o = opaque;
    upper_bc = lk_broadcast(p, "upper", build_upper, free, NULL);
    lk_stream_t *in = lk_kafka_stream(p, "in");
    lk_stream_t *kept = lk_filter(in, "drop-x", not_x, NULL);
    lk_stream_t *keyed = lk_map(kept, "upper-keyed", to_upper_keyed, o);
    if (o->mode == 0) {
        lk_foreach_batch(lk_reduce_by_key(keyed, "concat", concat, NULL), "observe", observe, o);
    } else {
        lk_stream_t *st = lk_update_state_by_key(keyed, "counts", 1, count_or_delete, NULL);
        if (o->ttl)
            lk_state_ttl(st, o->ttl);
        lk_foreach_batch(st, "observe", observe, o);
    }
}

static lk_context_t *start(obs_t *o, lk_conf_t **confp) {
    *confp = mu_conf(&mu_cl, "ops", tu_dir);
    char err[1024];
    lk_context_t *ctx = lk_context_get_or_create(*confp, define, o, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    return ctx;
}

static void produce(const char *const *values, size_t n) {
    for (size_t i = 0; i < n; i++)
        mu_produce(&mu_cl, "in", 0, NULL, values[i]);
    mu_flush(&mu_cl);
}

Test(operators, filter_map_broadcast_reduce_within_batch) {
    obs_t o = {.mode = 0};
    lk_conf_t *conf;
    lk_context_t *ctx = start(&o, &conf);
    const char *const v1[] = {"apple", "Xdrop", "avocado", "banana", "axe"};
    produce(v1, 5);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_str_eq(o.out, "A=APPLE+AVOCADO+AXE;B=BANANA;");
    /* reduce is per batch: nothing carries over */
    o.out[0] = 0;
    const char *const v2[] = {"art"};
    produce(v2, 1);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_str_eq(o.out, "A=ART;");
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

Test(operators, update_state_with_delete_and_restart) {
    obs_t o = {.mode = 1};
    lk_conf_t *conf;
    lk_context_t *ctx = start(&o, &conf);
    const char *const v1[] = {"a1", "a2", "b1"};
    produce(v1, 3);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_str_eq(o.out, "A=2;B=1;");
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
    /* state survives the restart; DEL deletes and emits a tombstone */
    obs_t o2 = {.mode = 1};
    ctx = start(&o2, &conf);
    const char *const v2[] = {"bdel", "a3"}; /* the map upper-cases: "BDEL", key B */
    produce(v2, 2);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_str_eq(o2.out, "B=<tombstone>;A=3;");
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

Test(operators, state_ttl_expires_idle_keys) {
    obs_t o = {.mode = 1, .ttl = 1};
    lk_conf_t *conf;
    lk_context_t *ctx = start(&o, &conf);
    const char *const v1[] = {"a", "b"};
    produce(v1, 2);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    /* a's count is 1 after batch 1; batch times advance >= 1 ms per batch */
    cr_assert(strstr(o.out, "A=1;") && strstr(o.out, "B=1;"), "%s", o.out);
    o.out[0] = 0;
    const char *const v2[] = {"a"};
    produce(v2, 1);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    /* a got a value (not idle): counted; b idle past the TTL: expired, tombstone */
    cr_assert_str_eq(o.out, "A=2;B=<tombstone>;");
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

Test(operators, map_must_emit_once) {
    obs_t o = {.mode = 0, .map_twice = 1};
    lk_conf_t *conf;
    lk_context_t *ctx = start(&o, &conf);
    const char *const v1[] = {"apple"};
    produce(v1, 1);
    cr_assert_eq(lk_context_run_once(ctx), LK_ERR_STATE);
    cr_assert(strstr(lk_context_errstr(ctx), "map 'upper-keyed' emitted 2 records"), "%s",
              lk_context_errstr(ctx));
    cr_assert_eq(lk_context_last_batch(ctx), 0, "a failed batch commits nothing");
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

static void define_bad(lk_pipeline_t *p, void *opaque) {
    int which = *(int *)opaque;
    lk_stream_t *in = lk_kafka_stream(p, which == 0 ? "bad,topic!" : "in");
    if (which == 1) {
        lk_filter(in, "same", not_x, NULL);
        lk_filter(in, "same", not_x, NULL);
    } else if (which == 2) {
        lk_update_state_by_key(in, "s", 0, count_or_delete, NULL);
    } else if (which == 3) {
        lk_map(in, "m", NULL, NULL);
    }
}

Test(operators, definition_errors) {
    lk_conf_t *conf = mu_conf(&mu_cl, "ops", tu_dir);
    char err[1024];
    const char *want[] = {"invalid topic name 'topic!'", "uid 'same' is used twice",
                          "schema_version must be >= 1", "map 'm': no function"};
    for (int i = 0; i < 4; i++) {
        cr_assert_null(lk_context_get_or_create(conf, define_bad, &i, err, sizeof err));
        cr_assert(strstr(err, want[i]), "case %d: %s", i, err);
    }
    lk_conf_destroy(conf);
}

/* ---- several input topics ---- */

static void tag_topic(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    lk_emit(b, in->topic, strlen(in->topic), in->value, in->value_len);
}

static void define_multi(lk_pipeline_t *p, void *opaque) {
    obs_t *o = opaque;
    lk_stream_t *ab = lk_kafka_stream(p, "in,second");
    lk_foreach_batch(lk_map(ab, "tag-ab", tag_topic, NULL), "observe-ab", observe, o);
    lk_stream_t *c = lk_kafka_stream(p, "third");
    lk_foreach_batch(lk_map(c, "tag-c", tag_topic, NULL), "observe-c", observe, o);
}

Test(operators, several_input_topics) {
    mu_topic(&mu_cl, "second", 2);
    mu_topic(&mu_cl, "third", 1);
    mu_produce(&mu_cl, "in", 0, NULL, "1");
    mu_produce(&mu_cl, "second", 1, NULL, "2");
    mu_produce(&mu_cl, "third", 0, NULL, "3");
    mu_flush(&mu_cl);
    obs_t o = {0};
    lk_conf_t *conf = mu_conf(&mu_cl, "multi", tu_dir);
    char err[1024];
    lk_context_t *ctx = lk_context_get_or_create(conf, define_multi, &o, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    /* ranges are processed in plan order: topics as listed, partitions ascending */
    cr_assert_str_eq(o.out, "in=1;second=2;third=3;");
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

/* ---- hostile definitions (issue 15 items 9 and 19) ---- */

static char long_list[2048];

static void define_long_list(lk_pipeline_t *p, void *opaque) {
    obs_t *o = opaque;
    lk_stream_t *in = lk_kafka_stream(p, long_list);
    lk_foreach_batch(lk_map(in, "tag", tag_topic, NULL), "observe", observe, o);
}

Test(operators, input_topic_list_longer_than_a_uid) {
    /* 12 topics of 40 characters: 491 characters, far past the 200 of a uid (the old
     * derivation refused any list past ~194) and well within input.topics' 4000 */
    size_t off = 0;
    for (int i = 0; i < 12; i++) {
        char t[64];
        snprintf(t, sizeof t, "a-rather-long-input-topic-name-number-%02d", i);
        mu_topic(&mu_cl, t, 1);
        off += (size_t)snprintf(long_list + off, sizeof long_list - off, "%s%s", i ? "," : "", t);
    }
    cr_assert_eq(off, 491);
    mu_produce(&mu_cl, "a-rather-long-input-topic-name-number-11", 0, NULL, "x");
    mu_flush(&mu_cl);
    obs_t o = {0};
    lk_conf_t *conf = mu_conf(&mu_cl, "long", tu_dir);
    char err[1024];
    lk_context_t *ctx = lk_context_get_or_create(conf, define_long_list, &o, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    cr_assert_str_eq(o.out, "a-rather-long-input-topic-name-number-11=x;");
    lk_context_destroy(ctx);
    /* the same list again: the same uid, so the checkpoint is reused (no topology error) */
    o.out[0] = 0;
    ctx = lk_context_get_or_create(conf, define_long_list, &o, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}

static void define_two_file_sinks(lk_pipeline_t *p, void *opaque) {
    const char *out = opaque;
    char again[512];
    snprintf(again, sizeof again, "%s/./", out); /* the same directory, spelled otherwise */
    lk_stream_t *in = lk_kafka_stream(p, "in");
    lk_to_files(in, "to-files", out, "jsonl");
    lk_to_files(in, "deadletter", again, "jsonl");
}

Test(operators, two_file_sinks_on_one_directory_are_refused) {
    char out[400];
    snprintf(out, sizeof out, "%s/out", tu_dir);
    lk_conf_t *conf = mu_conf(&mu_cl, "clash", tu_dir);
    char err[1024];
    cr_assert_null(lk_context_get_or_create(conf, define_two_file_sinks, out, err, sizeof err));
    cr_assert(strstr(err, "sinks 'to-files' and 'deadletter' both write files to") &&
                  strstr(err, "a directory of its own"),
              "%s", err);
    lk_conf_destroy(conf);
}

/* ---- what plugins see of a record (issue 15 item 14) ---- */

static void note_type(lk_batch_t *b, const lk_record_t *recs, size_t n, void *opaque) {
    (void)b;
    obs_t *o = opaque;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(o->out);
        snprintf(o->out + len, sizeof o->out - len, "%s:%d:%zu;", recs[i].topic ? "in" : "derived",
                 (int)recs[i].timestamp_type, recs[i].nheaders);
    }
}

static void copy_value(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    lk_emit(b, in->key, in->key_len, in->value, in->value_len);
}

static void define_types(lk_pipeline_t *p, void *opaque) {
    lk_stream_t *in = lk_kafka_stream(p, "in");
    lk_foreach_batch(in, "input", note_type, opaque);
    lk_foreach_batch(lk_map(in, "derive", copy_value, NULL), "derived", note_type, opaque);
}

Test(operators, records_expose_timestamp_type_and_headers) {
    mu_produce(&mu_cl, "in", 0, NULL, "x");
    mu_flush(&mu_cl);
    obs_t o = {0};
    lk_conf_t *conf = mu_conf(&mu_cl, "types", tu_dir);
    char err[1024];
    lk_context_t *ctx = lk_context_get_or_create(conf, define_types, &o, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    /* input: CreateTime as produced, no headers; derived: no Kafka timestamp type */
    cr_assert_str_eq(o.out, "in:1:0;derived:0:0;");
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
}
