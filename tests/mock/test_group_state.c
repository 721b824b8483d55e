/*
 * test_group_state.c — scale-out's changelog end to end (DESIGN.md, Scale-out) with real
 * processes on a `lockstep mock-broker`: the word count of tests/mock/wc_runner.c (an
 * update_state_by_key "word-counts" written with the API) in group.mode=consumer, its
 * input keyed like its state (each line one word, word i always in partition i % 2), so
 * counting per task is exact. Tasks move between two processes and their counts move
 * with them:
 *   - a new process takes a task over: its new checkpoint restores the task's state in
 *     full from partition p of <app.id>.word-counts.changelog;
 *   - the first process takes it back with its stale checkpoint, whose state is exactly
 *     at its last delivered batch: it reads only the tail of the changelog (from the
 *     position recorded with that delivery) and applies every record it reads (all the
 *     other process's), which the test counts in the changelog itself;
 * and after every move the last count of each word in the output equals the number of
 * its lines. Then a process SIGKILLed right after new input (batches committed and not
 * delivered, or a transaction left open): its task restored by the other process and
 * taken back, counts exact (the mock cluster shows aborted records to read_committed
 * readers, DESIGN.md The mock cluster's limits: the restore keeps the last attempt of
 * each batch). And a changelog topic of another partition count than the input's is
 * refused before anything is created; a changelog that lost records (its log start moved)
 * stops a process whose new checkpoint would restore from it, naming it (not retried),
 * while the process whose checkpoint is current goes on.
 */
#define _GNU_SOURCE
#include "cliproc.h"
#include "mockutil.h"
#include "sink/provenance_int.h"
#include "testutil.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NWORDS 20
#define CHANGELOG "s.word-counts.changelog"

static pid_t procs[2];
static rd_kafka_t *reader;
static int64_t expected[NWORDS];

static void setup(void) {
    cp_init();
}

static void teardown(void) {
    cp_fini_group(procs, 2, &reader);
}

TestSuite(group_state, .init = setup, .fini = teardown, .timeout = 240);

/* A port nothing listens on right now (the kernel's choice). */
static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* The body of GET path over HTTP/1.0 (malloc'ed; the server closes after it). */
static char *http_body(int port, const char *path) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0, "nothing on port %d", port);
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    cr_assert_eq(write(fd, req, (size_t)n), n);
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    char chunk[4096];
    ssize_t k;
    while ((k = read(fd, chunk, sizeof chunk)) > 0)
        fwrite(chunk, 1, (size_t)k, m);
    fclose(m);
    close(fd);
    char *sep = strstr(buf, "\r\n\r\n");
    cr_assert_not_null(sep, "no HTTP response: %s", buf);
    char *body = strdup(sep + 4);
    free(buf);
    return body;
}

static int metrics_port;

/* wc_runner in group mode, checkpoint.dir tu_dir/<ckpt>, stderr to tu_dir/<ckpt>.err,
 * with setting `extra` (NULL: none); process a serves its metrics on metrics_port. */
static pid_t start_with(const char *ckpt, const char *extra) {
    const char *runner = getenv("LK_WC_RUNNER");
    cr_assert_not_null(runner, "LK_WC_RUNNER is not set (run through ctest)");
    const char *argv[] = {runner, cp_bootstraps, cp_path(ckpt), "0", "sink=kafka:counts",
                          "app.id=s", "group.mode=consumer", "group.session.timeout.ms=6000",
                          "batch.interval.ms=50", "max.records.per.partition=40",
                          "log.level=notice", "sink.kafka.timeout.ms=10000",
                          "checkpoint.map.size=4M", extra ? extra : "log.level=notice",
                          !strcmp(ckpt, "a") ? cp_fmt("metrics.listen=127.0.0.1:%d", metrics_port)
                                             : NULL,
                          NULL};
    return cp_spawn(argv, ckpt);
}

static pid_t start(const char *ckpt) {
    return start_with(ckpt, NULL);
}

static void stop_gracefully(int i, const char *name) {
    cp_stop_gracefully(&procs[i], name);
}

