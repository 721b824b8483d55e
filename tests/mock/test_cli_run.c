/*
 * test_cli_run.c — `lockstep run` end to end, as a user runs it: real processes only.
 * A `lockstep mock-broker` process is the Kafka cluster; this test produces known input
 * with librdkafka, starts `lockstep run -X ...` in the background, waits (bounded) until
 * progress.log says every input record was committed, stops it with SIGTERM and checks
 * exit status 0, then checks the EXACT output: Kafka topics read with a read_committed
 * consumer (the latest value per key by the batch its provenance header names) and the
 * files under output.dir/<partition>/<app>-<batch>.jsonl.
 *
 * Covered: every built-in pipeline (wordcount, count-by-key, sum-by-key, copy with
 * output.partition=keep to a topic and to files), the example plugin with a plugin.*
 * setting, malformed input (dead letters to a topic and to files, the accumulator
 * errors.malformed, errors.tolerance=none stopping at the bad record without moving
 * its offset), progress.log fields and the live progress line on a terminal (a pty),
 * examples/wordcount.properties with -c, configuration errors (exit 2, naming the key
 * and the reason), `mock-broker` arguments and `lockstep demo`.
 *
 * The mock cluster shows aborted transactional records to read_committed consumers,
 * but nothing here crashes, so no transaction is aborted and a plain read is exact.
 * Paths come from ctest: LK_CLI (the lockstep binary), LK_PLUGIN (the example plugin),
 * LK_SOURCE_DIR (the source tree, for examples/).
 */
#define _GNU_SOURCE
#include "cliproc.h"
#include "mockutil.h"
#include "sink/provenance_int.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pty.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *cli;
static int run_tty = -1; /* >= 0: the next run's stdout is a terminal; this is its master */
static const char *run_conf_file; /* -c FILE before every -X of the next run */
static rd_kafka_t *consumer;

static void setup(void) {
    cp_init();
    cli = cp_cli();
}

static void teardown(void) {
    cp_stop(&cp_run_pid);
    if (consumer) { /* before the broker stops under it */
        rd_kafka_consumer_close(consumer);
        rd_kafka_destroy(consumer);
        consumer = NULL;
    }
    cp_fini();
}

TestSuite(cli_run, .init = setup, .fini = teardown, .timeout = 120);

/* ---- processes ---- */

/* `lockstep run` with the common settings and the given key=value settings; stdout and
 * stderr go to files in the scratch directory (tu_dir). */
static pid_t run_start_v(const char *app, const char *const *kv) {
    static char ckpt[700], boot[700], appid[100], plog[700];
    snprintf(appid, sizeof appid, "app.id=%s", app);
    snprintf(ckpt, sizeof ckpt, "checkpoint.dir=%s", cp_path("ckpt"));
    snprintf(boot, sizeof boot, "kafka.bootstrap.servers=%s", cp_bootstraps);
    snprintf(plog, sizeof plog, "progress.log=%s", cp_path("progress.log"));
    const char *common[] = {appid, ckpt, boot, plog, "kafka.fetch.wait.max.ms=10",
                            "batch.interval.ms=0", "log.level=warning", "kafka.log_level=3",
                            "checkpoint.map.size=4M", "sink.kafka.timeout.ms=10000",
                            /* examples/wordcount.properties serves metrics on a fixed port,
                             * which parallel runs would share: off here (test_metrics.c) */
                            "metrics.listen="};
    const char *argv[80] = {cli, "run"};
    int n = 2;
    if (run_conf_file) {
        argv[n++] = "-c";
        argv[n++] = run_conf_file;
    }
    for (size_t i = 0; i < sizeof common / sizeof *common; i++) {
        argv[n++] = "-X";
        argv[n++] = common[i];
    }
    for (int i = 0; kv[i]; i++) {
        argv[n++] = "-X";
        argv[n++] = kv[i];
    }
    argv[n] = NULL;
    int tty = -1;
    if (run_tty >= 0)
        cr_assert_eq(openpty(&run_tty, &tty, NULL, NULL, NULL), 0, "openpty: %s", strerror(errno));
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int o = tty >= 0 ? tty : open(cp_path("stdout.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(cp_path("stderr.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(o, 1);
        dup2(e, 2);
        execv(cli, (char **)argv);
        _exit(127);
    }
    if (tty >= 0)
        close(tty);
    return pid;
}

/* What the run wrote to its terminal (after it exited). */
static char *tty_output(void) {
    char *buf = NULL;
    size_t n = 0;
    FILE *m = open_memstream(&buf, &n);
    char chunk[4096];
    ssize_t k;
    while ((k = read(run_tty, chunk, sizeof chunk)) > 0) /* EIO once drained */
        fwrite(chunk, 1, (size_t)k, m);
    fclose(m);
    close(run_tty);
    run_tty = -1;
    return buf;
}

#define RUN_START(app, ...)                                                           \
    (cp_run_pid = run_start_v(app, (const char *const[]){__VA_ARGS__, NULL}))

/* ---- progress.log ---- */

typedef struct {
    int lines;
    long long input_rows, output_rows;
    long long last_outbox, last_lag;
    long long last_batch;
} progress_sum_t;

/* Parse progress.log; when check, every line must have the documented fields. */
static progress_sum_t progress_read(int check) {
    progress_sum_t s = {0};
    char *text = cp_slurp(cp_path("progress.log"));
    char *save = NULL;
    for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        json_error_t je;
        json_t *d = json_loads(l, 0, &je);
        if (!d) {
            cr_assert(!check, "progress.log line is not JSON (%s): %s", je.text, l);
            continue; /* a line being written */
        }
        json_t *batch = json_object_get(d, "batch"), *in = json_object_get(d, "numInputRows"),
               *out = json_object_get(d, "numOutputRows"),
               *ob = json_object_get(d, "outboxBytes"), *lag = json_object_get(d, "lag");
        if (check) {
            static const char *const ints[] = {"batch", "batchTime", "timestamp",
                                               "numInputRows", "inputBytes", "numOutputRows",
                                               "outboxBytes"};
            for (size_t i = 0; i < sizeof ints / sizeof *ints; i++)
                cr_assert(json_is_integer(json_object_get(d, ints[i])), "%s in %s", ints[i], l);
            cr_assert(json_is_number(json_object_get(d, "inputRowsPerSecond")), "%s", l);
            json_t *dur = json_object_get(d, "durationMs");
            static const char *const phases[] = {"plan", "fetch", "process", "commit",
                                                 "deliver"};
            for (size_t i = 0; i < 5; i++) {
                json_t *v = json_object_get(dur, phases[i]);
                cr_assert(json_is_number(v) && json_number_value(v) >= 0, "durationMs.%s in %s",
                          phases[i], l);
            }
            cr_assert(json_is_integer(json_object_get(lag, "total")), "lag.total in %s", l);
            cr_assert_eq(json_integer_value(batch), s.last_batch + 1,
                         "one line per committed batch, in order: %s", l);
            cr_assert_gt(json_integer_value(json_object_get(d, "batchTime")), 1600000000000LL);
            cr_assert(json_integer_value(in) == 0 || json_integer_value(json_object_get(d, "inputBytes")) > 0,
                      "%s", l);
        }
        s.lines++;
        s.last_batch = json_integer_value(batch);
        s.input_rows += json_integer_value(in);
        s.output_rows += json_integer_value(out);
        s.last_outbox = json_integer_value(ob);
        s.last_lag = json_integer_value(json_object_get(lag, "total"));
        json_decref(d);
    }
    free(text);
    return s;
}

