/*
 * store_int.h — the checkpoint store: one LMDB environment per checkpoint.dir holding
 * everything a running application must not lose. One write transaction per batch puts
 * offsets, keyed state, outbox records, accumulators and the batch record; its commit is
 * the checkpoint. The store knows nothing about Kafka: topics and partitions are just
 * names and numbers here.
 *
 * Named databases: meta, offsets, batches, outbox, fences, acc, and state.<uid> per
 * stateful operator. Values are msgpack arrays whose first element is the record's
 * version. Keys are byte strings (big-endian integers where order matters).
 *
 * Threading: a store handle may be used from several threads, but at most one write
 * transaction is open at a time (LMDB's rule) and a transaction is used by one thread.
 */
#ifndef LK_STORE_INT_H
#define LK_STORE_INT_H

#include "lockstep.h"

#include <stddef.h>
#include <stdint.h>

/**
 * Version of the checkpoint layout. Bumped when old builds cannot read new files.
 *  1: the first layout.
 *  2: meta's header carries the checkpoint id, and every value a CRC32C checksum (of the
 *     value and its key, 4 bytes big-endian, appended). A format-1 checkpoint opened for
 *     writing is migrated (checksums added, a fresh id given) in the open's write
 *     transaction; opened read-only it is read as it is (no id yet, no checksums).
 * Every later format must keep meta's header as format 2 has it ([1, magic, format,
 * app.id, created_ms, checkpoint id] and the checksum), so that an older build can tell
 * "newer" from "corrupt".
 */
#define LK_CHECKPOINT_FORMAT 2
/** Length of a checkpoint id in hex characters (128 random bits). */
#define LK_CHECKPOINT_ID_LEN 32
/** The magic string in the meta header. */
#define LK_CHECKPOINT_MAGIC "lockstep-checkpoint"

typedef struct lk__store lk__store_t;
typedef struct lk__store_txn lk__store_txn_t;

typedef struct lk_store_opts {
    const char *dir;          /**< checkpoint.dir */
    const char *app_id;       /**< must match an existing checkpoint's app.id */
    int readonly;             /**< inspect: no lock, no writes; the checkpoint must exist */
    int no_migrate;           /**< writable (locked) but an older format is left as it is
                                   (a dry run): write transactions are then refused */
    int sync_interval;        /**< 0: fsync every commit; 1: group commit */
    int64_t sync_interval_ms; /**< group-commit interval */
    size_t map_size;          /**< initial map size; grows when full */
    uint64_t batch_history;   /**< batch records kept */
    const lk_conf_t *conf;    /**< effective config recorded in meta at open (secrets
                                   redacted); NULL: the caller records it later with
                                   lk__store_config_put(), e.g. after its own checks */
} lk__store_opts_t;

/** Fill opts from a validated configuration (dir, app.id, sync, map size, history). */
void lk__store_opts_from_conf(lk__store_opts_t *opts, const lk_conf_t *conf);

/**
 * Open or create a checkpoint.
 *
 * A missing or empty directory is created as a new checkpoint (not when readonly).
 * Refused without modifying the checkpoint's data: a path that is not a checkpoint
 * (LK_ERR_NOT_CHECKPOINT), another app.id (LK_ERR_APP_MISMATCH), a newer format
 * (LK_ERR_FORMAT_TOO_NEW), an unreadable meta or data file (LK_ERR_CORRUPT: also a
 * data.mdb that does not match LMDB's meta pages or whose pages are damaged, checked
 * before LMDB reads it; or a meta header failing its checksum), a checkpoint held by
 * another open handle, in this process or another (LK_ERR_LOCKED, naming the holder's
 * pid), a sync to disk that fails (LK_ERR_IO, with the OS error).
 * A format-1 checkpoint opened writable is migrated (see LK_CHECKPOINT_FORMAT).
 */
