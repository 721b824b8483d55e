/*
 * eos.c — the exactly-once checker (see eos.h).
 */
#define _GNU_SOURCE
#include "eos.h"
#include "mockutil.h"
#include "sink/provenance_int.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t batch;
    char attempt[17];
} committed_t;

static rd_kafka_t *reader(const char *bootstraps) {
    return mu_reader(bootstraps, "eos-checker");
}

/* Read all partitions of topic from the start to the end; cb per message. */
static void read_all(rd_kafka_t *rk, const char *topic,
                     void (*cb)(const rd_kafka_message_t *m, void *o), void *o) {
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md;
    cr_assert_eq(rd_kafka_metadata(rk, 0, rkt, &md, 5000), 0, "metadata %s", topic);
    rd_kafka_topic_destroy(rkt);
    int np = md->topics[0].partition_cnt;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(np ? np : 1);
    int64_t *hi = calloc((size_t)np + 1, sizeof *hi);
    int pending = 0;
    for (int i = 0; i < np; i++) {
        int32_t p = md->topics[0].partitions[i].id;
        int64_t lo;
        cr_assert_eq(rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi[i], 5000), 0);
        if (hi[i] > lo) {
            rd_kafka_topic_partition_list_add(l, topic, p)->offset = lo;
            pending++;
        }
    }
    rd_kafka_metadata_destroy(md);
    cr_assert_eq(rd_kafka_assign(rk, l), 0);
    rd_kafka_topic_partition_list_destroy(l);
    for (int polls = 0; pending > 0 && polls < 3000; polls++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 10);
        if (!m)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
            pending--;
        else if (m->err)
            cr_assert_fail("reading %s: %s", topic, rd_kafka_message_errstr(m));
        else
            cb(m, o);
        rd_kafka_message_destroy(m);
    }
    cr_assert_eq(pending, 0, "could not read %s to its end", topic);
    rd_kafka_assign(rk, NULL);
    free(hi);
}

typedef struct {
    const char *app, *sink;
    committed_t *c; /* indexed by batch */
    uint64_t seen;
} prog_ctx_t;

static void on_progress(const rd_kafka_message_t *m, void *o) {
    prog_ctx_t *p = o;
    json_error_t je;
    json_t *d = json_loadb(m->payload, m->len, 0, &je);
    cr_assert_not_null(d, "progress record is not JSON: %s", je.text);
    json_t *b = json_object_get(d, "batch"), *a = json_object_get(d, "attempt");
    /* one record per batch naming every Kafka sink ("sinks"); older versions wrote one
     * per sink ("sink") */
    json_t *sinks = json_object_get(d, "sinks"), *sink = json_object_get(d, "sink");
    int mine = json_is_object(sinks) ? json_object_get(sinks, p->sink) != NULL
                                     : json_is_string(sink) &&
                                           !strcmp(json_string_value(sink), p->sink);
    if (!strcmp(json_string_value(json_object_get(d, "app")), p->app) && mine) {
        uint64_t batch = (uint64_t)json_integer_value(b);
        cr_assert(batch > 0 && batch < EOS_MAX_BATCHES, "batch %llu", (unsigned long long)batch);
        if (json_is_object(sinks)) {
            /* written by this version (the tests fabricate the older ones): its
             * provenance header names the same batch and attempt, the app and no sink */
            rd_kafka_headers_t *h = NULL;
            lk__prov_t pv;
            cr_assert(!rd_kafka_message_headers(m, &h) && lk__prov_get(h, &pv) &&
                          !pv.old_format,
                      "progress record of batch %llu without a provenance header",
                      (unsigned long long)batch);
            cr_assert(pv.batch == batch && !strcmp(pv.attempt, json_string_value(a)) &&
                          pv.app_len == strlen(p->app) && !memcmp(pv.app, p->app, pv.app_len) &&
                          pv.sink_len == 0,
                      "progress record of batch %llu attempt %s: provenance says batch %llu "
                      "attempt %s app '%.*s' sink '%.*s'",
                      (unsigned long long)batch, json_string_value(a),
                      (unsigned long long)pv.batch, pv.attempt, (int)pv.app_len, pv.app,
                      (int)pv.sink_len, pv.sink);
        }
        p->c[batch].batch = batch; /* the last record of a batch wins */
        snprintf(p->c[batch].attempt, sizeof p->c[batch].attempt, "%s", json_string_value(a));
        p->seen++;
    }
    json_decref(d);
}

