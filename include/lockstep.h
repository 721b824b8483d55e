/*
 * lockstep.h — the one public header of lockstep, an exactly-once Kafka stream
 * processor. Consumed offsets, keyed state and pending output are committed in one
 * LMDB transaction per batch, so a crash at any instant loses nothing and a replay
 * writes nothing twice.
 *
 * Conventions (as in librdkafka and LMDB): every public name starts with lk_ / LK_;
 * handles are opaque and made by *_new, freed by *_destroy, and *_destroy(NULL) is a
 * no-op; fallible constructors fill a caller-provided errstr buffer; error codes come
 * from one table and are never renumbered.
 */
#ifndef LOCKSTEP_H
#define LOCKSTEP_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && !defined(LK_STATIC_ONLY)
#define LK_EXPORT __attribute__((visibility("default")))
#else
#define LK_EXPORT
#endif

/** Library version as 0xMMmmpp00 (major, minor, patch); equals CMake's project(VERSION)
 *  (the build checks it). */
#define LK_VERSION 0x00010000

/**
 * @brief Library version string, e.g. "0.1.0".
 * @returns a static string; never NULL. Thread-safe.
 */
LK_EXPORT const char *lk_version_str(void);

/*
 * ---------------------------------------------------------------------------
 * Errors
 * ---------------------------------------------------------------------------
 */

/**
 * The error table: X(NAME, code, description). Codes are stable forever: a code is
 * never renumbered or reused, new codes are appended.
 */
#define LK_ERRORS(X)                                                                   \
    X(OK, 0, "Success")                                                                \
    X(INVALID_ARG, 1, "Invalid argument")                                              \
    X(CONF_INVALID, 2, "Invalid configuration value")                                  \
    X(CONF_UNKNOWN, 3, "Unknown configuration property")                               \
    X(NOMEM, 4, "Out of memory")                                                       \
    X(IO, 5, "I/O error")                                                              \
    X(LOCKED, 6, "Checkpoint is in use by another process")                            \
    X(NOT_CHECKPOINT, 7, "Path is not a lockstep checkpoint")                          \
    X(APP_MISMATCH, 8, "Checkpoint belongs to another application")                    \
    X(FORMAT_TOO_NEW, 9, "Checkpoint format is newer than this build understands")     \
    X(CORRUPT, 10, "Checkpoint is corrupt")                                            \
    X(STORE, 11, "Checkpoint store (LMDB) error")                                      \
    X(NOT_FOUND, 12, "Not found")                                                      \
    X(FATAL, 13, "A fatal error occurred earlier; the handle is unusable")             \
    X(TOPOLOGY, 14, "Pipeline topology does not match the checkpoint")                 \
    X(KAFKA, 15, "Kafka client error")                                                 \
    X(FENCED, 16, "Fenced by a newer instance with the same transactional.id")         \
    X(DATA_LOSS, 17, "Offsets to read no longer exist in Kafka (data loss)")           \
    X(STATE, 18, "Operation not allowed in the current state")                         \
    X(TIMED_OUT, 19, "Timed out")                                                      \
    X(TOO_LARGE, 20, "Value too large")

/** Error codes; see LK_ERRORS for the table. */
typedef enum lk_err {
#define LK__ERR_ENUM(name, code, desc) LK_ERR_##name = code,
    LK_ERRORS(LK__ERR_ENUM)
#undef LK__ERR_ENUM
} lk_err_t;

/** Alias of LK_ERR_OK, for readability at call sites. */
#define LK_OK LK_ERR_OK

/**
 * @brief Symbolic name of an error code, e.g. "LK_ERR_LOCKED".
 * @returns a static string; "LK_ERR_UNKNOWN" for a code not in the table. Thread-safe.
 */
LK_EXPORT const char *lk_err_name(lk_err_t err);

/**
 * @brief Human description of an error code, e.g. "Checkpoint is in use by another
 * process". The specific cause (path, pid, LMDB or librdkafka message) is in the errstr
 * filled by the failing call, not here.
 * @returns a static string; never NULL. Thread-safe.
 */
LK_EXPORT const char *lk_err_str(lk_err_t err);

/*
 * ---------------------------------------------------------------------------
 * Configuration
 * ---------------------------------------------------------------------------
 */

/** A set of configuration properties. Opaque; not thread-safe (configure, then use). */
typedef struct lk_conf lk_conf_t;

/** Result of lk_conf_set(), mirroring librdkafka's rd_kafka_conf_res_t. */
typedef enum lk_conf_res {
    LK_CONF_OK = 0,       /**< The value was set. */
    LK_CONF_INVALID = -1, /**< Known key, bad value: errstr says why and what is accepted. */
    LK_CONF_UNKNOWN = -2, /**< No such key: errstr suggests the closest known key. */
} lk_conf_res_t;

/**
 * @brief Create a configuration holding every property's default.
 * @returns a new handle, owned by the caller (free with lk_conf_destroy()); NULL only
 *          when out of memory.
 */
LK_EXPORT lk_conf_t *lk_conf_new(void);

/**
 * @brief Free a configuration. lk_conf_destroy(NULL) is a no-op.
 */
LK_EXPORT void lk_conf_destroy(lk_conf_t *conf);

/**
 * @brief Deep copy of a configuration.
 * @returns a new handle owned by the caller, or NULL when out of memory.
 */
LK_EXPORT lk_conf_t *lk_conf_dup(const lk_conf_t *conf);

