/*
 * conf_int.h — the property table and typed access to configuration values for the
 * other modules. The table (LK__PROPS) is the one place a property is declared: it
 * drives validation, defaults, --help and the README's configuration reference.
 */
#ifndef LK_CONF_INT_H
#define LK_CONF_INT_H

#include "lockstep.h"

#include <stdint.h>

typedef enum {
    LK__PT_STR,   /* free text */
    LK__PT_IDENT, /* [A-Za-z0-9._-]+: safe in Kafka topic names and transactional.id */
    LK__PT_INT,   /* integer within [min, max] */
    LK__PT_BYTES, /* integer with optional K/M/G/T suffix (powers of 1024) */
    LK__PT_BOOL,  /* true/false */
    LK__PT_ENUM,  /* one of the '|'-separated values */
} lk__prop_type_t;

/*
 * Scope of a property (the `scope` column; librdkafka's table has the like: _RK_GLOBAL,
 * _RK_PRODUCER, ...). Who reads it decides who checks it:
 *  LK__S_LIB: read by the library; lk_conf_set() and lk_conf_load_file() refuse a bad
 *             value.
 *  LK__S_CLI: read only by the `lockstep` command (the built-in pipelines, progress.log).
 *             The library stores such a key as given (lk_conf_get() returns it, the
 *             checkpoint records it) without judging the value; the command sets it with
 *             lk__conf_set_scoped(..., LK__S_LIB | LK__S_CLI, ...), which checks it as
 *             the library checks its own.
 * Bits, so that a caller names the scopes it validates.
 */
typedef enum {
    LK__S_LIB = 1,
    LK__S_CLI = 2,
} lk__prop_scope_t;