/* Wait (bounded) until progress.log counts `rows` input records and nothing is left to
 * deliver; the run process must still be running. */
static void wait_input(long long rows) {
    progress_sum_t s = {0};
    for (int i = 0; i < 3000; i++) {
        s = progress_read(0);
        if (s.input_rows >= rows && s.last_outbox == 0)
            return;
        int st;
        if (waitpid(cp_run_pid, &st, WNOHANG) == cp_run_pid) {
            cp_run_pid = 0;
            char *err = cp_slurp(cp_path("stderr.txt"));
            cr_assert_fail("lockstep run exited early (status %d): %s", st, err);
        }
        usleep(10000);
    }
    cr_assert_fail("progress.log: %lld of %lld input records after 30 s", s.input_rows, rows);
}

/* SIGTERM, then exit status 0 (a graceful stop). */
static void run_stop(void) {
    kill(cp_run_pid, SIGTERM);
    int rc = cp_wait_exit(&cp_run_pid, 30);
    char *err = cp_slurp(cp_path("stderr.txt"));
    cr_assert_eq(rc, 0, "lockstep run exit status %d after SIGTERM; stderr: %s", rc, err);
    cr_assert(!strstr(err, "runtime error") && !strstr(err, "Sanitizer"), "%s", err);
    free(err);
}

/* ---- producing and reading Kafka ---- */

static void produce(const char *topic, int partition, const char *key, const char *value) {
    cp_produce(topic, partition, key, value, 0);
}

typedef struct {
    int32_t partition;
    int64_t offset, batch;
    char *key; /* NULL: no key */
    char *value;
    char *headers; /* Kafka only: "name=value;" per header other than lockstep.*, in order */
    int64_t ts;    /* Kafka only: the timestamp */
} rec_t;

typedef struct {
    rec_t r[512];
    size_t n;
} recs_t;

static void recs_free(recs_t *rs) {
    for (size_t i = 0; i < rs->n; i++) {
        free(rs->r[i].key);
        free(rs->r[i].value);
        free(rs->r[i].headers);
    }
    rs->n = 0;
}

/* Every record of topic, partition by partition in offset order, read_committed. */
static void read_topic(const char *topic, recs_t *rs) {
    if (!consumer)
        consumer = mu_reader(cp_bootstraps, "test-cli-run");
    memset(rs, 0, sizeof *rs);
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(consumer, topic, NULL);
    const struct rd_kafka_metadata *md;
    cr_assert_eq(rd_kafka_metadata(consumer, 0, rkt, &md, 5000), 0, "metadata %s", topic);
    rd_kafka_topic_destroy(rkt);
    int np = md->topics[0].partition_cnt;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(np);
    int pending = 0;
    for (int i = 0; i < np; i++) {
        int32_t p = md->topics[0].partitions[i].id;
        int64_t lo, hi;
        cr_assert_eq(rd_kafka_query_watermark_offsets(consumer, topic, p, &lo, &hi, 5000), 0);
        if (hi > lo) {
            rd_kafka_topic_partition_list_add(l, topic, p)->offset = lo;
            pending++;
        }
    }
    rd_kafka_metadata_destroy(md);
    cr_assert_eq(rd_kafka_assign(consumer, l), 0);
    rd_kafka_topic_partition_list_destroy(l);
    recs_t *unsorted = calloc(1, sizeof *unsorted);
    for (int polls = 0; pending > 0 && polls < 2000; polls++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 10);
        if (!m)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            pending--;
        } else {
            cr_assert_eq(m->err, 0, "reading %s: %s", topic, rd_kafka_message_errstr(m));
            cr_assert_lt(unsorted->n, sizeof unsorted->r / sizeof *unsorted->r);
            rec_t *r = &unsorted->r[unsorted->n++];
            r->partition = m->partition;
            r->offset = m->offset;
            r->key = m->key ? strndup(m->key, m->key_len) : NULL;
            r->value = strndup(m->payload ? m->payload : "", m->len);
            rd_kafka_headers_t *h;
            const void *v;
            size_t n;
            lk__prov_t pv;
            if (rd_kafka_message_headers(m, &h))
                h = NULL;
            r->batch = lk__prov_get(h, &pv) ? (int64_t)pv.batch : -1;
            r->ts = rd_kafka_message_timestamp(m, NULL);
            char *text = NULL;
            size_t tlen = 0;
            FILE *tf = open_memstream(&text, &tlen);
            const char *hn;
            for (size_t i = 0; h && !rd_kafka_header_get_all(h, i, &hn, &v, &n); i++)
                if (strcmp(hn, LK__PROV_HEADER) && strncmp(hn, "lockstep.", 9))
                    fprintf(tf, "%s=%.*s;", hn, v ? (int)n : 6, v ? (const char *)v : "<null>");
            fclose(tf);
            r->headers = text;
        }
        rd_kafka_message_destroy(m);
    }
    cr_assert_eq(pending, 0, "could not read %s to its end", topic);
    rd_kafka_assign(consumer, NULL);
    /* partition, then offset order */
    for (int32_t p = 0; p < 64; p++)
        for (size_t i = 0; i < unsorted->n; i++)
            if (unsorted->r[i].partition == p)
                rs->r[rs->n++] = unsorted->r[i];
    cr_assert_eq(rs->n, unsorted->n);
    for (size_t i = 1; i < rs->n; i++)
        if (rs->r[i].partition == rs->r[i - 1].partition)
            cr_assert_gt(rs->r[i].offset, rs->r[i - 1].offset);
    free(unsorted);
}

/* ---- key → value tables, compared as sorted "key=value" text ---- */

typedef struct {
    char key[64], value[64];
    int64_t batch;
} kv_t;

typedef struct {
    kv_t e[128];
    size_t n;
} table_t;

static void table_put(table_t *t, const char *key, const char *value, int64_t batch) {
    for (size_t i = 0; i < t->n; i++)
        if (!strcmp(t->e[i].key, key)) {
            if (batch >= t->e[i].batch) {
                snprintf(t->e[i].value, sizeof t->e[i].value, "%s", value);
                t->e[i].batch = batch;
            }
            return;
        }
    cr_assert_lt(t->n, sizeof t->e / sizeof *t->e);
    kv_t *e = &t->e[t->n++];
    snprintf(e->key, sizeof e->key, "%s", key);
    snprintf(e->value, sizeof e->value, "%s", value);
    e->batch = batch;
}

static int kv_cmp(const void *a, const void *b) {
    return strcmp(((const kv_t *)a)->key, ((const kv_t *)b)->key);
}

/* "k1=v1 k2=v2 ..." sorted by key; static storage, two buffers. */
static const char *table_text(table_t *t) {
    static char bufs[2][8192];
    static int next;
    char *b = bufs[next++ % 2];
    qsort(t->e, t->n, sizeof *t->e, kv_cmp);
    size_t off = 0;
    b[0] = 0;
    for (size_t i = 0; i < t->n && off < sizeof bufs[0] - 1; i++)
        off += (size_t)snprintf(b + off, sizeof bufs[0] - off, "%s%s=%s", i ? " " : "",
                                t->e[i].key, t->e[i].value);
    return b;
}

