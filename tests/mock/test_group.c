/*
 * test_group.c — scale-out stage 1 (group.mode=consumer, DESIGN.md Scale-out) with real
 * processes on a `lockstep mock-broker`: the refusals (stateful operators, file sinks,
 * input topics of different partition counts, a progress topic whose partition count is
 * not the input's, a checkpoint.dir of the other mode), each leaving nothing behind; and
 * tasks moving between two processes (a graceful stop, a SIGKILL taken over after the
 * session timeout, a restart that takes a task back) with every input line in the output
 * exactly once.
 *
 * The mock cluster shows aborted records and aborted progress records to read_committed
 * readers (DESIGN.md, The mock cluster's limits), and a task taken over continues from
 * the last progress record it can read: so a record counts when its provenance (batch,
 * attempt) is the one of the LAST progress record of its batch in its task's partition
 * (a batch's attempts: aborted ones first, the delivered one last). The real broker's
 * group tests are in the kafka tier (tests/kafka/scenarios.py) and the chaos tier.
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
    for (int i = 0; i < 2; i++)
        cp_stop(&procs[i]);
    if (reader) {
        rd_kafka_consumer_close(reader);
        rd_kafka_destroy(reader);
        reader = NULL;
    }
    cp_fini();
}

TestSuite(group, .init = setup, .fini = teardown, .timeout = 180);

/* `lockstep run` of app in group mode, checkpoint.dir tu_dir/<ckpt>, stderr to
 * tu_dir/<ckpt>.err (appended), with the extra key=value settings (NULL-ended). */
static pid_t start(const char *app, const char *ckpt, const char *const *kv) {
    const char *argv[80] = {cp_cli(), "run"};
    int n = 2;
    const char *common[] = {cp_fmt("app.id=%s", app),
                            cp_fmt("checkpoint.dir=%s", cp_path(ckpt)),
                            cp_fmt("kafka.bootstrap.servers=%s", cp_bootstraps),
                            "group.mode=consumer", "group.session.timeout.ms=6000",
                            "batch.interval.ms=50", "max.records.per.partition=40",
                            "log.level=notice", "kafka.log_level=3",
                            "sink.kafka.timeout.ms=10000", "checkpoint.map.size=4M",
                            "pipeline=copy", "input.topics=in", "output.topic=out",
                            "output.partition=keep"};
    for (size_t i = 0; i < sizeof common / sizeof *common; i++) {
        argv[n++] = "-X";
        argv[n++] = common[i];
    }
    for (int i = 0; kv && kv[i]; i++) {
        argv[n++] = "-X";
        argv[n++] = kv[i];
    }
    argv[n] = NULL;
    char errf[700];
    snprintf(errf, sizeof errf, "%s.err", cp_path(ckpt));
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int o = open("/dev/null", O_WRONLY);
        int e = open(errf, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(o, 1);
        dup2(e, 2);
        execv(argv[0], (char **)argv);
        _exit(127);
    }
    return pid;
}

static char *err_of(const char *ckpt) {
    char errf[700];
    snprintf(errf, sizeof errf, "%s.err", cp_path(ckpt));
    return cp_slurp(errf);
}

/* A run that must be refused: exit status 1 (or 2), its stderr naming what is wrong
 * (every one of the NULL-ended needles), and checkpoint.dir not created (unless
 * keep_dir: it existed before). */
static void refused(const char *app, const char *ckpt, const char *const *kv, int keep_dir,
                    const char *const *needles) {
    pid_t pid = start(app, ckpt, kv);
    int rc = cp_wait_exit(&pid, 60);
    char *err = err_of(ckpt);
    cr_assert(rc == 1 || rc == 2, "exit status %d, stderr: %s", rc, err);
    for (int i = 0; needles[i]; i++)
        cr_assert(strstr(err, needles[i]), "stderr does not say '%s': %s", needles[i], err);
    cr_assert(!strstr(err, "Sanitizer") && !strstr(err, "runtime error"), "%s", err);
    struct stat st;
    if (!keep_dir)
        cr_assert_neq(stat(cp_path(ckpt), &st), 0, "%s was created", cp_path(ckpt));
    free(err);
}