/**
 * @brief Set one property, validated against the property table.
 *
 * Keys starting with "kafka." are passed, without the prefix, to librdkafka, which
 * validates them (its message is kept in errstr). Keys starting with "plugin." are a
 * plugin's own and stored as given. Properties of scope "CLI" in the reference
 * (lk_conf_print_reference(): pipeline, input.topics, output.*, window.*, ...) are read
 * only by the lockstep command, which checks them; the library stores their value as
 * given (lk_conf_get() returns it) without judging it.
 *
 * @param conf        the configuration.
 * @param key         property name, e.g. "checkpoint.dir" or "kafka.bootstrap.servers".
 * @param value       the value as text; copied.
 * @param errstr      filled with the reason on LK_CONF_INVALID / LK_CONF_UNKNOWN; may be
 *                    NULL when errstr_size is 0. It names the key and never quotes the
 *                    value of a secret property (see lk_conf_foreach()).
 * @param errstr_size size of errstr.
 * @returns LK_CONF_OK, LK_CONF_INVALID (the reason names the accepted range or values)
 *          or LK_CONF_UNKNOWN (with a "did you mean" suggestion when one is close).
 */
LK_EXPORT lk_conf_res_t lk_conf_set(lk_conf_t *conf, const char *key, const char *value,
                                    char *errstr, size_t errstr_size);

/**
 * @brief Get a property's current value as text.
 * @param conf the configuration.
 * @param key  property name (lockstep or "kafka.*").
 * @returns the value, valid until the property is set again or conf is destroyed;
 *          NULL if the key is unknown or a kafka.* key was never set.
 */
LK_EXPORT const char *lk_conf_get(const lk_conf_t *conf, const char *key);

/**
 * @brief Load a Java-style .properties file (key=value, key: value or key value;
 * '#' and '!' comments; backslash line continuations and escapes \t \n \r \f \uXXXX,
 * a UTF-16 surrogate pair giving one UTF-8 character). Each property goes through
 * lk_conf_set(); the first error stops the load (properties before it stay set).
 * Refused, naming the line: a NUL byte or \u0000 (a value would end there silently), a
 * last line ending in a continuation backslash (a file cut short; Java would drop the
 * backslash), a malformed \u escape or lone surrogate, a line (continuations joined)
 * longer than 1 MiB; a file larger than 8 MiB is refused as a whole, without reading
 * more than that (so /dev/zero fails at once).
 * @param conf        the configuration.
 * @param path        file to read (a regular file, a pipe or a device; not a directory).
 * @param errstr      on failure "path:line: reason" ("path: reason" for the whole file);
 *                    a secret's value is never quoted.
 * @param errstr_size size of errstr.
 * @returns LK_CONF_OK, LK_CONF_INVALID (also for an unreadable file, a read error, out
 *          of memory or a syntax error), or LK_CONF_UNKNOWN.
 */
LK_EXPORT lk_conf_res_t lk_conf_load_file(lk_conf_t *conf, const char *path, char *errstr,
                                          size_t errstr_size);

/**
 * @brief Check that the configuration is complete (required keys set, and combinations
 * consistent), before it is used.
 * @returns LK_OK, or LK_ERR_CONF_INVALID with errstr naming the key.
 */
LK_EXPORT lk_err_t lk_conf_validate(const lk_conf_t *conf, char *errstr, size_t errstr_size);

/**
 * @brief Write the property reference, generated from the property table: each
 * property's scope ("library": read and checked by the library; "CLI": read and checked
 * only by the lockstep command), type, default, range and meaning.
 * @param fp       where to write.
 * @param markdown non-zero for the README's Markdown table, zero for --help text.
 */
LK_EXPORT void lk_conf_print_reference(FILE *fp, int markdown);

/**
 * @brief Visit every property that is set or has a default, in table order, then the
 * kafka.* and plugin.* properties in the order they were set. Secret values are given
 * as "[redacted]" when redact is non-zero: librdkafka's sensitive properties
 * (kafka.sasl.password, kafka.ssl.key.*, ...), lockstep properties flagged secret, and
 * plugin.* keys naming a token, key, secret, password or credential (see README).
 * @param cb called with each key and value; both valid only during the call.
 */
LK_EXPORT void lk_conf_foreach(const lk_conf_t *conf, int redact,
                               void (*cb)(const char *key, const char *value, void *opaque),
                               void *opaque);


/*
 * ---------------------------------------------------------------------------
 * Pipelines
 *
 * A pipeline is defined by a callback that runs on every start. Each operator has a
 * uid, unique in the pipeline and stable across versions of the code: the checkpoint
 * matches state to operators by uid (and state schema version), never by position.
 *
 * Records are byte strings (key, value). Everything a callback receives is valid only
 * during the call; everything it emits is copied. Callbacks run on the thread that
 * called lk_context_run(), inside the batch's checkpoint transaction.
 * ---------------------------------------------------------------------------
 */

/** The application: configuration, checkpoint, Kafka clients, pipeline. Opaque. */
typedef struct lk_context lk_context_t;
/** The pipeline being defined (valid only during the define callback). */
typedef struct lk_pipeline lk_pipeline_t;
/** A stream of records inside a pipeline (valid only during the define callback). */
typedef struct lk_stream lk_stream_t;
/** The batch being processed, handed to every operator callback. */
typedef struct lk_batch lk_batch_t;
/** A broadcast value (see lk_broadcast()). */
typedef struct lk_broadcast lk_broadcast_t;

/** What a record's timestamp_ms is (the values of librdkafka's rd_kafka_timestamp_type_t). */
typedef enum lk_timestamp_type {
    LK_TIMESTAMP_NOT_AVAILABLE = 0,   /**< derived record: timestamp_ms is the batch time */
    LK_TIMESTAMP_CREATE_TIME = 1,     /**< set by the producer of the input record */
    LK_TIMESTAMP_LOG_APPEND_TIME = 2, /**< set by the broker when it appended the record */
} lk_timestamp_type_t;

/** One Kafka header of a record. Names need not be unique; order is kept. */
typedef struct lk_record_header {
    const char *name;  /**< NUL-terminated */
    const void *value; /**< NULL: a header without value (not the same as empty) */
    size_t value_len;
} lk_record_header_t;

/**
 * A record flowing through a pipeline. Everything it points to is valid only during the
 * callback that receives it. Fields may be added at the end in later versions: build
 * records with designated initializers (or let lk_emit() build them).
 */