/* The latest value of each key in a Kafka sink's output (by the batch of its provenance). */
static void kafka_latest(const char *topic, table_t *t) {
    recs_t *rs = calloc(1, sizeof *rs);
    read_topic(topic, rs);
    memset(t, 0, sizeof *t);
    for (size_t i = 0; i < rs->n; i++) {
        cr_assert_gt(rs->r[i].batch, 0, "record without a provenance header");
        cr_assert_not_null(rs->r[i].key);
        table_put(t, rs->r[i].key, rs->r[i].value, rs->r[i].batch);
    }
    recs_free(rs);
    free(rs);
}

/* ---- files under DIR/<partition>/, one .jsonl per batch ---- */

static int name_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Records of the files of one partition directory, in batch (file name) order. Returns
 * the number of files; missing directory: 0. */
static int read_files(const char *dir, int partition, recs_t *rs) {
    char pdir[700];
    snprintf(pdir, sizeof pdir, "%s/%d", dir, partition);
    memset(rs, 0, sizeof *rs);
    DIR *d = opendir(pdir);
    if (!d)
        return 0;
    char *names[256];
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        size_t len = strlen(de->d_name);
        cr_assert(len > 6 && !strcmp(de->d_name + len - 6, ".jsonl"), "unexpected file %s/%s",
                  pdir, de->d_name);
        cr_assert_lt(n, 256);
        names[n++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, name_cmp);
    for (int i = 0; i < n; i++) {
        char file[1000];
        snprintf(file, sizeof file, "%s/%s", pdir, names[i]);
        char *text = cp_slurp(file);
        char *save = NULL;
        for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
            json_error_t je;
            json_t *o = json_loads(l, 0, &je);
            cr_assert_not_null(o, "%s: not JSON: %s", file, l);
            json_t *k = json_object_get(o, "key"), *v = json_object_get(o, "value");
            cr_assert(json_is_string(k) || json_is_null(k), "%s: key in %s", file, l);
            cr_assert(json_is_string(v), "%s: value in %s", file, l);
            cr_assert(json_is_integer(json_object_get(o, "timestamp")), "%s: %s", file, l);
            cr_assert_lt(rs->n, sizeof rs->r / sizeof *rs->r);
            rec_t *r = &rs->r[rs->n++];
            r->partition = partition;
            r->batch = i + 1; /* file order = batch order */
            r->key = json_is_string(k) ? strdup(json_string_value(k)) : NULL;
            r->value = strdup(json_string_value(v));
            json_decref(o);
        }
        free(text);
        free(names[i]);
    }
    return n;
}

static int partition_dirs(const char *dir) {
    int n = tu_dir_entries(dir);
    return n < 0 ? 0 : n;
}

/* Latest value per key of files in DIR/0 (records made by operators go to partition 0). */
static void files_latest(const char *dir, table_t *t) {
    cr_assert_eq(partition_dirs(dir), 1, "%s: derived records go to partition 0 only", dir);
    recs_t *rs = calloc(1, sizeof *rs);
    cr_assert_gt(read_files(dir, 0, rs), 0, "no files in %s/0", dir);
    memset(t, 0, sizeof *t);
    for (size_t i = 0; i < rs->n; i++)
        table_put(t, rs->r[i].key, rs->r[i].value, rs->r[i].batch);
    recs_free(rs);
    free(rs);
}

/* ---- `lockstep checkpoint inspect --json` ---- */

static json_t *inspect(void) {
    char cmd[1200], *out;
    snprintf(cmd, sizeof cmd, "'%s' checkpoint inspect '%s' --json", cli, cp_path("ckpt"));
    cr_assert_eq(tu_run(cmd, &out), 0, "%s: %s", cmd, out);
    json_error_t je;
    json_t *d = json_loads(out, 0, &je);
    cr_assert_not_null(d, "inspect --json: %s: %s", je.text, out);
    free(out);
    return d;
}

static int64_t acc_of(json_t *doc, const char *name) {
    json_t *v = json_object_get(json_object_get(doc, "accumulators"), name);
    return json_is_integer(v) ? json_integer_value(v) : -1;
}

static int64_t offset_of(json_t *doc, const char *topic, int partition) {
    json_t *a = json_object_get(doc, "offsets"), *o;
    size_t i;
    json_array_foreach(a, i, o) {
        if (!strcmp(json_string_value(json_object_get(o, "topic")), topic) &&
            json_integer_value(json_object_get(o, "partition")) == partition)
            return json_integer_value(json_object_get(o, "offset"));
    }
    return -1;
}

/* ---- built-in pipelines ---- */

static const char *const wc_lines[] = {
    "The quick brown fox",   "jumps over the lazy dog", "THE DOG sleeps; the fox runs!",
    "a b c a b a",           "Don't stop",              "over, and over, and OVER",
};

/* the built-in word splitting for plain ASCII text: letters, digits and ', lower-cased,
 * trailing ' dropped */
static void count_words(table_t *t, const char *line, long min_len, int by_length) {
    const char *p = line;
    while (*p) {
        while (*p && !(isalnum((unsigned char)*p)))
            p++;
        char w[64];
        size_t n = 0;
        while (*p && (isalnum((unsigned char)*p) || (!by_length && *p == '\''))) {
            w[n++] = (char)tolower((unsigned char)*p);
            p++;
        }
        while (n && w[n - 1] == '\'')
            n--;
        w[n] = 0;
        if (!n || (long)n < min_len)
            continue;
        char key[64];
        if (by_length)
            snprintf(key, sizeof key, "%zu", n);
        else
            snprintf(key, sizeof key, "%s", w);
        size_t i;
        for (i = 0; i < t->n && strcmp(t->e[i].key, key); i++)
            ;
        long long c = i < t->n ? atoll(t->e[i].value) : 0;
        char v[32];
        snprintf(v, sizeof v, "%lld", c + 1);
        table_put(t, key, v, 0);
    }
}

