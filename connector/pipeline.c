/*
 * pipeline.c — defining pipelines: the public builder API (lk_kafka_stream, lk_map,
 * lk_filter, lk_reduce_by_key, lk_update_state_by_key, lk_foreach_batch, the lk_to_*
 * sinks, broadcasts) and what the context asks of a defined pipeline at start (its
 * topology record, its input topics, its state databases). Stages are kept in definition
 * order, which is a topological order since a stage can only be built from an existing
 * one. Executing a batch through the stages is pipeline_batch.c. DESIGN.md, Layout and
 * The checkpoint (the topology record).
 */
#define _GNU_SOURCE
#include "pipeline_priv.h"
#include "window_int.h"
#include "../core/util_int.h"
#include "../sink/sink_int.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- definition ---- */

const char *lk__stage_kind_name(lk__stage_kind_t k) {
    switch (k) {
    case LK__ST_SOURCE: return "kafka_stream";
    case LK__ST_MAP: return "map";
    case LK__ST_FLAT_MAP: return "flat_map";
    case LK__ST_FILTER: return "filter";
    case LK__ST_REDUCE: return "reduce_by_key";
    case LK__ST_UPDATE: return "update_state_by_key";
    case LK__ST_FOREACH: return "foreach_batch";
    case LK__ST_OUTBOX: return "outbox";
    case LK__ST_WINDOW: return "reduce_by_key_and_window";
    case LK__ST_SIDE: return "window_late";
    case LK__ST_REPARTITION: return "repartition";
    }
    return "?";
}

lk_pipeline_t *lk__pipeline_new(void) {
    return calloc(1, sizeof(lk_pipeline_t));
}

void lk__stage_free(lk_stream_t *s) {
    free(s->uid);
    free(s->children);
    for (size_t i = 0; i < s->ntopics; i++)
        free(s->topics[i]);
    free(s->topics);
    free(s->params);
    free(s->target);
    free(s->format);
    lk__kv_free(&s->kv);
    free(s->recs);
    free(s->scan_key);
    free(s->scan_next);
    lk__window_free(s->win);
    free(s);
}

void lk__pipeline_destroy(lk_pipeline_t *p) {
    if (!p)
        return;
    for (size_t i = 0; i < p->nstages; i++)
        lk__stage_free(p->stages[i]);
    free(p->stages);
    for (size_t i = 0; i < p->nbcs; i++) {
        lk_broadcast_t *b = p->bcs[i];
        if (b->destroy && b->value)
            b->destroy(b->value);
        free(b->name);
        free(b);
    }
    free(p->bcs);
    free(p);
}

void lk_pipeline_fail(lk_pipeline_t *p, const char *fmt, ...) {
    if (!p || p->failed)
        return;
    va_list ap;
    va_start(ap, fmt);
    lk__vfmt(p->err, sizeof p->err, fmt, ap);
    va_end(ap);
    p->failed = 1;
}

static int uid_ok(lk_pipeline_t *p, const char *uid) {
    if (!uid || !uid[0]) {
        lk_pipeline_fail(p, "an operator has no uid");
        return 0;
    }
    if (strlen(uid) > 200) {
        lk_pipeline_fail(p, "operator uid '%.40s...' is longer than 200 characters", uid);
        return 0;
    }
    for (size_t i = 0; i < p->nstages; i++)
        if (!strcmp(p->stages[i]->uid, uid)) {
            lk_pipeline_fail(p, "operator uid '%s' is used twice; uids must be unique", uid);
            return 0;
        }
    return 1;
}

/* ptr, an allocation just made; when NULL the pipeline fails with "out of memory". Every
 * array here grows by one element: pipelines are built once and are small. */
static void *or_oom(lk_pipeline_t *p, void *ptr) {
    if (!ptr)
        lk_pipeline_fail(p, "out of memory");
    return ptr;
}