typedef struct lk_record {
    const void *key;     /**< NULL: no key */
    size_t key_len;
    const void *value;   /**< NULL: tombstone (deleted key) */
    size_t value_len;
    int64_t timestamp_ms; /**< Kafka timestamp of the input; batch time for derived records */
    const char *topic;    /**< input topic, NULL for derived records */
    int32_t partition;    /**< input partition, -1 for derived records */
    int64_t offset;       /**< input offset, -1 for derived records */
    /** What timestamp_ms is: CREATE_TIME or LOG_APPEND_TIME for input records (as Kafka
     * gives it; NOT_AVAILABLE when the input had none, timestamp_ms then being the batch
     * time), NOT_AVAILABLE for derived records. */
    lk_timestamp_type_t timestamp_type;
    /** The input record's Kafka headers, in order (NULL and 0 when it had none; always
     * for derived records). A sink fed the input stream itself (copy, dead letters)
     * writes them with the record: Kafka sinks as headers (after lockstep's provenance
     * headers), file sinks in jsonl's "headers" field. */
    const lk_record_header_t *headers;
    size_t nheaders;
} lk_record_t;

/** A byte string. */
typedef struct lk_bytes {
    const void *data;
    size_t len;
} lk_bytes_t;

/** Builds the pipeline; called once per lk_context_get_or_create(). */
typedef void(lk_define_fn)(lk_pipeline_t *p, void *opaque);
/** map / flat_map: emit with lk_emit() (map: exactly once, flat_map: any number). */
typedef void(lk_map_fn)(lk_batch_t *b, const lk_record_t *in, void *opaque);
/** filter: non-zero keeps the record. */
typedef int(lk_filter_fn)(lk_batch_t *b, const lk_record_t *in, void *opaque);
/**
 * reduce_by_key: combine two values of one key into *out (allocate it with lk_alloc()
 * or point it at a or b). Must be associative and commutative.
 */
typedef void(lk_reduce_fn)(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *a,
                           const lk_bytes_t *v, lk_bytes_t *out, void *opaque);
/**
 * update_state_by_key: called once per batch for each key with new values (in input
 * order), and for each key whose state expired (state TTL: nvalues == 0 and
 * lk_batch_state_expiring() is true). state is NULL for a new key. Set *new_state
 * (data from lk_alloc(), or pointing at state or a value) to keep state, or
 * new_state->data = NULL to delete the key. Emitted downstream: (key, new state), or a
 * tombstone when the key is deleted or expires.
 */
typedef void(lk_update_fn)(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *values,
                           size_t nvalues, const lk_bytes_t *state, lk_bytes_t *new_state,
                           void *opaque);
/** foreach_batch: all records of the batch reaching this operator, in order. */
typedef void(lk_foreach_batch_fn)(lk_batch_t *b, const lk_record_t *records, size_t n,
                                  void *opaque);

/**
 * @brief Input stream reading Kafka topics with read_committed isolation.
 * @param p      the pipeline.
 * @param topics one topic or a comma-separated list.
 * @returns the stream; on a bad argument the pipeline records the error and
 *          lk_context_get_or_create() fails with it.
 */
LK_EXPORT lk_stream_t *lk_kafka_stream(lk_pipeline_t *p, const char *topics);

/** @brief One output record per input record (lk_emit() exactly once). */
LK_EXPORT lk_stream_t *lk_map(lk_stream_t *in, const char *uid, lk_map_fn *fn, void *opaque);
/** @brief Zero or more output records per input record. */
LK_EXPORT lk_stream_t *lk_flat_map(lk_stream_t *in, const char *uid, lk_map_fn *fn,
                                   void *opaque);
/** @brief Keep the records for which fn returns non-zero. */
LK_EXPORT lk_stream_t *lk_filter(lk_stream_t *in, const char *uid, lk_filter_fn *fn,
                                 void *opaque);
/**
 * @brief Combine the values of each key within one batch (not across batches; use
 * lk_update_state_by_key() for that). Emits one record per key at the end of the batch.
 */
LK_EXPORT lk_stream_t *lk_reduce_by_key(lk_stream_t *in, const char *uid, lk_reduce_fn *fn,
                                        void *opaque);
/**
 * @brief Keyed state kept in the checkpoint across batches (Spark's updateStateByKey /
 * mapWithState). State is read and written inside the batch's transaction, so it is
 * exact across crashes and restarts.
 * @param schema_version version of the state's byte format (>= 1); changing it on a
 *        checkpoint with state is refused at start unless migrated.
 */
LK_EXPORT lk_stream_t *lk_update_state_by_key(lk_stream_t *in, const char *uid,
                                              int schema_version, lk_update_fn *fn,
                                              void *opaque);
/**
 * @brief Expire keys of an update_state_by_key operator that received no value for
 * ttl_ms of batch time (overrides the state.ttl.ms property). 0 disables expiry.
 */
LK_EXPORT void lk_state_ttl(lk_stream_t *stateful, int64_t ttl_ms);
/**
 * Window filter: non-zero keeps (key, value) visible downstream; zero emits a deletion
 * instead (once, if the key was visible). key and value are valid during the call only.
 */
typedef int(lk_window_filter_fn)(lk_batch_t *b, const lk_bytes_t *key,
                                 const lk_bytes_t *value, void *opaque);