/* n lines, each one word: word w in partition w % 2 (the state's key is the input's). */
static void produce_words(int rounds) {
    char v[16];
    for (int r = 0; r < rounds; r++)
        for (int w = 0; w < NWORDS; w++) {
            snprintf(v, sizeof v, "w%d", w);
            cp_produce("lines", w % 2, NULL, v, 0);
            expected[w]++;
        }
    cp_flush();
}

static void read_all(const char *topic, int p0, int np,
                     void (*cb)(rd_kafka_message_t *m, void *o), void *o) {
    cp_read_all(&reader, "test-group-state", topic, p0, np, cb, o);
}

/* The last count of each word in the output, in log order (a word is in one partition). */
static void on_count(rd_kafka_message_t *m, void *o) {
    int64_t *last = o;
    char k[16];
    int w;
    cr_assert(m->key_len > 0 && m->key_len < sizeof k);
    memcpy(k, m->key, m->key_len);
    k[m->key_len] = 0;
    cr_assert_eq(sscanf(k, "w%d", &w), 1, "key %s", k);
    cr_assert(w >= 0 && w < NWORDS && m->len == sizeof(int64_t));
    memcpy(&last[w], m->payload, sizeof(int64_t));
}

/* Wait (bounded) until every word's last count is its number of lines. */
static void wait_counts(int seconds) {
    int64_t last[NWORDS];
    int wrong = 0;
    for (int i = 0; i < seconds * 4; i++) {
        memset(last, 0, sizeof last);
        read_all("counts", 0, 2, on_count, last);
        wrong = 0;
        for (int w = 0; w < NWORDS; w++)
            wrong += last[w] != expected[w];
        if (!wrong)
            return;
        usleep(250000);
    }
    char *a = cp_err_of("a"), *b = cp_err_of("b");
    for (int w = 0; w < NWORDS; w++)
        if (last[w] != expected[w])
            cr_log_error("w%d: last count %lld, %lld lines", w, (long long)last[w],
                         (long long)expected[w]);
    cr_assert_fail("%d of %d words with a wrong count after %d s\na: %s\nb: %s", wrong,
                   NWORDS, seconds, a, b);
}

typedef struct {
    int64_t from; /* count records at or after this offset */
    long total, after, ours;
} changelog_count_t;

static void on_changelog(rd_kafka_message_t *m, void *o) {
    changelog_count_t *c = o;
    rd_kafka_headers_t *h;
    lk__prov_t pv;
    cr_assert(!rd_kafka_message_headers(m, &h) && lk__prov_get(h, &pv),
              "a changelog record without provenance");
    c->ours += pv.sink_len == strlen("word-counts") && !memcmp(pv.sink, "word-counts", 11);
    c->total++;
    c->after += m->offset >= c->from;
}

/* The restore line of log `log` (the last one): its partition, mode, read and applied
 * counts and its first offset. 0 if there is none. */
static int last_restore(const char *log, int *partition, char *mode, long *read, long *applied,
                        long long *from) {
    const char *q = NULL;
    for (const char *p = log; (p = strstr(p, "restored operator 'word-counts'")); p++)
        q = p;
    if (!q)
        return 0;
    return sscanf(q,
                  "restored operator 'word-counts' from " CHANGELOG
                  "[%d] (%4s after batch %*u, offsets %lld..%*d): %ld changelog records "
                  "read, %ld applied",
                  partition, mode, from, read, applied) == 5;
}