Test(cli_run, wordcount_to_topic_and_files) {
    /* examples/wordcount.properties (the README's): input.topics=lines,
     * output.topic=word-counts; app.id, checkpoint.dir and the brokers overridden */
    const char *src = getenv("LK_SOURCE_DIR");
    cr_assert_not_null(src, "LK_SOURCE_DIR is not set (run through ctest)");
    run_conf_file = cp_fmt("%s/examples/wordcount.properties", src);
    cp_broker_start((const char *const[]){"lines:2", "word-counts:3", NULL});
    table_t want = {0};
    int n = 0;
    for (int round = 0; round < 5; round++)
        for (size_t i = 0; i < sizeof wc_lines / sizeof *wc_lines; i++, n++) {
            produce("lines", n % 2, NULL, wc_lines[i]);
            count_words(&want, wc_lines[i], 1, 0);
        }
    cp_flush();
    run_tty = 0; /* stdout on a terminal: the live progress line */
    RUN_START("wc", cp_fmt("output.dir=%s", cp_path("files")));
    wait_input(n);
    run_stop();
    cr_assert_str_eq(table_text(&want),
                     "a=15 and=10 b=10 brown=5 c=5 dog=10 don't=5 fox=10 jumps=5 lazy=5 over=20 "
                     "quick=5 runs=5 sleeps=5 stop=5 the=20",
                     "the test's own count");
    table_t got;
    kafka_latest("word-counts", &got);
    cr_assert_str_eq(table_text(&got), table_text(&want), "Kafka output (latest per key)");
    files_latest(cp_path("files"), &got);
    cr_assert_str_eq(table_text(&got), table_text(&want), "files (latest per key)");
    json_t *doc = inspect();
    cr_assert_eq(offset_of(doc, "lines", 0), n / 2);
    cr_assert_eq(offset_of(doc, "lines", 1), n / 2);
    cr_assert_str_eq(json_string_value(json_object_get(doc, "app_id")), "wc");
    cr_assert_eq(progress_read(1).input_rows, n);
    json_decref(doc);
    char *out = tty_output();
    cr_assert(strstr(out, "\r\033[Kbatch 1 | in ") && strstr(out, "rec/s | lag lines 0") &&
                  strstr(out, "| outbox 0 B"),
              "live progress line on a terminal: %s", out);
    cr_assert_eq(out[strlen(out) - 1], '\n', "the line is ended at exit");
    free(out);
}

/* A multiset of records as sorted "key|value" lines (key "-" for none). */
static const char *recs_text(const recs_t *rs) {
    static char bufs[2][8192];
    static int next;
    char *b = bufs[next++ % 2];
    char *lines[512];
    for (size_t i = 0; i < rs->n; i++)
        cr_assert(asprintf(&lines[i], "%s|%s", rs->r[i].key ? rs->r[i].key : "-",
                           rs->r[i].value) > 0);
    qsort(lines, rs->n, sizeof *lines, name_cmp);
    size_t off = 0;
    b[0] = 0;
    for (size_t i = 0; i < rs->n; i++) {
        off += (size_t)snprintf(b + off, sizeof bufs[0] - off, "%s\n", lines[i]);
        free(lines[i]);
    }
    return b;
}

Test(cli_run, count_by_key_dead_letters_to_a_topic_and_progress_log) {
    cp_broker_start((const char *const[]){"in:2", "out:3", "dead:1", NULL});
    static const char *const in[2][6][2] = {
        {{NULL, "{\"user\":\"alice\"}"},
         {"b1", "{\"user\":\"bob\",\"x\":1}"},
         {"k1", "not json"},
         {NULL, "{\"user\":\"alice\"}"},
         {"k2", "{\"name\":\"carol\"}"},
         {NULL, "{\"user\":7}"}},
        {{NULL, "{\"user\":\"bob\"}"},
         {NULL, "[1,2]"},
         {NULL, "{\"user\":\"alice\"}"},
         {NULL, "{\"user\":7}"},
         {"k3", "{\"user\":\"\"}"},
         {"k4", "{\"user\":true}"}},
    };
    for (int i = 0; i < 6; i++)
        for (int p = 0; p < 2; p++)
            produce("in", p, in[p][i][0], in[p][i][1]);
    cp_flush();
    RUN_START("cbk", "pipeline=count-by-key", "key.field=user", "input.topics=in",
              "output.topic=out", "errors.deadletter=dead");
    wait_input(12);
    run_stop();

    table_t got;
    kafka_latest("out", &got);
    cr_assert_str_eq(table_text(&got), "7=2 alice=3 bob=2");
    recs_t *dead = calloc(1, sizeof *dead);
    read_topic("dead", dead);
    cr_assert_str_eq(recs_text(dead),
                     "-|[1,2]\n"
                     "k1|not json\n"
                     "k2|{\"name\":\"carol\"}\n"
                     "k3|{\"user\":\"\"}\n"
                     "k4|{\"user\":true}\n",
                     "dead letters: the malformed input records as they were");
    for (size_t i = 0; i < dead->n; i++)
        cr_assert_gt(dead->r[i].batch, 0, "dead letters carry provenance headers");
    recs_free(dead);
    free(dead);

    json_t *doc = inspect();
    cr_assert_eq(acc_of(doc, "errors.malformed"), 5);
    cr_assert_eq(offset_of(doc, "in", 0), 6);
    cr_assert_eq(offset_of(doc, "in", 1), 6);
    json_decref(doc);

    progress_sum_t s = progress_read(1);
    cr_assert_eq(s.input_rows, 12, "numInputRows adds up to the input records");
    cr_assert_geq(s.lines, 1);
    cr_assert_eq(s.last_outbox, 0);
    cr_assert_eq(s.last_lag, 0);
    cr_assert_geq(s.output_rows, 3 + 5, "counts and dead letters");
    char *out = cp_slurp(cp_path("stdout.txt"));
    cr_assert_str_eq(out, "", "no progress line when stdout is not a terminal");
    free(out);
}

Test(cli_run, sum_by_key_integer_and_decimal_dead_letters_to_files) {
    cp_broker_start((const char *const[]){"in:2", "out:3", NULL});
    static const char *const in[2][7] = {
        {"{\"k\":\"a\",\"v\":1}", "{\"k\":\"a\",\"v\":2}", "{\"k\":\"b\",\"v\":0.5}",
         "{\"k\":\"c\",\"v\":-1.5}", "{\"k\":\"a\",\"v\":\"3\"}", "{\"k\":\"b\"}",
         "{\"k\":\"e\",\"v\":0.1}"},
        {"{\"k\":\"a\",\"v\":3}", "{\"k\":\"b\",\"v\":0.25}", "{\"k\":\"c\",\"v\":0.25}",
         "{\"k\":\"d\",\"v\":1e3}", "{bad json", "{\"v\":1}", "{\"k\":\"e\",\"v\":0.2}"},
    };
    for (int i = 0; i < 7; i++)
        for (int p = 0; p < 2; p++)
            produce("in", p, NULL, in[p][i]);
    cp_flush();
    RUN_START("sbk", "pipeline=sum-by-key", "key.field=k", "value.field=v", "input.topics=in",
              "output.topic=out", cp_fmt("errors.deadletter=file:%s", cp_path("dead")));
    wait_input(14);
    run_stop();

    table_t got;
    kafka_latest("out", &got);
    cr_assert_str_eq(table_text(&got), "a=6 b=0.75 c=-1.25 d=1000 e=0.30000000000000004",
                     "integer sums print as integers, others round-trip (%%.17g)");
    cr_assert_eq(partition_dirs(cp_path("dead")), 1);
    recs_t *dead = calloc(1, sizeof *dead);
    cr_assert_gt(read_files(cp_path("dead"), 0, dead), 0);
    cr_assert_str_eq(recs_text(dead),
                     "-|{\"k\":\"a\",\"v\":\"3\"}\n"
                     "-|{\"k\":\"b\"}\n"
                     "-|{\"v\":1}\n"
                     "-|{bad json\n");
    recs_free(dead);
    free(dead);
    json_t *doc = inspect();
    cr_assert_eq(acc_of(doc, "errors.malformed"), 4);
    json_decref(doc);
    cr_assert_eq(progress_read(1).input_rows, 14);
}