/**
 * @brief Windowed reduce over batch time (Spark's reduceByKeyAndWindow), exact across
 * crashes and restarts.
 *
 * Batch time is cut into slides of slide_ms aligned on the Unix epoch; a batch belongs
 * to the slide holding its time (lk_batch_time_ms(), recorded in the batch plan, so a
 * batch processed again falls in the same slide). The window ending at slide boundary E
 * holds the records of the batches with time in [E - window_ms, E). The state is one
 * partial aggregate per (key, slide) in the operator's checkpoint database, written in
 * the batch's transaction; slides that left the window are deleted (a range delete
 * ordered by slide), so state stays bounded by (window_ms / slide_ms + 1) x keys.
 *
 * Emission: the first batch at or after boundary E emits, for every key whose windowed
 * value changed since the previous boundary, (key, value); a key whose window became
 * empty, or whose value filter rejects, emits a deletion (NULL value) if it was visible.
 * Boundaries with no change emit nothing; several boundaries passed at once (idle time)
 * are emitted in order. Emitted records carry timestamp_ms = E. A pipeline with a window
 * operator runs a batch every batch.interval.ms even without input, so windows close on
 * time. Input tombstones (NULL values) are not reduced: they are counted in the
 * accumulator "<uid>.tombstones".
 *
 * @param in             the input stream; every record needs a key (at most LK_WINDOW_KEY_MAX bytes),
 *                       else the batch fails naming the operator.
 * @param uid            the operator's uid (its state database is state.<uid>).
 * @param schema_version version of the value byte format (>= 1), as for
 *                       lk_update_state_by_key().
 * @param window_ms      window length, a multiple of slide_ms.
 * @param slide_ms       slide, > 0. Both must be multiples of batch.interval.ms (when
 *                       that is > 0): lk_context_get_or_create() refuses the pipeline
 *                       otherwise with LK_ERR_CONF_INVALID naming the operator.
 * @param reduce         combines two values (associative and commutative; see
 *                       lk_reduce_fn); required.
 * @param inv_reduce     may be NULL. With it, the running value is kept and updated by
 *                       reducing the slide entering the window and inverse-reducing the
 *                       one leaving it (*out = a "minus" v); without it, the value is
 *                       recomputed from the live slides of each changed key. Use it only
 *                       for exact arithmetic (integer sums, counts): floating-point sums
 *                       drift under an inverse function, so pass NULL for them.
 * @param filter         may be NULL (keep everything); see lk_window_filter_fn.
 * @param opaque         passed to reduce, inv_reduce and filter.
 * @returns the windowed stream; NULL (the pipeline records the error) for a bad argument.
 *          The definition (window, slide, inverse or not) is recorded in the topology: a
 *          changed definition under the same uid is refused at start (LK_ERR_TOPOLOGY,
 *          naming the operator and both definitions); use a new uid to start empty.
 */
LK_EXPORT lk_stream_t *lk_reduce_by_key_and_window(lk_stream_t *in, const char *uid,
                                                   int schema_version, int64_t window_ms,
                                                   int64_t slide_ms, lk_reduce_fn *reduce,
                                                   lk_reduce_fn *inv_reduce,
                                                   lk_window_filter_fn *filter, void *opaque);

/**
 * @brief Count of records per key and batch-time window: lk_reduce_by_key_and_window()
 * (schema version 1) over (key, 1) per record, with the inverse (counts are exact).
 *
 * Adds two operators: a map "<uid>.ones" and the window "<uid>" (its state database,
 * its accumulator "<uid>.tombstones"). Emission, deletions (a key whose window emptied)
 * and timestamps are those of lk_reduce_by_key_and_window(). A value is the count, an
 * int64_t in the host's byte order (8 bytes: memcpy it into an int64_t). Input tombstones
 * are not counted (they go to "<uid>.tombstones").
 *
 * @param in        the input stream; every record needs a key (at most LK_WINDOW_KEY_MAX bytes).
 * @param uid       the window's uid (the map's is uid + ".ones"; both must be unused).
 * @param window_ms window length, a multiple of slide_ms.
 * @param slide_ms  slide, > 0; both multiples of batch.interval.ms (when > 0).
 * @returns the stream of counts; NULL (the pipeline records why, naming the operator) for
 *          a bad argument, as lk_reduce_by_key_and_window().
 */
LK_EXPORT lk_stream_t *lk_count_by_window(lk_stream_t *in, const char *uid, int64_t window_ms,
                                          int64_t slide_ms);

/** The key of every result of lk_reduce_by_window(). */
#define LK_REDUCE_BY_WINDOW_KEY "*"

/**
 * @brief Windowed reduce over batch time of all records, whatever their key (Spark's
 * reduceByWindow): lk_reduce_by_key_and_window() over every record's value under the one
 * key LK_REDUCE_BY_WINDOW_KEY, which the results carry.
 *
 * Adds two operators: a map "<uid>.all" (input keys may be NULL; values are kept) and
 * the window "<uid>". Each slide whose window value changed emits one record; a window
 * that became empty emits a deletion (NULL value). Input tombstones are not reduced
 * ("<uid>.tombstones").
 *
 * @param in, uid, schema_version, window_ms, slide_ms, reduce, inv_reduce, opaque as for
 *        lk_reduce_by_key_and_window() (no filter). The map's uid is uid + ".all".
 * @returns the stream of window values; NULL (the pipeline records why) for a bad argument.
 */
LK_EXPORT lk_stream_t *lk_reduce_by_window(lk_stream_t *in, const char *uid,
                                           int schema_version, int64_t window_ms,
                                           int64_t slide_ms, lk_reduce_fn *reduce,
                                           lk_reduce_fn *inv_reduce, void *opaque);

/**
 * Longest grouping key, in bytes, a window operator accepts (lk_reduce_by_key_and_window(),
 * lk_reduce_by_window()'s per-key form, lk_window_by_event_time()): LMDB's 511-byte key
 * limit less the framing of a window's state key. A record with a longer (or empty) key
 * fails its batch naming the operator; a pipeline whose input may hold such keys should
 * filter them out first (cli/builtin.c counts them as malformed). Compile-time constant;
 * it never shrinks, since state written with a longer key would become unreadable.
 */
#define LK_WINDOW_KEY_MAX 490

