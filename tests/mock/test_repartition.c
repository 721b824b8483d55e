/*
 * test_repartition.c — lk_repartition across processes (DESIGN.md, Scale-out: stage 2)
 * with `lockstep run` on a `lockstep mock-broker`, running the plugin
 * tests/mock/plugins/repartition_copy.c (map -> lk_repartition "by-key" -> Kafka sink) in
 * group.mode=consumer: two processes, tasks moved by a graceful stop, a SIGKILL taken over
 * after the session timeout and restarts; every input line must be in the output exactly
 * once, having gone through the repartition topic partition of its key (Kafka's murmur2,
 * librdkafka's partitioner as the reference) and stage 2's task of that partition. Also
 * the refusal of a repartition topic whose partition count is not the tasks'.
 *
 * The mock cluster shows aborted records to read_committed readers (DESIGN.md, The mock
 * cluster's limits): so a record counts when its provenance is the LAST progress record
 * of its batch in its stage's progress topic (as in test_group.c), and an output record
 * counts only when the repartition record it came from (its second "lockstep" header,
 * which stage 2 copies from its input) was committed by stage 1 as well. Stage 2 reading
 * only committed records is the real broker's part (read_committed); here the checker
 * applies it.
 */
#define _GNU_SOURCE
#include "cliproc.h"
#include "mockutil.h"
#include "sink/provenance_int.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t procs[2];
static rd_kafka_t *reader;

static void setup(void) {
    cp_init();
}

static void teardown(void) {
    cp_fini_group(procs, 2, &reader);
}

TestSuite(repartition, .init = setup, .fini = teardown, .timeout = 240);

static const char *plugin(void) {
    const char *p = getenv("LK_REPARTITION_PLUGIN");
    cr_assert(p && p[0], "LK_REPARTITION_PLUGIN is not set (run through ctest)");
    return p;
}

/* `lockstep run` of the plugin as app in group mode, checkpoint.dir tu_dir/<ckpt>,
 * stderr to tu_dir/<ckpt>.err (appended), with the extra settings (NULL-ended). */
static pid_t start(const char *app, const char *ckpt, const char *const *kv) {
    const char *common[] = {cp_fmt("app.id=%s", app),
                            cp_fmt("checkpoint.dir=%s", cp_path(ckpt)),
                            cp_fmt("kafka.bootstrap.servers=%s", cp_bootstraps),
                            cp_fmt("pipeline.plugin=%s", plugin()),
                            "group.mode=consumer", "group.session.timeout.ms=6000",
                            "batch.interval.ms=50", "max.records.per.partition=40",
                            "log.level=notice", "kafka.log_level=3",
                            "sink.kafka.timeout.ms=10000", "checkpoint.map.size=4M",
                            "input.topics=in", "output.topic=out"};
    return cp_spawn_run(ckpt, common, sizeof common / sizeof *common, kv);
}

/* ---- reading what the mock shows (see the file's comment) ---- */

static void read_all(const char *topic, int np, void (*cb)(rd_kafka_message_t *m, void *o),
                     void *o) {
    cp_read_all(&reader, "test-repartition", topic, 0, np, cb, o);
}

typedef struct {
    const cp_attempts_t *s1, *s2;
    int *seen; /* per input line number */
    int nlines;
    int foreign;   /* records that are no input line, or carry the wrong key */
    int misrouted; /* in a partition (a task) that is not their key's */
    int aborted;   /* committed in stage 2 from a stage-1 attempt that was not (the mock) */
} count_t;

static int key_partition(const void *key, size_t len) {
    return rd_kafka_msg_partitioner_murmur2_random(NULL, key, len, 2, NULL, NULL);
}

/* "line N" with key "k<N % 13>": N, or -1. */
static int line_of(const rd_kafka_message_t *m, int nlines) {
    char v[48], k[16];
    int line;
    char tail;
    if (m->len <= 5 || m->len >= 40 || !m->key || m->key_len >= sizeof k)
        return -1;
    memcpy(v, m->payload, m->len);
    v[m->len] = 0;
    if (sscanf(v, "line %d%c", &line, &tail) != 1 || line < 0 || line >= nlines)
        return -1;
    snprintf(k, sizeof k, "k%d", line % 13);
    if (m->key_len != strlen(k) || memcmp(m->key, k, m->key_len))
        return -1;
    return line;
}