lk_err_t lk__store_open(lk__store_t **out, const lk__store_opts_t *opts, char *errstr,
                        size_t errstr_size);

/** Close; a write transaction still open is aborted. NULL is a no-op. */
void lk__store_close(lk__store_t *s);

/** app.id and format version recorded in meta; valid until close. */
const char *lk__store_app_id(const lk__store_t *s);
int lk__store_format(const lk__store_t *s);
int64_t lk__store_created_ms(const lk__store_t *s);
const char *lk__store_dir(const lk__store_t *s);

/**
 * The checkpoint's identity: 128 random bits (getrandom(2)) made when the checkpoint was
 * created (or when a format-1 checkpoint was migrated), as LK_CHECKPOINT_ID_LEN lowercase
 * hex characters and a NUL. Valid while s is open. Outputs name it, so that output of
 * another checkpoint under the same app.id is recognised, never trusted or overwritten.
 * "" only for a format-1 checkpoint opened read-only (it gets its id at its next run).
 */
const char *lk__store_checkpoint_id(const lk__store_t *s);

/**
 * The format this open migrated the checkpoint from (e.g. 1), or 0 when it was created by
 * this open or already had the current format. Lets other modules treat records written
 * before the migration (e.g. progress records without a checkpoint id) as they must.
 */
int lk__store_migrated_from(const lk__store_t *s);

/** Current map size in bytes (grows on MDB_MAP_FULL). */
size_t lk__store_map_size(const lk__store_t *s);

/** Id of the last committed batch record (0 if none), and of the last durable one. */
uint64_t lk__store_committed_batch(const lk__store_t *s);
uint64_t lk__store_durable_batch(const lk__store_t *s);

/**
 * Force committed checkpoints to disk (needed only with sync_interval). A failed sync is
 * fatal for the store (sticky, LK_ERR_FATAL with the OS error): durable_batch never
 * advances past the last good sync.
 */
lk_err_t lk__store_sync(lk__store_t *s, char *errstr, size_t errstr_size);

/** Sticky fatal state (MDB_PANIC, a failed sync): non-zero and a message once the store
 * is unusable. */
int lk__store_fatal(const lk__store_t *s, const char **msg);

/* ---- transactions ---- */

/** Begin a transaction. Only one write transaction may be open at a time. */
lk_err_t lk__store_txn_begin(lk__store_t *s, int write, lk__store_txn_t **out, char *errstr,
                             size_t errstr_size);

/**
 * Commit (write: atomically and, with per-batch sync, durably; read: just ends it).
 * MDB_MAP_FULL grows the map and replays the transaction. The txn is freed either way.
 */
lk_err_t lk__store_txn_commit(lk__store_txn_t *t, char *errstr, size_t errstr_size);

/**
 * Commit without fsync (whatever checkpoint.sync says): for records whose loss in an OS
 * crash is harmless (pending plans, sink acknowledgements). The next synced commit
 * makes it durable too.
 */
lk_err_t lk__store_txn_commit_unsynced(lk__store_txn_t *t, char *errstr, size_t errstr_size);

/**
 * What the last failed read in t found wrong, naming the record ("" if nothing failed):
 * the getters without an errstr parameter (lk__store_offset_get, ..._fence_get,
 * ..._outbox_foreach, ...) return LK_ERR_CORRUPT and leave the description here, for the
 * caller's message. Valid until the next call on t or its end.
 */
const char *lk__store_txn_errstr(const lk__store_txn_t *t);

/** Abort and free. NULL is a no-op. */
void lk__store_txn_abort(lk__store_txn_t *t);

/* ---- offsets: (topic, partition) -> next offset to read ---- */

lk_err_t lk__store_offset_put(lk__store_txn_t *t, const char *topic, int32_t partition,
                              int64_t offset, char *errstr, size_t errstr_size);
/**
 * LK_ERR_NOT_FOUND if the partition has no committed offset (and only then: a value that
 * fails its checksum, does not decode or is negative is LK_ERR_CORRUPT, described by
 * lk__store_txn_errstr()).
 */