/** Event-time window kinds. */
typedef enum lk_window_kind {
    LK_WINDOW_TUMBLING = 1, /**< [k*size, (k+1)*size) */
    LK_WINDOW_HOPPING = 2,  /**< [k*advance, k*advance + size), size a multiple of advance */
    LK_WINDOW_SESSION = 3,  /**< per key, [first, last + gap) of records less than gap
                                 apart; sessions a record bridges merge (on update, the
                                 sessions replaced get deletions) */
} lk_window_kind_t;

/** When an event-time window emits. */
typedef enum lk_window_emit {
    LK_WINDOW_EMIT_ON_CLOSE = 0,  /**< one final result per (key, window), when it closes */
    LK_WINDOW_EMIT_ON_UPDATE = 1, /**< every batch that changed it, then the final one */
} lk_window_emit_t;

/** The event time of a record (ms since the epoch), for lk_window_spec_t.event_time. */
typedef int64_t(lk_event_time_fn)(lk_batch_t *b, const lk_record_t *r, void *opaque);

/** The definition of an event-time window (lk_window_by_event_time()). */
typedef struct lk_window_spec {
    lk_window_kind_t kind;
    int64_t size_ms;    /**< window length, > 0 (session: 0) */
    int64_t advance_ms; /**< hopping: the advance, > 0, dividing size_ms; else 0 */
    int64_t grace_ms;   /**< how far the watermark trails the event time, >= 0 */
    int64_t idle_ms;    /**< a partition without records for idle_ms of batch time stops
                             holding the watermark back; 0: never */
    lk_window_emit_t emit;
    /** NULL: the Kafka timestamp of the input record the window's record came from (of
     * the record itself when it was made at the end of a batch, e.g. by a reduce). */
    lk_event_time_fn *event_time;
    int64_t gap_ms; /**< session: the inactivity gap closing a session, > 0; else 0 */
} lk_window_spec_t;

/**
 * The value of a record emitted by lk_window_by_event_time() (and of its late records,
 * see lk_window_late()), as parsed by lk_window_result_parse(). The bytes are
 * be64(start_ms) be64(end_ms) u8(kind: 0 an update, 1 the final result, 2 a deletion)
 * then the aggregate (or the late record's value; nothing for a deletion).
 */
typedef struct lk_window_result {
    int64_t start_ms, end_ms; /**< the window [start_ms, end_ms) */
    int final;                /**< 1: the window closed, this is its final result */
    /** points into the parsed bytes; NULL (value_len 0) for a deletion: a session window
     * (emit on update) whose bounds an extension or a merge replaced is no more */
    const void *value;
    size_t value_len;
} lk_window_result_t;

/**
 * @brief Parse the value of a record emitted by an event-time window.
 * @param value,len the record's value.
 * @param out       filled on success; out->value points into value.
 * @returns LK_OK, or LK_ERR_INVALID_ARG when value is NULL, shorter than 17 bytes or its
 *          kind byte is not 0, 1 or 2.
 */
LK_EXPORT lk_err_t lk_window_result_parse(const void *value, size_t len,
                                          lk_window_result_t *out);

/**
 * @brief Windowed reduce over event time, with a watermark, exact across crashes.
 *
 * Each record falls in the windows holding its event time (a session: the key's session
 * it extends or bridges, else a new one; a session's state is one aggregate, kept until
 * it closes, indexed by its end). State is one partial
 * aggregate per (key, advance) in the operator's checkpoint database (never one copy per
 * record per window), keyed by time first, so that the slices no open window needs are
 * one range, deleted in the batch's transaction: state stays bounded by open windows x
 * keys.
 *
 * Watermark: per input partition (of the input records the window's records come from),
 * the highest event time seen; the watermark is the lowest of them minus grace_ms, over
 * the task's input partitions that are not idle (no record for idle_ms of batch time;
 * when all are idle, the highest of them minus grace_ms). A partition of the window's
 * topics that has not sent a record yet holds the watermark where it is while the batch's
 * plan leaves records of it unread (its log end lay past the planned range:
 * max.records.per.partition, or max.bytes.per.batch cut the fetch, which on a real broker
 * can bring some partitions' records first); one read to its end without records does
 * not hold it. This is recorded with the batch's plan, so a batch processed again after
 * a crash decides the same. It never goes back. With idle_ms > 0 the
 * pipeline runs a batch every batch.interval.ms even without input, so that idleness is
 * noticed; otherwise the watermark moves with input only. The per-partition
 * maxima and the watermark are written in the batch's transaction, with the offsets: a
 * crash never moves them. A window [start, end) closes when the watermark reaches end;
 * it then emits, for each key with data in it, exactly one final result (final = 1).
 * With LK_WINDOW_EMIT_ON_UPDATE every batch also emits the current result (final = 0) of
 * each open window it changed (one that closes in the same batch gets its final result
 * only). Sessions are identified by their bounds, as in Kafka Streams (which forwards a
 * tombstone for the old session window): on update, a session of before the batch that a
 * record extended or merged with another gets a deletion (its old start and end, value
 * NULL after lk_window_result_parse()) besides the new session's value.
 *
 * A record whose windows all closed already (session: whose own session [t, t + gap)
 * would have closed) is late: never silent, it is counted in the
 * accumulator "<uid>.late" (lockstep_late_records_total{operator="<uid>"} in /metrics)
 * and sent to lk_window_late() of this operator if the pipeline
 * uses it (e.g. to a sink: exactly-once dead letters).
 *
 * Emitted records: key = the grouping key, value as lk_window_result_t describes (parse
 * it with lk_window_result_parse()), timestamp_ms = the window's end.
 *
 * @param in             the input stream; every record needs a key (at most LK_WINDOW_KEY_MAX bytes).
 * @param uid            the operator's uid.
 * @param schema_version version of the aggregate's byte format (>= 1).
 * @param spec           the window definition; copied. It is recorded in the topology:
 *                       a changed definition under the same uid is refused at start
 *                       (LK_ERR_TOPOLOGY naming the operator and both definitions).
 * @param reduce         combines two values (associative and commutative); required.
 * @param opaque         passed to reduce and spec->event_time.
 * @returns the stream of results; NULL (the pipeline records why, naming the operator)
 *          for a bad argument.
 */
