/*
 * pipeline_int.h — the pipeline as the driver sees it: stages in definition order
 * (which is a topological order, since a stage can only be built from an existing one),
 * their topology records for the checkpoint, and the per-batch execution engine that
 * pushes input records through the stages inside one checkpoint transaction.
 */
#ifndef LK_PIPELINE_INT_H
#define LK_PIPELINE_INT_H

#include "lockstep.h"
#include "../state/store_int.h"
#include "../core/util_int.h"

typedef enum {
    LK__ST_SOURCE,
    LK__ST_MAP,
    LK__ST_FLAT_MAP,
    LK__ST_FILTER,
    LK__ST_REDUCE,
    LK__ST_UPDATE,
    LK__ST_FOREACH,
    LK__ST_OUTBOX,
    LK__ST_WINDOW, /* window.c */
    LK__ST_SIDE,   /* a window's late records (pass-through, fed by the window only) */
    LK__ST_REPARTITION, /* lk_repartition: a pass-through in one context (repartition.c
                         * cuts the pipeline there for group.mode=consumer) */
} lk__stage_kind_t;

/** Kind names as recorded in the checkpoint's topology (stable strings). */
const char *lk__stage_kind_name(lk__stage_kind_t k);
/** The kind name of a stage ("to_kafka" etc. for sinks). */
const char *lk__stage_name(const lk_stream_t *s);

/** A bump allocator whose memory lives until the batch ends. */
typedef struct lk__arena_chunk lk__arena_chunk_t;
typedef struct {
    lk__arena_chunk_t *head;
    size_t total;
} lk__arena_t;
void *lk__arena_alloc(lk__arena_t *a, size_t n);
void lk__arena_reset(lk__arena_t *a);
void lk__arena_free(lk__arena_t *a);

/** Per-key accumulation of reduce_by_key / update_state_by_key within a batch. */
typedef struct lk__kv_entry {
    lk_bytes_t key;
    uint64_t hash;
    lk_bytes_t acc;   /* reduce: the combined value */
    lk_bytes_t *vals; /* update: the values, in input order */
    size_t nvals, capvals;
} lk__kv_entry_t;

typedef struct {
    uint64_t hash; /* kept beside the pointer: a probe compares it without a cache miss */
    lk__kv_entry_t *e;
} lk__kv_slot_t;

typedef struct {
    lk__kv_slot_t *slots; /* open addressing */
    size_t cap, count;
    lk__kv_entry_t **order; /* insertion order */
    size_t norder, caporder;
} lk__kv_t;

struct lk_stream {
    lk_pipeline_t *p;
    lk__stage_kind_t kind;
    char *uid;
    lk_stream_t *parent;
    lk_stream_t **children;
    size_t nchildren;
    union {
        lk_map_fn *map;
        lk_filter_fn *filter;
        lk_reduce_fn *reduce;
        lk_update_fn *update;
        lk_foreach_batch_fn *foreach;
    } fn;
    void *opaque;
    int schema_version;
    int64_t ttl_ms;
    int ttl_set;
    char **topics; /* source */
    size_t ntopics;
    char *params; /* canonical parameters, for the topology */
    const struct lk__sink_ops *sink_ops; /* outbox stages: the sink kind delivering it */
    char *target, *format;               /* the sink's topic or directory, file format */
    int keep_partition;                  /* write to the input's partition */
    struct lk__window *win;              /* window stages: the definition (window.c) */
    /* group.mode=consumer, an lk_repartition stage cut into the Kafka sink writing its
     * topic (repartition.c): partition = murmur2(key) % repart_n, a NULL key repart_task
     * (0: not such a sink) */
    int32_t repart_n, repart_task;
    /* runtime */
    lk__state_db_t db;
    lk__kv_t kv;
    lk_record_t *recs; /* foreach */
    size_t nrecs, caprecs;
    size_t emitted;   /* map: emissions during the current call */
    void *scan_key;   /* TTL sweep position (malloc'ed), NULL: from the start */
    size_t scan_klen;
    void *scan_next;  /* the position after this batch's sweep, applied at commit */
    size_t scan_next_len;
    int scan_pending;
};

struct lk_broadcast {
    char *name;
    void *(*build)(void *);
    void (*destroy)(void *);
    void *opaque;
    void *value;
};

struct lk_pipeline {
    lk_stream_t **stages;
    size_t nstages;
    lk_broadcast_t **bcs;
    size_t nbcs;
    char err[512];
    int failed;
};

struct lk_batch {
    uint64_t id;
    int64_t time_ms;
    lk__store_txn_t *txn;
    lk__arena_t arena;
    lk_stream_t *cur; /* stage whose callback is running (where lk_emit goes) */
    const lk_record_t *input; /* the input record being pushed, NULL at the batch's end */
    int expiring;
    lk_err_t err; /* first error inside callbacks: the batch fails */
    char errstr[512];
    uint64_t records_out;
    int64_t default_ttl_ms;
};