/* An output record: committed by stage 2 (its own provenance, first), from a repartition
 * record committed by stage 1 (the copied one, second), read by the task of its key. */
static void on_output_record(rd_kafka_message_t *m, void *o) {
    count_t *c = o;
    rd_kafka_headers_t *h;
    lk__prov_t own, from;
    const void *v;
    size_t n;
    cr_assert(!rd_kafka_message_headers(m, &h) && lk__prov_get(h, &own), "no provenance");
    int task = cp_committed_by(c->s2, own.batch, own.attempt);
    if (task < 0)
        return; /* an aborted attempt of stage 2, visible on the mock */
    cr_assert(!rd_kafka_header_get(h, 1, LK__PROV_HEADER, &v, &n) && lk__prov_parse(v, n, &from),
              "an output record without stage 1's provenance");
    cr_assert(!strncmp(from.sink, "by-key", from.sink_len) && from.sink_len == 6,
              "stage 1's provenance names sink %.*s", (int)from.sink_len, from.sink);
    if (cp_committed_by(c->s1, from.batch, from.attempt) < 0) {
        c->aborted++;
        return;
    }
    int line = line_of(m, c->nlines);
    if (line < 0) {
        c->foreign++;
        return;
    }
    c->misrouted += task != key_partition(m->key, m->key_len);
    c->seen[line]++;
}

/* A repartition record: committed by stage 1, in its key's partition. */
static void on_repartition_record(rd_kafka_message_t *m, void *o) {
    count_t *c = o;
    rd_kafka_headers_t *h;
    lk__prov_t pv;
    cr_assert(!rd_kafka_message_headers(m, &h) && lk__prov_get(h, &pv), "no provenance");
    if (cp_committed_by(c->s1, pv.batch, pv.attempt) < 0)
        return;
    int line = line_of(m, c->nlines);
    if (line < 0) {
        c->foreign++;
        return;
    }
    c->misrouted += m->partition != key_partition(m->key, m->key_len);
    c->seen[line]++;
}

typedef struct {
    int missing, dup, foreign, misrouted, aborted;
} tally_t;

static void tally(count_t *c, tally_t *t) {
    memset(t, 0, sizeof *t);
    for (int i = 0; i < c->nlines; i++) {
        t->missing += c->seen[i] == 0;
        t->dup += c->seen[i] > 1;
    }
    t->foreign = c->foreign;
    t->misrouted = c->misrouted;
    t->aborted = c->aborted;
}

/* Lines 0..n-1 in the committed output (*out) and repartition topic (*rep). */
static void counts(int n, tally_t *out, tally_t *rep) {
    cp_attempts_t s1 = {"g.", NULL, 0, 0}, s2 = {"g.by-key.", NULL, 0, 0};
    read_all("g.progress", 2, cp_on_progress_record, &s1);
    read_all("g.by-key.progress", 2, cp_on_progress_record, &s2);
    count_t c = {&s1, &s2, calloc((size_t)n, sizeof(int)), n, 0, 0, 0};
    read_all("out", 2, on_output_record, &c);
    tally(&c, out);
    count_t r = {&s1, &s2, calloc((size_t)n, sizeof(int)), n, 0, 0, 0};
    read_all("g.by-key.repartition", 2, on_repartition_record, &r);
    tally(&r, rep);
    free(c.seen);
    free(r.seen);
    free(s1.a);
    free(s2.a);
}

static int lines;

/* Lines "line N" keyed "k<N % 13>", written round robin (NOT by key): the repartition
 * has to move about half of them to the other task. */
static void produce_lines(int n) {
    char v[32], k[16];
    for (int i = 0; i < n; i++, lines++) {
        snprintf(v, sizeof v, "line %d", lines);
        snprintf(k, sizeof k, "k%d", lines % 13);
        cp_produce("in", lines % 2, k, v, 0);
    }
    cp_flush();
}

static int total_aborted;

/* Wait (bounded) until every line produced is in the output; then exactly once in the
 * output and in the repartition topic, each where its key goes. */