static lk_stream_t *add_stage(lk_pipeline_t *p, lk_stream_t *parent, lk__stage_kind_t kind,
                              const char *uid, const char *params) {
    if (!p || p->failed)
        return NULL;
    if (!uid_ok(p, uid))
        return NULL;
    lk_stream_t **st = or_oom(p, realloc(p->stages, (p->nstages + 1) * sizeof *st));
    if (!st)
        return NULL;
    p->stages = st;
    lk_stream_t *s = or_oom(p, calloc(1, sizeof *s));
    if (!s)
        return NULL;
    s->p = p;
    s->kind = kind;
    s->uid = strdup(uid);
    s->params = strdup(params ? params : "");
    s->db = -1;
    if (parent) {
        lk_stream_t **c =
            or_oom(p, realloc(parent->children, (parent->nchildren + 1) * sizeof *c));
        if (!c) {
            lk__stage_free(s);
            return NULL;
        }
        parent->children = c;
        c[parent->nchildren++] = s;
        s->parent = parent;
    }
    p->stages[p->nstages++] = s;
    return s;
}

/* A stage derived from `in`: checks in and fn, then adds. */
static lk_stream_t *derive(lk_stream_t *in, lk__stage_kind_t kind, const char *uid,
                           const void *fn, void *opaque, const char *what) {
    if (!in)
        return NULL; /* the pipeline already records why */
    if (!fn) {
        lk_pipeline_fail(in->p, "%s '%s': no function given", what, uid ? uid : "");
        return NULL;
    }
    lk_stream_t *s = add_stage(in->p, in, kind, uid, NULL);
    if (s)
        s->opaque = opaque;
    return s;
}

lk_stream_t *lk__stage_derive(lk_stream_t *in, lk__stage_kind_t kind, const char *uid,
                              const void *fn, void *opaque, const char *what) {
    return derive(in, kind, uid, fn, opaque, what);
}

