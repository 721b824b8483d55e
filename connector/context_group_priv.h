/*
 * context_group_priv.h — what context_group.c (membership, tasks, rebalance) and
 * context_group_topics.c (the checks before anything is created: the pipeline, the task
 * topics, checkpoint.dir) share (DESIGN.md, Scale-out).
 */
#ifndef LK_CONTEXT_GROUP_PRIV_H
#define LK_CONTEXT_GROUP_PRIV_H

#include "context_priv.h"

#include <librdkafka/rdkafka.h>

/* metadata and admin requests of the group (ms) */
#define GROUP_TIMEOUT_MS 30000
/* the step in which the start waits for a reachable broker, asking whether to stop (ms) */
#define METADATA_STEP_MS 200

typedef struct {
    int p, stage;      /* task p of stage (0: the inputs'; s > 0: after stages[s]) */
    lk_context_t *ctx; /* NULL: not running here */
    pthread_t thread;
    atomic_int done; /* its batch loop returned (result in err) */
    lk_err_t err;
} task_t;

struct lk__group {
    lk_context_t *parent;
    lk_define_fn *define;
    void *opaque;
    char **topics; /* the inputs (ninputs), then once joined the repartition topics */
    size_t ntopics, ninputs;
    struct task_topic *tts; /* the topics with one partition per task (lk__group_find_stages) */
    size_t ntt;
    int ntasks;
    char **stages; /* stage s > 0 runs after lk_repartition stages[s]; stages[0] NULL */
    int nstages;
    rd_kafka_t *rk; /* the membership consumer */
    int closed;     /* rd_kafka_consumer_close was called */
    task_t *tasks;  /* ntasks * nstages slots: task p of stage s at s * ntasks + p */
    lk_err_t err;   /* the first error (a task's, or the group's own), with errstr */
    char errstr[1024];
    pthread_mutex_t progress_lock; /* tasks report progress one at a time */
};

/* The topics with one partition per task: <app.id>.progress, per lk_repartition <uid>
 * its stage's <app.id>.<uid>.progress and <app.id>.<uid>.repartition, and per stateful
 * operator <uid> its <app.id>.<uid>.changelog. */
typedef enum { TT_PROGRESS, TT_REPARTITION, TT_CHANGELOG } task_topic_kind_t;
typedef struct task_topic {
    char topic[512];
    const char *uid; /* the lk_repartition's or the operator's; NULL: stage 1's progress */
    task_topic_kind_t kind;
} task_topic_t;

/** The pipeline scales out: Kafka sinks only, no windowed built-in, valid uids for topic
 * names. LK_ERR_CONF_INVALID naming what to change. */
lk_err_t lk__group_check_pipeline(const lk_context_t *ctx, char *errstr, size_t errstr_size);
/** checkpoint.dir is not a checkpoint of group.mode=single. LK_ERR_CONF_INVALID. */
lk_err_t lk__group_check_dir(const char *dir, char *errstr, size_t errstr_size);
/** The stages and the task topics (*tts malloc'ed, *ntt of them). */
lk_err_t lk__group_find_stages(lk__group_t *g, const char *app, task_topic_t **tts,
                               size_t *ntt, char *errstr, size_t errstr_size);
/** Whether a stop was asked of the group's context (lk__nap_ms's wake-up test). */
int lk__group_stop_asked(const void *o);
/** The task count (g->ntasks), the topics' policies, every task topic made or checked
 * and listed in the metadata. LK_ERR_KAFKA (retried by the caller), LK_ERR_CONF_INVALID,
 * LK_ERR_TOPOLOGY, LK_ERR_NOMEM. */
lk_err_t lk__group_check_topics(lk__group_t *g, char *errstr, size_t errstr_size);

#endif
