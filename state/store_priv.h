/*
 * store_priv.h — what the files of the checkpoint store share, and nobody else may see:
 * the handle and transaction structures, the fixed databases, the key limit, and the
 * helpers each file lends the others (errors, checksums, transactional writes, the
 * record decoders). store_int.h stays the one door for the rest of the engine; only
 * state/store*.c include this file. DESIGN.md, The checkpoint.
 *
 * The files, by what they hold:
 *   store.c            the environment and transactions: open, close, the replay log
 *                      and map growth, txn begin/commit, group commit, reader-slot checks
 *   store_integrity.c  value checksums, corruption reports, data.mdb checked against
 *                      LMDB's meta pages and page by page before LMDB reads it
 *   store_meta.c       meta: header, identity, format migration, the state database
 *                      names, the recorded topology and configuration
 *   store_batch.c      offsets, batch records and the pending plan; reset-offsets
 *   store_outbox.c     the outbox, sink fences and accumulators
 *   store_state.c      keyed state (state.<uid> databases)
 *   store_inspect.c    statistics for inspect and the raw-bytes decoders (fuzz target)
 */
#ifndef LK_STORE_PRIV_H
#define LK_STORE_PRIV_H

#include "store_int.h"
#include "codec_int.h"

#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>

enum { DB_META, DB_OFFSETS, DB_BATCHES, DB_OUTBOX, DB_FENCES, DB_ACC, DB_FIXED_COUNT };
#define MAX_DBS 1024 /* fixed databases + state databases */
/* LMDB's maximum key size (MDB_MAXKEYSIZE, what mdb_env_get_maxkeysize() answers for
 * Debian's liblmdb). Keys are checked before LMDB sees them: LMDB would answer
 * MDB_BAD_VALSIZE, and a failed write aborts the whole batch transaction. */
#define MAX_KEY 511

typedef struct {
    char *uid;
    MDB_dbi dbi;
    /* scale-out's changelog (DESIGN.md, Scale-out): the outbox member every write of this
     * database is also appended to in the batch's transaction, and its partition (the
     * task's); NULL: not captured */
    char *changelog;
    int32_t changelog_partition;
} state_db_t;

struct lk__store {
    MDB_env *env;
    char *dir;
    int lock_fd;
    int readonly;
    MDB_dbi dbi[DB_FIXED_COUNT];
    state_db_t *states;
    size_t nstates, states_cap;
    size_t map_size;
    int sync_interval;
    int64_t sync_interval_ms, last_sync_ms;
    uint64_t batch_history;
    uint64_t committed_batch, durable_batch;
    uint64_t outbox_bytes;
    char *app_id;
    int format;
    int migrated_from; /* format before this open migrated it; 0: none */
    int64_t created_ms;
    char checkpoint_id[LK_CHECKPOINT_ID_LEN + 1];
    atomic_int fatal; /* set after fatal_msg is written; read from any thread */
    char fatal_msg[512];
    lk__store_txn_t *wtxn;
    /* readers hold it shared; map growth holds it exclusively (LMDB requires no live
     * transaction in this process while the map is resized) */
    pthread_rwlock_t resize_lock;
    /* LMDB's environment flags are one plain word: commits toggle MDB_NOSYNC in it
     * (lk__store_txn_commit_unsynced) while another thread (a sink's delivery) may be
     * beginning a read transaction, which reads it */
    pthread_mutex_t flags_lock;
};

/* Outbox records of one (sink, batch) appended in this txn. They are packed into a chunk
 * buffer and written as one LMDB value per OUTBOX_CHUNK_BYTES: one put (and later one
 * delete) per chunk instead of per record. */
typedef struct {
    char *sink;
    uint64_t batch;
    uint32_t next_seq; /* key sequence number of the next chunk */
    lk__buf_t chunk;   /* packed records not yet written */
} seq_slot_t;

#define OUTBOX_CHUNK_BYTES (32 * 1024)

struct lk__store_txn {
    lk__store_t *s;
    MDB_txn *txn;
    int write;
    char *log;
    size_t log_len, log_cap;
    lk__buf_t buf;        /* encoding scratch */
    lk__zone_t zone;      /* decoded objects valid until the txn ends */
    lk__zone_t tmp;       /* decoded objects valid for one call */
    seq_slot_t **seqs; /* each slot allocated alone: its chunk buffer must not move */
    size_t nseqs, seqs_cap;
    int64_t outbox_delta;
    uint64_t batch_id; /* batch record written by this txn, 0 if none */
    /* the batch whose state writes this txn captures into the changelog outbox
     * (lk__store_txn_capture), and its batch time; 0: nothing is captured */
    uint64_t capture_batch;
    int64_t capture_time_ms;
    char err[512];     /* what the last failed read found wrong (lk__store_txn_errstr) */
};

static const char plan_key[] = "pending-plan"; /* meta key of the pending plan */
/*
 * From format 2 on every value carries a checksum: 4 bytes, big-endian, appended to the
 * msgpack value: CRC32C over the value and then its key, so that a flipped byte in
 * either (LMDB has no checksums of its own) is found when the value is read, instead of
 * being used. A format-1 checkpoint is read without them (read-only) or migrated.
 */
#define CRC_LEN 4

/* store.c */
lk_err_t lk__store_mdb_err(lk__store_t *s, int rc, char *errstr, size_t errstr_size,
                           const char *what);
