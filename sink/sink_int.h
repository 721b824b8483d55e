/*
 * sink_int.h — the sink interface: how a batch's outbox reaches an external system
 * atomically and fenced (docs/DESIGN.md, "The batch protocol" 5-8 and "Recovery").
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
    X(READY)      /* no delivery in progress */                                            \
    X(BEGUN)      /* a delivery of one batch has started */                                \
    X(PRODUCED)   /* every record of the batch was handed to the external system */        \
    X(COMMITTED)  /* the batch is durable there; the outbox may be acknowledged */         \
    X(FATAL)      /* fenced or unrecoverable: sticky, the sink refuses all work */         \
    X(COMMITTING) /* the commit was sent and did not finish: its outcome is unknown until  \
                     it is resumed (resume_commit), nothing else may be done meanwhile */  \
    X(ABORTING)   /* the abort did not finish: it is called again (with the caller's       \
                     backoff) until it completes; then the batch is delivered again */

typedef enum {
#define LK__TXN_ENUM(n) LK__TXN_##n,
    LK__TXN_STATES(LK__TXN_ENUM)
#undef LK__TXN_ENUM
} lk__txn_state_t;

const char *lk__txn_state_name(lk__txn_state_t s);

typedef struct lk__sink lk__sink_t;

/** One sink of the pipeline delivered by a lk__sink_t: the Kafka sink delivers every Kafka
 * output of the application in one transaction, so it has one member per lk_to_kafka;
 * the other kinds have exactly one. */
typedef struct lk__sink_member {
    char *uid;        /* the pipeline sink's uid: its outbox key and checkpoint fence name */
    char *target;     /* Kafka topic or directory */
    uint64_t records; /* records written in the delivery in progress */
    uint64_t fence;   /* set by recover(): the last batch the external system holds for
                         this member, if it knows more than for the whole sink (0: no) */
    /* scale-out's changelog (DESIGN.md, Scale-out): the stateful operator whose state
     * writes this member delivers (the store captures them into its outbox); NULL: an
     * output of the pipeline */
    char *changelog_of;
    /* a changelog member's operator as this process defines it: kind, state schema
     * version, window definition (NULL: not a window). Written into every progress
     * record ("state") and compared by a handoff with the record it continues: state
     * written under another definition is never restored into this one (DESIGN.md,
     * Scale-out) */
    char *state_kind, *state_window;
    int32_t state_schema;
    /* Kafka: the offset after this member's last record that the attempt in progress had
     * acknowledged by the broker (delivery reports), and that of the last committed
     * delivery, which acknowledging records with the fence (-1: none) */
    int64_t attempt_next, delivered_next;
} lk__sink_member_t;

/** What a sink kind implements. Every operation may assume a valid state (see sink.c). */
typedef struct lk__sink_ops {
    const char *kind; /* "kafka", "files", "stdout" */
    /** Exactly-once kinds fence; stdout does not (documented at-least-once). */
    int exactly_once;
    /** Create clients; must not need the external system to be reachable. */
    lk_err_t (*open)(lk__sink_t *s, const lk_conf_t *conf, char *errstr, size_t errstr_size);
    /**
     * Connect, fence zombies, and report the last batch the external system holds for
     * this sink (*fence = 0: none known). Retriable errors: LK_ERR_KAFKA / LK_ERR_IO.
     */
    lk_err_t (*recover)(lk__sink_t *s, uint64_t *fence, char *errstr, size_t errstr_size);
    lk_err_t (*begin)(lk__sink_t *s, uint64_t batch, char *errstr, size_t errstr_size);
    /** Write one record of member s->members[s->cur]. */
    lk_err_t (*write)(lk__sink_t *s, const lk__out_record_t *r, char *errstr,
                      size_t errstr_size);
    /** Make the batch durable and visible atomically; b is the batch's record (input
     * offsets for Kafka's send_offsets_to_transaction), NULL if no longer kept.
     * LK_ERR_TIMED_OUT: the commit was sent and is still running; its outcome is known
     * only once resume_commit finishes it (the sink goes to COMMITTING). Other
     * retriable errors: the delivery is aborted and done again. */
    lk_err_t (*commit)(lk__sink_t *s, const lk__batch_rec_t *b, char *errstr,
                       size_t errstr_size);
    /** Finish a commit that returned LK_ERR_TIMED_OUT: LK_OK committed, LK_ERR_TIMED_OUT
     * still running, LK_ERR_KAFKA it must be aborted, LK_ERR_FENCED / LK_ERR_FATAL.
     * NULL for kinds whose commit never returns LK_ERR_TIMED_OUT. */
    lk_err_t (*resume_commit)(lk__sink_t *s, char *errstr, size_t errstr_size);
    /** Undo an open delivery (abort the transaction, remove temporary files). LK_OK:
     * done; a retriable error: not finished, call again later (the sink stays ABORTING);
     * LK_ERR_FENCED / LK_ERR_FATAL: the sink stops. */
    lk_err_t (*abort)(lk__sink_t *s, char *errstr, size_t errstr_size);
    void (*close)(lk__sink_t *s);
    /** Scale-out's restore (Kafka; NULL for the other kinds): inside the handoff's
     * checkpoint transaction t, bring the state of every changelog member's operator to
     * the handoff's batch (DESIGN.md, Scale-out). Called by lk__sink_recover only when a
     * handoff is applied; fills s->restore. */
    lk_err_t (*restore)(lk__sink_t *s, lk__store_t *store, lk__store_txn_t *t, char *errstr,
                        size_t errstr_size);
} lk__sink_ops_t;