Test(group, refuses_what_stage_one_cannot_move_and_creates_nothing) {
    const char *topics[] = {"in:2", "in3:3", "out:2", "g4.progress:4", NULL};
    cp_broker_start(topics);
    /* the built-in windows: not proven scaled out (their running totals run, repartitioned) */
    refused("g1", "c1",
            (const char *[]){"pipeline=wordcount", "window.size.ms=1000", "output.topic=counts",
                             NULL},
            0, (const char *[]){"group.mode=consumer", "with windows", "window.size.ms", NULL});
    /* a file dead letter: files cannot be fenced across machines */
    refused("g2", "c2", (const char *[]){"errors.deadletter=file:/tmp/x", NULL}, 0,
            (const char *[]){"errors.deadletter", "Kafka topic", NULL});
    /* input topics that are not co-partitioned, named with their counts */
    refused("g3", "c3", (const char *[]){"input.topics=in,in3", NULL}, 0,
            (const char *[]){"co-partitioned", "in has 2", "in3 has 3", NULL});
    /* a progress topic of another partition count: the tasks' count changed */
    refused("g4", "c4", NULL, 0,
            (const char *[]){"the input has 2 partitions", "g4.progress has 4", NULL});
}

Test(group, a_checkpoint_dir_of_the_other_mode_is_refused) {
    const char *topics[] = {"in:2", "out:2", NULL};
    cp_broker_start(topics);
    /* a single-mode checkpoint: made by a run of group.mode=single */
    pid_t pid = start("s1", "single", (const char *[]){"group.mode=single", NULL});
    char data[800];
    snprintf(data, sizeof data, "%s/data.mdb", cp_path("single"));
    struct stat st;
    for (int i = 0; i < 500 && stat(data, &st); i++)
        usleep(10000);
    cr_assert_eq(stat(data, &st), 0, "no checkpoint made: %s", err_of("single"));
    cp_stop(&pid); /* the checkpoint stays */
    refused("s1", "single", NULL, 1, (const char *[]){"holds a checkpoint of group.mode=single",
                                                      NULL});
    /* task checkpoints refused in single mode */
    cr_assert_eq(mkdir(cp_path("tasks"), 0700), 0);
    char t0[800];
    snprintf(t0, sizeof t0, "%s/task-0", cp_path("tasks"));
    cr_assert_eq(mkdir(t0, 0700), 0);
    refused("s2", "tasks", (const char *[]){"group.mode=single", NULL}, 1,
            (const char *[]){"task checkpoints of group.mode=consumer", NULL});
    /* the checkpoint tools point at a task's checkpoint */
    char cmd[2000], *out;
    snprintf(cmd, sizeof cmd, "'%s' checkpoint inspect '%s' 2>&1", cp_cli(), cp_path("tasks"));
    cr_assert_neq(tu_run(cmd, &out), 0, "%s", out);
    cr_assert(strstr(out, "task checkpoints of group.mode=consumer") && strstr(out, "task-0"),
              "%s", out);
    free(out);
}

/* ---- reading the output as the mock allows (see the file's comment) ---- */

typedef struct {
    int32_t partition;
    uint64_t batch;
    char attempt[17];
} attempt_t;

typedef struct {
    attempt_t *a;
    size_t n, cap;
} attempts_t;

static void read_all(const char *topic, int np, void (*cb)(rd_kafka_message_t *m, void *o),
                     void *o) {
    if (!reader)
        reader = mu_reader(cp_bootstraps, "test-group");
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
    for (int polls = 0; pending > 0 && polls < 3000; polls++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(reader, 10);
        if (!m)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
            pending--;
        else if (!m->err)
            cb(m, o);
        rd_kafka_message_destroy(m);
    }
    cr_assert_eq(pending, 0, "could not read %s to its end", topic);
    rd_kafka_assign(reader, NULL);
}