lk_err_t lk__store_offset_get(lk__store_txn_t *t, const char *topic, int32_t partition,
                              int64_t *offset);

/**
 * The identity of the last record read from a partition, kept with its offset so that a
 * restart can read that record back and tell the same log from a recreated one.
 */
typedef struct lk_fingerprint {
    int64_t offset;    /**< offset of the record (below the partition's next offset) */
    int64_t timestamp; /**< its timestamp in ms; -1: none */
    uint64_t hash;     /**< lk__record_hash() of its key and value */
} lk__fingerprint_t;

/** A 64-bit hash of a record's key and value (CRC32C of each; NULL is empty). */
uint64_t lk__record_hash(const void *key, size_t klen, const void *value, size_t vlen);

/**
 * lk__store_offset_put() that also records fp, the last record read below offset (NULL:
 * none, e.g. an offset moved by hand). Refused (LK_ERR_INVALID_ARG): a negative offset,
 * or a fingerprint not below it.
 */
lk_err_t lk__store_offset_put_fp(lk__store_txn_t *t, const char *topic, int32_t partition,
                                 int64_t offset, const lk__fingerprint_t *fp, char *errstr,
                                 size_t errstr_size);

/** lk__store_offset_get() that also returns the fingerprint: *has_fp 0 when none. */
lk_err_t lk__store_offset_get_fp(lk__store_txn_t *t, const char *topic, int32_t partition,
                                 int64_t *offset, lk__fingerprint_t *fp, int *has_fp);
/** Visit every offset in (topic, partition) order; a non-zero return stops. */
lk_err_t lk__store_offsets_foreach(lk__store_txn_t *t,
                                   int (*cb)(const char *topic, int32_t partition,
                                             int64_t offset, void *opaque),
                                   void *opaque);

/* ---- batch records ---- */

typedef struct lk_range {
    const char *topic;
    int32_t partition;
    int64_t from, until; /**< [from, until) */
} lk__range_t;

typedef struct lk_batch_rec {
    uint64_t id;
    int64_t batch_time_ms;  /**< from the plan; reused on replay */
    int64_t commit_wall_ms; /**< wall clock at commit (informational) */
    uint64_t records_in, records_out;
    size_t nranges;
    lk__range_t *ranges;
} lk__batch_rec_t;

/** Put batch record b (also prunes records beyond the history bound). */
lk_err_t lk__store_batch_put(lk__store_txn_t *t, const lk__batch_rec_t *b, char *errstr,
                             size_t errstr_size);
/** The newest batch record; strings and ranges valid until the txn ends. */
lk_err_t lk__store_batch_last(lk__store_txn_t *t, lk__batch_rec_t *out);
lk_err_t lk__store_batch_get(lk__store_txn_t *t, uint64_t id, lk__batch_rec_t *out);
/** Number of batch records kept. */
size_t lk__store_batch_count(lk__store_txn_t *t);

/* ---- outbox: output waiting for delivery, per sink and batch ---- */

typedef struct lk_header {
    const char *name;
    const void *value;
    size_t value_len;
} lk__header_t;

typedef struct lk_out_record {
    int32_t partition; /**< output partition; -1: chosen by the sink (key hash) */
    const void *key;
    size_t key_len; /**< key NULL: no key */
    const void *value;
    size_t value_len; /**< value NULL: tombstone */
    int64_t timestamp_ms;
    size_t nheaders;
    const lk__header_t *headers;
} lk__out_record_t;

/** Append a record to sink's outbox for batch (records keep their append order). */
lk_err_t lk__store_outbox_append(lk__store_txn_t *t, const char *sink, uint64_t batch,
                                 const lk__out_record_t *r, char *errstr, size_t errstr_size);