Test(cli_run, copy_keeps_partition_key_and_value_to_topic_and_files) {
    cp_broker_start((const char *const[]){"in:2", "out:3", NULL});
    recs_t *want = calloc(1, sizeof *want);
    for (int i = 0; i < 20; i++) {
        int p = i % 3 == 0 ? 1 : 0;
        char k[16], v[64];
        snprintf(k, sizeof k, "key-%d", i);
        snprintf(v, sizeof v, i % 4 ? "value %d" : "{\"json\":%d, \"not parsed\":true}", i);
        const char *key = i == 7 ? NULL : k; /* a record without key stays without */
        produce("in", p, key, v);
        want->r[want->n++] = (rec_t){p, 0, 0, key ? strdup(key) : NULL, strdup(v)};
    }
    cp_flush();
    RUN_START("copy", "pipeline=copy", "input.topics=in", "output.topic=out",
              "output.partition=keep", cp_fmt("output.dir=%s", cp_path("files")));
    wait_input(20);
    run_stop();

    recs_t *got = calloc(1, sizeof *got);
    read_topic("out", got);
    cr_assert_eq(got->n, want->n, "Kafka: every record once");
    /* partition by partition in input order: same partition, key and value */
    size_t g = 0;
    for (int32_t p = 0; p < 2; p++)
        for (size_t i = 0; i < want->n; i++) {
            if (want->r[i].partition != p)
                continue;
            const rec_t *x = &got->r[g++], *w = &want->r[i];
            cr_assert_eq(x->partition, p, "record %zu: partition %d, not %d", i, x->partition, p);
            cr_assert_str_eq(x->value, w->value);
            cr_assert((!x->key && !w->key) || (x->key && w->key && !strcmp(x->key, w->key)),
                      "record %zu: key %s, not %s", i, x->key ? x->key : "(none)",
                      w->key ? w->key : "(none)");
        }
    recs_free(got);

    cr_assert_eq(partition_dirs(cp_path("files")), 2, "files: the input partitions 0 and 1");
    for (int32_t p = 0; p < 2; p++) {
        cr_assert_gt(read_files(cp_path("files"), p, got), 0);
        size_t k = 0;
        for (size_t i = 0; i < want->n; i++) {
            if (want->r[i].partition != p)
                continue;
            cr_assert_lt(k, got->n);
            const rec_t *x = &got->r[k++], *w = &want->r[i];
            cr_assert_str_eq(x->value, w->value);
            cr_assert((!x->key && !w->key) || (x->key && w->key && !strcmp(x->key, w->key)),
                      "files[%d]: key %s, not %s", p, x->key ? x->key : "null",
                      w->key ? w->key : "null");
        }
        cr_assert_eq(k, got->n, "files[%d]: nothing more", p);
        recs_free(got);
    }
    recs_free(want);
    free(want);
    free(got);
}

Test(cli_run, plugin_counts_word_lengths_with_its_own_setting) {
    const char *plugin = getenv("LK_PLUGIN");
    cr_assert_not_null(plugin, "LK_PLUGIN is not set (run through ctest)");
    cp_broker_start((const char *const[]){"in:2", "out:3", NULL});
    table_t want = {0};
    int n = 0;
    for (int round = 0; round < 3; round++)
        for (size_t i = 0; i < sizeof wc_lines / sizeof *wc_lines; i++, n++) {
            produce("in", n % 2, NULL, wc_lines[i]);
            count_words(&want, wc_lines[i], 3, 1);
        }
    cp_flush();
    RUN_START("lengths", cp_fmt("pipeline.plugin=%s", plugin), "plugin.min.length=3",
              "input.topics=in", "output.topic=out", cp_fmt("output.dir=%s", cp_path("files")));
    wait_input(n);
    run_stop();
    cr_assert_str_eq(table_text(&want), "3=33 4=21 5=9 6=3", "the test's own count");
    table_t got;
    kafka_latest("out", &got);
    cr_assert_str_eq(table_text(&got), table_text(&want), "Kafka output");
    files_latest(cp_path("files"), &got);
    cr_assert_str_eq(table_text(&got), table_text(&want), "files");
}

Test(cli_run, tolerance_none_stops_at_the_bad_record_and_keeps_its_offset) {
    cp_broker_start((const char *const[]){"in:2", "out:3", NULL});
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < 2; i++)
            produce("in", p, NULL, "{\"user\":\"alice\"}");
    cp_flush();
    RUN_START("strict", "pipeline=count-by-key", "key.field=user", "input.topics=in",
              "output.topic=out", "errors.tolerance=none");
    wait_input(4);
    /* the next batch holds a malformed record at in[0] offset 2 */
    produce("in", 1, NULL, "{\"user\":\"bob\"}");
    produce("in", 0, NULL, "{\"user\":\"bob\"");
    produce("in", 0, NULL, "{\"user\":\"bob\"}");
    cp_flush();
    int rc = cp_wait_exit(&cp_run_pid, 30);
    char *err = cp_slurp(cp_path("stderr.txt"));
    cr_assert_eq(rc, 1, "exit status %d; stderr: %s", rc, err);
    cr_assert(strstr(err, "malformed record at in[0] offset 2") &&
                  strstr(err, "errors.tolerance=none"),
              "stderr names topic, partition and offset: %s", err);
    free(err);
    json_t *doc = inspect();
    cr_assert_eq(offset_of(doc, "in", 0), 2, "the offset did not move past the bad record");
    cr_assert_eq(offset_of(doc, "in", 1), 2, "nothing of the failed batch is committed");
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(doc, "last_batch"), "id")),
                 progress_read(1).last_batch);
    json_decref(doc);
    table_t got;
    kafka_latest("out", &got);
    cr_assert_str_eq(table_text(&got), "alice=4", "only the committed batches' output");
}

/* ---- configuration errors: exit status 2 and a message naming key and reason ---- */

static void expect_run(int want_rc, const char *args, const char *const *needles) {
    char cmd[4000], *out;
    snprintf(cmd, sizeof cmd, "'%s' run %s 2>&1", cli, args);
    int rc = tu_run(cmd, &out);
    cr_assert_eq(rc, want_rc, "exit status %d, not %d: run %s\n%s", rc, want_rc, args, out);
    for (int i = 0; needles[i]; i++)
        cr_assert(strstr(out, needles[i]), "run %s\nexpected \"%s\" in:\n%s", args, needles[i],
                  out);
    free(out);
}

#define EXPECT_RUN(rc, args, ...) expect_run(rc, args, (const char *const[]){__VA_ARGS__, NULL})

