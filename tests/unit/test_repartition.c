/*
 * test_repartition.c — lk_repartition (DESIGN.md, Scale-out: stage 2) below the
 * processes: the partition of a key is Kafka's (the Java client's murmur2 vectors, and
 * librdkafka's murmur2_random partitioner for random keys and partition counts); in one
 * context the operator is a pass-through (a word count with and without it writes the
 * same outbox, batch by batch, and its topology records it); the cut of a
 * group.mode=consumer pipeline into its stages (which operators each stage keeps, the
 * stage-1 writer routing by key into the outbox, the stage-2 source reading the topic);
 * the refusal of a uid that cannot name a topic; and the built-in pipelines' shape in
 * group mode (lk_repartition in front of their keyed operator). The two-process tests are in
 * tests/mock/test_repartition.c.
 */
#define _GNU_SOURCE
#include "testutil.h"
#include "cli/builtin.h"
#include "connector/pipeline_int.h"
#include "sink/sink_int.h"

#include <criterion/criterion.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

TestSuite(repartition, .init = tu_scratch_init, .fini = tu_scratch_fini, .timeout = 120);

/* librdkafka's src/rdmurmur2.c unit test, java_murmur2_results: what the Java client's
 * Utils.murmur2 gives */
Test(repartition, murmur2_is_the_java_clients) {
    const char *unaligned = "PreAmbleWillBeRemoved,ThePrePartThatIs";
    const struct {
        const char *key;
        uint32_t h;
    } v[] = {{"kafka", 0xd067cf64},     {"giberish123456789", 0x8f552b0c},
             {"1234", 0x9fc97b14},      {"234", 0xe7c009ca},
             {"34", 0x873930da},        {"4", 0x5a4b5ca1},
             {unaligned, 0x78424f1c},   {unaligned + 1, 0x4a62b377},
             {unaligned + 2, 0xe0e4e09e}, {unaligned + 3, 0x62b8b43f},
             {"", 0x106e08d9}};
    for (size_t i = 0; i < sizeof v / sizeof *v; i++)
        cr_assert_eq(lk__murmur2(v[i].key, strlen(v[i].key)), v[i].h, "murmur2(\"%s\") = %08x",
                     v[i].key, lk__murmur2(v[i].key, strlen(v[i].key)));
}

Test(repartition, a_keys_partition_is_librdkafkas_murmur2_random) {
    unsigned char key[64];
    for (int i = 0; i < 20000; i++) {
        size_t len = (size_t)(i % 60);
        tu_fill(key, len, (uint64_t)i);
        int32_t n = 1 + i % 37;
        int32_t want =
            rd_kafka_msg_partitioner_murmur2_random(NULL, key, len, n, NULL, NULL);
        cr_assert_eq(lk__repartition_partition(key, len, n, 0), want,
                     "key %d (%zu bytes) of %d partitions", i, len, (int)n);
    }
    /* no key: it stays with its task */
    cr_assert_eq(lk__repartition_partition(NULL, 0, 8, 5), 5);
}

/* ---- single mode: a pass-through ---- */

static void split(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    const char *s = in->value, *end = s + in->value_len;
    while (s < end) {
        while (s < end && *s == ' ')
            s++;
        const char *w = s;
        while (s < end && *s != ' ')
            s++;
        if (s > w)
            lk_emit(b, w, (size_t)(s - w), "", 0);
    }
}

static void count(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *vals, size_t n,
                  const lk_bytes_t *state, lk_bytes_t *next, void *opaque) {
    (void)key, (void)vals, (void)opaque;
    int64_t c = 0;
    if (state && state->len == sizeof c)
        memcpy(&c, state->data, sizeof c);
    c += (int64_t)n;
    int64_t *out = lk_alloc(b, sizeof *out);
    *out = c;
    *next = (lk_bytes_t){out, sizeof *out};
}

static void format(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    int64_t c;
    memcpy(&c, in->value, sizeof c);
    char text[32];
    int n = snprintf(text, sizeof text, "%lld", (long long)c);
    lk_emit(b, in->key, in->key_len, text, (size_t)n);
}