lk_stream_t *lk_kafka_stream(lk_pipeline_t *p, const char *topics) {
    if (!p || p->failed)
        return NULL;
    if (!topics || !topics[0]) {
        lk_pipeline_fail(p, "lk_kafka_stream: no topic given");
        return NULL;
    }
    /* The source's uid is "kafka:<topics>" (what checkpoints already record). A list
     * too long for a uid (200 characters) keeps its first 160 characters and adds a hash
     * of the whole list, so any valid list works and two lists never share a uid. The
     * parameters keep the whole list. */
    char uid[201];
    if (strlen(topics) + 6 <= 200) {
        lk__fmt(uid, sizeof uid, "kafka:%s", topics);
    } else {
        uint64_t h = 1469598103934665603ULL; /* FNV-1a 64 */
        for (const unsigned char *c = (const unsigned char *)topics; *c; c++)
            h = (h ^ *c) * 1099511628211ULL;
        lk__fmt(uid, sizeof uid, "kafka:%.160s...#%016llx", topics, (unsigned long long)h);
    }
    char *params = NULL;
    if (asprintf(&params, "topics=%s", topics) < 0) {
        lk_pipeline_fail(p, "out of memory");
        return NULL;
    }
    lk_stream_t *s = add_stage(p, NULL, LK__ST_SOURCE, uid, params);
    free(params);
    if (!s)
        return NULL;
    char *copy = strdup(topics);
    for (char *save = NULL, *t = strtok_r(copy, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        for (const char *c = t; *c; c++)
            if (!(*c >= 'a' && *c <= 'z') && !(*c >= 'A' && *c <= 'Z') &&
                !(*c >= '0' && *c <= '9') && *c != '.' && *c != '_' && *c != '-') {
                lk_pipeline_fail(p, "lk_kafka_stream: invalid topic name '%s'", t);
                free(copy);
                return NULL;
            }
        char **n = or_oom(p, realloc(s->topics, (s->ntopics + 1) * sizeof *n));
        if (!n) {
            free(copy);
            return NULL;
        }
        s->topics = n;
        s->topics[s->ntopics++] = strdup(t);
    }
    free(copy);
    if (!s->ntopics) {
        lk_pipeline_fail(p, "lk_kafka_stream: no topic in '%s'", topics);
        return NULL;
    }
    return s;
}

lk_stream_t *lk_map(lk_stream_t *in, const char *uid, lk_map_fn *fn, void *opaque) {
    lk_stream_t *s = derive(in, LK__ST_MAP, uid, (const void *)fn, opaque, "map");
    if (s)
        s->fn.map = fn;
    return s;
}

lk_stream_t *lk_flat_map(lk_stream_t *in, const char *uid, lk_map_fn *fn, void *opaque) {
    lk_stream_t *s = derive(in, LK__ST_FLAT_MAP, uid, (const void *)fn, opaque, "flat_map");
    if (s)
        s->fn.map = fn;
    return s;
}

lk_stream_t *lk_filter(lk_stream_t *in, const char *uid, lk_filter_fn *fn, void *opaque) {
    lk_stream_t *s = derive(in, LK__ST_FILTER, uid, (const void *)fn, opaque, "filter");
    if (s)
        s->fn.filter = fn;
    return s;
}

lk_stream_t *lk_reduce_by_key(lk_stream_t *in, const char *uid, lk_reduce_fn *fn,
                              void *opaque) {
    lk_stream_t *s = derive(in, LK__ST_REDUCE, uid, (const void *)fn, opaque, "reduce_by_key");
    if (s)
        s->fn.reduce = fn;
    return s;
}

lk_stream_t *lk_update_state_by_key(lk_stream_t *in, const char *uid, int schema_version,
                                    lk_update_fn *fn, void *opaque) {
    if (in && schema_version < 1) {
        lk_pipeline_fail(in->p, "update_state_by_key '%s': schema_version must be >= 1",
                         uid ? uid : "");
        return NULL;
    }
    lk_stream_t *s =
        derive(in, LK__ST_UPDATE, uid, (const void *)fn, opaque, "update_state_by_key");
    if (s) {
        s->fn.update = fn;
        s->schema_version = schema_version;
    }
    return s;
}

void lk_state_ttl(lk_stream_t *s, int64_t ttl_ms) {
    if (!s)
        return;
    if (s->kind != LK__ST_UPDATE || ttl_ms < 0) {
        lk_pipeline_fail(s->p, "lk_state_ttl('%s'): %s", s->uid,
                         ttl_ms < 0 ? "negative TTL" : "not an update_state_by_key operator");
        return;
    }
    s->ttl_ms = ttl_ms;
    s->ttl_set = 1;
}

void lk_foreach_batch(lk_stream_t *in, const char *uid, lk_foreach_batch_fn *fn,
                      void *opaque) {
    lk_stream_t *s = derive(in, LK__ST_FOREACH, uid, (const void *)fn, opaque, "foreach_batch");
    if (s)
        s->fn.foreach = fn;
}

static lk_stream_t *add_sink(lk_stream_t *in, const char *uid, const lk__sink_ops_t *ops,
                             const char *target, const char *format) {
    if (!in)
        return NULL;
    if (!target || !target[0]) {
        lk_pipeline_fail(in->p, "sink '%s': no %s given", uid ? uid : "",
                         ops == &lk__sink_files_ops ? "directory" : "topic");
        return NULL;
    }
    if (uid && (strlen(uid) > 180 || strpbrk(uid, " \t/"))) {
        /* the uid becomes part of a transactional.id and of key names */
        lk_pipeline_fail(in->p, "sink uid '%s': at most 180 characters, no spaces or '/'",
                         uid);
        return NULL;
    }
    char params[1200];
    if (format && format[0])
        lk__fmt(params, sizeof params, "target=%s,format=%s", target, format);
    else
        lk__fmt(params, sizeof params, "target=%s", target);
    lk_stream_t *s = add_stage(in->p, in, LK__ST_OUTBOX, uid, params);
    if (!s)
        return NULL;
    s->sink_ops = ops;
    s->target = strdup(target);
    s->format = format ? strdup(format) : NULL;
    if (!s->target || (format && !s->format))
        lk_pipeline_fail(in->p, "out of memory");
    return s;
}

lk_stream_t *lk_to_kafka(lk_stream_t *in, const char *uid, const char *topic) {
    return add_sink(in, uid, &lk__sink_kafka_ops, topic, NULL);
}

lk_stream_t *lk_repartition(lk_stream_t *in, const char *uid) {
    if (!in)
        return NULL;
    /* the uid names Kafka topics and a transactional id in group.mode=consumer
     * (<app.id>.<uid>.repartition): refused here in every mode, so a pipeline that runs
     * in one process runs scaled out too */
    if (uid && (strlen(uid) > 100 || strspn(uid, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                 "0123456789._-") != strlen(uid))) {
        lk_pipeline_fail(in->p, "lk_repartition '%.120s': the uid names Kafka topics "
                         "(<app.id>.<uid>.repartition): at most 100 characters of "
                         "a-z A-Z 0-9 . _ -",
                         uid);
        return NULL;
    }
    return add_stage(in->p, in, LK__ST_REPARTITION, uid, NULL);
}

/* The directory a file sink writes to, for comparing sinks: the real path when it
 * exists, else the text with repeated and trailing '/' and "./" parts removed. */
static char *dir_identity(const char *dir) {
    char *real = realpath(dir, NULL);
    if (real)
        return real;
    char *n = malloc(strlen(dir) + 1), *o = n;
    if (!n)
        return NULL;
    for (const char *c = dir; *c;) {
        if (c[0] == '.' && c[1] == '/' && (c == dir || c[-1] == '/')) {
            c += 2;
            continue;
        }
        if (*c == '/' && o > n && o[-1] == '/') {
            c++;
            continue;
        }
        *o++ = *c++;
    }
    while (o > n + 1 && o[-1] == '/')
        o--;
    *o = '\0';
    return n;
}

lk_stream_t *lk_to_files(lk_stream_t *in, const char *uid, const char *dir,
                         const char *format) {
    if (in && (!format || (strcmp(format, "jsonl") && strcmp(format, "lines")))) {
        lk_pipeline_fail(in->p, "sink '%s': file format '%s' is not jsonl or lines",
                         uid ? uid : "", format ? format : "(null)");
        return NULL;
    }
    /* two file sinks in one directory: their files would mix (and, before file names
     * carried the sink uid, overwrite each other), so each sink gets a directory */
    if (in && !in->p->failed && dir && dir[0]) {
        char *me = dir_identity(dir);
        for (size_t i = 0; me && i < in->p->nstages; i++) {
            const lk_stream_t *o = in->p->stages[i];
            if (o->kind != LK__ST_OUTBOX || o->sink_ops != &lk__sink_files_ops)
                continue;
            char *other = dir_identity(o->target);
            int same = other && !strcmp(me, other);
            free(other);
            if (same) {
                lk_pipeline_fail(in->p, "sinks '%s' and '%s' both write files to %s; give "
                                 "each file sink (output.dir, errors.deadletter=file:...) a "
                                 "directory of its own",
                                 o->uid, uid ? uid : "", dir);
                free(me);
                return NULL;
            }
        }
        if (!me) {
            lk_pipeline_fail(in->p, "out of memory");
            return NULL;
        }
        free(me);
    }
    return add_sink(in, uid, &lk__sink_files_ops, dir, format);
}

lk_stream_t *lk_to_stdout(lk_stream_t *in, const char *uid) {
    return add_sink(in, uid, &lk__sink_stdout_ops, "stdout", NULL);
}

void lk_sink_keep_partition(lk_stream_t *sink) {
    if (!sink)
        return;
    if (sink->kind != LK__ST_OUTBOX) {
        lk_pipeline_fail(sink->p, "lk_sink_keep_partition('%s'): not a sink", sink->uid);
        return;
    }
    sink->keep_partition = 1;
    /* part of the sink's identity: records already in the outbox were partitioned
     * the other way */
    char *params = NULL;
    if (asprintf(&params, "%s,partition=keep", sink->params) < 0) {
        lk_pipeline_fail(sink->p, "out of memory");
        return;
    }
    free(sink->params);
    sink->params = params;
}

const char *lk__stage_name(const lk_stream_t *s) {
    if (s->kind == LK__ST_WINDOW)
        return lk__window_kind(s);
    if (s->kind == LK__ST_OUTBOX && s->sink_ops) {
        if (s->sink_ops == &lk__sink_kafka_ops)
            return "to_kafka";
        if (s->sink_ops == &lk__sink_files_ops)
            return "to_files";
        return "to_stdout";
    }
    return lk__stage_kind_name(s->kind);
}

lk_broadcast_t *lk_broadcast(lk_pipeline_t *p, const char *name, void *(*build)(void *),
                             void (*destroy)(void *), void *opaque) {
    if (!p || p->failed)
        return NULL;
    if (!name || !build) {
        lk_pipeline_fail(p, "lk_broadcast: name and build function are required");
        return NULL;
    }
    lk_broadcast_t **n = or_oom(p, realloc(p->bcs, (p->nbcs + 1) * sizeof *n));
    if (!n)
        return NULL;
    p->bcs = n;
    lk_broadcast_t *b = or_oom(p, calloc(1, sizeof *b));
    if (!b)
        return NULL;
    b->name = strdup(name);
    b->build = build;
    b->destroy = destroy;
    b->opaque = opaque;
    p->bcs[p->nbcs++] = b;
    return b;
}

void *lk_broadcast_value(const lk_broadcast_t *bc) {
    return bc ? bc->value : NULL;
}

lk_err_t lk__pipeline_build_broadcasts(lk_pipeline_t *p, char *errstr, size_t errstr_size) {
    for (size_t i = 0; i < p->nbcs; i++) {
        lk_broadcast_t *b = p->bcs[i];
        if (!(b->value = b->build(b->opaque)))
            return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size,
                           "broadcast '%s': build function returned NULL", b->name);
    }
    return LK_OK;
}