Test(cli_run, configuration_errors_exit_2_naming_key_and_reason) {
    const char *ck = cp_path("ckpt");
    char base[1500], full[2500];
    snprintf(base, sizeof base,
             "-X app.id=cfg -X checkpoint.dir='%s' -X kafka.bootstrap.servers=127.0.0.1:1", ck);
    EXPECT_RUN(2, "-X app.idd=x", "unknown property \"app.idd\"", "did you mean \"app.id\"");
    EXPECT_RUN(2, "-X batch.interval.ms=-5", "batch.interval.ms", "out of range (0..86400000)");
    EXPECT_RUN(2, "-X output.partition=random", "output.partition",
               "\"random\" is not one of hash|keep");
    EXPECT_RUN(2, "-X kafka.acks=bogus", "kafka.acks", "Invalid value");
    /* never echoed whole: the argument may be a password given without its key */
    EXPECT_RUN(2, "-X app.id", "-X takes key=value; argument 2 has no '=' (not shown");
    EXPECT_RUN(2, "-X =x", "-X takes key=value");
    EXPECT_RUN(2, "-X", "-X needs an argument");
    EXPECT_RUN(2, "stray", "unexpected argument 'stray'");
    /* the last of many arguments still counts (it used to be dropped after the 64th) */
    char many[2000] = "";
    for (int i = 0; i < 40; i++)
        strcat(many, " -X log.level=info");
    strcat(many, " -X app.idd=x");
    EXPECT_RUN(2, many, "unknown property \"app.idd\"");
    snprintf(full, sizeof full, "-X checkpoint.dir='%s' -X kafka.bootstrap.servers=x -X pipeline=copy", ck);
    EXPECT_RUN(2, full, "app.id is required");
    EXPECT_RUN(2, "-X app.id=a -X kafka.bootstrap.servers=x -X pipeline=copy",
               "checkpoint.dir is required");
    snprintf(full, sizeof full, "-X app.id=a -X checkpoint.dir='%s' -X pipeline=copy", ck);
    EXPECT_RUN(2, full, "kafka.bootstrap.servers is required");
    EXPECT_RUN(2, base, "no pipeline: set pipeline=wordcount|count-by-key|sum-by-key|copy");
    snprintf(full, sizeof full, "%s -X pipeline=copy -X pipeline.plugin=/x.so", base);
    EXPECT_RUN(2, full, "set pipeline or pipeline.plugin, not both");
    snprintf(full, sizeof full, "%s -X pipeline=count-by-key -X input.topics=i -X output.topic=o",
             base);
    EXPECT_RUN(2, full, "key.field is required by pipeline=count-by-key");
    snprintf(full, sizeof full,
             "%s -X pipeline=sum-by-key -X key.field=k -X input.topics=i -X output.topic=o", base);
    EXPECT_RUN(2, full, "value.field is required by pipeline=sum-by-key");
    snprintf(full, sizeof full, "%s -X pipeline=copy -X input.topics=i", base);
    EXPECT_RUN(2, full, "no output: set output.topic and/or output.dir");
    snprintf(full, sizeof full, "%s -X pipeline=wordcount -X output.topic=o", base);
    EXPECT_RUN(2, full, "input.topics is required by pipeline=wordcount");
    snprintf(full, sizeof full, "%s -X pipeline.plugin=/nonexistent/libmine.so", base);
    EXPECT_RUN(2, full, "pipeline.plugin: cannot load /nonexistent/libmine.so",
               "No such file or directory");
    /* a shared object that is not a plugin */
    snprintf(full, sizeof full, "%s -X pipeline.plugin=libm.so.6", base);
    EXPECT_RUN(2, full, "pipeline.plugin: libm.so.6 exports no lk_plugin_define");
    /* the plugin refuses its own setting: the pipeline cannot be defined (exit 1) */
    const char *plugin = getenv("LK_PLUGIN");
    cr_assert_not_null(plugin);
    snprintf(full, sizeof full,
             "%s -X pipeline.plugin='%s' -X input.topics=i -X output.topic=o "
             "-X plugin.min.length=0",
             base, plugin);
    EXPECT_RUN(1, full, "plugin.min.length: expected 1 .. 1000, not '0'");
    cr_assert_eq(access(ck, F_OK), -1, "no checkpoint is created by a refused configuration");

    /* -c FILE: errors name file:line */
    const char *props = cp_path("app.properties");
    FILE *fp = fopen(props, "w");
    fprintf(fp, "# a comment\napp.id = cfg\n\n! another comment\npipeline=\\uZZZZ\n");
    fclose(fp);
    snprintf(full, sizeof full, "-c '%s'", props);
    EXPECT_RUN(2, full, cp_fmt("%s:5: bad escape sequence", props));
    fp = fopen(props, "w");
    fprintf(fp, "app.id=cfg\ninput.topics=a,\\\n  b\nchekpoint.dir=/tmp/x\n");
    fclose(fp);
    EXPECT_RUN(2, full, cp_fmt("%s:4: unknown property \"chekpoint.dir\"", props),
               "did you mean \"checkpoint.dir\"");
    snprintf(full, sizeof full, "-c '%s'", cp_path("missing.properties"));
    EXPECT_RUN(2, full, cp_fmt("%s: cannot open", cp_path("missing.properties")));
    EXPECT_RUN(2, "-c", "-c needs an argument");

    EXPECT_RUN(0, "--help", "Usage: lockstep run", "-X key=value");
    cr_assert_eq(access(ck, F_OK), -1);
}

Test(cli_run, mock_broker_arguments) {
    char cmd[1200], *out;
    snprintf(cmd, sizeof cmd, "'%s' mock-broker --help", cli);
    cr_assert_eq(tu_run(cmd, &out), 0);
    cr_assert(strstr(out, "Usage: lockstep mock-broker"), "%s", out);
    free(out);
    static const char *const bad[] = {"--topic in", "--topic in:0", "--topic :3", "--topic in:x",
                                      "--topic in:3x", "--brokers 0", "--brokers 10", "--topic",
                                      "--bogus"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(cmd, sizeof cmd, "'%s' mock-broker %s 2>&1 </dev/null", cli, bad[i]);
        int rc = tu_run(cmd, &out);
        cr_assert_eq(rc, 2, "mock-broker %s: exit status %d\n%s", bad[i], rc, out);
        cr_assert(strstr(out, "lockstep mock-broker: "), "%s", out);
        cr_assert(!strstr(out, "bootstrap.servers=127"), "mock-broker %s started: %s", bad[i], out);
        free(out);
    }
    /* a good one starts, prints its address and stops on SIGTERM with status 0 */
    cp_broker_start((const char *const[]){"a:1", "b:12", NULL});
    cr_assert(strstr(cp_bootstraps, "127.0.0.1:"), "%s", cp_bootstraps);
    kill(cp_broker_pid, SIGTERM);
    cr_assert_eq(cp_wait_exit(&cp_broker_pid, 10), 0);
}

Test(cli_run, demo_verifies) {
    char cmd[1200], *out;
    snprintf(cmd, sizeof cmd, "'%s' demo --lines 2000 2>&1", cli);
    int rc = tu_run(cmd, &out);
    cr_assert_eq(rc, 0, "demo exit status %d\n%s", rc, out);
    cr_assert(strstr(out, "verified"), "%s", out);
    free(out);
}

/* ---- records keep every byte (issue 15 items 16-18) ---- */