typedef struct {
    const char *app, *sink;
    eos_report_t *r;
    committed_t *c;
    uint64_t *key_batch; /* [EOS_MAX_KEYS] latest batch per key */
    unsigned char *in_batch; /* [EOS_MAX_BATCHES * EOS_MAX_KEYS] seen key in batch */
} out_ctx_t;

static void on_output(const rd_kafka_message_t *m, void *o) {
    out_ctx_t *x = o;
    rd_kafka_headers_t *h = NULL;
    lk__prov_t pv;
    if (rd_kafka_message_headers(m, &h) || !lk__prov_get(h, &pv)) {
        x->r->no_provenance++;
        return;
    }
    /* every fact of the header is checked: app and sink here, batch and attempt against
     * the attempts the progress records committed */
    cr_assert(!pv.old_format, "a record with the four provenance headers of older versions");
    cr_assert(pv.app_len == strlen(x->app) && !memcmp(pv.app, x->app, pv.app_len) &&
                  pv.sink_len == strlen(x->sink) && !memcmp(pv.sink, x->sink, pv.sink_len),
              "a record of batch %llu names app '%.*s' sink '%.*s', not '%s' '%s'",
              (unsigned long long)pv.batch, (int)pv.app_len, pv.app, (int)pv.sink_len,
              pv.sink, x->app, x->sink);
    const char *attempt = pv.attempt;
    uint64_t batch = pv.batch;
    cr_assert(batch > 0 && batch < EOS_MAX_BATCHES);
    if (!x->c[batch].batch || strcmp(x->c[batch].attempt, attempt)) {
        x->r->foreign++;
        return;
    }
    x->r->records++;
    char key[64];
    cr_assert(m->key_len < sizeof key);
    memcpy(key, m->key, m->key_len);
    key[m->key_len] = 0;
    size_t k;
    for (k = 0; k < x->r->nkeys && strcmp(x->r->keys[k], key); k++)
        ;
    if (k == x->r->nkeys) {
        cr_assert(k < EOS_MAX_KEYS);
        snprintf(x->r->keys[k], sizeof x->r->keys[k], "%s", key);
        x->r->nkeys++;
    }
    if (x->in_batch[batch * EOS_MAX_KEYS + k]++)
        x->r->dup_keys++;
    if (batch >= x->key_batch[k] && m->len == 8) {
        x->key_batch[k] = batch;
        memcpy(&x->r->last_value[k], m->payload, 8);
    }
}

void eos_read(const char *bootstraps, const char *app, const char *sink, const char *topic,
              eos_report_t *r) {
    memset(r, 0, sizeof *r);
    committed_t *c = calloc(EOS_MAX_BATCHES, sizeof *c);
    rd_kafka_t *rk = reader(bootstraps);
    char progress[256];
    snprintf(progress, sizeof progress, "%s.progress", app);
    prog_ctx_t p = {app, sink, c, 0};
    read_all(rk, progress, on_progress, &p);
    r->progress_records = p.seen;
    for (uint64_t b = 1; b < EOS_MAX_BATCHES; b++)
        if (c[b].batch) {
            if (!r->first)
                r->first = b;
            r->last = b;
            r->batches++;
        }
    if (r->batches)
        r->gaps = r->last - r->first + 1 - r->batches;
    uint64_t key_batch[EOS_MAX_KEYS] = {0};
    unsigned char *in_batch = calloc((size_t)EOS_MAX_BATCHES * EOS_MAX_KEYS, 1);
    out_ctx_t x = {app, sink, r, c, key_batch, in_batch};
    read_all(rk, topic, on_output, &x);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    free(in_batch);
    free(c);
}

int64_t eos_value(const eos_report_t *r, const char *key) {
    for (size_t k = 0; k < r->nkeys; k++)
        if (!strcmp(r->keys[k], key))
            return r->last_value[k];
    return -1;
}