static void wait_output(int seconds) {
    tally_t out = {-1, 0, 0, 0, 0}, rep = {0};
    for (int i = 0; i < seconds * 4; i++) {
        counts(lines, &out, &rep);
        if (!out.missing)
            break;
        usleep(250000);
    }
    cr_assert_eq(out.missing, 0, "%d of %d lines missing after %d s; a: %s\nb: %s", out.missing,
                 lines, seconds, cp_err_of("a"), cp_err_of("b"));
    cr_assert_eq(out.dup, 0, "%d lines duplicated in the output", out.dup);
    cr_assert_eq(out.foreign, 0, "%d output records that are no input line", out.foreign);
    cr_assert_eq(out.misrouted, 0, "%d output records from a task not of their key",
                 out.misrouted);
    cr_assert_eq(rep.missing, 0, "%d lines missing in the repartition topic", rep.missing);
    cr_assert_eq(rep.dup, 0, "%d lines twice in the repartition topic", rep.dup);
    cr_assert_eq(rep.foreign, 0, "%d repartition records that are no input line", rep.foreign);
    cr_assert_eq(rep.misrouted, 0, "%d repartition records not in their key's partition",
                 rep.misrouted);
    total_aborted = out.aborted;
}

static void stop_gracefully(int i, const char *name) {
    cp_stop_gracefully(&procs[i], name);
}

Test(repartition, a_repartitioned_copy_moves_between_processes_exactly_once) {
    /* the mock cluster makes topics of its own partition count (DESIGN.md, The mock
     * cluster's limits): every topic is made here */
    const char *topics[] = {"in:2", "out:2", "g.progress:2", "g.by-key.progress:2",
                            "g.by-key.repartition:2", NULL};
    cp_broker_start(topics);
    produce_lines(300);
    procs[0] = start("g", "a", NULL);
    procs[1] = start("g", "b", NULL);
    wait_output(60);
    /* both stages' task of b move to a, which has never run them */
    stop_gracefully(1, "b");
    produce_lines(300);
    wait_output(60);
    char *ea = cp_err_of("a");
    cr_assert(strstr(ea, "task 0 of stage by-key: started") &&
                  strstr(ea, "task 1 of stage by-key: started"),
              "a did not run both tasks of stage 2: %s", ea);
    cr_assert(strstr(ea, "of stage by-key: continuing after batch"),
              "a did not take a task of stage 2 over: %s", ea);
    free(ea);
    /* b back with its stale checkpoints: its tasks continue where a left them */
    procs[1] = start("g", "b", NULL);
    produce_lines(300);
    wait_output(60);
    /* a SIGKILL with batches in flight in both stages: b takes a's tasks over */
    produce_lines(300);
    cp_stop(&procs[0]);
    produce_lines(300);
    wait_output(90);
    /* a back: takes tasks back from b */
    procs[0] = start("g", "a", NULL);
    produce_lines(300);
    wait_output(60);
    stop_gracefully(0, "a");
    stop_gracefully(1, "b");
    char *eb = cp_err_of("b");
    cr_assert(strstr(eb, "continuing after batch"), "b never took a task over: %s", eb);
    free(eb);
    /* the task checkpoints of stage 2 are beside stage 1's */
    struct stat st;
    char path[800];
    snprintf(path, sizeof path, "%s/task-0.by-key/data.mdb", cp_path("a"));
    cr_assert_eq(stat(path, &st), 0, "no checkpoint %s", path);
    cr_log_info("output records of stage 2 made from aborted stage-1 records (visible on the "
                "mock only): %d", total_aborted);
}

/* A run that must be refused: exit status 1 (or 2), its stderr naming what is wrong, and
 * checkpoint.dir not created. */
static void refused(const char *app, const char *ckpt, const char *const *kv,
                    const char *const *needles) {
    pid_t pid = start(app, ckpt, kv);
    int rc = cp_wait_exit(&pid, 60);
    char *err = cp_err_of(ckpt);
    cr_assert(rc == 1 || rc == 2, "exit status %d, stderr: %s", rc, err);
    for (int i = 0; needles[i]; i++)
        cr_assert(strstr(err, needles[i]), "stderr does not say '%s': %s", needles[i], err);
    struct stat st;
    cr_assert_neq(stat(cp_path(ckpt), &st), 0, "%s was created", cp_path(ckpt));
    free(err);
}

Test(repartition, a_repartition_topic_of_another_partition_count_is_refused) {
    const char *topics[] = {"in:2", "out:2", "r.progress:2", "r.by-key.progress:2",
                            "r.by-key.repartition:3", NULL};
    cp_broker_start(topics);
    refused("r", "c1", NULL,
            (const char *[]){"the input has 2 partitions", "r.by-key.repartition",
                             "lk_repartition 'by-key'", "has 3", NULL});
}