Test(cli_run, sum_by_key_sums_integers_exactly_and_refuses_overflow) {
    cp_broker_start((const char *const[]){"in:1", "out:1", NULL});
    /* 2^53 + 1 is not a double: summed in doubles it became 2^53 */
    produce("in", 0, NULL, "{\"k\":\"big\",\"v\":9007199254740992}");
    produce("in", 0, NULL, "{\"k\":\"big\",\"v\":1}");
    produce("in", 0, NULL, "{\"k\":\"neg\",\"v\":-9223372036854775807}");
    produce("in", 0, NULL, "{\"k\":\"neg\",\"v\":-1}");
    produce("in", 0, NULL, "{\"k\":\"mix\",\"v\":1}");
    produce("in", 0, NULL, "{\"k\":\"mix\",\"v\":0.5}");
    /* JSON strings holding \u0000 are valid JSON (jansson refuses them by default) */
    produce("in", 0, NULL, "{\"k\":\"nul\",\"v\":2,\"note\":\"a\\u0000b\"}");
    cp_flush();
    RUN_START("sum64", "pipeline=sum-by-key", "key.field=k", "value.field=v", "input.topics=in",
              "output.topic=out", cp_fmt("errors.deadletter=file:%s", cp_path("dead")));
    wait_input(7);
    /* the next batch overflows int64 for key "big" */
    produce("in", 0, NULL, "{\"k\":\"big\",\"v\":9223372036854775807}");
    cp_flush();
    int rc = cp_wait_exit(&cp_run_pid, 30);
    char *err = cp_slurp(cp_path("stderr.txt"));
    cr_assert_eq(rc, 1, "exit status %d; stderr: %s", rc, err);
    cr_assert(strstr(err, "sum of key 'big' overflows 64-bit integers (9007199254740993 + "
                          "9223372036854775807)"),
              "%s", err);
    free(err);
    table_t got;
    kafka_latest("out", &got);
    cr_assert_str_eq(table_text(&got),
                     "big=9007199254740993 mix=1.5 neg=-9223372036854775808 nul=2");
    json_t *doc = inspect();
    cr_assert_eq(acc_of(doc, "errors.malformed"), -1, "\\u0000 is not malformed (none counted)");
    cr_assert_eq(offset_of(doc, "in", 0), 7, "nothing of the overflowing batch is committed");
    json_decref(doc);
}

Test(cli_run, lines_format_one_record_per_line) {
    cp_broker_start((const char *const[]){"in:1", NULL});
    /* a newline inside a value made two records of one (3 in, 5 out) */
    produce("in", 0, "k1", "one\ntwo");
    produce("in", 0, "k2", "plain");
    produce("in", 0, "k3", "back\\slash\r\n");
    cp_flush();
    RUN_START("lines", "pipeline=copy", "input.topics=in", "output.partition=keep",
              cp_fmt("output.dir=%s", cp_path("out")), "output.format=lines");
    wait_input(3);
    run_stop();
    char pdir[700];
    snprintf(pdir, sizeof pdir, "%s/0", cp_path("out"));
    DIR *d = opendir(pdir);
    cr_assert_not_null(d, "%s", pdir);
    struct dirent *de;
    char *text = NULL;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.') {
            cr_assert_null(text, "one batch, one file");
            char f[1000];
            snprintf(f, sizeof f, "%s/%s", pdir, de->d_name);
            text = cp_slurp(f);
            cr_assert(strstr(de->d_name, "lines+to-files+") == de->d_name, "%s", de->d_name);
        }
    closedir(d);
    cr_assert_not_null(text);
    cr_assert_str_eq(text, "one\\ntwo\nplain\nback\\\\slash\\r\\n\n");
    free(text);
}

Test(cli_run, wordcount_keeps_long_words_whole_and_dead_letters_longer_ones) {
    cp_broker_start((const char *const[]){"in:1", "out:1", NULL});
    /* two 300-byte words equal in their first 256 bytes: the old tokenizer cut both to
     * 256 bytes and counted them as one word */
    char wa[301], wb[301], bad[700];
    memset(wa, 'a', 300);
    memset(wb, 'a', 300);
    wa[256] = 'x';
    wb[256] = 'y';
    wa[300] = wb[300] = '\0';
    snprintf(bad, sizeof bad, "short ");
    memset(bad + 6, 'z', 600); /* a 600-byte word: more than the checkpoint's key limit */
    bad[606] = '\0';
    produce("in", 0, NULL, wa);
    produce("in", 0, NULL, wb);
    produce("in", 0, NULL, wa);
    produce("in", 0, NULL, bad);
    cp_flush();
    RUN_START("wclong", "pipeline=wordcount", "input.topics=in", "output.topic=out",
              cp_fmt("errors.deadletter=file:%s", cp_path("dead")));
    wait_input(4);
    run_stop();
    recs_t *rs = calloc(1, sizeof *rs);
    read_topic("out", rs);
    const char *va = NULL, *vb = NULL;
    int64_t ba = -1, bb = -1;
    for (size_t i = 0; i < rs->n; i++) {
        cr_assert_not_null(rs->r[i].key);
        cr_assert_neq(strcmp(rs->r[i].key, "short"), 0, "the malformed record is not counted");
        if (!strcmp(rs->r[i].key, wa) && rs->r[i].batch > ba)
            va = rs->r[i].value, ba = rs->r[i].batch;
        else if (!strcmp(rs->r[i].key, wb) && rs->r[i].batch > bb)
            vb = rs->r[i].value, bb = rs->r[i].batch;
        else
            cr_assert(!strcmp(rs->r[i].key, wa) || !strcmp(rs->r[i].key, wb),
                      "unexpected word of %zu bytes", strlen(rs->r[i].key));
    }
    cr_assert(va && vb, "both 300-byte words counted");
    cr_assert_str_eq(va, "2");
    cr_assert_str_eq(vb, "1");
    recs_free(rs);
    free(rs);
    recs_t *dead = calloc(1, sizeof *dead);
    cr_assert_eq(read_files(cp_path("dead"), 0, dead), 1);
    cr_assert_eq(dead->n, 1);
    cr_assert_str_eq(dead->r[0].value, bad);
    recs_free(dead);
    free(dead);
    json_t *doc = inspect();
    cr_assert_eq(acc_of(doc, "errors.malformed"), 1);
    json_decref(doc);
}

Test(cli_run, copy_keeps_headers_and_timestamp) {
    cp_broker_start((const char *const[]){"in:1", "out:1", NULL});
    rd_kafka_headers_t *h = rd_kafka_headers_new(3);
    rd_kafka_header_add(h, "h1", -1, "v1", -1);
    rd_kafka_header_add(h, "h2", -1, NULL, 0);
    rd_kafka_header_add(h, "h1", -1, "v1b", -1);
    produce("in", 0, "k0", "warm-up"); /* creates the producer */
    cr_assert_eq(rd_kafka_producev(cp_producer, RD_KAFKA_V_TOPIC("in"), RD_KAFKA_V_PARTITION(0),
                                   RD_KAFKA_V_KEY("k", 1), RD_KAFKA_V_VALUE("v", 1),
                                   RD_KAFKA_V_TIMESTAMP(1234567), RD_KAFKA_V_HEADERS(h),
                                   RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END),
                 0);
    cp_flush();
    RUN_START("cph", "pipeline=copy", "input.topics=in", "output.topic=out",
              "output.partition=keep", cp_fmt("output.dir=%s", cp_path("files")));
    wait_input(2);
    run_stop();
    recs_t *rs = calloc(1, sizeof *rs);
    read_topic("out", rs);
    cr_assert_eq(rs->n, 2);
    cr_assert_str_eq(rs->r[1].key, "k");
    cr_assert_str_eq(rs->r[1].headers, "h1=v1;h2=<null>;h1=v1b;", "headers kept, in order");
    cr_assert_eq(rs->r[1].ts, 1234567, "timestamp kept");
    cr_assert_str_eq(rs->r[0].headers, "");
    recs_free(rs);
    free(rs);
    /* the jsonl file: headers only on the record that has some */
    char pdir[700], *text = NULL;
    snprintf(pdir, sizeof pdir, "%s/0", cp_path("files"));
    DIR *d = opendir(pdir);
    cr_assert_not_null(d);
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.') {
            char f[1000];
            snprintf(f, sizeof f, "%s/%s", pdir, de->d_name);
            text = cp_slurp(f);
        }
    closedir(d);
    cr_assert_not_null(text);
    cr_assert(strstr(text, "{\"key\":\"k\",\"value\":\"v\",\"timestamp\":1234567,\"headers\":"
                           "[{\"name\":\"h1\",\"value\":\"v1\"},{\"name\":\"h2\",\"value\":null},"
                           "{\"name\":\"h1\",\"value\":\"v1b\"}]}\n"),
              "%s", text);
    cr_assert(strstr(text, "\"value\":\"warm-up\",\"timestamp\":") && !strstr(text, "up\",\"timestamp\":1234567"),
              "%s", text);
    free(text);
}

