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

/** Library version as 0xMMmmpp00 (major, minor, patch). */
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
    X(DATA_LOSS, 17, "Input offsets no longer exist in Kafka (data loss)")             \
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
 * validates them (its message is kept in errstr).
 *
 * @param conf        the configuration.
 * @param key         property name, e.g. "checkpoint.dir" or "kafka.bootstrap.servers".
 * @param value       the value as text; copied.
 * @param errstr      filled with the reason on LK_CONF_INVALID / LK_CONF_UNKNOWN; may be
 *                    NULL when errstr_size is 0.
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
 * '#' and '!' comments; backslash line continuations and escapes). Each property goes
 * through lk_conf_set(); the first error stops the load.
 * @param conf        the configuration.
 * @param path        file to read.
 * @param errstr      on failure "path:line: reason".
 * @param errstr_size size of errstr.
 * @returns LK_CONF_OK, LK_CONF_INVALID (also for an unreadable file or a syntax error),
 *          or LK_CONF_UNKNOWN.
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
 * @brief Write the property reference, generated from the property table.
 * @param fp       where to write.
 * @param markdown non-zero for the README's Markdown table, zero for --help text.
 */
LK_EXPORT void lk_conf_print_reference(FILE *fp, int markdown);

/**
 * @brief Visit every property that is set or has a default, in table order, then the
 * kafka.* properties in the order they were set. Secret values (passwords, keys,
 * secrets) are given as "[redacted]" when redact is non-zero.
 * @param cb called with each key and value; both valid only during the call.
 */
LK_EXPORT void lk_conf_foreach(const lk_conf_t *conf, int redact,
                               void (*cb)(const char *key, const char *value, void *opaque),
                               void *opaque);

#ifdef __cplusplus
}
#endif
#endif /* LOCKSTEP_H */
