/*
 * builtin.h — the options of the built-in pipelines of `lockstep run` (pipeline=...) and
 * the word count's operators, shared by the pipeline definitions (builtin.c, which use
 * only lockstep.h: the example plugin authors copy), the CLI glue that fills the options
 * from the configuration (builtin_conf.c) and bench/engine.c. Like builtin.c it includes
 * only the public header. DESIGN.md, Layout.
 */
#ifndef LK_CLI_BUILTIN_H
#define LK_CLI_BUILTIN_H

#include "lockstep.h"

/** Which built-in pipeline; the order of the values of the `pipeline` property. */
typedef enum lk__builtin_kind {
    LK__BUILTIN_WORDCOUNT = 0,
    LK__BUILTIN_COUNT_BY_KEY = 1,
    LK__BUILTIN_SUM_BY_KEY = 2,
    LK__BUILTIN_COPY = 3,
} lk__builtin_kind_t;

/**
 * The settings of a built-in pipeline, as a plugin would hold its own: plain values,
 * checked before the pipeline is defined (builtin_conf.c). Strings are borrowed and must
 * outlive the application; "" means unset. Times in ms; 0 means unset.
 */
typedef struct lk__builtin_opts {
    lk__builtin_kind_t kind;
    const char *name;         /**< the pipeline's name, for messages */
    const char *input_topics; /**< comma-separated */
    const char *key_field;    /**< count-by-key, sum-by-key: the JSON field of the key */
    const char *value_field;  /**< sum-by-key: the JSON field of the number */
    int tolerance_none;       /**< malformed input stops the application */
    const char *deadletter;   /**< where malformed (and late) records go: a Kafka topic or
                                   file:DIR; "" counts them only */
    int64_t window_size;      /**< window length; 0: running totals (or sessions) */
    int64_t window_slide;     /**< hopping windows' advance; 0: window_size */
    int64_t window_gap;       /**< session windows' gap (event time only) */
    int64_t window_grace;     /**< event time: how far the watermark trails */
    int64_t window_idle;      /**< event time: idle partitions stop holding it back */
    int emit_on_update;       /**< event time: emit every change, not only final results */
    int event_time;           /**< windows over Kafka timestamps, not batch time */
    const char *output_topic; /**< "" or a Kafka topic */
    const char *output_dir;   /**< "" or a directory of files */
    const char *output_format; /**< output_dir's format: jsonl or lines */
    int keep_partition;       /**< output to the input record's partition */
    int repartition;          /**< lk_repartition in front of the keyed operator (by the
                                   word / the key), so that counts are exact however the
                                   input was keyed (group.mode=consumer) */
    /* derived by lk__builtin_opts_init() */
    int windowed; /**< window_size or window_gap: windows instead of running totals */
    int sums;     /**< values are sums (sum-by-key), else counts */
} lk__builtin_opts_t;

/** Fill the derived fields of o from the others. */
void lk__builtin_opts_init(lk__builtin_opts_t *o);

/** The lk_define_fn of the built-in pipelines; opaque is a lk__builtin_opts_t that must
 * outlive the application. */
void lk__builtin_define(lk_pipeline_t *p, void *opaque);

/* ---- the word count's operators (also bench/engine.c) ---- */

/** Longest word the word count keeps: the checkpoint's key limit (511 bytes). A record
 * holding a longer word is malformed (counted, dead-lettered), never truncated: two
 * words that differ only past a cut would otherwise be counted as one. */
#define LK__WC_WORD_MAX 511
/** The next word of [*pp, end) into word, *pp moved past it; returns the word's whole
 * length, 0 when no word is left. A return above LK__WC_WORD_MAX means the word was too
 * long: word then holds only its first LK__WC_WORD_MAX bytes and must not be used. The
 * word count's tokenizer. */
size_t lk__wc_next_word(const unsigned char **pp, const unsigned char *end,
                        char word[LK__WC_WORD_MAX]);
/** lk_map_fn for lk_flat_map(): one (word, "") record per word of the value. */
void lk__wc_split_words(lk_batch_t *b, const lk_record_t *in, void *opaque);
/** lk_update_fn: the running count (int64, native byte order) plus n. */
void lk__wc_add_count(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *vals, size_t n,
                      const lk_bytes_t *state, lk_bytes_t *next, void *opaque);
/** lk_map_fn: a count as decimal text (a deletion stays one). */
void lk__wc_format_count(lk_batch_t *b, const lk_record_t *in, void *opaque);

#endif