/* Each progress record replaces the earlier attempts of its (partition, batch). */
static void on_progress_record(rd_kafka_message_t *m, void *o) {
    attempts_t *as = o;
    json_error_t je;
    json_t *d = json_loadb(m->payload, m->len, 0, &je);
    cr_assert(d, "progress record: %s", je.text);
    json_t *b = json_object_get(d, "batch"), *a = json_object_get(d, "attempt"),
           *t = json_object_get(d, "task");
    char want[64];
    snprintf(want, sizeof want, "g.%d", (int)m->partition);
    cr_assert(json_is_string(t) && !strcmp(json_string_value(t), want),
              "progress partition %d holds a record of task %s", (int)m->partition,
              json_is_string(t) ? json_string_value(t) : "?");
    attempt_t *hit = NULL;
    for (size_t i = 0; i < as->n; i++)
        if (as->a[i].partition == m->partition &&
            as->a[i].batch == (uint64_t)json_integer_value(b))
            hit = &as->a[i];
    if (!hit) {
        if (as->n == as->cap) {
            as->cap = as->cap ? as->cap * 2 : 64;
            as->a = realloc(as->a, as->cap * sizeof *as->a);
        }
        hit = &as->a[as->n++];
    }
    hit->partition = m->partition;
    hit->batch = (uint64_t)json_integer_value(b);
    snprintf(hit->attempt, sizeof hit->attempt, "%s", json_string_value(a));
    json_decref(d);
}

typedef struct {
    const attempts_t *as;
    int *seen; /* per input line number */
    int nlines;
    int foreign; /* records that are no input line */
} count_t;

static void on_output_record(rd_kafka_message_t *m, void *o) {
    count_t *c = o;
    rd_kafka_headers_t *h;
    lk__prov_t pv;
    cr_assert(!rd_kafka_message_headers(m, &h) && lk__prov_get(h, &pv), "no provenance");
    int valid = 0;
    for (size_t i = 0; i < c->as->n && !valid; i++)
        valid = c->as->a[i].partition == m->partition && c->as->a[i].batch == pv.batch &&
                !strcmp(c->as->a[i].attempt, pv.attempt);
    if (!valid)
        return; /* an aborted attempt, visible on the mock */
    int line;
    char tail;
    if (m->len > 5 && m->len < 40) {
        char v[48];
        memcpy(v, m->payload, m->len);
        v[m->len] = 0;
        if (sscanf(v, "line %d%c", &line, &tail) == 1 && line >= 0 && line < c->nlines &&
            line % 2 == m->partition) {
            c->seen[line]++;
            return;
        }
    }
    c->foreign++;
}

/* Lines 0..n-1 each exactly once in the committed attempts of out? *missing, *dup. */
static void output_counts(int n, int *missing, int *dup, int *foreign) {
    attempts_t as = {0};
    read_all("g.progress", 2, on_progress_record, &as);
    count_t c = {&as, calloc((size_t)n, sizeof(int)), n, 0};
    read_all("out", 2, on_output_record, &c);
    *missing = *dup = 0;
    for (int i = 0; i < n; i++) {
        *missing += c.seen[i] == 0;
        *dup += c.seen[i] > 1;
    }
    *foreign = c.foreign;
    free(c.seen);
    free(as.a);
}

static int lines;

static void produce_lines(int n) {
    char v[32];
    for (int i = 0; i < n; i++, lines++) {
        snprintf(v, sizeof v, "line %d", lines);
        cp_produce("in", lines % 2, NULL, v, 0);
    }
    cp_flush();
}

/* Wait (bounded) until every line produced is in the output; fails naming the counts. */
static void wait_output(int seconds) {
    int missing = -1, dup = 0, foreign = 0;
    for (int i = 0; i < seconds * 4; i++) {
        output_counts(lines, &missing, &dup, &foreign);
        if (!missing)
            break;
        usleep(250000);
    }
    cr_assert_eq(missing, 0, "%d of %d lines missing after %d s; a: %s\nb: %s", missing, lines,
                 seconds, err_of("a"), err_of("b"));
    cr_assert_eq(dup, 0, "%d lines duplicated", dup);
    cr_assert_eq(foreign, 0, "%d records that are no input line", foreign);
}

static void stop_gracefully(int i, const char *name) {
    kill(procs[i], SIGTERM);
    int rc = cp_wait_exit(&procs[i], 60);
    char *err = err_of(name);
    cr_assert_eq(rc, 0, "%s: exit status %d after SIGTERM: %s", name, rc, err);
    cr_assert(!strstr(err, "Sanitizer") && !strstr(err, "runtime error"), "%s", err);
    free(err);
}

