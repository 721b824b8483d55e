/*
 * pipeline_repartition.c — lk_repartition's two shapes (DESIGN.md, Scale-out: stage 2).
 * In one context it is a pass-through (pipeline_batch.c); for group.mode=consumer the
 * pipeline is cut at each lk_repartition into stages, and each task context keeps only
 * its stage's operators (lk__pipeline_cut): the repartition stages that end its segment
 * become Kafka sinks writing <app.id>.<uid>.repartition, partition = Kafka's default
 * partitioner of the key (lk__repartition_partition, murmur2 as librdkafka's
 * murmur2_random and the Java client compute it), and the repartition stage that starts
 * it becomes its source, reading that topic. Everything else of the engine (the batch
 * protocol, the one Kafka transaction per batch, the handoff) is the same for every
 * stage, which is why a stage is a task context like stage 1's.
 */
#define _GNU_SOURCE
#include "pipeline_priv.h"
#include "../core/util_int.h"
#include "../sink/sink_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint32_t lk__murmur2(const void *key, size_t len) {
    /* Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2; librdkafka's
     * rd_murmur2): MurmurHash2 with seed 0x9747b28c, little-endian 4-byte words */
    const uint32_t seed = 0x9747b28c, m = 0x5bd1e995;
    const int r = 24;
    const unsigned char *d = key;
    uint32_t h = seed ^ (uint32_t)len;
    size_t words = len / 4;
    for (size_t i = 0; i < words; i++) {
        const unsigned char *w = d + i * 4;
        uint32_t k = (uint32_t)w[0] | (uint32_t)w[1] << 8 | (uint32_t)w[2] << 16 |
                     (uint32_t)w[3] << 24;
        k *= m;
        k ^= k >> r;
        k *= m;
        h *= m;
        h ^= k;
    }
    const unsigned char *tail = d + words * 4;
    switch (len & 3) {
    case 3: h ^= (uint32_t)tail[2] << 16; /* fall through */
    case 2: h ^= (uint32_t)tail[1] << 8;  /* fall through */
    case 1:
        h ^= tail[0];
        h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

int32_t lk__repartition_partition(const void *key, size_t len, int32_t n, int32_t null_to) {
    if (!key) /* no key to route by: it stays in its task (deterministic, keeps order) */
        return null_to;
    return (int32_t)((lk__murmur2(key, len) & 0x7fffffff) % (uint32_t)n);
}

size_t lk__pipeline_repartitions(const lk_pipeline_t *p, const char **uids, size_t cap) {
    size_t n = 0;
    for (size_t i = 0; i < p->nstages; i++)
        if (p->stages[i]->kind == LK__ST_REPARTITION) {
            if (n < cap)
                uids[n] = p->stages[i]->uid;
            n++;
        }
    return n;
}

void lk__repartition_topic(char *buf, size_t size, const char *app, const char *uid) {
    lk__fmt(buf, size, "%s.%s.repartition", app, uid);
}

static size_t index_of(const lk_pipeline_t *p, const lk_stream_t *s) {
    for (size_t i = 0; i < p->nstages; i++)
        if (p->stages[i] == s)
            return i;
    return SIZE_MAX; /* not reached: a parent is always an earlier stage */
}

/* A repartition stage turned into the Kafka sink writing its topic. */
static lk_err_t make_writer(lk_stream_t *s, const char *topic, int task, int ntasks,
                            char *errstr, size_t errstr_size) {
    char *params = NULL, *target = strdup(topic);
    if (!target || asprintf(&params, "target=%s,partition=key", topic) < 0) {
        free(target);
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    }
    free(s->params);
    s->params = params;
    s->target = target;
    s->kind = LK__ST_OUTBOX;
    s->sink_ops = &lk__sink_kafka_ops;
    s->repart_n = ntasks;
    s->repart_task = task;
    s->nchildren = 0; /* the next stage's, freed with it */
    return LK_OK;
}

/* The repartition stage starting the segment turned into its source. */
static lk_err_t make_source(lk_stream_t *s, const char *topic, char *errstr,
                            size_t errstr_size) {
    char *params = NULL;
    char **topics = calloc(1, sizeof *topics);
    if (!topics || !(topics[0] = strdup(topic)) || asprintf(&params, "topics=%s", topic) < 0) {
        if (topics)
            free(topics[0]);
        free(topics);
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    }
    free(s->params);
    s->params = params;
    s->topics = topics;
    s->ntopics = 1;
    s->kind = LK__ST_SOURCE;
    s->parent = NULL; /* freed with the previous segment */
    return LK_OK;
}

lk_err_t lk__pipeline_cut(lk_pipeline_t *p, const char *stage, const char *app, int task,
                          int ntasks, char *errstr, size_t errstr_size) {
    size_t n = p->nstages;
    /* seg[i]: the repartition stage whose segment stage i is in (NULL: the input's) */
    const lk_stream_t **seg = calloc(n ? n : 1, sizeof *seg);
    if (!seg)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    const lk_stream_t *root = NULL;
    for (size_t i = 0; i < n; i++) {
        const lk_stream_t *s = p->stages[i], *par = s->parent;
        seg[i] = !par ? NULL : par->kind == LK__ST_REPARTITION ? par : seg[index_of(p, par)];
        if (stage && s->kind == LK__ST_REPARTITION && !strcmp(s->uid, stage))
            root = s;
    }
    if (stage && !root) {
        free(seg);
        return lk__err(LK_ERR_TOPOLOGY, errstr, errstr_size,
                       "the pipeline has no lk_repartition '%s'", stage);
    }
    lk_err_t e = LK_OK;
    size_t kept = 0;
    char topic[512];
    for (size_t i = 0; i < n; i++) {
        lk_stream_t *s = p->stages[i];
        int keep = seg[i] == root || s == root;
        if (!keep) {
            lk__stage_free(s);
            continue;
        }
        if (!e && s->kind == LK__ST_REPARTITION) {
            lk__repartition_topic(topic, sizeof topic, app, s->uid);
            e = s == root ? make_source(s, topic, errstr, errstr_size)
                          : make_writer(s, topic, task, ntasks, errstr, errstr_size);
        }
        p->stages[kept++] = s;
    }
    p->nstages = kept;
    free(seg);
    return e;
}