/** Smallest batch id with records for sink; LK_ERR_NOT_FOUND when empty. */
lk_err_t lk__store_outbox_first_batch(lk__store_txn_t *t, const char *sink, uint64_t *batch);
/** Smallest batch id >= from with records for sink; LK_ERR_NOT_FOUND when none. */
lk_err_t lk__store_outbox_batch_from(lk__store_txn_t *t, const char *sink, uint64_t from,
                                     uint64_t *batch);
/** Visit sink's records of one batch in order; pointers valid during the callback. */
lk_err_t lk__store_outbox_foreach(lk__store_txn_t *t, const char *sink, uint64_t batch,
                                  int (*cb)(const lk__out_record_t *r, void *opaque),
                                  void *opaque);
/** Delete sink's records of every batch <= batch (acknowledge delivery). */
lk_err_t lk__store_outbox_ack(lk__store_txn_t *t, const char *sink, uint64_t batch,
                              char *errstr, size_t errstr_size);

typedef struct lk_outbox_stat {
    const char *sink; /**< valid until the txn ends */
    uint64_t batches, records, bytes;
    uint64_t first_batch, last_batch;
} lk__outbox_stat_t;
/** Visit outbox statistics per sink. */
lk_err_t lk__store_outbox_stats(lk__store_txn_t *t,
                                int (*cb)(const lk__outbox_stat_t *st, void *opaque),
                                void *opaque);
/** Total bytes of outbox records (kept in memory; for outbox.max.bytes). */
uint64_t lk__store_outbox_bytes(const lk__store_t *s);

/* ---- fences: the last batch each sink delivered ---- */

lk_err_t lk__store_fence_put(lk__store_txn_t *t, const char *sink, uint64_t batch,
                             char *errstr, size_t errstr_size);
lk_err_t lk__store_fence_get(lk__store_txn_t *t, const char *sink, uint64_t *batch);
/**
 * The fence of sink with the changelog position a delivery recorded with it (scale-out,
 * DESIGN.md): *offset the offset after that member's last record delivered up to *batch,
 * -1 when none was recorded (a fence of an older version, or no record delivered yet);
 * *wall_ms (NULL: not wanted) the wall clock when the fence was written.
 * LK_ERR_NOT_FOUND when sink has no fence; LK_ERR_CORRUPT.
 */
lk_err_t lk__store_fence_get_offset(lk__store_txn_t *t, const char *sink, uint64_t *batch,
                                    int64_t *offset, int64_t *wall_ms);
/**
 * lk__store_fence_put() that also records a changelog position (offset >= 0), kept as a
 * fourth element of the fence's value (older versions read the first three). offset < 0:
 * the position recorded before, if any, is kept (any offset at or before the first record
 * of a later batch bounds a tail restore).
 */
lk_err_t lk__store_fence_put_offset(lk__store_txn_t *t, const char *sink, uint64_t batch,
                                    int64_t offset, char *errstr, size_t errstr_size);
lk_err_t lk__store_fences_foreach(lk__store_txn_t *t,
                                  int (*cb)(const char *sink, uint64_t batch,
                                            int64_t wall_ms, void *opaque),
                                  void *opaque);

/* ---- accumulators ---- */

lk_err_t lk__store_acc_add(lk__store_txn_t *t, const char *name, int64_t delta,
                           char *errstr, size_t errstr_size);
lk_err_t lk__store_acc_get(lk__store_txn_t *t, const char *name, int64_t *value);
lk_err_t lk__store_acc_foreach(lk__store_txn_t *t,
                               int (*cb)(const char *name, int64_t value, void *opaque),
                               void *opaque);

/* ---- keyed state per operator ---- */

/** Handle of a state.<uid> database; valid until the store closes. */
typedef int lk__state_db_t;

/**
 * Open (creating when missing) the state database of operator uid. Must not be called
 * while a write transaction is open.
 */
lk_err_t lk__store_state_open(lk__store_t *s, const char *uid, lk__state_db_t *db,
                              char *errstr, size_t errstr_size);