static int with_repartition;

static void define_wordcount(lk_pipeline_t *p, void *opaque) {
    (void)opaque;
    lk_stream_t *w = lk_flat_map(lk_kafka_stream(p, "in"), "split", split, NULL);
    if (with_repartition)
        w = lk_repartition(w, "by-word");
    lk_stream_t *c = lk_update_state_by_key(w, "counts", 1, count, NULL);
    lk_to_kafka(lk_map(c, "format", format, NULL), "out", "counts");
}

typedef struct {
    char *text;
    size_t len, cap;
} buf_t;

static int dump_record(const lk__out_record_t *r, void *o) {
    buf_t *b = o;
    char line[256];
    int n = snprintf(line, sizeof line, "p=%d k=%.*s v=%.*s t=%lld h=%zu\n", (int)r->partition,
                     (int)r->key_len, r->key ? (const char *)r->key : "",
                     (int)r->value_len, r->value ? (const char *)r->value : "",
                     (long long)r->timestamp_ms, r->nheaders);
    if (b->len + (size_t)n + 1 > b->cap) {
        b->cap = (b->len + (size_t)n + 1) * 2;
        b->text = realloc(b->text, b->cap);
    }
    memcpy(b->text + b->len, line, (size_t)n + 1);
    b->len += (size_t)n;
    return 0;
}

/* The word count's outbox after five batches, batch by batch, as text. */
static char *run_wordcount(int repartition, const char *dir) {
    with_repartition = repartition;
    lk_pipeline_t *p = lk__pipeline_new();
    define_wordcount(p, NULL);
    cr_assert(!p->failed, "%s", p->err);
    lk__topo_op_t ops[8];
    size_t nops = lk__pipeline_topology(p, ops, 8);
    int recorded = 0;
    for (size_t i = 0; i < nops; i++)
        recorded |= !strcmp(ops[i].uid, "by-word") && !strcmp(ops[i].kind, "repartition");
    cr_assert_eq(recorded, repartition, "the topology's record of lk_repartition");
    lk__store_t *st = tu_open(dir, "wc");
    char err[512];
    cr_assert_eq(lk__pipeline_open_state(p, st, err, sizeof err), LK_OK, "%s", err);
    lk_batch_t b;
    memset(&b, 0, sizeof b);
    const char *lines[] = {"a b c a", "b b x", "", "the a the", "c c c c y"};
    buf_t out = {0};
    for (uint64_t id = 1; id <= 5; id++) {
        lk__store_txn_t *t = tu_begin(st, 1);
        lk__batch_begin(&b, p, id, (int64_t)id * 1000, t, 0);
        for (int r = 0; r < 3; r++) {
            lk_record_t rec = {&"k0k1k2"[2 * r], 2, lines[(id + (uint64_t)r) % 5],
                               strlen(lines[(id + (uint64_t)r) % 5]), (int64_t)id * 1000,
                               "in", r, (int64_t)id};
            lk__batch_push_input(&b, p, &rec);
        }
        lk__batch_end(&b, p);
        cr_assert_eq(b.err, LK_OK, "%s", b.errstr);
        cr_assert_eq(lk__store_outbox_foreach(t, "out", id, dump_record, &out), LK_OK);
        tu_commit(t);
        lk__pipeline_committed(p);
        lk__batch_reset(&b, p);
    }
    lk__batch_free(&b);
    lk__pipeline_destroy(p);
    lk__store_close(st);
    return out.text;
}

Test(repartition, in_one_context_it_is_a_pass_through) {
    char a[600], b[600];
    snprintf(a, sizeof a, "%s/plain", tu_dir);
    snprintf(b, sizeof b, "%s/repartitioned", tu_dir);
    char *plain = run_wordcount(0, a), *rep = run_wordcount(1, b);
    cr_assert(plain && strstr(plain, "k=a v=2"), "%s", plain ? plain : "(nothing)");
    cr_assert_str_eq(rep, plain);
    free(plain);
    free(rep);
}

