/*
 * builtin.c — the pipelines `lockstep run` offers without writing code (pipeline=...):
 * wordcount, count-by-key, sum-by-key (keys and numbers from JSON fields) and copy, all
 * exactly-once to output.topic and/or output.dir, with running totals or windows (batch
 * or event time). Malformed input (bad JSON, missing field, non-numeric value) never
 * crashes anything: it is counted in the accumulator errors.malformed and sent to
 * errors.deadletter, or, with errors.tolerance=none, stops the application with a
 * message naming the record's topic, partition and offset.
 *
 * This file is the example plugin authors copy: it uses only the public header
 * lockstep.h (plus jansson for JSON, and the C library), and takes its settings from a
 * plain options struct (builtin.h) as a plugin takes its own from plugin.* properties.
 * Reading and checking the configuration, and loading plugins, is the CLI's business
 * (builtin_conf.c). DESIGN.md, Layout.
 */
#include "builtin.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- wordcount ---- */

size_t lk__wc_next_word(const unsigned char **pp, const unsigned char *end,
                        char word[LK__WC_WORD_MAX]) {
    const unsigned char *p = *pp;
    size_t n = 0;
    while (p < end && !n) {
        while (p < end && !isalnum(*p) && *p < 0x80)
            p++;
        /* a word: letters and digits, ASCII lower-cased; UTF-8 bytes kept as they are */
        size_t quotes = 0; /* trailing apostrophes, not part of the word */
        while (p < end && (isalnum(*p) || *p >= 0x80 || *p == '\'')) {
            if (n < LK__WC_WORD_MAX)
                word[n] = (char)tolower(*p);
            quotes = *p == '\'' ? quotes + 1 : 0;
            n++;
            p++;
        }
        n -= quotes;
    }
    *pp = p;
    return n;
}

/* Non-zero if the value holds a word the word count cannot keep (see LK__WC_WORD_MAX). */
static int wc_has_long_word(const lk_record_t *in) {
    if (!in->value || in->value_len <= LK__WC_WORD_MAX)
        return 0; /* no room for one */
    const unsigned char *p = in->value, *end = p + in->value_len;
    char word[LK__WC_WORD_MAX];
    size_t n;
    while ((n = lk__wc_next_word(&p, end, word)))
        if (n > LK__WC_WORD_MAX)
            return 1;
    return 0;
}

void lk__wc_split_words(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    const unsigned char *p = in->value, *end = p + (in->value ? in->value_len : 0);
    char word[LK__WC_WORD_MAX];
    size_t n;
    while ((n = lk__wc_next_word(&p, end, word)))
        if (n <= LK__WC_WORD_MAX) /* longer: the record was filtered out as malformed */
            lk_emit(b, word, n, "", 0);
}

/* state: int64 count (8 bytes) */
void lk__wc_add_count(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *vals, size_t n,
                      const lk_bytes_t *state, lk_bytes_t *next, void *opaque) {
    (void)key;
    (void)vals;
    (void)opaque;
    int64_t c = 0;
    if (state && state->len == sizeof c)
        memcpy(&c, state->data, sizeof c);
    c += (int64_t)n;
    int64_t *out = lk_alloc(b, sizeof *out);
    if (!out)
        return;
    *out = c;
    *next = (lk_bytes_t){out, sizeof *out};
}

/*
 * sum-by-key numbers: a tag byte and 8 bytes, 'i' + int64 or 'd' + double (native byte
 * order, like the count). JSON integers sum exactly in 64-bit integers; a sum that would
 * overflow fails the batch (nothing of it is committed) naming the key, never wrapping
 * or losing precision. Once a key has seen a number with a fraction or exponent its sum
 * is a double, as before. State written by earlier versions is a bare 8-byte double and
 * is read as such.
 */
typedef struct {
    int is_int;
    int64_t i;
    double d;
} num_t;

#define NUM_BYTES 9

static void num_put(unsigned char out[NUM_BYTES], const num_t *n) {
    out[0] = n->is_int ? 'i' : 'd';
    if (n->is_int)
        memcpy(out + 1, &n->i, 8);
    else
        memcpy(out + 1, &n->d, 8);
}

/* 0 if data is not a number of either layout. */
static int num_get(const void *data, size_t len, num_t *n) {
    const unsigned char *p = data;
    memset(n, 0, sizeof *n);
    if (len == 8) { /* before integer sums: a double */
        memcpy(&n->d, p, 8);
        return 1;
    }
    if (len != NUM_BYTES || (p[0] != 'i' && p[0] != 'd'))
        return 0;
    n->is_int = p[0] == 'i';
    if (n->is_int)
        memcpy(&n->i, p + 1, 8);
    else
        memcpy(&n->d, p + 1, 8);
    return 1;
}

