/*
 * test_group_topology.c — scale-out's handoff refuses state of another definition
 * (DESIGN.md, Scale-out: Handoff, the state check) with real `lockstep run` processes on a
 * `lockstep mock-broker`, running the upgrade plugin (tests/chaos/plugins/upgrade.c) in
 * group.mode=consumer with one task:
 *   - v1 (update_state_by_key "word-counts", state schema v1) runs the task and stops;
 *   - v3 (the same operator at schema v2) with a new checkpoint joins and would restore
 *     v1 bytes into v2 code: its local checkpoint check passes (it is empty), the
 *     handoff refuses (LK_ERR_TOPOLOGY naming the operator and both versions) and writes
 *     nothing: the output, the changelog and the progress topic keep their ends;
 *   - v1 with a new checkpoint then takes the task and its counts continue exactly;
 * and the other way round, a pipeline without an operator the previous process kept
 * state for (v2's word-lengths, v1 taking over) is refused as single mode refuses it,
 * unless topology.allow.state.drop=true.
 */
#define _GNU_SOURCE
#include "cliproc.h"
#include "mockutil.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NWORDS 10
#define CHANGELOG "u.word-counts.changelog"

static pid_t procs[3];
static rd_kafka_t *reader;
static int64_t expected[NWORDS];

static void setup(void) {
    cp_init();
    memset(expected, 0, sizeof expected);
}

static void teardown(void) {
    cp_fini_group(procs, 3, &reader);
}

TestSuite(group_topology, .init = setup, .fini = teardown, .timeout = 180);

static const char *plugin(int version) {
    char env[32];
    snprintf(env, sizeof env, "LK_UPGRADE_V%d", version);
    const char *p = getenv(env);
    cr_assert(p && p[0], "%s is not set (run through ctest)", env);
    return p;
}

/* `lockstep run` of upgrade plugin v<version> in group mode as app "u", checkpoint.dir
 * tu_dir/<ckpt>, stderr to tu_dir/<name>.err. */
static pid_t start_as(const char *name, const char *ckpt, int version, const char *extra) {
    const char *common[] = {"app.id=u",
                            cp_fmt("checkpoint.dir=%s", cp_path(ckpt)),
                            cp_fmt("kafka.bootstrap.servers=%s", cp_bootstraps),
                            cp_fmt("pipeline.plugin=%s", plugin(version)),
                            "group.mode=consumer", "group.session.timeout.ms=6000",
                            "batch.interval.ms=50", "max.records.per.partition=40",
                            "log.level=notice", "kafka.log_level=3",
                            "sink.kafka.timeout.ms=10000", "checkpoint.map.size=4M",
                            "input.topics=in", "output.topic=out",
                            "plugin.lengths.topic=lengths"};
    const char *kv[] = {extra, NULL};
    return cp_spawn_run(name, common, sizeof common / sizeof *common, kv);
}

static pid_t start(const char *ckpt, int version, const char *extra) {
    return start_as(ckpt, ckpt, version, extra);
}

/* rounds lines of every word ("w<i>", one word a line). */
static void produce_words(int rounds) {
    char v[16];
    for (int r = 0; r < rounds; r++)
        for (int w = 0; w < NWORDS; w++) {
            snprintf(v, sizeof v, "w%d", w);
            cp_produce("in", 0, NULL, v, 0);
            expected[w]++;
        }
    cp_flush();
}

/* The last count of each word in the output (key "w<i>", value its count as text). */
static void on_count(rd_kafka_message_t *m, void *o) {
    int64_t *last = o;
    char k[16], v[32];
    int w;
    cr_assert(m->key_len > 0 && m->key_len < sizeof k && m->len < sizeof v);
    memcpy(k, m->key, m->key_len);
    k[m->key_len] = 0;
    memcpy(v, m->payload, m->len);
    v[m->len] = 0;
    cr_assert_eq(sscanf(k, "w%d", &w), 1, "key %s", k);
    cr_assert(w >= 0 && w < NWORDS, "key %s", k);
    last[w] = atoll(v);
}