Test(repartition, a_uid_that_cannot_name_a_topic_is_refused) {
    lk_pipeline_t *p = lk__pipeline_new();
    cr_assert_null(lk_repartition(lk_kafka_stream(p, "in"), "by word"));
    cr_assert(p->failed && strstr(p->err, "'by word'") && strstr(p->err, "a-z A-Z 0-9"), "%s",
              p->err);
    lk__pipeline_destroy(p);
}

/* ---- the cut into stages (group.mode=consumer) ---- */

static void ident(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    lk_emit(b, in->key, in->key_len, in->value, in->value_len);
}

/* in -> tag -> by-key -> after -> out, and in -> side (a sink of stage 1) */
static void define_two_stages(lk_pipeline_t *p, void *opaque) {
    (void)opaque;
    lk_stream_t *in = lk_kafka_stream(p, "in");
    lk_stream_t *r = lk_repartition(lk_map(in, "tag", ident, NULL), "by-key");
    lk_to_kafka(lk_map(r, "after", ident, NULL), "out", "out");
    lk_to_kafka(in, "side", "side");
}

static char *uids(const lk_pipeline_t *p) {
    static char s[512];
    s[0] = 0;
    for (size_t i = 0; i < p->nstages; i++) {
        size_t n = strlen(s);
        snprintf(s + n, sizeof s - n, "%s%s:%s", n ? " " : "", p->stages[i]->uid,
                 lk__stage_name(p->stages[i]));
    }
    return s;
}

static int keyed_partitions_ok;

static int check_partition(const lk__out_record_t *r, void *o) {
    (void)o;
    int32_t want = r->key ? lk__repartition_partition(r->key, r->key_len, 4, 1) : 1;
    keyed_partitions_ok &= r->partition == want;
    return 0;
}

Test(repartition, a_group_pipeline_is_cut_into_its_stages) {
    char err[512];
    lk_pipeline_t *p1 = lk__pipeline_new();
    define_two_stages(p1, NULL);
    const char *names[4];
    cr_assert_eq(lk__pipeline_repartitions(p1, names, 4), 1);
    cr_assert_str_eq(names[0], "by-key");
    cr_assert_eq(lk__pipeline_cut(p1, NULL, "app", 1, 4, err, sizeof err), LK_OK, "%s", err);
    cr_assert_str_eq(uids(p1), "kafka:in:kafka_stream tag:map by-key:to_kafka side:to_kafka");
    const lk_stream_t *w = p1->stages[2];
    cr_assert_str_eq(w->target, "app.by-key.repartition");
    cr_assert_eq(w->nchildren, 0);
    cr_assert_eq(w->repart_n, 4);

    /* stage 1 writes by key (a NULL key stays in task 1) */
    lk__store_t *st = tu_open(tu_dir, "app");
    lk_batch_t b;
    memset(&b, 0, sizeof b);
    lk__store_txn_t *t = tu_begin(st, 1);
    lk__batch_begin(&b, p1, 1, 1000, t, 0);
    char key[16];
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        lk_record_t rec = {i % 10 ? key : NULL, strlen(key), "v", 1, 1000, "in", 1, i};
        lk__batch_push_input(&b, p1, &rec);
    }
    lk__batch_end(&b, p1);
    cr_assert_eq(b.err, LK_OK, "%s", b.errstr);
    keyed_partitions_ok = 1;
    cr_assert_eq(lk__store_outbox_foreach(t, "by-key", 1, check_partition, NULL), LK_OK);
    cr_assert(keyed_partitions_ok, "a record went to another partition than its key's");
    lk__store_txn_abort(t);
    lk__batch_reset(&b, p1);
    lk__batch_free(&b);
    lk__store_close(st);
    lk__pipeline_destroy(p1);

    /* stage 2: the repartition topic is its source */
    lk_pipeline_t *p2 = lk__pipeline_new();
    define_two_stages(p2, NULL);
    cr_assert_eq(lk__pipeline_cut(p2, "by-key", "app", 1, 4, err, sizeof err), LK_OK, "%s", err);
    cr_assert_str_eq(uids(p2), "by-key:kafka_stream after:map out:to_kafka");
    const char *topics[4];
    cr_assert_eq(lk__pipeline_topics(p2, topics, 4), 1);
    cr_assert_str_eq(topics[0], "app.by-key.repartition");
    cr_assert_null(p2->stages[0]->parent);
    lk__pipeline_destroy(p2);

    lk_pipeline_t *p3 = lk__pipeline_new();
    define_two_stages(p3, NULL);
    cr_assert_eq(lk__pipeline_cut(p3, "nope", "app", 1, 4, err, sizeof err), LK_ERR_TOPOLOGY);
    cr_assert(strstr(err, "'nope'"), "%s", err);
    lk__pipeline_destroy(p3);
}

