/*
 * test_group_wordcount.c — the built-in wordcount scaled out (DESIGN.md, Scale-out: the
 * built-ins): `lockstep run pipeline=wordcount group.mode=consumer` on a
 * `lockstep mock-broker`, two processes, input lines written round robin over the two
 * input partitions (NOT by word: a word is in lines of both tasks, so without
 * lk_repartition each task would count its own share of it). Tasks moved by a graceful
 * stop, a SIGKILL taken over after the session timeout and given back. Checked:
 *   - stage 1 (split-words -> lk_repartition 'by-word'): the committed records of
 *     <app>.by-word.repartition hold each word exactly as often as the input, each in
 *     its word's partition (Kafka's murmur2);
 *   - stage 2 (word-counts, its state moved through <app>.word-counts.changelog): every
 *     committed output record once (one per word per committed batch), a word's committed
 *     counts strictly increasing (a lost or doubled batch, or state not restored, breaks
 *     it), and its final count equal to what stage 2 was given.
 *
 * The mock cluster shows aborted records to read_committed readers (DESIGN.md, The mock
 * cluster's limits): a record counts when its provenance is the LAST progress record of
 * its batch in its stage's progress topic, and stage 2 also reads stage 1's aborted
 * repartition records (a real broker would not). So a word's final count must equal its
 * committed repartition records (= its occurrences in the input) plus its aborted ones;
 * the test prints how many aborted records there were, and when there were none the
 * counts equal the input's exactly. tests/chaos/group.py --wordcount on a real broker
 * proves the exact counts under kills.
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
#include <time.h>
#include <unistd.h>

#define NWORDS 23

static pid_t procs[2];
static rd_kafka_t *reader;

static void setup(void) {
    cp_init();
}

static void teardown(void) {
    cp_fini_group(procs, 2, &reader);
}

TestSuite(group_wordcount, .init = setup, .fini = teardown, .timeout = 300);

/* `lockstep run pipeline=wordcount` as app in group mode, checkpoint.dir tu_dir/<ckpt>,
 * stderr to tu_dir/<ckpt>.err (appended), with the extra settings (NULL-ended). */
static pid_t start(const char *app, const char *ckpt, const char *const *kv) {
    const char *common[] = {cp_fmt("app.id=%s", app),
                            cp_fmt("checkpoint.dir=%s", cp_path(ckpt)),
                            cp_fmt("kafka.bootstrap.servers=%s", cp_bootstraps),
                            "pipeline=wordcount",
                            "group.mode=consumer", "group.session.timeout.ms=6000",
                            "batch.interval.ms=50", "max.records.per.partition=40",
                            "log.level=notice", "kafka.log_level=3",
                            "sink.kafka.timeout.ms=10000", "checkpoint.map.size=4M",
                            "input.topics=in", "output.topic=out"};
    return cp_spawn_run(ckpt, common, sizeof common / sizeof *common, kv);
}

/* ---- reading what the mock shows (see the file's comment) ---- */

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char unread[256]; /* the last topic read_all could not read to its end */

/* Every record of topic to cb; 0 if its end was not reached in 30 s (a transaction open:
 * the caller tries again later). */
static int read_all(const char *topic, int np, void (*cb)(rd_kafka_message_t *m, void *o),
                    void *o) {
    if (!reader) {
        /* read_uncommitted: the checker keeps only committed attempts itself (and a
         * transaction a SIGKILL left open until its task restarts holds the last stable
         * offset back on the mock) */
        char err[512];
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        rd_kafka_conf_set(conf, "bootstrap.servers", cp_bootstraps, err, sizeof err);
        rd_kafka_conf_set(conf, "group.id", "test-group-wordcount", err, sizeof err);
        rd_kafka_conf_set(conf, "isolation.level", "read_uncommitted", err, sizeof err);
        rd_kafka_conf_set(conf, "enable.partition.eof", "true", err, sizeof err);
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err);
        rd_kafka_conf_set(conf, "fetch.wait.max.ms", "10", err, sizeof err);
        rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
        reader = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
        cr_assert_not_null(reader, "%s", err);
    }
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(np);
    int pending = 0;
    for (int p = 0; p < np; p++) {
        int64_t lo, hi;
        cr_assert_eq(rd_kafka_query_watermark_offsets(reader, topic, p, &lo, &hi, 5000), 0);
        if (hi > lo) {
            rd_kafka_topic_partition_list_add(l, topic, p)->offset = lo;
            pending++;
        }
    }
    cr_assert_eq(rd_kafka_assign(reader, l), 0);
    rd_kafka_topic_partition_list_destroy(l);
    for (int64_t until = now_ms() + 30000; pending > 0 && now_ms() < until;) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(reader, 10);
        if (!m)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
            pending--;
        else if (!m->err)
            cb(m, o);
        rd_kafka_message_destroy(m);
    }
    rd_kafka_assign(reader, NULL);
    if (pending)
        snprintf(unread, sizeof unread, "%s", topic);
    return pending == 0;
}

static int key_partition(const void *key, size_t len) {
    return rd_kafka_msg_partitioner_murmur2_random(NULL, key, len, 2, NULL, NULL);
}

