/*
 * plugin_word_lengths.c — an example pipeline plugin for `lockstep run`: counts the
 * words of the input lines by their length, exactly-once.
 *
 * Input: the lines of input.topics (one line per record value). A word is a run of
 * ASCII letters and digits. Words shorter than plugin.min.length (default 1) are
 * ignored. Output: one record per length seen in a batch, key = the length in decimal
 * ("5"), value = how many words of that length were read so far ("42"), written to
 * output.topic and/or output.dir, like the built-in pipelines. The count per length is
 * keyed state in the checkpoint, so it is exact across crashes and restarts.
 *
 * Build it as a shared object that leaves the lk_* symbols undefined: they are
 * resolved from the lockstep executable when it loads the plugin.
 *
 *     cc -shared -fPIC -I include -o libword_lengths.so examples/plugin_word_lengths.c
 *     lockstep run -X app.id=word-lengths -X checkpoint.dir=/var/lib/lockstep/word-lengths \
 *         -X kafka.bootstrap.servers=localhost:9092 -X pipeline.plugin=./libword_lengths.so \
 *         -X input.topics=lines -X output.topic=word-lengths -X plugin.min.length=3
 *
 * (CMake builds it as build/examples/libword_lengths.so.) Copy this file to start your
 * own pipeline: keep the operator uids stable across versions, since the checkpoint
 * matches state to operators by uid.
 */
#include <lockstep.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The plugin's settings, read once when the pipeline is defined. The pipeline is
 * defined once per process, so a static is enough. */
static long min_length = 1;

/* flat_map: emit (length, "") for every word of the line that is long enough. */
static void split_lengths(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    const unsigned char *p = in->value, *end = p + (in->value ? in->value_len : 0);
    while (p < end) {
        while (p < end && !isalnum(*p))
            p++;
        size_t n = 0;
        while (p < end && isalnum(*p)) {
            n++;
            p++;
        }
        if (n > 0 && (long)n >= min_length) {
            char key[24];
            int len = snprintf(key, sizeof key, "%zu", n);
            lk_emit(b, key, (size_t)len, "", 0);
        }
    }
}

/* update_state_by_key: the state is the running count, an int64_t in host byte order
 * (state schema version 1). Called once per batch for each length with new words. */
static void add_count(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *values,
                      size_t nvalues, const lk_bytes_t *state, lk_bytes_t *next,
                      void *opaque) {
    (void)key, (void)values, (void)opaque;
    int64_t count = 0;
    if (state && state->len == sizeof count)
        memcpy(&count, state->data, sizeof count);
    count += (int64_t)nvalues;
    int64_t *out = lk_alloc(b, sizeof *out); /* valid until the batch ends */
    if (!out) {
        lk_batch_fail(b, "out of memory"); /* nothing of the batch is committed */
        return;
    }
    *out = count;
    *next = (lk_bytes_t){out, sizeof *out};
}

/* map: the binary count as decimal text, for humans and other consumers. */
static void format_count(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    int64_t count = 0;
    if (in->value && in->value_len == sizeof count)
        memcpy(&count, in->value, sizeof count);
    char text[24];
    int len = snprintf(text, sizeof text, "%lld", (long long)count);
    lk_emit(b, in->key, in->key_len, text, (size_t)len);
}

/* A string property; NULL when it is not set or empty. */
static const char *prop(const lk_conf_t *conf, const char *key) {
    const char *v = lk_conf_get(conf, key);
    return v && v[0] ? v : NULL;
}

/* The entry point `lockstep run` looks up (LK_PLUGIN_DEFINE_SYMBOL). It must have
 * default visibility and C linkage. */
__attribute__((visibility("default"))) void lk_plugin_define(lk_pipeline_t *p,
                                                             const lk_conf_t *conf);

void lk_plugin_define(lk_pipeline_t *p, const lk_conf_t *conf) {
    const char *min = prop(conf, "plugin.min.length"); /* plugin.* keys are unchecked */
    if (min) {
        char *end;
        min_length = strtol(min, &end, 10);
        if (*end || min_length < 1 || min_length > 1000) {
            /* the error stops `lockstep run` before anything is read */
            lk_pipeline_fail(p, "plugin.min.length: expected 1 .. 1000, not '%s'", min);
            return;
        }
    }
    const char *topics = prop(conf, "input.topics");
    const char *topic = prop(conf, "output.topic");
    const char *dir = prop(conf, "output.dir");
    if (!topics) {
        lk_pipeline_fail(p, "input.topics is required by the word-lengths plugin");
        return;
    }
    if (!topic && !dir) {
        lk_pipeline_fail(p, "no output: set output.topic and/or output.dir");
        return;
    }

    lk_stream_t *lines = lk_kafka_stream(p, topics);
    lk_stream_t *lengths = lk_flat_map(lines, "split-lengths", split_lengths, NULL);
    lk_stream_t *counts = lk_update_state_by_key(lengths, "length-counts", 1, add_count, NULL);
    lk_stream_t *out = lk_map(counts, "format-counts", format_count, NULL);
    if (topic)
        lk_to_kafka(out, "to-kafka", topic);
    if (dir)
        lk_to_files(out, "to-files", dir, prop(conf, "output.format") ? prop(conf, "output.format")
                                                                         : "jsonl");
}