/** Value of key; *val valid until the next write in t or the end of t. */
lk_err_t lk__store_state_get(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                             size_t klen, const void **val, size_t *vlen,
                             int64_t *updated_ms);
lk_err_t lk__store_state_put(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                             size_t klen, const void *val, size_t vlen, int64_t updated_ms,
                             char *errstr, size_t errstr_size);
/** Delete key; deleting a missing key is not an error. */
lk_err_t lk__store_state_del(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                             size_t klen, char *errstr, size_t errstr_size);
lk_err_t lk__store_state_foreach(lk__store_txn_t *t, lk__state_db_t db,
                                 int (*cb)(const void *key, size_t klen, const void *val,
                                           size_t vlen, int64_t updated_ms, void *opaque),
                                 void *opaque);

/**
 * Scale-out's changelog (DESIGN.md, Scale-out): from now on every lk__store_state_put /
 * lk__store_state_del of db in a transaction marked by lk__store_txn_capture() is also
 * appended, in that transaction, to the outbox of sink member `member` for that batch:
 * key = the state key, value = the stored envelope [1, updated_ms, value] (msgpack, no
 * checksum), NULL for a delete; partition `partition` (the task's); timestamp the batch
 * time. member NULL stops the capture. Call outside transactions (it is the store's
 * configuration, like lk__store_state_open). LK_ERR_INVALID_ARG (bad handle or partition
 * < 0), LK_ERR_NOMEM.
 */
lk_err_t lk__store_state_changelog(lk__store_t *s, lk__state_db_t db, const char *member,
                                   int32_t partition);
/** Mark write transaction t as batch `batch`'s (batch time time_ms): its state writes are
 * captured into the changelog outboxes. batch 0: nothing is captured (the default). */
void lk__store_txn_capture(lk__store_txn_t *t, uint64_t batch, int64_t time_ms);
/** The handle of operator uid's state database if it was opened; LK_ERR_NOT_FOUND. */
lk_err_t lk__store_state_find(const lk__store_t *s, const char *uid, lk__state_db_t *db);
/** Delete every entry of db in t (a full restore's first step); *cleared counts them.
 * Errors of the transaction's writes (LK_ERR_IO, LK_ERR_FATAL, ...), LK_ERR_INVALID_ARG. */
lk_err_t lk__store_state_clear(lk__store_txn_t *t, lk__state_db_t db, uint64_t *cleared,
                               char *errstr, size_t errstr_size);
/** Apply one changelog record to db in t: envelope as captured ([1, updated_ms, value]),
 * NULL for a delete. LK_ERR_CORRUPT names the operator when key or envelope is not what
 * the capture writes; the errors of lk__store_state_put / lk__store_state_del. */
lk_err_t lk__store_state_apply(lk__store_txn_t *t, lk__state_db_t db, const void *key,
                               size_t klen, const void *envelope, size_t elen, char *errstr,
                               size_t errstr_size);

typedef struct lk__state_stat {
    const char *uid; /**< valid during the callback */
    uint64_t entries;
    uint64_t bytes; /**< pages used by the database, in bytes */
} lk__state_stat_t;
/** Visit statistics of every state.<uid> database in the checkpoint. */
lk_err_t lk__store_state_stats(lk__store_txn_t *t,
                               int (*cb)(const lk__state_stat_t *st, void *opaque),
                               void *opaque);

/**
 * Visit up to max entries of a state database in key order, starting strictly after
 * (after, after_len) or at the first key when after is NULL. *visited counts the
 * entries visited. Used for incremental TTL sweeps.
 */
lk_err_t lk__store_state_scan(lk__store_txn_t *t, lk__state_db_t db, const void *after,
                              size_t after_len, size_t max,
                              int (*cb)(const void *key, size_t klen, const void *val,
                                        size_t vlen, int64_t updated_ms, void *opaque),
                              void *opaque, size_t *visited);