/** What the last restore did (lk__sink_ops_t.restore), for the log and the metrics. */
typedef struct lk__restore_report {
    int done;          /* a restore ran in this sink's life */
    int full;          /* 1: state cleared and the changelogs read from their start */
    uint64_t read;     /* changelog records read */
    uint64_t applied;  /* of those, applied (the others belong to batches state has) */
    uint64_t cleared;  /* state entries cleared first (full) */
    double seconds;
} lk__restore_report_t;

struct lk__sink {
    const lk__sink_ops_t *ops;
    char *name;   /* for messages: the member's uid, or the members' uids joined by ',' */
    char *target; /* Kafka topic or directory (joined by ',' like name) */
    lk__sink_member_t *members;
    size_t nmembers;
    size_t cur;   /* the member whose records are being written */
    char *format; /* files: "jsonl" or "lines" */
    char *app_id;
    lk__txn_state_t state;
    uint64_t batch;        /* batch of the delivery in progress */
    const lk__batch_rec_t *batch_rec; /* its record during begin/write/commit, NULL if
                                        no longer kept */
    char attempt[17];      /* hex nonce of the delivery attempt (provenance) */
    int recovered;         /* recover() succeeded since open */
    unsigned settle_tries; /* calls of abort / resume_commit for the batch so far */
    void *impl;            /* the kind's own state */
    /* set by the owner (may be NULL): blocking calls give up when *abandon is set (an
     * immediate stop) and end by *deadline_ms (monotonic ms, 0: none; a graceful stop's
     * end), whatever their own timeouts; read from any thread */
    const atomic_int *abandon;
    const _Atomic int64_t *deadline_ms;
    char fatal_msg[512];
    /* checkpoint identity (set by the owner before recover): progress records carry the
     * id; recovery trusts only records of this id (and, for a checkpoint of the older
     * format, records without an id written since it was created) */
    char checkpoint_id[48];
    int64_t checkpoint_created_ms;
    int checkpoint_migrated;  /* migrated from the format without ids by this open */
    int adopt_output;         /* checkpoint.adopt.output */
    int allow_state_drop;     /* topology.allow.state.drop: a handoff from a process whose
                                 pipeline had a stateful operator this one has not */
    uint64_t adopted_after;   /* set by recover with adopt_output: the last batch of the
                                 other checkpoint's output (0: none found) */
    /* scale-out (DESIGN.md, Scale-out), set by the owner before open: task >= 0 makes
     * the Kafka sink task `task`'s (transactional.id <app.id>.<task>, progress partition
     * task) and group_md (an rd_kafka_consumer_group_metadata_t *, owned by the sink from
     * then on, NULL: none) the consumer group's generation its offsets are sent with */
    int task; /* -1: single mode, the application is one task */
    /* the stage after lk_repartition <stage> ("": stage 1): its task p is
     * transactional.id <app.id>.<stage>.<p> writing partition p of <app.id>.<stage>.progress */
    char stage[104];
    void *group_md;
    /* set by the Kafka sink's recover in task mode when another checkpoint (another
     * process) delivered the task's latest batch: the context moves its checkpoint to
     * that progress record's input offsets (lk__store_task_handoff) before any plan */
    int handoff;                 /* 1: handoff_ranges are to be applied */
    uint64_t handoff_batch;      /* that record's batch (the next is numbered after it) */
    char handoff_checkpoint[48]; /* the checkpoint id that wrote it */
    lk__range_t *handoff_ranges; /* topic strings owned (freed with the sink) */
    size_t nhandoff;
    lk__restore_report_t restore; /* set by the handoff's restore (the loop thread) */
    /* the same for lockstep_restore_* (metrics_text.c reads them from the HTTP thread):
     * records applied by full and by tail restores, the last restore's duration */
    atomic_ullong restore_applied_full, restore_applied_tail, restore_us;
    /* deliveries committed / aborted by this process, for lockstep_transactions_total
     * (metrics_text.c reads them from the HTTP thread) */
    atomic_ullong txn_committed, txn_aborted;
};