/* ---- windows (window.*) ---- */

static void produce_at(const char *topic, const char *value, int64_t ts) {
    if (!cp_producer) /* produce() makes it; its record, "{}", is malformed input (dead letter) */
        produce(topic, 0, NULL, "{}");
    cp_produce(topic, 0, NULL, value, ts);
}

Test(cli_run, count_by_key_event_time_windows_with_a_late_record) {
    cp_broker_start((const char *const[]){"in:1", "out:1", "dead:1", NULL});
    static const struct {
        const char *user;
        int64_t ts;
    } in[] = {{"alice", 100}, {"bob", 500}, {"alice", 900}, {"alice", 1200}, {"bob", 2500}};
    for (size_t i = 0; i < sizeof in / sizeof *in; i++)
        produce_at("in", cp_fmt("{\"user\":\"%s\"}", in[i].user), in[i].ts);
    cp_flush();
    RUN_START("wev", "pipeline=count-by-key", "key.field=user", "input.topics=in",
              "output.topic=out", "errors.deadletter=dead", "window.size.ms=1000",
              "window.time=event");
    wait_input(6);
    /* after the watermark (2500) passed it: late, whatever batch it lands in */
    produce_at("in", "{\"user\":\"alice\"}", 300);
    cp_flush();
    wait_input(7);
    run_stop();

    recs_t *rs = calloc(1, sizeof *rs);
    read_topic("out", rs);
    cr_assert_str_eq(recs_text(rs),
                     "alice|{\"window_start\":0,\"window_end\":1000,\"value\":2,\"final\":true}\n"
                     "alice|{\"window_start\":1000,\"window_end\":2000,\"value\":1,\"final\":true}\n"
                     "bob|{\"window_start\":0,\"window_end\":1000,\"value\":1,\"final\":true}\n",
                     "one final result per closed window; [2000,3000) is still open");
    recs_free(rs);
    read_topic("dead", rs);
    cr_assert_str_eq(recs_text(rs),
                     "-|{}\n"
                     "alice|{\"late\":true,\"event_time\":300,\"window_start\":0,"
                     "\"window_end\":1000,\"value\":1}\n",
                     "the late record is a dead letter, with the window it missed");
    recs_free(rs);
    free(rs);
    json_t *doc = inspect();
    cr_assert_eq(acc_of(doc, "windowed-counts.late"), 1);
    cr_assert_eq(acc_of(doc, "errors.malformed"), 1);
    json_decref(doc);
}

Test(cli_run, window_configuration_errors) {
    char base[1500], full[2500];
    snprintf(base, sizeof base,
             "-X app.id=cfg -X checkpoint.dir='%s' -X kafka.bootstrap.servers=127.0.0.1:1 "
             "-X input.topics=i -X output.topic=o",
             cp_path("ckpt"));
    snprintf(full, sizeof full, "%s -X pipeline=copy -X window.size.ms=1000", base);
    EXPECT_RUN(2, full, "window.size.ms / window.gap.ms apply to pipeline=wordcount, "
                        "count-by-key and sum-by-key, not copy");
    snprintf(full, sizeof full, "%s -X pipeline=wordcount -X window.gap.ms=1000", base);
    EXPECT_RUN(2, full, "window.gap.ms (session windows) needs window.time=event");
    snprintf(full, sizeof full,
             "%s -X pipeline=wordcount -X window.gap.ms=1000 -X window.size.ms=1000", base);
    EXPECT_RUN(2, full, "set window.size.ms (fixed windows) or window.gap.ms (sessions), not "
                        "both");
    snprintf(full, sizeof full, "%s -X pipeline=wordcount -X window.slide.ms=1000", base);
    EXPECT_RUN(2, full, "window.slide.ms is set but window.size.ms is not");
    snprintf(full, sizeof full, "%s -X pipeline=wordcount -X window.time=wall", base);
    EXPECT_RUN(2, full, "window.time", "\"wall\" is not one of batch|event");
    /* refused when the pipeline is checked: the window does not fit the batch interval */
    snprintf(full, sizeof full,
             "%s -X pipeline=wordcount -X window.size.ms=10000 -X window.slide.ms=5000 "
             "-X batch.interval.ms=3000",
             base);
    EXPECT_RUN(1, full, "reduce_by_key_and_window 'windowed-word-counts': window 10000 ms and "
                        "slide 5000 ms must be multiples of batch.interval.ms (3000)");
    snprintf(full, sizeof full,
             "%s -X pipeline=wordcount -X window.size.ms=10000 -X window.slide.ms=3000", base);
    EXPECT_RUN(1, full, "'windowed-word-counts': window 10000 ms and slide 3000 ms: both must "
                        "be > 0 and the window a multiple of the slide");
}

Test(cli_run, count_by_key_session_windows) {
    cp_broker_start((const char *const[]){"in:1", "out:1", NULL});
    static const struct {
        const char *user;
        int64_t ts;
    } in[] = {{"alice", 100}, {"alice", 600}, {"bob", 700}, {"alice", 5000}};
    for (size_t i = 0; i < sizeof in / sizeof *in; i++)
        produce_at("in", cp_fmt("{\"user\":\"%s\"}", in[i].user), in[i].ts);
    cp_flush();
    RUN_START("wses", "pipeline=count-by-key", "key.field=user", "input.topics=in",
              "output.topic=out", "window.time=event", "window.gap.ms=1000");
    wait_input(5);
    run_stop();
    recs_t *rs = calloc(1, sizeof *rs);
    read_topic("out", rs);
    cr_assert_str_eq(recs_text(rs),
                     "alice|{\"window_start\":100,\"window_end\":1600,\"value\":2,\"final\":true}\n"
                     "bob|{\"window_start\":700,\"window_end\":1700,\"value\":1,\"final\":true}\n",
                     "closed sessions, once each; alice's [5000,6000) is still open");
    recs_free(rs);
    free(rs);
}