Test(group_state, keyed_state_moves_with_its_task_full_then_tail) {
    const char *topics[] = {"lines:2", "counts:2", "s.progress:2", CHANGELOG ":2", NULL};
    cp_broker_start(topics);
    produce_words(10);
    metrics_port = free_port();
    procs[0] = start("a");
    wait_counts(60);

    /* b joins with a new checkpoint: the task it gets restores its counts in full */
    procs[1] = start("b");
    char *eb = NULL;
    for (int i = 0; i < 240; i++) {
        free(eb);
        eb = cp_err_of("b");
        if (strstr(eb, "restored operator"))
            break;
        usleep(250000);
    }
    int p;
    char mode[8];
    long read, applied;
    long long from;
    cr_assert(last_restore(eb, &p, mode, &read, &applied, &from),
              "b restored no state: %s", eb);
    cr_assert_str_eq(mode, "full", "%s", eb);
    cr_assert(applied > 0 && read == applied, "read %ld, applied %ld", read, applied);
    cr_assert_eq(from, 0);
    cr_log_info("b, task %d: full restore, %ld records read, %ld applied", p, read, applied);
    free(eb);
    produce_words(10);
    wait_counts(60);

    /* b leaves: a takes the task back with its stale checkpoint, exactly at its last
     * delivered batch (it delivered before the rebalance took the task): a tail */
    stop_gracefully(1, "b");
    char *ea = NULL;
    int q = -1;
    for (int i = 0; i < 240; i++) {
        free(ea);
        ea = cp_err_of("a");
        if (last_restore(ea, &q, mode, &read, &applied, &from))
            break;
        usleep(250000);
    }
    cr_assert(q == p, "a restored task %d, b had task %d: %s", q, p, ea);
    cr_assert_str_eq(mode, "tail", "%s", ea);
    changelog_count_t c = {.from = from};
    read_all(CHANGELOG, p, 1, on_changelog, &c);
    cr_assert_eq(c.ours, c.total, "records of another writer in the changelog");
    /* what a read is exactly what b wrote after a's last delivery; none of a's own */
    cr_assert(read > 0 && applied == read, "read %ld, applied %ld: %s", read, applied, ea);
    cr_assert_eq(read, c.after, "read %ld, the changelog holds %ld from offset %lld", read,
                 c.after, from);
    cr_assert_lt(read, c.total, "the tail read the whole changelog (%ld records)", c.total);
    cr_log_info("a, task %d: tail from offset %lld, %ld records read, %ld applied, of %ld in "
                "the partition", p, from, read, applied, c.total);
    free(ea);
    produce_words(10);
    wait_counts(60);
    /* reported: the metrics count what the tail applied, /progress names the restore */
    char *metrics = http_body(metrics_port, "/metrics");
    char want[128];
    snprintf(want, sizeof want, "task=\"%d\",mode=\"tail\"} %ld\n", p, applied);
    const char *line = strstr(metrics, "lockstep_restore_records_total{");
    cr_assert(line && strstr(line, want), "no sample ending %s in\n%s", want, metrics);
    cr_assert(strstr(metrics, "lockstep_restore_seconds{"), "%s", metrics);
    free(metrics);
    char *progress = http_body(metrics_port, "/progress");
    snprintf(want, sizeof want, "\"restore\":{\"mode\":\"tail\",\"recordsRead\":%ld,", read);
    cr_assert(strstr(progress, want), "/progress does not say %s: %s", want, progress);
    free(progress);
    stop_gracefully(0, "a");
}

/* Wait (bounded) until the log of ckpt says it restored state n times or more. */
static void wait_restores(const char *ckpt, int n, int seconds) {
    int seen = 0;
    char *e = NULL;
    for (int i = 0; i < seconds * 4 && seen < n; i++) {
        free(e);
        e = cp_err_of(ckpt);
        seen = 0;
        for (const char *q = e; (q = strstr(q, "state restored from the changelog")); q++)
            seen++;
        if (seen < n)
            usleep(250000);
    }
    cr_assert_geq(seen, n, "%s restored state %d times, not %d: %s", ckpt, seen, n, e);
    free(e);
}