/* Flags of a property (the `flags` column). */
#define LK__PF_REQUIRED 1 /* must be set: lk_conf_validate() refuses a configuration without it */
#define LK__PF_SECRET 2   /* a credential: never printed, logged or stored in the checkpoint
                           * (as librdkafka's _RK_SENSITIVE); errors name only the key */

/*
 * X(ID, name, scope, type, default, min, max, enum values, flags, doc)
 * Append new properties where they belong; the order is the order of --help.
 */
#define LK__PROPS(X)                                                                       \
    X(APP_ID, "app.id", LK__S_LIB, LK__PT_IDENT, "", 1, 200, NULL, LK__PF_REQUIRED,        \
      "Application id: names the checkpoint owner, the Kafka sinks' transactional.id and " \
      "the progress topic. Letters, digits, '.', '_' and '-'.")                            \
    X(CHECKPOINT_DIR, "checkpoint.dir", LK__S_LIB, LK__PT_STR, "", 1, 4000, NULL,          \
      LK__PF_REQUIRED,                                                                     \
      "Directory of the LMDB checkpoint (created if missing). One application per "        \
      "directory; a second process opening it is refused.")                                \
    X(DIR_ALLOW_SHARED, "dir.allow.shared", LK__S_LIB, LK__PT_BOOL, "false", 0, 0, NULL,   \
      0, "Accept a checkpoint.dir or file output directory owned by another user or "      \
      "writable by its group (a shared-group setup). Default: refuse them, since whoever " \
      "can write there can plant links at names lockstep creates. Directories writable "   \
      "by every user are always refused. lockstep creates directories 0700 and files "     \
      "0600 (a stricter umask is kept).")                                                  \
    X(CHECKPOINT_SYNC, "checkpoint.sync", LK__S_LIB, LK__PT_ENUM, "batch", 0, 0,           \
      "batch|interval", 0,                                                                 \
      "When checkpoints reach the disk: 'batch' fsyncs every batch commit; 'interval' "    \
      "group-commits every checkpoint.sync.interval.ms. Sinks never deliver a batch "      \
      "before its checkpoint is durable, so both are exactly-once.")                       \
    X(CHECKPOINT_SYNC_INTERVAL_MS, "checkpoint.sync.interval.ms", LK__S_LIB, LK__PT_INT,   \
      "1000", 1, 3600000, NULL, 0, "Group-commit interval when checkpoint.sync=interval.") \
    X(CHECKPOINT_MAP_SIZE, "checkpoint.map.size", LK__S_LIB, LK__PT_BYTES, "256M", 65536,  \
      (int64_t)1 << 40, NULL, 0,                                                           \
      "Initial LMDB map size (address space, not disk). The map grows by doubling when "   \
      "full; no batch is ever lost to MDB_MAP_FULL.")                                      \
    X(CHECKPOINT_BATCH_HISTORY, "checkpoint.batch.history", LK__S_LIB, LK__PT_INT, "1000", \
      1, 10000000, NULL, 0, "How many batch records (plans) the checkpoint keeps.")        \
    X(LOG_LEVEL, "log.level", LK__S_LIB, LK__PT_ENUM, "info", 0, 0,                        \
      "error|warning|notice|info|debug", 0,                                                \
      "Least severe log level written to stderr, for this application only (other "        \
      "contexts in the process keep theirs): its threads and its librdkafka clients, "     \
      "whose own log_level it is unless kafka.log_level is given (kafka.debug raises "     \
      "theirs to debug). lockstep run also applies it to its own messages.")               \
    X(BATCH_INTERVAL_MS, "batch.interval.ms", LK__S_LIB, LK__PT_INT, "1000", 0, 86400000,  \
      NULL, 0,                                                                             \
      "Time between batch starts. A batch that finds no new input commits nothing (unless "\
      "state TTL must advance or a partition is new) and waits. 0: back to back.")         \
    X(MAX_RECORDS_PER_PARTITION, "max.records.per.partition", LK__S_LIB, LK__PT_INT,       \
      "100000", 1, 1000000000, NULL, 0,                                                    \
      "Cap of offsets planned per partition per batch (rate limit); applies to every "     \
      "batch, including the first after an outage.")                                       \
    X(MAX_BYTES_PER_BATCH, "max.bytes.per.batch", LK__S_LIB, LK__PT_BYTES, "64M", 1024,    \
      (int64_t)1 << 40, NULL, 0,                                                           \
      "Cap of input bytes per batch: fetching stops at this size and the batch's ranges "  \
      "end where it stopped.")                                                             \
    X(AUTO_OFFSET_RESET, "auto.offset.reset", LK__S_LIB, LK__PT_ENUM, "earliest", 0, 0,    \
      "earliest|latest", 0,                                                                \
      "Where to start a topic that has no offsets in the checkpoint. Partitions added "    \
      "later to a topic already being read always start at the earliest offset.")          \
    X(ON_DATA_LOSS, "on.data.loss", LK__S_LIB, LK__PT_ENUM, "fail", 0, 0, "fail|skip", 0,  \
      "When input offsets to read no longer exist in Kafka (retention deleted them): "     \
      "'fail' stops with an error; 'skip' logs, counts (accumulator "                      \
      "lockstep.data.loss.skipped) and continues at the earliest offset. A changelog "     \
      "that lost records a task's restore needs always stops (group.mode=consumer).")      \
    X(FETCH_TIMEOUT_MS, "fetch.timeout.ms", LK__S_LIB, LK__PT_INT, "30000", 100, 86400000, \
      NULL, 0,                                                                             \
      "Longest wait for a batch's planned ranges before the batch is abandoned and "       \
      "planned again (nothing is committed).")                                             \
    X(RETRY_BACKOFF_MS, "retry.backoff.ms", LK__S_LIB, LK__PT_INT, "200", 1, 600000, NULL, \
      0, "First wait after a failed batch (broker unreachable), or after a failed start "  \
      "of group.mode=consumer; doubles up to retry.backoff.max.ms.")                       \
    X(RETRY_BACKOFF_MAX_MS, "retry.backoff.max.ms", LK__S_LIB, LK__PT_INT, "10000", 1,     \
      3600000, NULL, 0, "Longest wait between retries of a failed batch (or start).")      \
    X(STATE_TTL_MS, "state.ttl.ms", LK__S_LIB, LK__PT_INT, "0", 0, (int64_t)1 << 50, NULL, \
      0,                                                                                   \
      "Default state TTL of update_state_by_key operators, in batch time: a key with no "  \
      "new value for this long expires. 0: never.")                                        \
    X(STOP_GRACEFULLY, "stop.gracefully.on.shutdown", LK__S_LIB, LK__PT_BOOL, "true", 0,   \
      0, NULL, 0,                                                                          \
      "SIGTERM/SIGINT finish and commit the batch in flight, then stop (a second signal "  \
      "stops at once). false: the signals are left to the application.")                   \
    X(TOPOLOGY_ALLOW_STATE_DROP, "topology.allow.state.drop", LK__S_LIB, LK__PT_BOOL,      \
      "false", 0, 0, NULL, 0,                                                              \
      "Start even though a stateful operator in the checkpoint is gone from the pipeline " \
      "(its state stays in the checkpoint, unused). Default: refuse, naming the operator.")\
    X(OUTBOX_MAX_BYTES, "outbox.max.bytes", LK__S_LIB, LK__PT_BYTES, "256M", 4096,         \
      (int64_t)1 << 40, NULL, 0,                                                           \
      "Bound of undelivered output in the checkpoint: above it, no new batch is planned "  \
      "(input stays in Kafka) until the sinks catch up.")                                  \
    X(SINK_OVERLAP, "sink.overlap", LK__S_LIB, LK__PT_BOOL, "true", 0, 0, NULL, 0,         \
      "Deliver a batch's output on a delivery thread while the next batch is read, "       \
      "processed and committed (lk_context_run only). Each sink still delivers batches "   \
      "one at a time, in order, each in its own transaction; false delivers every batch "  \
      "before the next one starts.")                                                       \
    X(SINK_KAFKA_SEND_OFFSETS, "sink.kafka.send.offsets", LK__S_LIB, LK__PT_BOOL, "true",  \
      0, 0, NULL, 0,                                                                       \
      "Kafka sinks also commit the input offsets of each batch for group <app.id> in "     \
      "its transaction, so standard lag tools show the application's progress.")           \
    X(SINK_KAFKA_TIMEOUT_MS, "sink.kafka.timeout.ms", LK__S_LIB, LK__PT_INT, "30000", 100, \
      3600000, NULL, 0,                                                                    \
      "Timeout of Kafka sink operations (init, commit and abort of transactions, reading " \
      "the progress topic).")                                                              \
    X(CHECKPOINT_ADOPT_OUTPUT, "checkpoint.adopt.output", LK__S_LIB, LK__PT_BOOL, "false", \
      0, 0, NULL, 0,                                                                       \
      "A checkpoint that finds Kafka output of another checkpoint under its app.id "       \
      "(its progress records) is refused; true continues after that output instead: the "  \
      "other checkpoint's fence is never trusted, and batch numbering continues after it.")\
    X(GROUP_MODE, "group.mode", LK__S_LIB, LK__PT_ENUM, "single", 0, 0, "single|consumer",   \
      0, "'single': this process runs the whole application (one checkpoint in "            \
      "checkpoint.dir). 'consumer': scale-out on Kafka's consumer groups -- processes with " \
      "the same app.id share the work: task p (partition p of every input topic; the "      \
      "inputs must have one partition count) runs where group <app.id> assigns it, with its "\
      "own checkpoint checkpoint.dir/task-<p>, transactional.id <app.id>.<p> and progress "  \
      "partition. lk_repartition cuts the pipeline into stages whose tasks run together. "  \
      "Kafka sinks only; keyed state moves with its task through changelog topics; the "   \
      "built-in pipelines with windows are refused in this mode.")                          \
    X(GROUP_INSTANCE_ID, "group.instance.id", LK__S_LIB, LK__PT_IDENT, "", 0, 200, NULL, 0,  \
      "With group.mode=consumer: static membership (KIP-345). A process restarted with the " \
      "same id within group.session.timeout.ms gets its tasks back without a rebalance. "   \
      "Unique per process: of two with one id the broker fences the older, which stops "    \
      "with LK_ERR_FENCED. Empty: dynamic membership.")                                     \
    X(GROUP_SESSION_TIMEOUT_MS, "group.session.timeout.ms", LK__S_LIB, LK__PT_INT, "45000", \
      1000, 3600000, NULL, 0,                                                              \
      "With group.mode=consumer: the membership consumer's session.timeout.ms: a process "  \
      "that stops heartbeating (killed, stopped, cut off) loses its tasks to the others "   \
      "after this long. The broker bounds it (group.min/max.session.timeout.ms).")          \
    X(REPARTITION_RETENTION_MS, "repartition.retention.ms", LK__S_LIB, LK__PT_INT,         \
      "604800000", -1, INT64_MAX, NULL, 0,                                                 \
      "With group.mode=consumer and lk_repartition: retention.ms of the repartition "       \
      "topics lockstep creates (<app.id>.<uid>.repartition, cleanup.policy=delete); -1 "    \
      "keeps records forever. A stage 2 that falls further behind than this loses input "   \
      "(on.data.loss decides). Topics that exist are not altered.")                        \
    X(PIPELINE, "pipeline", LK__S_CLI, LK__PT_ENUM, "", 0, 0,                              \
      "wordcount|count-by-key|sum-by-key|copy", 0,                                         \
      "lockstep run: the built-in pipeline (unless pipeline.plugin is set). wordcount: "   \
      "running counts of the words of each input value; count-by-key / sum-by-key: "       \
      "running count or sum per key.field of JSON input; copy: input to output as is.")    \
    X(PIPELINE_PLUGIN, "pipeline.plugin", LK__S_CLI, LK__PT_STR, "", 0, 4000, NULL, 0,     \
      "lockstep run: a shared object exporting lk_plugin_define (see lockstep.h) that "    \
      "defines the pipeline instead of a built-in one.")                                   \
    X(INPUT_TOPICS, "input.topics", LK__S_CLI, LK__PT_STR, "", 0, 4000, NULL, 0,           \
      "lockstep run: comma-separated input topics of the built-in pipeline.")              \
    X(OUTPUT_TOPIC, "output.topic", LK__S_CLI, LK__PT_STR, "", 0, 249, NULL, 0,            \
      "lockstep run: Kafka topic the built-in pipeline writes to (exactly-once).")         \
    X(OUTPUT_DIR, "output.dir", LK__S_CLI, LK__PT_STR, "", 0, 4000, NULL, 0,               \
      "lockstep run: directory the built-in pipeline writes files to (exactly-once); "     \
      "with output.topic, both are written.")                                              \
    X(OUTPUT_FORMAT, "output.format", LK__S_CLI, LK__PT_ENUM, "jsonl", 0, 0,               \
      "jsonl|lines", 0, "lockstep run: format of output.dir files.")                       \
    X(OUTPUT_PARTITION, "output.partition", LK__S_CLI, LK__PT_ENUM, "hash", 0, 0,          \
      "hash|keep", 0,                                                                      \
      "lockstep run: output partition by key hash, or the input record's partition "       \
      "(copy).")                                                                           \
    X(KEY_FIELD, "key.field", LK__S_CLI, LK__PT_STR, "", 0, 200, NULL, 0,                  \
      "lockstep run: JSON field (top level) holding the key, for count-by-key and "        \
      "sum-by-key.")                                                                       \
    X(VALUE_FIELD, "value.field", LK__S_CLI, LK__PT_STR, "", 0, 200, NULL, 0,              \
      "lockstep run: JSON field holding the number to add, for sum-by-key.")               \
    X(ERRORS_TOLERANCE, "errors.tolerance", LK__S_LIB, LK__PT_ENUM, "all", 0, 0,           \
      "all|none", 0,                                                                       \
      "lockstep run: malformed input (bad JSON, missing field, non-numeric value; for "    \
      "wordcount a word longer than 511 bytes): "                                          \
      "'all' counts it (accumulator errors.malformed) and sends it to errors.deadletter; " \
      "'none' stops the application at the first one, committing nothing of its batch. "   \
      "Also for Kafka sinks: with 'all' and a Kafka errors.deadletter, a record that can " \
      "never be delivered (too large, unknown partition...) goes to the dead letter.")     \
    X(ERRORS_DEADLETTER, "errors.deadletter", LK__S_LIB, LK__PT_STR, "", 0, 4000, NULL, 0, \
      "Where malformed input (lockstep run) and, if a Kafka topic, records a Kafka sink "  \
      "can never deliver go, exactly-once: a Kafka topic, or file:DIR for files. Empty: "  \
      "malformed input is only counted; undeliverable records stop the application.")      \
    X(WINDOW_SIZE_MS, "window.size.ms", LK__S_CLI, LK__PT_INT, "0", 0, (int64_t)1 << 50,   \
      NULL, 0,                                                                             \
      "lockstep run: aggregate wordcount / count-by-key / sum-by-key per window of this "  \
      "length instead of running totals; output values become JSON with window_start, "    \
      "window_end, value and final. 0: no window.")                                        \
    X(WINDOW_SLIDE_MS, "window.slide.ms", LK__S_CLI, LK__PT_INT, "0", 0, (int64_t)1 << 50, \
      NULL, 0,                                                                             \
      "lockstep run: how far windows move: it divides window.size.ms (hopping windows); "  \
      "0: window.size.ms (tumbling windows).")                                             \
    X(WINDOW_GAP_MS, "window.gap.ms", LK__S_CLI, LK__PT_INT, "0", 0, (int64_t)1 << 50,     \
      NULL, 0,                                                                             \
      "lockstep run, window.time=event: session windows closing after this inactivity "    \
      "gap (per key), instead of window.size.ms. 0: no sessions.")                         \
    X(WINDOW_TIME, "window.time", LK__S_CLI, LK__PT_ENUM, "batch", 0, 0, "batch|event", 0, \
      "lockstep run: 'batch' windows over batch time (size and slide multiples of "        \
      "batch.interval.ms; a key whose window empties gets \"value\":null); 'event' over "  \
      "the input records' Kafka timestamps with a watermark.")                             \
    X(WINDOW_GRACE_MS, "window.grace.ms", LK__S_CLI, LK__PT_INT, "0", 0, (int64_t)1 << 50, \
      NULL, 0,                                                                             \
      "lockstep run, window.time=event: how far the watermark trails the highest event "   \
      "time; later records are late (accumulator <uid>.late, and errors.deadletter).")     \
    X(WINDOW_IDLE_MS, "window.idle.ms", LK__S_CLI, LK__PT_INT, "0", 0, (int64_t)1 << 50,   \
      NULL, 0,                                                                             \
      "lockstep run, window.time=event: a partition without records for this long (batch " \
      "time) stops holding the watermark back. 0: never.")                                 \
    X(WINDOW_EMIT, "window.emit", LK__S_CLI, LK__PT_ENUM, "close", 0, 0, "close|update",   \
      0, "lockstep run, window.time=event: 'close' emits one final result per key and "    \
      "window; 'update' also every batch's change to an open window.")                     \
    X(PROGRESS_LOG, "progress.log", LK__S_CLI, LK__PT_STR, "", 0, 4000, NULL, 0,           \
      "lockstep run: append one JSON line per committed batch (records, durations, lag, "  \
      "outbox) to this file. On a terminal a live status line is shown as well.")          \
    X(SHUTDOWN_TIMEOUT_MS, "shutdown.timeout.ms", LK__S_LIB, LK__PT_INT, "30000", 0,       \
      3600000, NULL, 0,                                                                    \
      "Longest time a graceful stop takes, from the signal: waiting for the input of the " \
      "batch in flight (past it the batch is abandoned and processed again on the next "   \
      "start) and delivering the outbox (what is left is delivered on the next start).")   \
    X(METRICS_LISTEN, "metrics.listen", LK__S_LIB, LK__PT_STR, "", 0, 300, NULL, 0,        \
      "HOST:PORT where lk_context_get_or_create() serves Prometheus /metrics, /healthz "   \
      "and /progress (libmicrohttpd, its own thread), e.g. 127.0.0.1:9464. Empty: not "    \
      "served (lk_context_metrics_write() still writes the metrics). A port in use is "    \
      "refused at start.")                                                                 \
    X(HEALTH_STALL_MS, "health.stall.ms", LK__S_LIB, LK__PT_INT, "60000", 100, 86400000,   \
      NULL, 0,                                                                             \
      "/healthz answers 503 when no batch has committed or idled for this long (broker "   \
      "unreachable, stuck retrying) or a sink has failed for this long. Input waiting "    \
      "this long behind an open transaction upstream is logged as a warning.")

typedef enum {
#define LK__PROP_ID(id, ...) LK__P_##id,
    LK__PROPS(LK__PROP_ID)
#undef LK__PROP_ID
        LK__P_COUNT
} lk__prop_id_t;

/** Current value of a lockstep property as text (never NULL; "" when unset). */
const char *lk__conf_str(const lk_conf_t *conf, lk__prop_id_t id);
/** Current value of an INT/BYTES property, already validated. */
int64_t lk__conf_int(const lk_conf_t *conf, lk__prop_id_t id);
/** Current value of a BOOL property. */
int lk__conf_bool(const lk_conf_t *conf, lk__prop_id_t id);

/** log.level as a syslog level, LK_LOG_ERR .. LK_LOG_DEBUG (util_int.h). */
int lk__conf_log_level(const lk_conf_t *conf);

struct rd_kafka_conf_s;
/**
 * Make a librdkafka client's log follow conf's log.level: its own log_level (librdkafka
 * filters by it, on its own threads, before any callback) is set to log.level unless
 * kafka.log_level was given, and its lines go through lockstep's logger
 * (lk__log_write). Call after the kafka.* properties are applied. The level lives in the
 * client itself, so a client closed late (receiver.c's bounded close) keeps it after
 * its context is gone. kafka.debug makes librdkafka raise its log_level to debug, as
 * its documentation says: those lines are written whatever log.level says.
 */
void lk__conf_kafka_log(struct rd_kafka_conf_s *kc, const lk_conf_t *conf);
/* Set every kafka.* property of conf (NULL: none) on kc, prefix stripped. Returns 0, or -1
 * with errstr naming the property and librdkafka's reason (kc left for the caller). */
int lk__conf_kafka_apply(struct rd_kafka_conf_s *kc, const lk_conf_t *conf, char *errstr,
                         size_t errstr_size);

/** Number of kafka.* properties set, and the i-th one (key without "kafka."). */
size_t lk__conf_kafka_count(const lk_conf_t *conf);
void lk__conf_kafka_get(const lk_conf_t *conf, size_t i, const char **key,
                        const char **value);

/**
 * Non-zero if the key holds a secret whose value must never be printed, logged or
 * stored: a lockstep property flagged LK__PF_SECRET; "kafka.<p>" where <p> is one of
 * librdkafka's sensitive properties (its _RK_SENSITIVE flag: sasl.password,
 * ssl.key.*, ssl.keystore.password, ...; not sasl.username) or names a password or
 * secret;
 * "plugin.<...>" where a part of the name (between '.', '_' or '-') contains token,
 * secret, passw or credential, or ends in key (api_key, plugin.db.privatekey).
 * @param key full property name, with its "kafka." or "plugin." prefix.
 */
int lk__conf_is_secret(const char *key);

/**
 * lk_conf_set() for a caller that reads the properties of `scopes` (LK__S_* bits): a
 * property of one of them has its value checked (LK_CONF_INVALID naming the key and what
 * is allowed); one of another scope is stored unchecked. lk_conf_set() is
 * lk__conf_set_scoped(c, key, value, LK__S_LIB, ...); the CLI passes LK__S_LIB | LK__S_CLI.
 */
lk_conf_res_t lk__conf_set_scoped(lk_conf_t *conf, const char *key, const char *value,
                                  unsigned scopes, char *errstr, size_t errstr_size);

/** lk_conf_load_file() setting each property with lk__conf_set_scoped(..., scopes, ...). */
lk_conf_res_t lk__conf_load_file_scoped(lk_conf_t *conf, const char *path, unsigned scopes,
                                        char *errstr, size_t errstr_size);

/** Parse "64M", "1G", "4096" into bytes; returns 0 on success. */
int lk__parse_bytes(const char *s, int64_t *out);

#endif