static double num_double(const num_t *n) { return n->is_int ? (double)n->i : n->d; }

static void add_sum(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *vals, size_t n,
                    const lk_bytes_t *state, lk_bytes_t *next, void *opaque) {
    (void)opaque;
    num_t sum = {.is_int = 1};
    if (state && !num_get(state->data, state->len, &sum)) {
        lk_batch_fail(b, "sum of key '%.*s': state of %zu bytes is not a sum", (int)key->len,
                      (const char *)key->data, state->len);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        num_t v;
        if (!num_get(vals[i].data, vals[i].len, &v)) {
            lk_batch_fail(b, "sum of key '%.*s': a value of %zu bytes is not a number",
                          (int)key->len, (const char *)key->data, vals[i].len);
            return;
        }
        if (sum.is_int && v.is_int) {
            int64_t r;
            if (__builtin_add_overflow(sum.i, v.i, &r)) {
                lk_batch_fail(b, "sum of key '%.*s' overflows 64-bit integers (%lld + %lld); "
                              "nothing of this batch is committed: remove or correct the "
                              "record, or send such values as decimals (e.g. 1.0e19) to sum "
                              "them as doubles",
                              (int)(key->len > 200 ? 200 : key->len), (const char *)key->data,
                              (long long)sum.i, (long long)v.i);
                return;
            }
            sum.i = r;
        } else {
            sum.d = num_double(&sum) + num_double(&v);
            sum.is_int = 0;
        }
    }
    unsigned char *out = lk_alloc(b, NUM_BYTES);
    if (!out)
        return;
    num_put(out, &sum);
    *next = (lk_bytes_t){out, NUM_BYTES};
}

/* Decimal text of v at the end of buf[32]; returns where it starts (snprintf showed in
 * the word count's profile). */
static char *format_i64(char buf[32], int64_t v) {
    char *p = buf + 32;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--p = '-';
    return p;
}

void lk__wc_format_count(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    char text[32];
    int64_t c = 0;
    if (in->value_len == sizeof c)
        memcpy(&c, in->value, sizeof c);
    char *t = format_i64(text, c);
    size_t n = (size_t)(text + sizeof text - t);
    lk_emit(b, in->key, in->key_len, in->value ? t : NULL, in->value ? n : 0);
}

static void format_sum(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    char text[40];
    num_t v = {.is_int = 1};
    if (in->value)
        num_get(in->value, in->value_len, &v);
    double s = v.d;
    /* exact integers print exactly; integral doubles as integers; %.17g round-trips any
     * other double */
    int n = v.is_int ? snprintf(text, sizeof text, "%lld", (long long)v.i)
            : s == floor(s) && fabs(s) < 1e15 ? snprintf(text, sizeof text, "%.0f", s)
                                              : snprintf(text, sizeof text, "%.17g", s);
    lk_emit(b, in->key, in->key_len, in->value ? text : NULL, in->value ? (size_t)n : 0);
}

/* ---- JSON input ---- */

typedef lk__builtin_opts_t builtin_t;

/* Key and number of a JSON record; NULL on malformed input, with *why set. */
static json_t *parse(const builtin_t *bt, const lk_record_t *in, const char **key,
                     size_t *klen, num_t *num, const char **why) {
    json_error_t je;
    /* JSON_ALLOW_NUL: "\u0000" inside a string is valid JSON (jansson refuses it by
     * default); keys and values are handled with their lengths, never as C strings */
    json_t *doc = in->value ? json_loadb(in->value, in->value_len, JSON_ALLOW_NUL, &je) : NULL;
    if (!doc) {
        *why = in->value ? "not JSON" : "no value";
        return NULL;
    }
    json_t *k = json_is_object(doc) ? json_object_get(doc, bt->key_field) : NULL;
    if (json_is_string(k)) {
        *key = json_string_value(k);
        *klen = json_string_length(k);
    } else if (json_is_integer(k)) {
        /* keep the number's text as the key: 7 and "7" are the same key */
        static _Thread_local char buf[32];
        *klen = (size_t)snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(k));
        *key = buf;
    } else {
        *why = !json_is_object(doc) ? "not a JSON object" : k ? "key field is not a string or integer"
                                                             : "key field missing";
        json_decref(doc);
        return NULL;
    }
    if (*klen == 0 || *klen > 500) {
        *why = "key empty or longer than 500 bytes";
        json_decref(doc);
        return NULL;
    }
    if (bt->windowed && *klen > LK_WINDOW_KEY_MAX) {
        *why = "key longer than 490 bytes (the limit of windows)";
        json_decref(doc);
        return NULL;
    }
    if (bt->kind == LK__BUILTIN_SUM_BY_KEY) {
        json_t *v = json_object_get(doc, bt->value_field);
        if (!json_is_number(v)) {
            *why = v ? "value field is not a number" : "value field missing";
            json_decref(doc);
            return NULL;
        }
        num->is_int = json_is_integer(v);
        num->i = num->is_int ? (int64_t)json_integer_value(v) : 0;
        num->d = num->is_int ? 0 : json_real_value(v);
    }
    return doc;
}