LK_EXPORT lk_stream_t *lk_window_by_event_time(lk_stream_t *in, const char *uid,
                                               int schema_version, const lk_window_spec_t *spec,
                                               lk_reduce_fn *reduce, void *opaque);

/**
 * @brief The late records of an event-time window operator, as a stream (its side
 * output): key and value as they reached the window, the value framed like a result
 * (lk_window_result_t: the last window the record missed, final = 0).
 * @param window the stream returned by lk_window_by_event_time().
 * @param uid    the uid of the side output (unique in the pipeline).
 * @returns the stream; NULL (the pipeline records why) when window is not an event-time
 *          window.
 */
LK_EXPORT lk_stream_t *lk_window_late(lk_stream_t *window, const char *uid);

/**
 * @brief Hand every batch's records to fn, before the batch commits. At-least-once: a
 * batch interrupted by a crash is processed again, so fn may see it twice. For
 * exactly-once output use a sink.
 */
LK_EXPORT void lk_foreach_batch(lk_stream_t *in, const char *uid, lk_foreach_batch_fn *fn,
                                void *opaque);

/**
 * @brief Move every record to the task that owns its key, so that a keyed operator after
 * this point sees all the records of a key whatever partition they were read from.
 *
 * group.mode=single: a pass-through. The one context holds every key; nothing is written
 * and the pipeline's output and speed are those of the pipeline without it (the operator
 * is recorded in the checkpoint's topology as "repartition").
 *
 * group.mode=consumer (README, "Scaling out"): the pipeline is cut here in two stages.
 * The operators before it run in stage 1 (task p reads partition p of the inputs): each
 * record goes, in the stage-1 task's Kafka transaction with its other outputs and its
 * progress record, to the topic <app.id>.<uid>.repartition, partition murmur2(key) %
 * tasks (Kafka's default partitioner: librdkafka's murmur2_random, the Java client's);
 * a record without a key stays in its task's partition. The operators after it run in
 * stage 2: task p of stage 2 reads partition p of that topic read_committed, with its
 * own checkpoint (<checkpoint.dir>/task-<p>.<uid>), transactional.id
 * (<app.id>.<uid>.<p>) and progress partition (p of <app.id>.<uid>.progress), and
 * moves between processes with the stage-1 task p (the group assigns them together).
 * Each record reaches stage 2 once, and stage 2's output is exactly-once like any other.
 * The topics are created at start (the repartition topic with one partition per task,
 * cleanup.policy=delete, retention.ms = repartition.retention.ms), or their partition
 * counts checked (a start is refused with LK_ERR_TOPOLOGY naming both counts). Key,
 * value, timestamp and headers travel with the record; stage 2's records also carry
 * stage 1's provenance header "lockstep" (after their own, when a sink writes them).
 * Several lk_repartition in one pipeline make as many stages.
 *
 * @param in  the stream to repartition.
 * @param uid the operator's uid: unique in the pipeline, at most 100 characters of
 *            a-z A-Z 0-9 . _ - (it names Kafka topics). Keep it stable: the topics,
 *            checkpoints and transactional ids of stage 2 are named after it.
 * @returns the repartitioned stream; NULL when in is NULL or the uid is bad (the pipeline
 *          records why: lk_context_get_or_create() fails naming the operator).
 */
LK_EXPORT lk_stream_t *lk_repartition(lk_stream_t *in, const char *uid);
/*
 * Sinks. Each captures the stream's records in the checkpoint's outbox, in the batch's
 * transaction, and delivers them after the checkpoint is durable, oldest batch first.
 * The uid names the sink in the checkpoint (outbox, fence) and in Kafka's progress
 * records: keep it stable across versions of the code.
 */

/**
 * @brief Exactly-once delivery to a Kafka topic.
 *
 * Every Kafka sink of the application (and the Kafka dead letters) is delivered in ONE
 * Kafka transaction per batch by ONE transactional producer (transactional.id =
 * <app.id>: the application is one task), together with ONE progress record in partition
 * 0 of the compacted topic <app.id>.progress (created if missing) naming the batch, the
 * attempt, the input offsets and each sink's record count: the outputs of a batch become
 * visible together, across topics. A newer instance with the same app.id fences older
 * ones; any fencing answer stops the application with LK_ERR_FENCED naming the
 * transactional.id. A record's partition is chosen by its key's hash (murmur2, as Java
 * clients do). Every record carries first a provenance header "lockstep" whose value is
 * "v1 <batch> <attempt> <app.id> <sink uid>" (single spaces; the uid is the whole rest;
 * README, "Sinks and what is guaranteed"); versions before it wrote four headers,
 * lockstep.app, lockstep.sink, lockstep.batch and lockstep.attempt.
 *
 * Delivery errors: transient ones (broker down, request timed out, an aborted
 * transaction) retry with backoff; a commit or abort that did not finish is resumed
 * until it completes, then the batch is delivered again if it was aborted. A permanent
 * error of one record (too large, unknown topic or partition, invalid record or
 * timestamp, authorization) stops the application with LK_ERR_FATAL naming the sink,
 * topic, partition, batch input and the setting to change; with errors.tolerance=all and
 * errors.deadletter naming a Kafka topic the record goes there instead (same
 * transaction, header lockstep.error says why) and processing goes on.
 * @param uid the sink's name in the checkpoint and in progress records (stable).
 * @param topic the output topic; it must exist unless the broker creates topics.
 */