/* ---- pending plan ---- */

/**
 * Record the plan of the batch about to be processed (ranges and batch time), so that
 * a batch interrupted before its commit is processed again with the same ranges and
 * the same batch time. Committed with its own, unsynced transaction: losing it in an
 * OS crash only means the batch is planned afresh. lk__store_batch_put() of the same
 * id removes it.
 */
lk_err_t lk__store_plan_put(lk__store_t *s, const lk__batch_rec_t *plan, char *errstr,
                            size_t errstr_size);
/** Drop the pending plan (its input no longer exists: the batch is planned afresh). */
lk_err_t lk__store_plan_clear(lk__store_t *s, char *errstr, size_t errstr_size);
/** The pending plan, if any (LK_ERR_NOT_FOUND); valid until the txn ends. */
lk_err_t lk__store_plan_get(lk__store_txn_t *t, lk__batch_rec_t *out);

/* ---- topology ---- */

typedef struct lk_topo_op {
    const char *uid;
    const char *kind;
    int32_t schema_version; /**< state schema version; 0 for stateless operators */
    const char *params;     /**< canonical text of the operator's parameters */
} lk__topo_op_t;

lk_err_t lk__store_topology_put(lk__store_txn_t *t, const lk__topo_op_t *ops, size_t n,
                                char *errstr, size_t errstr_size);
/** Recorded topology; *ops allocated for the txn's lifetime. 0 ops if none recorded. */
lk_err_t lk__store_topology_get(lk__store_txn_t *t, lk__topo_op_t **ops, size_t *n);

/** Record the effective configuration in meta (secrets redacted). */
lk_err_t lk__store_config_put(lk__store_txn_t *t, const lk_conf_t *conf, char *errstr,
                              size_t errstr_size);

/** Visit the effective configuration recorded in meta (secrets already redacted). */
lk_err_t lk__store_config_foreach(lk__store_txn_t *t,
                                  int (*cb)(const char *key, const char *value, void *opaque),
                                  void *opaque);

/* ---- inspect ---- */

/** Write a description of the checkpoint (text or JSON) to fp. */
lk_err_t lk__store_inspect(lk__store_t *s, FILE *fp, int json, char *errstr,
                           size_t errstr_size);

/* ---- maintenance (the `lockstep checkpoint` commands) ---- */

/**
 * A task's handoff (DESIGN.md, Scale-out): another process ran this task since this
 * checkpoint last delivered, so what it holds beyond its delivered output is stale. In one
 * transaction: every sink's outbox is emptied (its batches were never delivered and the
 * other process processed that input again), the pending plan is dropped, and the offsets
 * of the n ranges are set to their `until` (from the last committed progress record; no
 * fingerprint). *dropped_from..*dropped_to: the batches dropped (0, 0: none).
 * restore (NULL: none) is called in the same transaction, before the outbox is dropped
 * and the offsets move, to bring the keyed state to the same batch (the changelog
 * restore): its failure aborts everything, so offsets never move without state.
 * Errors: LK_ERR_NOMEM, LK_ERR_CORRUPT, LK_ERR_IO / LK_ERR_FATAL from LMDB, restore's.
 */
typedef lk_err_t lk__store_restore_fn(lk__store_txn_t *t, void *opaque, char *errstr,
                                      size_t errstr_size);
lk_err_t lk__store_task_handoff(lk__store_t *s, const lk__range_t *offsets, size_t n,
                                lk__store_restore_fn *restore, void *restore_opaque,
                                uint64_t *dropped_from, uint64_t *dropped_to, char *errstr,
                                size_t errstr_size);