/* "w<N>": N, or -1. */
static int word_of(const void *key, size_t len) {
    char k[16];
    int w;
    char tail;
    if (!key || len == 0 || len >= sizeof k)
        return -1;
    memcpy(k, key, len);
    k[len] = 0;
    if (sscanf(k, "w%d%c", &w, &tail) != 1 || w < 0 || w >= NWORDS)
        return -1;
    return w;
}

typedef struct {
    const cp_attempts_t *s1, *s2;
    long committed[NWORDS]; /* repartition records committed by stage 1 */
    long aborted[NWORDS];   /* repartition records stage 1 did not commit (the mock shows them) */
    long last[NWORDS];      /* a word's last committed count in the output */
    int32_t out_partition[NWORDS];
    uint64_t last_batch[NWORDS]; /* stage 2's batch of that count */
    int last_task[NWORDS];
    long outputs;    /* committed output records */
    int foreign;     /* records of no word, or a value that is no count */
    int misrouted;   /* a record of a word in a partition (task) not its word's */
    int not_rising;  /* a committed count not above the word's previous one */
    int twice;       /* two committed records of one word in one batch of one task */
    int split;       /* a word's committed counts in two output partitions */
} count_t;

static void on_repartition_record(rd_kafka_message_t *m, void *o) {
    count_t *c = o;
    rd_kafka_headers_t *h;
    lk__prov_t pv;
    cr_assert(!rd_kafka_message_headers(m, &h) && lk__prov_get(h, &pv), "no provenance");
    int w = word_of(m->key, m->key_len);
    if (w < 0) {
        c->foreign++;
        return;
    }
    c->misrouted += m->partition != key_partition(m->key, m->key_len);
    if (cp_committed_by(c->s1, pv.batch, pv.attempt) < 0)
        c->aborted[w]++;
    else
        c->committed[w]++;
}

/* An output record "w<N>" -> count, in offset order within its partition. */
static void on_output_record(rd_kafka_message_t *m, void *o) {
    count_t *c = o;
    rd_kafka_headers_t *h;
    lk__prov_t own;
    cr_assert(!rd_kafka_message_headers(m, &h) && lk__prov_get(h, &own), "no provenance");
    int task = cp_committed_by(c->s2, own.batch, own.attempt);
    if (task < 0) /* a pipeline without lk_repartition writes its counts from stage 1 (the
                   * test's sabotage: attempts are random, so no attempt is in both) */
        task = cp_committed_by(c->s1, own.batch, own.attempt);
    if (task < 0)
        return; /* an aborted attempt, visible on the mock */
    int w = word_of(m->key, m->key_len);
    char v[32];
    long count;
    char tail;
    if (w < 0 || !m->payload || m->len == 0 || m->len >= sizeof v) {
        c->foreign++;
        return;
    }
    memcpy(v, m->payload, m->len);
    v[m->len] = 0;
    if (sscanf(v, "%ld%c", &count, &tail) != 1 || count <= 0) {
        c->foreign++;
        return;
    }
    c->outputs++;
    c->misrouted += task != key_partition(m->key, m->key_len);
    if (c->last[w] && c->out_partition[w] != m->partition)
        c->split++;
    if (c->last[w] && c->last_task[w] == task && c->last_batch[w] == own.batch)
        c->twice++;
    else if (count <= c->last[w])
        c->not_rising++;
    c->last[w] = count;
    c->out_partition[w] = m->partition;
    c->last_batch[w] = own.batch;
    c->last_task[w] = task;
}

static long occurrences[NWORDS];
static int lines;

/* Line i: 1 to 5 words w<...>, chosen so every word is in lines of both partitions;
 * written round robin with a key that is not the word (the line number). */
static void produce_lines(int n) {
    char v[128], k[16];
    for (int i = 0; i < n; i++, lines++) {
        int nw = 1 + (lines * 7) % 5;
        size_t len = 0;
        v[0] = 0;
        for (int j = 0; j < nw; j++) {
            int w = (lines * 11 + j * 5 + lines / 3) % NWORDS;
            occurrences[w]++;
            len += (size_t)snprintf(v + len, sizeof v - len, "%sw%d", j ? " " : "", w);
        }
        snprintf(k, sizeof k, "line-%d", lines);
        cp_produce("in", lines % 2, k, v, 0);
    }
    cp_flush();
}

static long total_aborted;

/* What the topics hold now; 0 if one of them could not be read to its end. */
static int tally(count_t *c) {
    cp_attempts_t *s1 = calloc(1, sizeof *s1), *s2 = calloc(1, sizeof *s2);
    s1->task_prefix = "g.";
    s2->task_prefix = "g.by-word.";
    int ok = read_all("g.progress", 2, cp_on_progress_record, s1) &&
             read_all("g.by-word.progress", 2, cp_on_progress_record, s2);
    memset(c, 0, sizeof *c);
    c->s1 = s1;
    c->s2 = s2;
    ok = ok && read_all("g.by-word.repartition", 2, on_repartition_record, c) &&
         read_all("out", 2, on_output_record, c);
    free(s1->a);
    free(s2->a);
    free(s1);
    free(s2);
    return ok;
}