size_t lk__pipeline_topology(const lk_pipeline_t *p, lk__topo_op_t *out, size_t cap) {
    size_t n = 0;
    for (size_t i = 0; i < p->nstages && n < cap; i++) {
        const lk_stream_t *s = p->stages[i];
        out[n++] = (lk__topo_op_t){s->uid, lk__stage_name(s), s->schema_version, s->params};
    }
    return n;
}

size_t lk__pipeline_topics(const lk_pipeline_t *p, const char **out, size_t cap) {
    size_t n = 0;
    for (size_t i = 0; i < p->nstages; i++) {
        const lk_stream_t *s = p->stages[i];
        for (size_t t = 0; s->kind == LK__ST_SOURCE && t < s->ntopics; t++) {
            size_t j;
            for (j = 0; j < n && strcmp(out[j], s->topics[t]); j++)
                ;
            if (j == n && n < cap)
                out[n++] = s->topics[t];
        }
    }
    return n;
}

lk_err_t lk__pipeline_open_state(lk_pipeline_t *p, lk__store_t *st, char *errstr,
                                 size_t errstr_size) {
    for (size_t i = 0; i < p->nstages; i++)
        if (p->stages[i]->kind == LK__ST_UPDATE || p->stages[i]->kind == LK__ST_WINDOW) {
            lk_err_t e =
                lk__store_state_open(st, p->stages[i]->uid, &p->stages[i]->db, errstr, errstr_size);
            if (e)
                return e;
        }
    return LK_OK;
}