/* ---- the built-in pipelines (cli/builtin.c) ---- */

static char *builtin_stages(lk__builtin_kind_t kind, int windowed, int repartition,
                            const char *stage) {
    lk__builtin_opts_t o = {.kind = kind, .name = "x", .input_topics = "in",
                            .key_field = "k", .value_field = "v", .deadletter = "",
                            .window_size = windowed ? 1000 : 0, .output_topic = "out",
                            .output_dir = "", .output_format = "", .repartition = repartition};
    lk__builtin_opts_init(&o);
    lk_pipeline_t *p = lk__pipeline_new();
    lk__builtin_define(p, &o);
    cr_assert(!p->failed, "%s", p->err);
    char err[512];
    if (stage != (const char *)1) /* 1: the whole pipeline */
        cr_assert_eq(lk__pipeline_cut(p, stage, "app", 0, 2, err, sizeof err), LK_OK, "%s", err);
    char *s = strdup(uids(p));
    lk__pipeline_destroy(p);
    return s;
}

#define WHOLE ((const char *)1)

Test(repartition, the_built_in_pipelines_repartition_before_their_keyed_operator) {
    char *s;
    /* one process: as before (no lk_repartition: the topology of old checkpoints holds) */
    s = builtin_stages(LK__BUILTIN_WORDCOUNT, 0, 0, WHOLE);
    cr_assert(!strstr(s, "repartition"), "%s", s);
    free(s);
    /* scaled out: split in stage 1, the counts in the stage after by-word */
    s = builtin_stages(LK__BUILTIN_WORDCOUNT, 0, 1, NULL);
    cr_assert(strstr(s, "split-words:flat_map by-word:to_kafka") && !strstr(s, "word-counts"),
              "%s", s);
    free(s);
    s = builtin_stages(LK__BUILTIN_WORDCOUNT, 0, 1, "by-word");
    cr_assert_str_eq(s, "by-word:kafka_stream word-counts:update_state_by_key "
                        "format-counts:map to-kafka:to_kafka");
    free(s);
    s = builtin_stages(LK__BUILTIN_WORDCOUNT, 1, 1, "by-word");
    cr_assert(!strncmp(s, "by-word:kafka_stream windowed-word-counts:", 42), "%s", s);
    free(s);
    s = builtin_stages(LK__BUILTIN_COUNT_BY_KEY, 0, 1, "by-key");
    cr_assert_str_eq(s, "by-key:kafka_stream counts:update_state_by_key format-counts:map "
                        "to-kafka:to_kafka");
    free(s);
    s = builtin_stages(LK__BUILTIN_SUM_BY_KEY, 1, 1, "by-key");
    cr_assert(!strncmp(s, "by-key:kafka_stream windowed-sums:", 34), "%s", s);
    free(s);
    s = builtin_stages(LK__BUILTIN_COUNT_BY_KEY, 0, 1, NULL);
    cr_assert(strstr(s, "extract-fields:map by-key:to_kafka") && !strstr(s, "counts"), "%s", s);
    free(s);
    /* copy has no keyed operator: nothing to move */
    s = builtin_stages(LK__BUILTIN_COPY, 0, 1, WHOLE);
    cr_assert(!strstr(s, "repartition"), "%s", s);
    free(s);
}