static int well_formed(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    const builtin_t *bt = opaque;
    const char *key, *why;
    size_t klen;
    num_t num;
    if (bt->kind == LK__BUILTIN_WORDCOUNT) {
        if (!wc_has_long_word(in))
            return 1;
        why = "a word longer than 511 bytes (the checkpoint's key limit)";
    } else {
        json_t *doc = parse(bt, in, &key, &klen, &num, &why);
        if (doc) {
            json_decref(doc);
            return 1;
        }
    }
    if (bt->tolerance_none)
        lk_batch_fail(b, "malformed record at %s[%d] offset %lld: %s (errors.tolerance=none)",
                      in->topic ? in->topic : "?", (int)in->partition, (long long)in->offset,
                      why);
    return 0;
}

static int malformed(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    if (well_formed(b, in, opaque))
        return 0;
    lk_accumulator_add(b, "errors.malformed", 1);
    /* the metric lockstep_records_deadlettered_total (connector/metrics_text.c) */
    if (((const builtin_t *)opaque)->deadletter[0])
        lk_accumulator_add(b, "lockstep.records.deadlettered", 1);
    return 1;
}

static void extract(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    const builtin_t *bt = opaque;
    const char *key, *why;
    size_t klen;
    num_t num = {0};
    json_t *doc = parse(bt, in, &key, &klen, &num, &why); /* well formed: filtered */
    if (!doc) {
        lk_batch_fail(b, "record changed between parses"); /* cannot happen */
        return;
    }
    if (bt->kind == LK__BUILTIN_SUM_BY_KEY) {
        unsigned char v[NUM_BYTES];
        num_put(v, &num);
        lk_emit(b, key, klen, v, sizeof v);
    } else {
        lk_emit(b, key, klen, "", 0); /* count-by-key counts values; their bytes are unused */
    }
    json_decref(doc);
}

/* ---- windows (window.size.ms) ---- */

/* wordcount's split, emitting (word, int64 1): what the window sums */
static void split_words_one(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    const unsigned char *p = in->value, *end = p + (in->value ? in->value_len : 0);
    char word[LK__WC_WORD_MAX];
    size_t n;
    int64_t one = 1;
    /* records with a word longer than LK__WC_WORD_MAX were filtered out before */
    while ((n = lk__wc_next_word(&p, end, word)))
        if (n <= LK__WC_WORD_MAX)
            lk_emit(b, word, n, &one, sizeof one);
}

static void one(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    int64_t v = 1;
    lk_emit(b, in->key, in->key_len, &v, sizeof v);
}

/* The two 8-byte numbers a window step combines, copied from a and v into x and y (left
 * as they are when absent or of another size), and a cell for the result in the batch's
 * memory (NULL when out of memory). */
static void *two_numbers(lk_batch_t *b, const lk_bytes_t *a, const lk_bytes_t *v, void *x,
                         void *y) {
    if (a->len == 8)
        memcpy(x, a->data, 8);
    if (v->len == 8)
        memcpy(y, v->data, 8);
    return lk_alloc(b, 8);
}

/* a + sign * v over int64 window values (counts: far from overflowing) */
static void combine_i64(lk_batch_t *b, const lk_bytes_t *a, const lk_bytes_t *v,
                        lk_bytes_t *out, int64_t sign) {
    int64_t x = 0, y = 0, *o = two_numbers(b, a, v, &x, &y);
    if (!o)
        return;
    *o = x + sign * y;
    *out = (lk_bytes_t){o, sizeof *o};
}

static void add_i64(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *a,
                    const lk_bytes_t *v, lk_bytes_t *out, void *opaque) {
    (void)key, (void)opaque;
    combine_i64(b, a, v, out, 1);
}