Test(group, tasks_move_between_processes_exactly_once) {
    const char *topics[] = {"in:2", "out:2", "g.progress:2", NULL};
    cp_broker_start(topics);
    produce_lines(300);
    procs[0] = start("g", "a", NULL);
    procs[1] = start("g", "b", NULL);
    wait_output(60);
    /* a graceful stop: b's task moves to a, which has never run it */
    stop_gracefully(1, "b");
    produce_lines(300);
    wait_output(60);
    char *ea = err_of("a");
    cr_assert(strstr(ea, "continuing after batch"), "a did not take b's task over: %s", ea);
    free(ea);
    /* b back with its stale checkpoint: its task continues where a left it */
    procs[1] = start("g", "b", NULL);
    produce_lines(300);
    wait_output(60);
    /* a SIGKILL with batches in flight: b takes a's tasks after the session timeout */
    produce_lines(300);
    cp_stop(&procs[0]);
    produce_lines(300);
    wait_output(90);
    /* a back: takes a task back from b, dropping what it committed and never delivered */
    procs[0] = start("g", "a", NULL);
    produce_lines(300);
    wait_output(60);
    stop_gracefully(0, "a");
    stop_gracefully(1, "b");
    char *eb = err_of("b");
    cr_assert(strstr(eb, "continuing after batch"), "b never took a task over: %s", eb);
    free(eb);
    /* the first batch after a handoff is logged once per handoff, not every batch interval
     * of an idle task (review R3) */
    const char *names[] = {"a", "b"};
    for (int i = 0; i < 2; i++) {
        char *e = err_of(names[i]);
        int handoffs = 0, firsts = 0;
        for (const char *q = e; (q = strstr(q, "continuing after batch")); q++)
            handoffs++;
        for (const char *q = e; (q = strstr(q, "first batch of this checkpoint")); q++)
            firsts++;
        cr_assert(firsts <= handoffs, "%s: %d notices of the first batch for %d handoffs",
                  names[i], firsts, handoffs);
        free(e);
    }
}

static int count_of(const char *hay, const char *needle) {
    int n = 0;
    for (const char *q = hay; (q = strstr(q, needle)); q++)
        n++;
    return n;
}

/* A process whose input.topics differ from the others' would get, under the range
 * assignor, every partition of the topic only it reads, and run tasks another process
 * runs too (review R5: 40 lines twice on the mock). It is refused at its assignment,
 * naming what differs, and the output stays exactly once. */
Test(group, a_process_with_other_input_topics_is_refused_at_its_assignment) {
    const char *topics[] = {"in:2", "in2:2", "out:2", "g.progress:2", NULL};
    cp_broker_start(topics);
    produce_lines(200);
    procs[0] = start("g", "a", NULL);
    wait_output(60);
    refused("g", "b", (const char *[]){"input.topics=in2,in", NULL}, 1,
            (const char *[]){"same input.topics", "in2 [0 1]", NULL});
    produce_lines(200);
    wait_output(60);
    /* c takes a task over while there is no input: its idle loop must not repeat the
     * notice of its first batch every batch interval (review R3: 240 lines in 1.4 s) */
    procs[1] = start("g", "c", NULL);
    char *ec = NULL;
    for (int i = 0; i < 600 && !(ec && strstr(ec, "continuing after batch")); i++) {
        free(ec);
        usleep(100000);
        ec = err_of("c");
    }
    cr_assert(strstr(ec, "continuing after batch"), "c took no task over: %s", ec);
    free(ec);
    usleep(1000000); /* 20 batch intervals of an idle task */
    stop_gracefully(1, "c");
    ec = err_of("c");
    cr_assert(count_of(ec, "first batch of this checkpoint") <=
                  count_of(ec, "continuing after batch"),
              "the first batch's notice repeated: %s", ec);
    free(ec);
    stop_gracefully(0, "a");
    char *eb = err_of("b");
    cr_assert_eq(count_of(eb, "started (checkpoint"), 0, "b started tasks: %s", eb);
    free(eb);
}