Test(group_state, a_process_killed_with_batches_in_flight_loses_no_count) {
    const char *topics[] = {"lines:2", "counts:2", "s.progress:2", CHANGELOG ":2", NULL};
    cp_broker_start(topics);
    produce_words(10);
    metrics_port = free_port();
    procs[0] = start("a");
    procs[1] = start("b");
    wait_counts(60);
    /* a SIGKILL right after new input: a's batches may be committed in its checkpoint and
     * not delivered, or in a transaction the kill leaves open; b takes a's task after the
     * session timeout, restoring it in full into its new checkpoint */
    produce_words(10);
    usleep(100000);
    cp_stop(&procs[0]);
    wait_restores("b", 1, 60);
    wait_counts(90);
    /* b runs both tasks for a while: whichever a gets back, b wrote it last */
    produce_words(10);
    wait_counts(60);
    /* a back with its checkpoints (a task possibly ahead of anything Kafka has): it
     * takes a task back and rebuilds its state, and every count is still exact */
    procs[0] = start("a");
    wait_restores("a", 1, 60);
    produce_words(10);
    wait_counts(60);
    stop_gracefully(0, "a");
    stop_gracefully(1, "b");
    char *ea = cp_err_of("a"), *eb = cp_err_of("b");
    cr_log_info("a: %s", strstr(ea, "state restored") ? strstr(ea, "state restored") : "");
    cr_log_info("b: %s", strstr(eb, "state restored") ? strstr(eb, "state restored") : "");
    free(ea);
    free(eb);
}

Test(group_state, a_changelog_of_another_partition_count_is_refused) {
    const char *topics[] = {"lines:2", "counts:2", "s.progress:2", CHANGELOG ":3", NULL};
    cp_broker_start(topics);
    procs[0] = start("a");
    int rc = cp_wait_exit(&procs[0], 60);
    char *err = cp_err_of("a");
    cr_assert_eq(rc, 1, "exit status %d: %s", rc, err);
    const char *needles[] = {"the input has 2 partitions", "changelog of operator "
                             "'word-counts'", CHANGELOG ", has 3", "nothing was modified"};
    for (size_t i = 0; i < sizeof needles / sizeof *needles; i++)
        cr_assert(strstr(err, needles[i]), "stderr does not say '%s': %s", needles[i], err);
    struct stat st;
    cr_assert_neq(stat(cp_path("a"), &st), 0, "checkpoint.dir %s was created", cp_path("a"));
    free(err);
}

/* Records deleted from the changelog (the mock keeps ~5 MiB per partition and deletes
 * the oldest past it, as retention or DeleteRecords would): a process with a new
 * checkpoint cannot restore the tasks' state exactly, and stops with LK_ERR_DATA_LOSS
 * naming the changelog partition, at its first handoff, even with on.data.loss=skip
 * (which skips lost input, never lost state). Before the fix it restored from the log
 * start without a word (the counts of the deleted records lost); with the refusal
 * retried as a sink error (with on.data.loss=skip the batch loop retries data loss too)
 * it never stopped. The process whose checkpoints are current (no handoff, so no
 * restore) goes on with exact counts. */
Test(group_state, a_changelog_that_lost_records_stops_a_new_checkpoint) {
    const char *topics[] = {"lines:2", "counts:2", "s.progress:2", CHANGELOG ":2", NULL};
    cp_broker_start(topics);
    produce_words(10);
    procs[0] = start("a");
    wait_counts(60);
    stop_gracefully(0, "a");
    static char big[10000]; /* no provenance: never applied; ~8 MB a partition */
    memset(big, 'y', sizeof big - 1);
    for (int i = 0; i < 800; i++)
        for (int p = 0; p < 2; p++)
            cp_produce(CHANGELOG, p, "pad", big, 0);
    cp_flush();
    procs[1] = start_with("b", "on.data.loss=skip");
    int rc = cp_wait_exit(&procs[1], 60);
    char *err = cp_err_of("b");
    cr_assert_eq(rc, 1, "exit status %d: %s", rc, err);
    const char *needles[] = {"(LK_ERR_DATA_LOSS)", "cannot restore the state of operator "
                             "'word-counts' from its changelog " CHANGELOG "[",
                             "a full restore reads it from offset 0, but its log starts at "
                             "offset", "cannot be restored exactly", "nothing was modified"};
    for (size_t i = 0; i < sizeof needles / sizeof *needles; i++)
        cr_assert(strstr(err, needles[i]), "stderr does not say '%s': %s", needles[i], err);
    cr_assert_not(strstr(err, "retrying in"), "the refusal was retried: %s", err);
    cr_assert_not(strstr(err, "restored operator"), "state restored: %s", err);
    free(err);
    procs[0] = start("a");
    produce_words(10);
    wait_counts(60);
    stop_gracefully(0, "a");
}