lk_pipeline_t *lk__pipeline_new(void);
void lk__pipeline_destroy(lk_pipeline_t *p);

/** Topology records for the checkpoint (arrays owned by p's stages). */
size_t lk__pipeline_topology(const lk_pipeline_t *p, lk__topo_op_t *out, size_t cap);

/** Distinct input topics of all sources (pointers into p). */
size_t lk__pipeline_topics(const lk_pipeline_t *p, const char **out, size_t cap);

/** Open the state databases of stateful stages. */
lk_err_t lk__pipeline_open_state(lk_pipeline_t *p, lk__store_t *s, char *errstr,
                                 size_t errstr_size);

/** Build broadcasts (at start). */
lk_err_t lk__pipeline_build_broadcasts(lk_pipeline_t *p, char *errstr, size_t errstr_size);

/** Execution of one batch: begin, push every input record, end (flushes stages). */
void lk__batch_begin(lk_batch_t *b, lk_pipeline_t *p, uint64_t id, int64_t time_ms,
                     lk__store_txn_t *txn, int64_t default_ttl_ms);
void lk__batch_push_input(lk_batch_t *b, lk_pipeline_t *p, const lk_record_t *r);
lk_err_t lk__batch_end(lk_batch_t *b, lk_pipeline_t *p);
/** Release per-batch memory (after commit or abort). */
void lk__batch_reset(lk_batch_t *b, lk_pipeline_t *p);
void lk__batch_free(lk_batch_t *b);

/** The batch committed: keep what must outlive it (TTL sweep positions). */
void lk__pipeline_committed(lk_pipeline_t *p);

/* ---- for operators defined in other files (window.c) ---- */

/** A stage derived from in (checks in, uid and fn); NULL with the pipeline failed. */
lk_stream_t *lk__stage_derive(lk_stream_t *in, lk__stage_kind_t kind, const char *uid,
                              const void *fn, void *opaque, const char *what);
/** Push r to s's children: side outputs (LK__ST_SIDE) if side, else the others. */
void lk__stage_deliver(lk_batch_t *b, lk_stream_t *s, const lk_record_t *r, int side);
/** Fail the batch (the first error wins). */
void lk__batch_failf(lk_batch_t *b, lk_err_t e, const char *fmt, ...) LK__PRINTF(3, 4);
/** Copy bytes into the batch's arena (NULL stays NULL; NULL also when out of memory). */
void *lk__batch_copy(lk_batch_t *b, const void *p, size_t n);
/** Append a copy of key (into the batch's arena) to the array *keys of *n keys and *cap
 * slots, grown with lk__vec_reserve. Returns 0; -1 when out of memory (the array stays
 * valid: the caller frees it). NULL key: -1 as well (lk__batch_copy's NULL). */
int lk__batch_keys_push(lk_batch_t *b, lk_bytes_t **keys, size_t *n, size_t *cap,
                        const void *key, size_t klen);

/* ---- lk_repartition (pipeline_repartition.c, DESIGN.md Scale-out) ---- */

/** Kafka's murmur2 of key[0..len) (the Java client's Utils.murmur2, librdkafka's). */
uint32_t lk__murmur2(const void *key, size_t len);
/** The partition of n (> 0) Kafka's default partitioner gives key: (murmur2 & 0x7fffffff)
 * % n, as librdkafka's murmur2_random and the Java client; a NULL key: null_to. */
int32_t lk__repartition_partition(const void *key, size_t len, int32_t n, int32_t null_to);
/** The uids of the pipeline's lk_repartition stages, in definition order, up to cap;
 * returns how many there are. */
size_t lk__pipeline_repartitions(const lk_pipeline_t *p, const char **uids, size_t cap);
/** <app>.<uid>.repartition into buf. */
void lk__repartition_topic(char *buf, size_t size, const char *app, const char *uid);
/**
 * Keep only one stage of a group.mode=consumer pipeline, for task `task` of `ntasks`:
 * stage NULL: the operators fed by the inputs; else those fed by lk_repartition `stage`,
 * which becomes their source (topic <app>.<stage>.repartition). The lk_repartition
 * stages ending the kept segment become Kafka sinks writing their topics by key. The
 * other stages are freed. LK_ERR_TOPOLOGY when there is no such lk_repartition;
 * LK_ERR_NOMEM. On error the pipeline is only fit for lk__pipeline_destroy.
 */
lk_err_t lk__pipeline_cut(lk_pipeline_t *p, const char *stage, const char *app, int task,
                          int ntasks, char *errstr, size_t errstr_size);

/** Non-zero if some stateful stage expires keys or closes windows (batches must run to
 * advance time). */
int lk__pipeline_has_ttl(const lk_pipeline_t *p, int64_t default_ttl_ms);

#endif
