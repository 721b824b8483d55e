/*
 * receiver_priv.h — what the receiver's own files (receiver.c, receiver_plan.c,
 * receiver_fetch.c) share: the receiver's fields, a partition's fetch state and the
 * helpers over them. Nothing outside connector/receiver*.c includes it: the rest of the
 * engine uses receiver_int.h. DESIGN.md, The batch protocol (items 1-3) and A batch's life.
 */
#ifndef LK_RECEIVER_PRIV_H
#define LK_RECEIVER_PRIV_H

#include "receiver_int.h"

#define LK__KAFKA_TIMEOUT_MS 5000

/* One partition the receiver knows: where its contiguous reads stand, what it holds for
 * the next batch, and what planning last saw of its log. */
typedef struct lk__recv_part {
    const char *topic; /* points into r->topics */
    int32_t partition;
    int64_t cursor; /* -1: unknown, seek before use */
    rd_kafka_message_t **held; /* received past the last range (after a gap) */
    size_t nheld, capheld;
    rd_kafka_queue_t *queue;   /* the partition's own message queue */
    long range; /* index into the current fetch, -1: none */
    int done;
    int64_t eof_at; /* end-of-partition offset reported since the last seek; -1: none */
    int checked;                /* the checkpointed fingerprint was compared (or none) */
    int64_t seen_low, seen_high; /* watermarks at the last plan; -1: none yet */
} lk__recv_part_t;

struct lk__receiver {
    rd_kafka_t *rk;      /* fetches */
    rd_kafka_t *planner; /* metadata and watermarks: its own connections, so planning
                          * never queues behind the fetcher's long-poll requests */
    char **topics;
    rd_kafka_topic_t **prkts; /* topic handles of the planner */
    int task; /* scale-out: only partition `task` of each topic is planned (-1: all) */
    size_t ntopics;
    lk__recv_part_t *parts;
    size_t nparts, capparts;
    int assigned; /* the assignment matches parts[] */
    int64_t max_records, max_bytes, fetch_timeout_ms;
    int auto_latest, skip_loss;
    int64_t last_err_log_ms;
};

/* Destroy the messages p holds for the next batch (its cursor is the caller's to reset). */
void lk__recv_drop_held(lk__recv_part_t *p);
/* Keep m (owned from now on) for the next batch. -1: out of memory, m not taken. */
int lk__recv_hold(lk__recv_part_t *p, rd_kafka_message_t *m);
/* The partition (topic: a pointer into r->topics, compared by name), or NULL. */
lk__recv_part_t *lk__recv_find_part(lk__receiver_t *r, const char *topic, int32_t partition);
/* A new partition, not yet assigned (the next fetch assigns it). NULL: out of memory. */
lk__recv_part_t *lk__recv_add_part(lk__receiver_t *r, const char *topic, int32_t partition);
/* The receiver's own copy of an input topic's name, or NULL when it is not an input. */
const char *lk__recv_own_topic(lk__receiver_t *r, const char *topic);
/* The fingerprint (offset, timestamp, hash of key and value) of a fetched record. */
lk__fingerprint_t lk__recv_fingerprint_of(const rd_kafka_message_t *m);

#endif