static void sub_i64(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *a,
                    const lk_bytes_t *v, lk_bytes_t *out, void *opaque) {
    (void)key, (void)opaque;
    combine_i64(b, a, v, out, -1);
}

/* double sums: no inverse (floating-point sums drift under one; see lockstep.h) */
static void add_f64(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *a,
                    const lk_bytes_t *v, lk_bytes_t *out, void *opaque) {
    (void)key, (void)opaque;
    double x = 0, y = 0, *o = two_numbers(b, a, v, &x, &y);
    if (!o)
        return;
    *o = x + y;
    *out = (lk_bytes_t){o, sizeof *o};
}

static int format_number(char *buf, size_t size, const void *v, size_t len, int dbl) {
    if (dbl) {
        double s = 0;
        if (len == sizeof s)
            memcpy(&s, v, sizeof s);
        return s == floor(s) && fabs(s) < 1e15 ? snprintf(buf, size, "%.0f", s)
                                               : snprintf(buf, size, "%.17g", s);
    }
    int64_t c = 0;
    if (len == sizeof c)
        memcpy(&c, v, sizeof c);
    return snprintf(buf, size, "%lld", (long long)c);
}

/* A window's result as the JSON value of the output record. A batch-time deletion (the
 * key's window emptied) has "value":null rather than being a tombstone, so that it still
 * names its window. */
static void format_window(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    const builtin_t *bt = opaque;
    lk_window_result_t wr = {in->timestamp_ms - bt->window_size, in->timestamp_ms, 1,
                             in->value, in->value_len};
    if (bt->event_time && lk_window_result_parse(in->value, in->value_len, &wr)) {
        lk_batch_fail(b, "window result of %zu bytes cannot be parsed", in->value_len);
        return;
    }
    char num[48] = "null", text[160];
    if (wr.value)
        format_number(num, sizeof num, wr.value, wr.value_len, bt->sums);
    int n = snprintf(text, sizeof text,
                     "{\"window_start\":%lld,\"window_end\":%lld,\"value\":%s,\"final\":%s}",
                     (long long)wr.start_ms, (long long)wr.end_ms, num,
                     wr.final ? "true" : "false");
    lk_emit(b, in->key, in->key_len, text, (size_t)n);
}

/* A late record (event time) as a dead letter: the window it missed and its value. */
static void format_late(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    const builtin_t *bt = opaque;
    lk_window_result_t wr;
    if (lk_window_result_parse(in->value, in->value_len, &wr)) {
        lk_batch_fail(b, "late record of %zu bytes cannot be parsed", in->value_len);
        return;
    }
    char num[48], text[200];
    format_number(num, sizeof num, wr.value, wr.value_len, bt->sums);
    int n = snprintf(text, sizeof text,
                     "{\"late\":true,\"event_time\":%lld,\"window_start\":%lld,"
                     "\"window_end\":%lld,\"value\":%s}",
                     (long long)in->timestamp_ms, (long long)wr.start_ms, (long long)wr.end_ms,
                     num);
    lk_emit(b, in->key, in->key_len, text, (size_t)n);
}
/* Records to a dead letter: a Kafka topic, or file:DIR for JSON-lines files. */
static void to_deadletter(lk_stream_t *s, const char *uid, const char *dl) {
    if (!strncmp(dl, "file:", 5))
        lk_to_files(s, uid, dl + 5, "jsonl");
    else
        lk_to_kafka(s, uid, dl);
}

/* The windowed aggregate of kv (key, int64 1 or double) per window.* */
static lk_stream_t *add_window(lk_stream_t *kv, builtin_t *bt, const char *uid) {
    int64_t slide = bt->window_slide;
    lk_reduce_fn *add = bt->sums ? add_f64 : add_i64;
    lk_stream_t *w;
    if (!bt->event_time) {
        w = lk_reduce_by_key_and_window(kv, uid, 1, bt->window_size,
                                        slide ? slide : bt->window_size, add,
                                        bt->sums ? NULL : sub_i64, NULL, NULL);
    } else {
        int hop = slide && slide != bt->window_size;
        lk_window_spec_t spec = {
            .kind = bt->window_gap ? LK_WINDOW_SESSION
                    : hop          ? LK_WINDOW_HOPPING
                                   : LK_WINDOW_TUMBLING,
            .size_ms = bt->window_size,
            .advance_ms = hop ? slide : 0,
            .gap_ms = bt->window_gap,
            .grace_ms = bt->window_grace,
            .idle_ms = bt->window_idle,
            .emit = bt->emit_on_update ? LK_WINDOW_EMIT_ON_UPDATE : LK_WINDOW_EMIT_ON_CLOSE};
        w = lk_window_by_event_time(kv, uid, 1, &spec, add, NULL);
        /* late records: counted (<uid>.late) and, with a dead letter, sent there */
        if (w && bt->deadletter[0])
            to_deadletter(lk_map(lk_window_late(w, "late"), "format-late", format_late, bt),
                          "late-deadletter", bt->deadletter);
    }
    return lk_map(w, "format-window", format_window, bt);
}

