/*
 * sink_int.h — the sink interface: how a batch's outbox reaches an external system
 * atomically and fenced (DESIGN.md, steps 5-6 and "Recovery").
 *
 * A sink kind implements the operations below; sink.c drives them through one explicit
 * transaction state machine (lk__sink_transition() is the only place states change and
 * refuses any transition not in the table), delivers the outbox oldest batch first and
 * only batches whose checkpoint is durable, and acknowledges delivered batches in the
 * checkpoint. sink/ knows nothing about operators; it reads the outbox and batch records.
 */
#ifndef LK_SINK_INT_H
#define LK_SINK_INT_H

#include "lockstep.h"
#include "../state/store_int.h"

#include <stdatomic.h>

/** Transaction states of a sink. */
#define LK__TXN_STATES(X)                                                                  \
    X(READY)     /* no delivery in progress */                                             \
    X(BEGUN)     /* a delivery of one batch has started */                                 \
    X(PRODUCED)  /* every record of the batch was handed to the external system */         \
    X(COMMITTED) /* the batch is durable there; the outbox may be acknowledged */          \
    X(FATAL)     /* fenced or unrecoverable: sticky, the sink refuses all work */

typedef enum {
#define LK__TXN_ENUM(n) LK__TXN_##n,
    LK__TXN_STATES(LK__TXN_ENUM)
#undef LK__TXN_ENUM
} lk__txn_state_t;

const char *lk__txn_state_name(lk__txn_state_t s);

typedef struct lk_sink lk_sink_t;

/** What a sink kind implements. Every operation may assume a valid state (see sink.c). */
typedef struct lk__sink_ops {
    const char *kind; /* "kafka", "files", "stdout" */
    /** Exactly-once kinds fence; stdout does not (documented at-least-once). */
    int exactly_once;
    /** Create clients; must not need the external system to be reachable. */
    lk_err_t (*open)(lk_sink_t *s, const lk_conf_t *conf, char *errstr, size_t errstr_size);
    /**
     * Connect, fence zombies, and report the last batch the external system holds for
     * this sink (*fence = 0: none known). Retriable errors: LK_ERR_KAFKA / LK_ERR_IO.
     */
    lk_err_t (*recover)(lk_sink_t *s, uint64_t *fence, char *errstr, size_t errstr_size);
    lk_err_t (*begin)(lk_sink_t *s, uint64_t batch, char *errstr, size_t errstr_size);
    lk_err_t (*write)(lk_sink_t *s, const lk_out_record_t *r, char *errstr,
                      size_t errstr_size);
    /** Make the batch durable and visible atomically; b is the batch's record (input
     * offsets for Kafka's send_offsets_to_transaction), NULL if no longer kept. */
    lk_err_t (*commit)(lk_sink_t *s, const lk_batch_rec_t *b, char *errstr,
                       size_t errstr_size);
    /** Undo an open delivery (abort the transaction, remove temporary files). */
    void (*abort)(lk_sink_t *s);
    void (*close)(lk_sink_t *s);
} lk__sink_ops_t;

struct lk_sink {
    const lk__sink_ops_t *ops;
    char *name;   /* the sink's uid: its outbox key and fence name */
    char *target; /* Kafka topic or directory */
    char *format; /* files: "jsonl" or "lines" */
    char *app_id;
    lk__txn_state_t state;
    uint64_t batch;        /* batch of the delivery in progress */
    char attempt[17];      /* hex nonce of the delivery attempt (provenance) */
    int recovered;         /* recover() succeeded since open */
    void *impl;            /* the kind's own state */
    char fatal_msg[512];
    char checkpoint_id[LK_CHECKPOINT_ID_LEN + 1]; /* of the store, set by lk__sink_recover */
    /* deliveries committed / aborted by this process, for lockstep_transactions_total
     * (metrics.c reads them from the HTTP thread) */
    atomic_ullong txn_committed, txn_aborted;
};

extern const lk__sink_ops_t lk__sink_kafka_ops;
extern const lk__sink_ops_t lk__sink_files_ops;
extern const lk__sink_ops_t lk__sink_stdout_ops;

/** Create a sink of a kind; not yet opened. */
lk_sink_t *lk__sink_new(const lk__sink_ops_t *ops, const char *name, const char *target,
                        const char *format, const char *app_id);
void lk__sink_destroy(lk_sink_t *s);

/**
 * The one state transition validator: moves s to `to` if the table allows it from the
 * current state, else leaves the state and returns LK_ERR_STATE naming both states.
 */
lk_err_t lk__sink_transition(lk_sink_t *s, lk__txn_state_t to, char *errstr,
                             size_t errstr_size);

/**
 * Recover the sink if not yet done (connect, fence, read its progress) and acknowledge
 * every outbox batch at or below its fence. Retriable errors leave it unrecovered.
 */
lk_err_t lk__sink_recover(lk_sink_t *s, lk_store_t *store, char *errstr, size_t errstr_size);

/**
 * Deliver the sink's outbox batches with id <= upto (the last durable batch), oldest
 * first, each atomically, acknowledging each in the checkpoint once committed.
 * *delivered counts the batches delivered. Errors name the sink and the batch.
 * LK_ERR_FENCED / LK_ERR_FATAL leave the sink in FATAL.
 */
lk_err_t lk__sink_drain(lk_sink_t *s, lk_store_t *store, uint64_t upto, size_t *delivered,
                        char *errstr, size_t errstr_size);

/**
 * The two halves of delivery, for a batch loop that overlaps delivery with the next
 * batches. lk__sink_deliver_upto delivers the sink's outbox batches with id <= upto,
 * oldest first, each atomically, without acknowledging them; *last is the last one
 * delivered (0: none), the sink stays COMMITTED after it. It reads the checkpoint only
 * through read transactions, so it may run on another thread than the one writing
 * batches (never two threads on one sink). Failures are as for lk__sink_drain, with
 * *last still naming what was delivered before. The sink must be recovered and READY.
 * lk__sink_acknowledge then records batches <= batch as delivered (a checkpoint write:
 * the batch loop's thread) and returns a COMMITTED sink to READY.
 */
lk_err_t lk__sink_deliver_upto(lk_sink_t *s, lk_store_t *store, uint64_t upto, uint64_t *last,
                               char *errstr, size_t errstr_size);
lk_err_t lk__sink_acknowledge(lk_sink_t *s, lk_store_t *store, uint64_t batch, char *errstr,
                              size_t errstr_size);
/** Oldest batch in the sink's outbox; LK_ERR_NOT_FOUND when it is empty. */
lk_err_t lk__sink_first_pending(lk_sink_t *s, lk_store_t *store, uint64_t *batch,
                                char *errstr, size_t errstr_size);

#endif