/* Wait (bounded) until every word's last count is its number of lines; names what the
 * processes said otherwise. */
static void wait_counts(int seconds, const char *name) {
    int64_t last[NWORDS];
    int wrong = 0;
    for (int i = 0; i < seconds * 4; i++) {
        memset(last, 0, sizeof last);
        cp_read_all(&reader, "test-group-topology", "out", 0, 1, on_count, last);
        wrong = 0;
        for (int w = 0; w < NWORDS; w++)
            wrong += last[w] != expected[w];
        if (!wrong)
            return;
        usleep(250000);
    }
    for (int w = 0; w < NWORDS; w++)
        if (last[w] != expected[w])
            cr_log_error("w%d: last count %lld, %lld lines", w, (long long)last[w],
                         (long long)expected[w]);
    char *e = cp_err_of(name);
    cr_assert_fail("%d of %d words with a wrong count after %d s; %s: %s", wrong, NWORDS,
                   seconds, name, e);
}

/* The high watermark of partition 0 of topic. */
static int64_t end_of(const char *topic) {
    if (!reader)
        reader = mu_reader(cp_bootstraps, "test-group-topology");
    int64_t lo, hi;
    cr_assert_eq(rd_kafka_query_watermark_offsets(reader, topic, 0, &lo, &hi, 5000), 0,
                 "offsets of %s", topic);
    return hi;
}

/* The process spawned as name must exit 1 within 40 s, its stderr holding every needle. */
static void expect_refusal(pid_t *pid, const char *name, const char *const *needles) {
    int rc = cp_wait_exit(pid, 40);
    char *err = cp_err_of(name);
    cr_assert_eq(rc, 1, "%s: exit status %d: %s", name, rc, err);
    for (size_t i = 0; needles[i]; i++)
        cr_assert(strstr(err, needles[i]), "%s's stderr does not say '%s': %s", name,
                  needles[i], err);
    cr_assert(!strstr(err, "restored operator") && !strstr(err, "continuing after batch"),
              "%s restored or continued the task: %s", name, err);
    const char *line = err;
    for (const char *q = err; (q = strstr(q, "\nlockstep: ")); q++)
        line = q + 1; /* the command's last word */
    cr_log_info("%s refused: %s", name, line);
    free(err);
}

Test(group_topology, a_handoff_of_state_of_another_schema_version_is_refused) {
    const char *topics[] = {"in:1", "out:1", "lengths:1", "u.progress:1", CHANGELOG ":1",
                            NULL};
    cp_broker_start(topics);
    produce_words(3);
    procs[0] = start("a", 1, NULL);
    wait_counts(30, "a");
    cp_stop_gracefully(&procs[0], "a");

    /* new input waits for b; b (word-counts at schema v2, a new checkpoint) takes the task
     * over from a's v1 state and must refuse before restoring or processing anything */
    produce_words(2);
    int64_t out = end_of("out"), changelog = end_of(CHANGELOG), progress = end_of("u.progress");
    cr_assert_gt(changelog, 0, "a wrote no state to " CHANGELOG);
    procs[1] = start("b", 3, NULL);
    const char *why[] = {"operator 'word-counts' (update_state_by_key): state schema version "
                         "changed from v1 to v2",
                         "Keep v1, or use a new uid to start from empty state",
                         "Nothing was restored or modified", "(LK_ERR_TOPOLOGY)", NULL};
    expect_refusal(&procs[1], "b", why);
    cr_assert_eq(end_of("out"), out, "b wrote output");
    cr_assert_eq(end_of(CHANGELOG), changelog, "b wrote to the changelog");
    cr_assert_eq(end_of("u.progress"), progress, "b wrote a progress record");

    /* v1 with a new checkpoint takes the task: a's state, restored, counts on exactly */
    procs[2] = start("c", 1, NULL);
    wait_counts(30, "c");
    cp_stop_gracefully(&procs[2], "c");
    char *ec = cp_err_of("c");
    cr_assert(strstr(ec, "restored operator 'word-counts'"), "c restored nothing: %s", ec);
    free(ec);
    /* and what the refusal advises, on b's checkpoint.dir: v1 again. Its checkpoint holds
     * no state (only v2's topology, recorded at b's start): not refused for it */
    produce_words(1);
    procs[1] = start_as("b-v1", "b", 1, NULL);
    wait_counts(30, "b-v1");
    cp_stop_gracefully(&procs[1], "b-v1");
}