LK_EXPORT lk_stream_t *lk_to_kafka(lk_stream_t *in, const char *uid, const char *topic);
/**
 * @brief Exactly-once delivery to files: one file per (output partition, batch),
 * <dir>/<partition>/<app.id>+<uid>+<checkpoint id>-<batch:020>.<ext>, written to a
 * temporary name (created exclusively, mode 0600, never through a symbolic link),
 * fsynced, moved into place without replacing any file, and the directory fsynced. A
 * batch delivered again after a crash finds its own file there with the same bytes;
 * a file of another sink or another checkpoint is never touched. dir must be private
 * to the user (see the property dir.allow.shared); two file sinks on one directory are
 * refused (the pipeline fails).
 * @param format "jsonl" (one JSON object per record: key, value, timestamp, and the
 *               headers when the record has some) or "lines" (the value as one line,
 *               with '\\', newline and carriage return escaped as \\\\, \\n, \\r).
 */
LK_EXPORT lk_stream_t *lk_to_files(lk_stream_t *in, const char *uid, const char *dir,
                                   const char *format);
/**
 * @brief Print records to stdout as "key<TAB>value" lines, for demos and debugging.
 * At-least-once: a batch interrupted by a crash may be printed again.
 */
LK_EXPORT lk_stream_t *lk_to_stdout(lk_stream_t *in, const char *uid);
/**
 * @brief Make a sink (the stream returned by lk_to_kafka() / lk_to_files()) write each
 * record to the partition its input came from, instead of choosing by key hash. Records
 * made by operators (no input partition) still go by key hash.
 */
LK_EXPORT void lk_sink_keep_partition(lk_stream_t *sink);

/**
 * @brief Declare a broadcast value: build(opaque) runs at start (and so again after
 * every restart); destroy (may be NULL) frees it when the context is destroyed.
 */
LK_EXPORT lk_broadcast_t *lk_broadcast(lk_pipeline_t *p, const char *name,
                                       void *(*build)(void *opaque),
                                       void (*destroy)(void *value), void *opaque);
/** @brief The broadcast's value, as built at start. */
LK_EXPORT void *lk_broadcast_value(const lk_broadcast_t *bc);

/**
 * A pipeline plugin for `lockstep run` (pipeline.plugin=./libmine.so) exports
 *     void lk_plugin_define(lk_pipeline_t *p, const lk_conf_t *conf);
 * which defines the pipeline like a define callback. conf is the application's
 * configuration; properties "plugin.*" are accepted unchecked for the plugin's own
 * settings (read them with lk_conf_get()).
 */
typedef void(lk_plugin_define_fn)(lk_pipeline_t *p, const lk_conf_t *conf);
/** The symbol a plugin exports. */
#define LK_PLUGIN_DEFINE_SYMBOL "lk_plugin_define"

