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
 * X(ID, name, type, default, min, max, enum values, required, doc)
 * Append new properties where they belong; the order is the order of --help.
 */
#define LK__PROPS(X)                                                                       \
    X(APP_ID, "app.id", LK__PT_IDENT, "", 1, 200, NULL, 1,                                 \
      "Application id: names the checkpoint owner, the Kafka transactional.id prefix and " \
      "the progress topic. Letters, digits, '.', '_' and '-'.")                            \
    X(CHECKPOINT_DIR, "checkpoint.dir", LK__PT_STR, "", 1, 4000, NULL, 1,                  \
      "Directory of the LMDB checkpoint (created if missing). One application per "        \
      "directory; a second process opening it is refused.")                               \
    X(CHECKPOINT_SYNC, "checkpoint.sync", LK__PT_ENUM, "batch", 0, 0, "batch|interval", 0, \
      "When checkpoints reach the disk: 'batch' fsyncs every batch commit; 'interval' "    \
      "group-commits every checkpoint.sync.interval.ms. Sinks never deliver a batch "      \
      "before its checkpoint is durable, so both are exactly-once.")                       \
    X(CHECKPOINT_SYNC_INTERVAL_MS, "checkpoint.sync.interval.ms", LK__PT_INT, "1000", 1,   \
      3600000, NULL, 0, "Group-commit interval when checkpoint.sync=interval.")            \
    X(CHECKPOINT_MAP_SIZE, "checkpoint.map.size", LK__PT_BYTES, "256M", 65536,             \
      (int64_t)1 << 40, NULL, 0,                                                           \
      "Initial LMDB map size (address space, not disk). The map grows by doubling when "   \
      "full; no batch is ever lost to MDB_MAP_FULL.")                                      \
    X(CHECKPOINT_BATCH_HISTORY, "checkpoint.batch.history", LK__PT_INT, "1000", 1,         \
      10000000, NULL, 0, "How many batch records (plans) the checkpoint keeps.")           \
    X(LOG_LEVEL, "log.level", LK__PT_ENUM, "info", 0, 0, "error|warning|notice|info|debug", \
      0, "Least severe log level written to stderr.")

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

/** Number of kafka.* properties set, and the i-th one (key without "kafka."). */
size_t lk__conf_kafka_count(const lk_conf_t *conf);
void lk__conf_kafka_get(const lk_conf_t *conf, size_t i, const char **key,
                        const char **value);

/** Non-zero if the key (lockstep or kafka.*) holds a secret that must not be stored. */
int lk__conf_is_secret(const char *key);

/** Parse "64M", "1G", "4096" into bytes; returns 0 on success. */
int lk__parse_bytes(const char *s, int64_t *out);

#endif
