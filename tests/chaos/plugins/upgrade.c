/*
 * upgrade.c — one pipeline plugin in three versions, for the upgrade test
 * (tests/chaos/upgrade.py), selected at build time with -DUPGRADE_VERSION=N:
 *   1  word count: split-words -> word-counts (state schema v1) -> format -> to-kafka
 *   2  version 1 plus a new stateful operator, word-lengths, counting words by length
 *      into plugin.lengths.topic; every uid of version 1 is kept, so its state carries on
 *   3  version 1 with word-counts' state schema changed to v2 and no migration: a start
 *      on a version 1 checkpoint must be refused, naming the operator
 */
#include "lockstep.h"

#include <stdio.h>
#include <string.h>

#ifndef UPGRADE_VERSION
#error "build with -DUPGRADE_VERSION=1, 2 or 3"
#endif

void lk_plugin_define(lk_pipeline_t *p, const lk_conf_t *conf);

static void split(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    const char *s = in->value, *end = s + in->value_len;
    while (s < end) {
        while (s < end && *s == ' ')
            s++;
        const char *w = s;
        while (s < end && *s != ' ')
            s++;
        if (s > w)
            lk_emit(b, w, (size_t)(s - w), "", 0);
    }
}

static void count(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *vals, size_t n,
                  const lk_bytes_t *state, lk_bytes_t *next, void *opaque) {
    (void)key;
    (void)vals;
    (void)opaque;
    long long c = 0;
    if (state && state->len == sizeof c)
        memcpy(&c, state->data, sizeof c);
    c += (long long)n;
    long long *out = lk_alloc(b, sizeof *out);
    if (!out)
        return;
    *out = c;
    *next = (lk_bytes_t){out, sizeof *out};
}

static void format(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    long long c = 0;
    memcpy(&c, in->value, sizeof c);
    char text[32];
    int n = snprintf(text, sizeof text, "%lld", c);
    lk_emit(b, in->key, in->key_len, text, (size_t)n);
}

#if UPGRADE_VERSION == 2
static void by_length(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    char key[16];
    int n = snprintf(key, sizeof key, "%zu", in->key_len);
    lk_emit(b, key, (size_t)n, "", 0);
}
#endif

void lk_plugin_define(lk_pipeline_t *p, const lk_conf_t *conf) {
    lk_stream_t *words = lk_flat_map(lk_kafka_stream(p, lk_conf_get(conf, "input.topics")),
                                     "split-words", split, NULL);
    int schema = UPGRADE_VERSION == 3 ? 2 : 1;
    lk_stream_t *counts = lk_update_state_by_key(words, "word-counts", schema, count, NULL);
    lk_to_kafka(lk_map(counts, "format-counts", format, NULL), "to-kafka",
                lk_conf_get(conf, "output.topic"));
#if UPGRADE_VERSION == 2
    lk_stream_t *lengths = lk_update_state_by_key(lk_map(words, "word-length", by_length, NULL),
                                                  "word-lengths", 1, count, NULL);
    lk_to_kafka(lk_map(lengths, "format-lengths", format, NULL), "lengths-to-kafka",
                lk_conf_get(conf, "plugin.lengths.topic"));
#endif
}