/** @brief Record the first error found while defining the pipeline. */
LK_EXPORT void lk_pipeline_fail(lk_pipeline_t *p, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* ---- inside operator callbacks ---- */

/**
 * @brief Emit a record downstream. value NULL is a tombstone. The caller's key and value
 * buffers may be reused as soon as this returns: downstream operators run before it
 * returns, and whatever they keep they copy.
 * @returns LK_OK, or the batch's error once it has failed (e.g. LK_ERR_NOMEM).
 */
LK_EXPORT lk_err_t lk_emit(lk_batch_t *b, const void *key, size_t key_len, const void *value,
                           size_t value_len);
/**
 * @brief Fail the batch from inside a callback: nothing of it is committed and
 * lk_context_run() stops with LK_ERR_INVALID_ARG and this message (for input the
 * application must not skip, e.g. errors.tolerance=none).
 */
LK_EXPORT void lk_batch_fail(lk_batch_t *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/** @brief Memory valid until the batch ends (freed at once afterwards). */
LK_EXPORT void *lk_alloc(lk_batch_t *b, size_t size);
/** @brief The batch's id (1, 2, ...). */
LK_EXPORT uint64_t lk_batch_id(const lk_batch_t *b);
/** @brief The batch's time: planned once, the same if the batch is processed again. */
LK_EXPORT int64_t lk_batch_time_ms(const lk_batch_t *b);
/** @brief In an update function: non-zero when called for an expiring key. */
LK_EXPORT int lk_batch_state_expiring(const lk_batch_t *b);
/**
 * @brief Add to a named accumulator. Committed with the batch, so accumulators are
 * exact across crashes and restarts (unlike Spark's).
 */
LK_EXPORT lk_err_t lk_accumulator_add(lk_batch_t *b, const char *name, int64_t delta);

/*
 * ---------------------------------------------------------------------------
 * Context
 * ---------------------------------------------------------------------------
 */

/**
 * @brief Create the application, restoring it from checkpoint.dir if a checkpoint
 * exists (Spark's getOrCreate).
 *
 * define runs first. With an existing checkpoint, the pipeline is checked against the
 * recorded topology: same uids reuse their state; new operators start empty; a removed
 * stateful operator, a changed operator kind or a changed state schema version is
 * refused with a message naming the operator.
 *
 * @param conf   configuration; copied (the caller keeps ownership of conf).
 * @param define builds the pipeline.
 * @param opaque passed to define.
 * With metrics.listen set, it also starts serving /metrics, /healthz and /progress
 * (see lk_context_metrics_write()) on a thread of its own until lk_context_destroy().
 * conf's log.level is this context's alone: what lockstep writes to stderr while working
 * for it (in its calls, on its threads, from its librdkafka clients) follows it, and
 * other contexts in the process keep theirs; nothing process-wide is changed.
 *
 * @returns a context owned by the caller, or NULL with errstr set. Errors include
 *          invalid configuration (a malformed metrics.listen among them), LK_ERR_LOCKED
 *          (checkpoint in use), LK_ERR_TOPOLOGY, every refusal of the checkpoint store,
 *          and a metrics.listen address that cannot be bound (port in use: the OS's
 *          reason is in the message).
 */
LK_EXPORT lk_context_t *lk_context_get_or_create(const lk_conf_t *conf, lk_define_fn *define,
                                                 void *opaque, char *errstr,
                                                 size_t errstr_size);

/**
 * @brief Run batches until lk_context_stop() or, with stop.gracefully.on.shutdown=true,
 * SIGTERM/SIGINT: the first signal finishes the batch in flight and commits (waiting at
 * most shutdown.timeout.ms for its input); a second one abandons it at the next record
 * (nothing of it is kept, so it is processed again on restart). A batch that fails for
 * a retriable reason (broker unreachable, fetch timeout) is retried with backoff.
 * With group.mode=consumer it first joins the group, retrying with the same backoff
 * while the broker cannot be reached (a stop meanwhile returns LK_OK at once), then runs
 * the tasks the group assigns until a stop or an error.
 * @returns LK_OK after a stop (graceful or not); otherwise the error that stopped the
 *          application (message via lk_context_errstr()). group.mode=consumer also
 *          returns its refusals at the start: LK_ERR_CONF_INVALID (input topics not
 *          co-partitioned, a member with other input.topics, an existing changelog or
 *          progress topic whose cleanup.policy is not compact), LK_ERR_TOPOLOGY (the
 *          progress topic's partition count is not the input's; a task taken over holds
 *          state another process wrote under another definition of a stateful operator
 *          (kind, state schema version, window) or of an operator this pipeline lacks:
 *          nothing restored or written); LK_ERR_FENCED when another process joined the
 *          group with this group.instance.id; and LK_ERR_DATA_LOSS when a task's keyed
 *          state cannot be restored exactly from its changelog partition (records
 *          deleted, or the topic recreated; on.data.loss does not apply).
 */
LK_EXPORT lk_err_t lk_context_run(lk_context_t *ctx);

/**
 * @brief Run exactly one batch (plan, fetch, process, commit). For tests and
 * embedding in an external loop.
 * @returns LK_OK, or the error (see lk_context_errstr()).
 */
LK_EXPORT lk_err_t lk_context_run_once(lk_context_t *ctx);

/**
 * @brief Ask lk_context_run() to return: graceful finishes and commits the batch in
 * flight; otherwise the batch in flight is abandoned at the next record (a callback
 * already running is not interrupted). Thread-safe and async-signal-safe.
 */
LK_EXPORT void lk_context_stop(lk_context_t *ctx, int graceful);

/** @brief The message of the last error; valid until the next call on ctx. */
LK_EXPORT const char *lk_context_errstr(const lk_context_t *ctx);

/**
 * @brief Current value of an accumulator as committed in the checkpoint.
 * @returns LK_OK, LK_ERR_NOT_FOUND.
 */
LK_EXPORT lk_err_t lk_context_accumulator(lk_context_t *ctx, const char *name,
                                          int64_t *value);

/** What a committed batch did (Spark's StreamingQueryProgress is the model). */
typedef struct lk_progress {
    uint64_t batch;
    int64_t batch_time_ms;
    uint64_t records_in, bytes_in, records_out;
    double plan_ms, fetch_ms, process_ms, commit_ms; /**< durations of the phases */
    double deliver_ms;     /**< sinks delivering after the commit */
    uint64_t outbox_bytes; /**< undelivered output after delivery */
    int64_t lag;           /**< input offsets behind the log end when planned */
    size_t ntopics;
    const char *const *topics; /**< input topics ... */
    const int64_t *topic_lag;  /**< ... and each one's lag */
    int task; /**< group.mode=consumer: the task (input partition) whose batch this is;
                   -1 in group.mode=single (batch numbers are per task) */
    /** group.mode=consumer: the uid of the lk_repartition() whose stage this task runs
     * (the task reads partition `task` of its topic); NULL: stage 1 (the inputs), and
     * always in group.mode=single */
    const char *stage;
} lk_progress_t;

/**
 * @brief Call cb after every committed batch (from the thread running the batches).
 * The struct and its arrays are valid during the call only. With sink.overlap (the
 * default) a batch whose delivery started right after its commit is reported once that
 * delivery is settled, which is after the next batch was committed: lk_context_stop()
 * called from cb then stops after that next batch.
 */
LK_EXPORT void lk_context_on_progress(lk_context_t *ctx,
                                      void (*cb)(const lk_progress_t *p, void *opaque),
                                      void *opaque);

/** @brief Id of the last committed batch (0 before the first). */
LK_EXPORT uint64_t lk_context_last_batch(const lk_context_t *ctx);

/**
 * @brief Write the context's metrics in the Prometheus text exposition format: the same
 * text metrics.listen serves at /metrics, for embedders that serve it themselves.
 *
 * Counters of processed data (lockstep_batches_total, lockstep_records_total,
 * lockstep_data_loss_skipped_total) and lockstep_accumulator are read from the
 * checkpoint, so they are exact across crashes and never go backwards across restarts;
 * phase durations, fencing and error counters describe this process only. The README's
 * "Metrics reference" lists every metric.
 *
 * Threading: may be called from any thread while lk_context_run() runs on another, and
 * from the progress callback; not concurrently with lk_context_destroy().
 *
 * @param ctx         the context.
 * @param fp          where to write; not closed. Nothing is written before the checkpoint
 *                    is read, so an error writes nothing.
 * @param openmetrics 0: Prometheus text format 0.0.4; non-zero: OpenMetrics 1.0 text
 *                    (ends with "# EOF").
 * @returns LK_OK; LK_ERR_INVALID_ARG (ctx or fp NULL); LK_ERR_STORE when the checkpoint
 *          cannot be read; LK_ERR_NOMEM; LK_ERR_IO when writing to fp failed. The message
 *          is in lk_context_errstr().
 */
LK_EXPORT lk_err_t lk_context_metrics_write(lk_context_t *ctx, FILE *fp, int openmetrics);

/** @brief Stop, close Kafka clients and the checkpoint, free. NULL is a no-op. */
LK_EXPORT void lk_context_destroy(lk_context_t *ctx);

#ifdef __cplusplus
}
#endif
#endif /* LOCKSTEP_H */