Test(group_topology, a_handoff_that_would_orphan_state_is_refused_unless_allowed) {
    const char *topics[] = {"in:1", "out:1", "lengths:1", "u.progress:1", CHANGELOG ":1",
                            "u.word-lengths.changelog:1", NULL};
    cp_broker_start(topics);
    produce_words(3);
    /* v2: v1's word-counts and a second stateful operator, word-lengths */
    procs[0] = start("a", 2, NULL);
    wait_counts(30, "a");
    cp_stop_gracefully(&procs[0], "a");
    produce_words(1);
    int64_t out = end_of("out"), progress = end_of("u.progress");
    /* back to v1: word-lengths' state would be left behind, as single mode refuses */
    procs[1] = start("b", 1, NULL);
    const char *why[] = {"operator 'word-lengths' (update_state_by_key, state schema v1) kept "
                         "state in the process that ran the task before",
                         "is not in this pipeline: its state would be orphaned",
                         "set topology.allow.state.drop=true",
                         "Nothing was restored or modified", "(LK_ERR_TOPOLOGY)", NULL};
    expect_refusal(&procs[1], "b", why);
    cr_assert_eq(end_of("out"), out, "b wrote output");
    cr_assert_eq(end_of("u.progress"), progress, "b wrote a progress record");
    /* allowed: v1 takes the task with word-counts' state; word-lengths' stays unused */
    procs[2] = start("c", 1, "topology.allow.state.drop=true");
    wait_counts(30, "c");
    cp_stop_gracefully(&procs[2], "c");
    char *ec = cp_err_of("c");
    cr_assert(strstr(ec, "operator 'word-lengths' (update_state_by_key) of the process that ran "
                         "the task before is not in this pipeline; its changelog stays, unused"),
              "c does not say it leaves word-lengths' state: %s", ec);
    free(ec);
}

/* A cp_read_all callback: keeps the last record's value (a malloc'ed string in *o). */
static void on_last(rd_kafka_message_t *m, void *o) {
    char **last = o;
    free(*last);
    *last = strndup(m->payload, m->len);
}

Test(group_topology, a_progress_record_of_an_older_version_is_accepted) {
    const char *topics[] = {"in:1", "out:1", "lengths:1", "u.progress:1", CHANGELOG ":1",
                            NULL};
    cp_broker_start(topics);
    produce_words(3);
    procs[0] = start("a", 1, NULL);
    wait_counts(30, "a");
    cp_stop_gracefully(&procs[0], "a");
    /* the last progress record again, as a version before the state check wrote it:
     * without "state" (nothing tells what the state is, so nothing is refused) */
    char *last = NULL;
    cp_read_all(&reader, "test-group-topology", "u.progress", 0, 1, on_last, &last);
    cr_assert_not_null(last);
    json_error_t je;
    json_t *doc = json_loads(last, 0, &je);
    cr_assert(doc && json_is_object(json_object_get(doc, "state")),
              "a's last progress record has no \"state\": %s", last);
    cr_assert_eq(json_object_del(doc, "state"), 0);
    char *old = json_dumps(doc, JSON_COMPACT);
    cp_produce("u.progress", 0, "u", old, 0);
    cp_flush();
    free(old);
    json_decref(doc);
    free(last);
    produce_words(1);
    /* v3 (word-counts at schema v2) continues after it: accepted, as before the check */
    procs[1] = start("b", 3, NULL);
    wait_counts(30, "b");
    cp_stop_gracefully(&procs[1], "b");
    char *eb = cp_err_of("b");
    cr_assert(strstr(eb, "continuing after batch"), "b did not take the task over: %s", eb);
    free(eb);
}