/* ---- definition ---- */

/* Records to the task of their key (bt->repartition: scaled out), else as they are. */
static lk_stream_t *by_key(lk_stream_t *in, const builtin_t *bt, const char *uid) {
    return bt->repartition ? lk_repartition(in, uid) : in;
}

static void add_sinks(lk_pipeline_t *p, lk_stream_t *out, const builtin_t *bt) {
    if (bt->output_topic[0]) {
        lk_stream_t *s = lk_to_kafka(out, "to-kafka", bt->output_topic);
        if (bt->keep_partition)
            lk_sink_keep_partition(s);
    }
    if (bt->output_dir[0]) {
        lk_stream_t *s = lk_to_files(out, "to-files", bt->output_dir, bt->output_format);
        if (bt->keep_partition)
            lk_sink_keep_partition(s);
    }
    if (!bt->output_topic[0] && !bt->output_dir[0])
        lk_pipeline_fail(p, "no output: set output.topic and/or output.dir");
}

/* The "malformed" filter and the dead letter sink behind it (errors.deadletter). */
static void add_deadletter(lk_stream_t *in, builtin_t *bt) {
    lk_stream_t *bad = lk_filter(in, "malformed", malformed, bt);
    if (bt->deadletter[0])
        to_deadletter(bad, "deadletter", bt->deadletter);
    /* with no dead letter sink the filter still counts them (errors.malformed) */
}

void lk__builtin_opts_init(lk__builtin_opts_t *o) {
    o->windowed = o->window_size || o->window_gap;
    o->sums = o->kind == LK__BUILTIN_SUM_BY_KEY;
}

void lk__builtin_define(lk_pipeline_t *p, void *opaque) {
    builtin_t *bt = opaque;
    if (!bt->input_topics[0]) {
        lk_pipeline_fail(p, "input.topics is required by pipeline=%s", bt->name);
        return;
    }
    lk_stream_t *in = lk_kafka_stream(p, bt->input_topics);
    lk_stream_t *out = NULL;
    switch (bt->kind) {
    case LK__BUILTIN_WORDCOUNT: {
        /* records with a word too long to keep: counted, dead-lettered, not split */
        add_deadletter(in, bt);
        lk_stream_t *good = lk_filter(in, "well-formed", well_formed, bt);
        if (bt->windowed) {
            lk_stream_t *ones = lk_flat_map(good, "split-words", split_words_one, NULL);
            out = add_window(by_key(ones, bt, "by-word"), bt, "windowed-word-counts");
            break;
        }
        lk_stream_t *words = by_key(lk_flat_map(good, "split-words", lk__wc_split_words, NULL),
                                    bt, "by-word");
        lk_stream_t *counts = lk_update_state_by_key(words, "word-counts", 1, lk__wc_add_count, NULL);
        out = lk_map(counts, "format-counts", lk__wc_format_count, NULL);
        break;
    }
    case LK__BUILTIN_COUNT_BY_KEY:
    case LK__BUILTIN_SUM_BY_KEY: {
        add_deadletter(in, bt);
        lk_stream_t *good = lk_filter(in, "well-formed", well_formed, bt);
        lk_stream_t *kv = by_key(lk_map(good, "extract-fields", extract, bt), bt, "by-key");
        int sum = bt->kind == LK__BUILTIN_SUM_BY_KEY;
        if (bt->windowed) {
            out = add_window(sum ? kv : lk_map(kv, "ones", one, NULL), bt,
                             sum ? "windowed-sums" : "windowed-counts");
            break;
        }
        lk_stream_t *agg = lk_update_state_by_key(kv, sum ? "sums" : "counts", 1,
                                                  sum ? add_sum : lk__wc_add_count, NULL);
        out = lk_map(agg, sum ? "format-sums" : "format-counts", sum ? format_sum : lk__wc_format_count,
                     NULL);
        break;
    }
    case LK__BUILTIN_COPY:
        out = in;
        break;
    }
    add_sinks(p, out, bt);
}