/** What `lockstep checkpoint reset-offsets` asks of lk__store_reset_offsets(). */
typedef struct lk__offset_reset {
    const char *topic;         /**< the input topic; it must have offsets */
    const int32_t *partitions; /**< partitions to change, each with an offset; NULL or
                                    none: every partition of topic with an offset */
    size_t npartitions;
    int64_t to;                /**< the next offset to read (>= 0); -1: forget the offset,
                                    the next start reads the partition as new (the
                                    receiver: earliest offset when other partitions of the
                                    topic keep theirs, else auto.offset.reset) */
    int write;                 /**< 0: a dry run, every check made, nothing written */
} lk__offset_reset_t;

/** One partition lk__store_reset_offsets() changed (or, in a dry run, would change). */
typedef struct lk__offset_change {
    int32_t partition;
    int64_t from; /**< the checkpointed offset */
    int64_t to;   /**< the new one; -1: deleted */
} lk__offset_change_t;

/**
 * Move (or forget) the checkpointed offsets of r->topic's partitions and drop the pending
 * plan, whose ranges would replay the old offsets, in one write transaction of its own
 * (synced like any commit). The caller holds the checkpoint (a writable open: no
 * application runs on it). Keyed state, the outbox and the fences are left as they are.
 * A dry run (r->write == 0) reads in a read transaction and reports the same changes.
 * @param changes   out: the changes in partition order (malloc'ed, the caller frees);
 *                  NULL on error
 * @param nchanges  out: their number
 * @param plan      out: the batch id of the pending plan dropped (or that a dry run
 *                  would drop), 0 when there is none
 * @returns LK_OK; LK_ERR_NOT_FOUND when the topic has no offsets (the message lists the
 *          topics that have) or a partition asked for has none (it lists those that
 *          have); LK_ERR_INVALID_ARG for r->to below -1; LK_ERR_CORRUPT for a damaged
 *          offset or plan; LK_ERR_STATE when the store is read-only or a write
 *          transaction is open; LK_ERR_NOMEM; a transaction's errors (LK_ERR_IO, ...).
 */
lk_err_t lk__store_reset_offsets(lk__store_t *s, const lk__offset_reset_t *r,
                                 lk__offset_change_t **changes, size_t *nchanges,
                                 uint64_t *plan, char *errstr, size_t errstr_size);

/**
 * Visit the entries of operator uid's state database in key order inside t, without
 * lk__store_state_open(): the database is looked up in t itself, so one read
 * transaction sees every operator's state as of one commit (a consistent export, also
 * of a checkpoint another process is writing). LK_ERR_NOT_FOUND if the checkpoint has
 * no state for uid. A non-zero return of cb stops the visit. Like every LMDB database
 * lookup, it must not run concurrently with lk__store_state_open() or another lookup
 * on the same store.
 */
lk_err_t lk__store_state_foreach_uid(lk__store_txn_t *t, const char *uid,
                                     int (*cb)(const void *key, size_t klen, const void *val,
                                               size_t vlen, int64_t updated_ms, void *opaque),
                                     void *opaque);

/* ---- decoders on raw bytes ---- */

typedef enum {
    LK_REC_OFFSET, LK_REC_BATCH, LK_REC_PLAN, LK_REC_OUTBOX, LK_REC_FENCE,
    LK_REC_ACC, LK_REC_STATE, LK_REC_TOPOLOGY, LK_REC_CONFIG, LK_REC_HEADER,
    LK_REC_KINDS
} lk__store_record_t;

/**
 * Decode (val, vlen), stored under (key, klen), as the store decodes a record of kind
 * when reading it in t (checksum included, per the store's format), and discard the
 * result: LK_OK, LK_ERR_CORRUPT (described by lk__store_txn_errstr()), or
 * LK_ERR_INVALID_ARG (a key of the wrong shape for kind). For the decoder fuzz target
 * (tests/fuzz); it reads nothing from LMDB. Decoded data lives in t until it ends.
 */
lk_err_t lk__store_decode(lk__store_txn_t *t, lk__store_record_t kind, const void *key,
                          size_t klen, const void *val, size_t vlen);

#endif