/**
 * Create a progress topic (compacted, `partitions` partitions) through rk's Admin API,
 * waiting up to timeout_ms: the Kafka sink makes <app.id>.progress with one, the
 * scale-out group with one per task. *existed is 1 when another instance made it
 * meanwhile (not an error). LK_ERR_KAFKA names the topic and librdkafka's reason.
 */
struct rd_kafka_s;
lk_err_t lk__kafka_create_progress_topic(struct rd_kafka_s *rk, const char *topic,
                                         int partitions, int timeout_ms, int *existed,
                                         char *errstr, size_t errstr_size);

/** Publish s->restore (a restore whose handoff committed) to the restore metrics. */
void lk__sink_restore_committed(lk__sink_t *s);

/**
 * Create topic with `partitions` partitions and the topic configs (name, value) through
 * rk's Admin API, waiting up to timeout_ms; what names it in messages ("progress topic",
 * "repartition topic"). *existed is 1 when another instance made it meanwhile (not an
 * error). LK_ERR_KAFKA names the topic, librdkafka's reason and how to create it by hand.
 */
lk_err_t lk__kafka_create_topic(struct rd_kafka_s *rk, const char *what, const char *topic,
                                int partitions, const char *const (*configs)[2],
                                size_t nconfigs, int timeout_ms, int *existed, char *errstr,
                                size_t errstr_size);

/** Forget a handoff (applied, or the sink is going): frees its ranges. */
void lk__sink_clear_handoff(lk__sink_t *s);

extern const lk__sink_ops_t lk__sink_kafka_ops;
extern const lk__sink_ops_t lk__sink_files_ops;
extern const lk__sink_ops_t lk__sink_stdout_ops;

/** Create a sink of a kind with one member (name, target); not yet opened. */
lk__sink_t *lk__sink_new(const lk__sink_ops_t *ops, const char *name, const char *target,
                        const char *format, const char *app_id);
/** Add a member to a sink (before open; Kafka only): its outbox is delivered in the same
 * transaction as the others'. LK_ERR_NOMEM. */
lk_err_t lk__sink_add_member(lk__sink_t *s, const char *uid, const char *target);
/** Add a changelog member (before open; Kafka only): uid its outbox and fence name, topic
 * the changelog topic, state_uid the operator whose state writes it delivers (the store's
 * capture fills its outbox: lk__store_state_changelog). LK_ERR_NOMEM. */
lk_err_t lk__sink_add_changelog(lk__sink_t *s, const char *uid, const char *topic,
                                const char *state_uid);
/** Describe the state of changelog member state_uid's operator (kind, state schema
 * version, window definition or NULL): what its changelog records mean. LK_ERR_NOMEM, or
 * LK_ERR_NOT_FOUND when no member is that operator's changelog. */
lk_err_t lk__sink_changelog_state(lk__sink_t *s, const char *state_uid, const char *kind,
                                  int32_t schema, const char *window);
void lk__sink_destroy(lk__sink_t *s);