/* Wait (bounded) until every word's count is what stage 2 was given; then check it all. */
static void wait_counts(int seconds) {
    count_t *c = malloc(sizeof *c);
    int behind = 0, ok = 0;
    for (int i = 0; i < seconds * 2; i++) {
        ok = tally(c);
        behind = !ok;
        for (int w = 0; w < NWORDS; w++)
            behind += c->committed[w] != occurrences[w] ||
                      c->last[w] != occurrences[w] + c->aborted[w];
        if (!behind)
            break;
        usleep(500000);
    }
    cr_assert(ok, "%s could not be read to its end after %d s\na: %s\nb: %s", unread, seconds,
              cp_err_of("a"), cp_err_of("b"));
    for (int w = 0; w < NWORDS; w++) /* the output first: what the user sees */
        cr_assert_eq(c->last[w], occurrences[w] + c->aborted[w],
                     "w%d: final count %ld, %ld in the input (+ %ld aborted repartition "
                     "records stage 2 was given on the mock)\na: %s\nb: %s",
                     w, c->last[w], occurrences[w], c->aborted[w], cp_err_of("a"), cp_err_of("b"));
    for (int w = 0; w < NWORDS; w++)
        cr_assert_eq(c->committed[w], occurrences[w],
                     "w%d: %ld committed repartition records, %ld in the input", w,
                     c->committed[w], occurrences[w]);
    cr_assert_eq(c->foreign, 0, "%d records of no word or no count", c->foreign);
    cr_assert_eq(c->misrouted, 0, "%d records in a partition (task) not their word's",
                 c->misrouted);
    cr_assert_eq(c->twice, 0, "%d committed output records twice in one batch", c->twice);
    cr_assert_eq(c->not_rising, 0, "%d committed counts not above the word's previous one",
                 c->not_rising);
    cr_assert_eq(c->split, 0, "%d words counted in two output partitions", c->split);
    total_aborted = 0;
    for (int w = 0; w < NWORDS; w++)
        total_aborted += c->aborted[w];
    fprintf(stderr, "%ld committed output records; %ld aborted repartition records (visible on "
                "the mock only)\n",
                c->outputs, total_aborted);
    free(c);
}

static void stop_gracefully(int i, const char *name) {
    cp_stop_gracefully(&procs[i], name);
}

Test(group_wordcount, counts_are_exact_across_moves_and_kills) {
    /* the mock cluster makes topics of its own partition count (DESIGN.md, The mock
     * cluster's limits): every topic is made here */
    const char *topics[] = {"in:2",
                            "out:2",
                            "g.progress:2",
                            "g.by-word.progress:2",
                            "g.by-word.repartition:2",
                            "g.word-counts.changelog:2",
                            NULL};
    cp_broker_start(topics);
    produce_lines(200);
    procs[0] = start("g", "a", NULL);
    procs[1] = start("g", "b", NULL);
    wait_counts(60);
    /* b's tasks of both stages move to a, which has never run them: a full restore */
    stop_gracefully(1, "b");
    produce_lines(200);
    wait_counts(60);
    char *ea = cp_err_of("a");
    cr_assert(strstr(ea, "task 0 of stage by-word: started") &&
                  strstr(ea, "task 1 of stage by-word: started"),
              "a did not run both tasks of stage 2: %s", ea);
    cr_assert(strstr(ea, "restored operator 'word-counts'") && strstr(ea, "(full after batch"),
              "a took a task of stage 2 over without restoring its counts: %s", ea);
    free(ea);
    /* b back with its stale checkpoints: a tail restore where it left off */
    procs[1] = start("g", "b", NULL);
    produce_lines(200);
    wait_counts(60);
    /* a SIGKILL with batches in flight in both stages: b takes a's tasks over */
    produce_lines(200);
    cp_stop(&procs[0]);
    produce_lines(200);
    wait_counts(90);
    /* a back: takes its tasks back from b */
    procs[0] = start("g", "a", NULL);
    produce_lines(200);
    wait_counts(60);
    stop_gracefully(0, "a");
    stop_gracefully(1, "b");
    char *eb = cp_err_of("b");
    cr_assert(strstr(eb, "restored operator 'word-counts'"), "b never restored counts: %s", eb);
    free(eb);
    ea = cp_err_of("a");
    int tails = 0, fulls = 0;
    for (const char *p = ea; (p = strstr(p, "restored operator 'word-counts'")); p++) {
        tails += !strncmp(strstr(p, "(") + 1, "tail", 4);
        fulls += !strncmp(strstr(p, "(") + 1, "full", 4);
    }
    char *eb2 = cp_err_of("b");
    for (const char *p = eb2; (p = strstr(p, "restored operator 'word-counts'")); p++) {
        tails += !strncmp(strstr(p, "(") + 1, "tail", 4);
        fulls += !strncmp(strstr(p, "(") + 1, "full", 4);
    }
    free(ea);
    free(eb2);
    fprintf(stderr, "restores: %d full, %d tail; aborted repartition records at the end: %ld\n",
            fulls,
                tails, total_aborted);
    cr_assert_gt(fulls + tails, 1, "fewer than two restores");
}