lk_err_t lk__store_txn_check(lk__store_txn_t *t, char *errstr, size_t errstr_size);
lk_err_t lk__store_txn_put(lk__store_txn_t *t, MDB_dbi dbi, const void *key, size_t klen,
                           const void *val, size_t vlen, char *errstr, size_t errstr_size,
                           const char *what);
lk_err_t lk__store_txn_del(lk__store_txn_t *t, MDB_dbi dbi, const void *key, size_t klen,
                           char *errstr, size_t errstr_size, const char *what);
/* key's value in dbi: LK_OK, LK_ERR_NOT_FOUND (MDB_NOTFOUND, the only "absent"), or an
 * LMDB error recorded in t naming what was read (lk__store_read_failed). */
lk_err_t lk__store_txn_get(lk__store_txn_t *t, MDB_dbi dbi, const void *key, size_t klen,
                           MDB_val *v, const char *what);
/* Visit every (key, value) of dbi in t in key order. each returns 0 to go on or 1 to
 * stop, and sets *err (its message in t) to fail; a failed cursor read is recorded
 * naming reading. */
lk_err_t lk__store_walk(lk__store_txn_t *t, MDB_dbi dbi, const char *reading,
                        int (*each)(lk__store_txn_t *, const MDB_val *, MDB_val, void *,
                                    lk_err_t *),
                        void *ctx);

/* store_integrity.c */
int lk__store_sealed(const lk__store_t *s);
uint32_t lk__store_value_crc(const void *val, size_t vlen, const void *key, size_t klen);
void lk__store_seal(lk__buf_t *b, const void *key, size_t klen);
int lk__store_unseal(const lk__store_t *s, const MDB_val *k, MDB_val *v);
__attribute__((format(printf, 2, 3))) lk_err_t lk__store_corrupt(lk__store_txn_t *t,
                                                                 const char *fmt, ...);
lk_err_t lk__store_read_failed(lk__store_txn_t *t, int rc, const char *what);
lk_err_t lk__store_check_data_file(lk__store_t *s, char *errstr, size_t errstr_size);
lk_err_t lk__store_verify_pages(lk__store_t *s, MDB_txn *txn, char *errstr,
                                size_t errstr_size);

/* store_meta.c */
lk_err_t lk__store_new_checkpoint_id(char out[LK_CHECKPOINT_ID_LEN + 1], char *errstr,
                                     size_t errstr_size);
lk_err_t lk__store_parse_header(lk__store_t *s, MDB_val v, const char *want_app, char *errstr,
                                size_t errstr_size);
lk_err_t lk__store_check_meta(lk__store_t *s, MDB_txn *txn, const char *want_app, char *errstr,
                              size_t errstr_size);
lk_err_t lk__store_write_header(lk__store_t *s, MDB_txn *txn, char *errstr, size_t errstr_size);
lk_err_t lk__store_write_config(lk__store_t *s, MDB_txn *txn, const lk_conf_t *conf, char *errstr,
                                size_t errstr_size);
lk_err_t lk__store_load_outbox_bytes(lk__store_t *s, MDB_txn *txn);
lk_err_t lk__store_load_last_batch(lk__store_t *s, MDB_txn *txn);
int lk__store_seal_all(lk__store_t *s, MDB_txn *txn);
int lk__store_put_state_names(lk__store_t *s, MDB_txn *txn);
lk_err_t lk__store_check_state_names(lk__store_t *s, MDB_txn *txn, int *absent, char *errstr,
                                     size_t errstr_size);
lk_err_t lk__store_check_meta_keys(lk__store_t *s, MDB_txn *txn, char *errstr, size_t errstr_size);
lk_err_t lk__store_decode_topology(lk__store_txn_t *t, MDB_val v, lk__topo_op_t **ops, size_t *n);
lk_err_t lk__store_decode_config(lk__store_txn_t *t, MDB_val v,
                                 int (*cb)(const char *, const char *, void *), void *opaque);

/* store_batch.c */
lk_err_t lk__store_decode_offset(lk__store_txn_t *t, const MDB_val *k, MDB_val v, const char *topic,
                                 int32_t partition, int64_t *offset, lk__fingerprint_t *fp,
                                 int *has_fp);
lk_err_t lk__store_decode_batch(lk__store_txn_t *t, const MDB_val *k, MDB_val v, const char *what,
                                lk__batch_rec_t *b);
lk_err_t lk__store_decode_batch_at(lk__store_txn_t *t, const MDB_val *k, MDB_val v,
                                   lk__batch_rec_t *out);

/* store_outbox.c */
lk_err_t lk__store_outbox_flush(lk__store_txn_t *t, char *errstr, size_t errstr_size);
int lk__store_decode_out(lk__store_txn_t *t, const MDB_val *v, size_t *off, lk__out_record_t *r,
                         lk__header_t *hbuf, size_t hcap);
lk_err_t lk__store_decode_fence(lk__store_txn_t *t, const char *sink, MDB_val v, int64_t *batch,
                                int64_t *wall);
lk_err_t lk__store_decode_acc(lk__store_txn_t *t, const char *name, MDB_val v, int64_t *value);

/* store_state.c */
int lk__store_decode_state(lk__store_txn_t *t, const MDB_val *k, MDB_val vv, const void **val,
                           size_t *vlen, int64_t *updated_ms);

#endif