/**
 * The one state transition validator, the only writer of s->state: moves s to `to` if
 * the table allows it from the current state. From FATAL (sticky) it refuses with
 * LK_ERR_FATAL and the sink's fatal message. Any other transition the table does not
 * allow is a bug: debug builds assert; release builds (NDEBUG) make the sink FATAL
 * (sticky; its message names both states) and return LK_ERR_STATE naming both states.
 */
lk_err_t lk__sink_transition(lk__sink_t *s, lk__txn_state_t to, char *errstr,
                             size_t errstr_size);
/** Whether the transition table allows from -> to (a query: changes nothing). */
int lk__sink_transition_allowed(lk__txn_state_t from, lk__txn_state_t to);

/**
 * Recover the sink if not yet done: first settle an unfinished commit (resume it;
 * acknowledge its batch if it committed) or abort (call it again), then connect, fence,
 * read its progress, and acknowledge every outbox batch at or below its fence.
 * Retriable errors leave it unrecovered (and COMMITTING / ABORTING if still so).
 */
lk_err_t lk__sink_recover(lk__sink_t *s, lk__store_t *store, char *errstr, size_t errstr_size);

/**
 * Deliver the sink's outbox batches with id <= upto (the last durable batch), oldest
 * first, each atomically, acknowledging each in the checkpoint once committed.
 * *delivered counts the batches delivered. Errors name the sink and the batch.
 * LK_ERR_FENCED / LK_ERR_FATAL leave the sink in FATAL.
 */
lk_err_t lk__sink_drain(lk__sink_t *s, lk__store_t *store, uint64_t upto, size_t *delivered,
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
lk_err_t lk__sink_deliver_upto(lk__sink_t *s, lk__store_t *store, uint64_t upto, uint64_t *last,
                               char *errstr, size_t errstr_size);
lk_err_t lk__sink_acknowledge(lk__sink_t *s, lk__store_t *store, uint64_t batch, char *errstr,
                              size_t errstr_size);
/** Whether the sink may deliver now without recovering first: recovered (its fence
 * read since open or since a failed delivery) and READY (no delivery in progress, no
 * commit or abort left unfinished, not FATAL). For the batch loop, which otherwise
 * recovers the sink (lk__sink_drain) before overlapping delivery with the next batches.
 * Read on the thread that owns the sink while no delivery of it is running. */
int lk__sink_ready(const lk__sink_t *s);
/** Oldest batch in the sink's outbox; LK_ERR_NOT_FOUND when it is empty. */
lk_err_t lk__sink_first_pending(lk__sink_t *s, lk__store_t *store, uint64_t *batch,
                                char *errstr, size_t errstr_size);

/* ---- the Kafka sink's stable-offset wait, behind a seam (unit-tested) ---- */

/** The Kafka calls the wait makes: tests replace them (the mock cluster has no last
 * stable offset). */
typedef struct lk__kafka_offsets_io {
    /** Last stable offset and high watermark of topic[partition]. */
    lk_err_t (*offsets)(void *opaque, const char *topic, int32_t partition, int64_t *lso,
                        int64_t *hwm, char *errstr, size_t errstr_size);
    void (*sleep_ms)(void *opaque, int64_t ms);
    int64_t (*now_ms)(void *opaque);
    void *opaque;
} lk__kafka_offsets_io_t;

/**
 * Wait until no transaction is open on topic[partition] (last stable offset == high
 * watermark), checking with backoff (100 ms doubling to 2 s) and logging each wait
 * ("waiting for an open transaction on <topic>[<p>] ..."). *end = the high watermark to
 * read the partition up to. LK_ERR_TIMED_OUT (retriable) after timeout_ms; the errors of
 * io->offsets otherwise.
 */
lk_err_t lk__kafka_wait_stable(const lk__kafka_offsets_io_t *io, const char *topic,
                               int32_t partition, int64_t timeout_ms, int64_t *end,
                               char *errstr, size_t errstr_size);

/**
 * The producer's batch.size for output topics whose max.message.bytes are limits[0..n)
 * (<= 0: unknown): configured, lowered to fit the smallest limit with a margin for the
 * record batch header. At least 1.
 */
int64_t lk__kafka_batch_size(int64_t configured, const int64_t *limits, size_t n);

#endif
