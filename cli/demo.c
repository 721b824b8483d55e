/*
 * demo.c — `lockstep demo`: the first thing a new user runs. With no broker and no
 * arguments it starts an embedded Kafka (librdkafka's mock cluster, real protocol on
 * loopback), produces a sample text corpus, runs the built-in exactly-once word count
 * into a Kafka topic and into files with live progress, stops gracefully half-way,
 * resumes from the checkpoint, and ends with the top words and a verification: the
 * counts in Kafka and in the files must equal counts computed here from the corpus.
 * Exit status 0 only if verified.
 */
#define _GNU_SOURCE
#include "cli_int.h"
#include "../core/conf_int.h"
#include "../core/util_int.h"
#include "../sink/provenance_int.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
    "Usage: lockstep demo [--lines N] [--keep DIR]\n"
    "\n"
    "Exactly-once word count on an embedded Kafka, end to end, in a few seconds:\n"
    "produce a corpus to topic 'lines' (4 partitions), count words into topic\n"
    "'word-counts' and into files, stop gracefully half-way and resume from the\n"
    "checkpoint, then verify the output against counts computed from the corpus.\n"
    "\n"
    "  --lines N    lines of input (default 20000)\n"
    "  --keep DIR   keep the checkpoint and output files in DIR (default: a temporary\n"
    "               directory, removed at the end)\n";

/* Lines of well-known public-domain openings, combined pseudo-randomly into a corpus. */
static const char *const corpus[] = {
    "It was the best of times, it was the worst of times, it was the age of wisdom",
    "Call me Ishmael. Some years ago, never mind how long precisely",
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "Happy families are all alike; every unhappy family is unhappy in its own way",
    "In a hole in the ground there lived a hobbit",
    "The sky above the port was the color of television, tuned to a dead channel",
    "All this happened, more or less",
    "It was a bright cold day in April, and the clocks were striking thirteen",
    "Offsets, state and output move in lockstep: one transaction per batch",
    "A crash at any instant loses nothing, and a replay writes nothing twice",
};

/* ---- counting words the same way as the built-in pipeline, independently ---- */

typedef struct {
    char word[64];
    int64_t expected, kafka, files;
} wc_entry_t;

typedef struct {
    wc_entry_t *e;
    size_t n, cap;
} wc_table_t;

static wc_entry_t *entry(wc_table_t *t, const char *w, size_t len) {
    for (size_t i = 0; i < t->n; i++)
        if (strlen(t->e[i].word) == len && !memcmp(t->e[i].word, w, len))
            return &t->e[i];
    wc_entry_t *ne = lk__vec_reserve(t->e, &t->cap, t->n + 1, sizeof *ne, 256);
    if (!ne) { /* the demo cannot check its counts without the table */
        fputs("lockstep demo: out of memory\n", stderr);
        exit(1);
    }
    t->e = ne;
    wc_entry_t *e = &t->e[t->n++];
    memset(e, 0, sizeof *e);
    snprintf(e->word, sizeof e->word, "%.*s", (int)len, w);
    return e;
}

static void count_line(wc_table_t *t, const char *line) {
    const unsigned char *p = (const unsigned char *)line;
    char w[64];
    while (*p) {
        while (*p && !isalnum(*p) && *p < 0x80)
            p++;
        size_t n = 0;
        while (*p && (isalnum(*p) || *p >= 0x80 || *p == '\'')) {
            if (n < sizeof w)
                w[n++] = (char)tolower(*p);
            p++;
        }
        while (n > 0 && w[n - 1] == '\'')
            n--;
        if (n)
            entry(t, w, n)->expected++;
    }
}

/* ---- reading the output back ---- */

static int read_kafka(const char *bootstraps, wc_table_t *t, char *err, size_t errsize) {
    char e[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "bootstrap.servers", bootstraps, e, sizeof e);
    rd_kafka_conf_set(c, "group.id", "lockstep-demo-verify", e, sizeof e);
    rd_kafka_conf_set(c, "isolation.level", "read_committed", e, sizeof e);
    rd_kafka_conf_set(c, "enable.partition.eof", "true", e, sizeof e);
    rd_kafka_conf_set(c, "fetch.wait.max.ms", "10", e, sizeof e);
    rd_kafka_conf_set(c, "log_level", "3", e, sizeof e);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, e, sizeof e);
    if (!rk)
        return lk__fmt(err, errsize, "verifier: %s", e), -1;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
    int pending = 0;
    for (int p = 0; p < 4; p++) {
        int64_t lo, hi;
        if (rd_kafka_query_watermark_offsets(rk, "word-counts", p, &lo, &hi, 5000))
            continue;
        if (hi > lo) {
            rd_kafka_topic_partition_list_add(l, "word-counts", p)->offset = lo;
            pending++;
        }
    }
    rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    /* counts are running totals: the latest batch's value of a word is its count */
    uint64_t *latest = calloc(t->cap + 4096, sizeof *latest);
    for (int polls = 0; pending > 0 && polls < 5000; polls++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 10);
        if (!m)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            pending--;
        } else if (!m->err && m->key && m->payload) {
            rd_kafka_headers_t *h;
            lk__prov_t pv;
            uint64_t batch = 0;
            if (!rd_kafka_message_headers(m, &h) && lk__prov_get(h, &pv))
                batch = pv.batch;
            wc_entry_t *en = entry(t, m->key, m->key_len);
            size_t idx = (size_t)(en - t->e);
            if (idx < t->cap + 4096 && batch >= latest[idx]) {
                latest[idx] = batch;
                char v[32];
                snprintf(v, sizeof v, "%.*s", (int)(m->len < 31 ? m->len : 31),
                         (const char *)m->payload);
                en->kafka = strtoll(v, NULL, 10);
            }
        }
        rd_kafka_message_destroy(m);
    }
    free(latest);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    if (pending)
        return lk__fmt(err, errsize, "verifier: could not read word-counts to its end"), -1;
    return 0;
}

/* Files are named <app>-<batch:020>.jsonl: reading them in name order is batch order. */
static int cmp_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int read_files(const char *dir, wc_table_t *t, char *err, size_t errsize) {
    char pdir[4300];
    snprintf(pdir, sizeof pdir, "%s/0", dir);
    DIR *d = opendir(pdir);
    if (!d)
        return lk__fmt(err, errsize, "no output files in %s", pdir), -1;
    char **names = NULL;
    size_t n = 0, ncap = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".jsonl") && !strstr(e->d_name, ".tmp")) {
            char **nn = lk__vec_reserve(names, &ncap, n + 1, sizeof *names, 16);
            if (!nn || !(nn[n] = strdup(e->d_name))) {
                closedir(d);
                for (size_t i = 0; i < n; i++)
                    free((nn ? nn : names)[i]);
                free(nn ? nn : names);
                return lk__fmt(err, errsize, "out of memory"), -1;
            }
            names = nn;
            n++;
        }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_name);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        char path[4500];
        snprintf(path, sizeof path, "%s/%s", pdir, names[i]);
        FILE *fp = fopen(path, "r");
        char *line = NULL;
        size_t cap = 0;
        while (fp && getline(&line, &cap, fp) > 0) {
            json_error_t je;
            json_t *doc = json_loads(line, 0, &je);
            json_t *k = json_object_get(doc, "key"), *v = json_object_get(doc, "value");
            if (json_is_string(k) && json_is_string(v))
                entry(t, json_string_value(k), json_string_length(k))->files =
                    strtoll(json_string_value(v), NULL, 10);
            else
                rc = -1;
            json_decref(doc);
        }
        free(line);
        if (fp)
            fclose(fp);
        free(names[i]);
    }
    free(names);
    if (rc)
        lk__fmt(err, errsize, "malformed output file in %s", pdir);
    return rc;
}

/* ---- the run ---- */

static void show_progress(const lk_progress_t *p, void *opaque) {
    int tty = *(int *)opaque;
    char lag[128] = "";
    for (size_t i = 0; i < p->ntopics; i++)
        snprintf(lag, sizeof lag, "%s %lld", p->topics[i], (long long)p->topic_lag[i]);
    double ms = p->plan_ms + p->fetch_ms + p->process_ms + p->commit_ms + p->deliver_ms;
    if (tty)
        printf("\r\033[K");
    printf("  batch %3llu: %5llu lines in, %5llu counts out, lag %-14s commit %5.1f ms, "
           "batch %6.1f ms%s",
           (unsigned long long)p->batch, (unsigned long long)p->records_in,
           (unsigned long long)p->records_out, lag, p->commit_ms, ms, tty ? "" : "\n");
    fflush(stdout);
}

typedef struct {
    lk_context_t *ctx;
    uint64_t stop_after;
    int tty;
} stopper_t;

static void stop_halfway(const lk_progress_t *p, void *opaque) {
    stopper_t *s = opaque;
    show_progress(p, &s->tty);
    if (s->stop_after && p->batch >= s->stop_after)
        lk_context_stop(s->ctx, 1); /* graceful: as SIGTERM would */
}

static int run_phase(lk_conf_t *conf, uint64_t stop_after, int tty, char *err, size_t errsize) {
    lk__cli_define_t def;
    if (lk__cli_define(conf, &def, err, errsize))
        return -1;
    void *opaque;
    lk_define_fn *define = lk__cli_define_fn(&def, &opaque);
    lk_context_t *ctx = lk_context_get_or_create(conf, define, opaque, err, errsize);
    if (!ctx) {
        lk__cli_define_free(&def);
        return -1;
    }
    stopper_t st = {ctx, stop_after, tty};
    lk_context_on_progress(ctx, stop_halfway, &st);
    lk_err_t e = LK_OK;
    if (stop_after) {
        e = lk_context_run(ctx);
    } else {
        /* resume: run until everything was read and delivered */
        uint64_t before;
        do {
            before = lk_context_last_batch(ctx);
            e = lk_context_run_once(ctx);
        } while (!e && lk_context_last_batch(ctx) != before);
    }
    if (tty)
        printf("\n");
    if (e)
        lk__fmt(err, errsize, "%s (%s)", lk_context_errstr(ctx), lk_err_name(e));
    lk_context_destroy(ctx);
    lk__cli_define_free(&def);
    return e ? -1 : 0;
}

static int by_count(const void *a, const void *b) {
    const wc_entry_t *x = a, *y = b;
    if (x->expected != y->expected)
        return x->expected < y->expected ? 1 : -1;
    return strcmp(x->word, y->word);
}

int lk__cli_demo(int argc, char **argv) {
    if (lk__cli_has_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    long nlines = 20000;
    const char *keep = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--lines") && i + 1 < argc) {
            char *end;
            nlines = strtol(argv[++i], &end, 10);
            if (*end || nlines < 10 || nlines > 10000000) {
                fprintf(stderr, "lockstep demo: --lines takes 10..10000000\n");
                return 2;
            }
        } else if (!strcmp(argv[i], "--keep") && i + 1 < argc) {
            keep = argv[++i];
        } else {
            fprintf(stderr, "lockstep demo: unexpected argument '%s'\n\n%s", argv[i], usage);
            return 2;
        }
    }
    int tty = isatty(STDOUT_FILENO);
    char base[4096], err[1024];
    if (keep) {
        snprintf(base, sizeof base, "%s", keep);
        if (mkdir(base, 0755) && errno != EEXIST) {
            fprintf(stderr, "lockstep demo: cannot create %s: %m\n", base);
            return 1;
        }
    } else {
        snprintf(base, sizeof base, "%s/lockstep-demo.XXXXXX",
                 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
        if (!mkdtemp(base)) {
            fprintf(stderr, "lockstep demo: cannot create a temporary directory: %m\n");
            return 1;
        }
    }
    /* 1. an embedded Kafka */
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "log_level", "3", err, sizeof err);
    rd_kafka_t *owner = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
    rd_kafka_mock_cluster_t *mc = owner ? rd_kafka_mock_cluster_new(owner, 1) : NULL;
    if (!mc) {
        fprintf(stderr, "lockstep demo: cannot start the embedded Kafka\n");
        return 1;
    }
    const char *bs = rd_kafka_mock_cluster_bootstraps(mc);
    rd_kafka_mock_topic_create(mc, "lines", 4, 1);
    rd_kafka_mock_topic_create(mc, "word-counts", 4, 1);
    rd_kafka_mock_topic_create(mc, "demo.progress", 1, 1);
    printf("lockstep demo: embedded Kafka at %s\n", bs);

    /* 2. the corpus, counted independently as it is produced */
    wc_table_t t = {0};
    c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "bootstrap.servers", bs, err, sizeof err);
    rd_kafka_conf_set(c, "linger.ms", "5", err, sizeof err);
    rd_kafka_conf_set(c, "log_level", "3", err, sizeof err);
    rd_kafka_t *prod = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
    unsigned seed = 42;
    for (long i = 0; i < nlines; i++) {
        const char *a = corpus[rand_r(&seed) % LK_ARRAY_SIZE(corpus)];
        char line[256];
        snprintf(line, sizeof line, "%s", a);
        count_line(&t, line);
        while (rd_kafka_producev(prod, RD_KAFKA_V_TOPIC("lines"), RD_KAFKA_V_PARTITION(i % 4),
                                 RD_KAFKA_V_VALUE(line, strlen(line)),
                                 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                 RD_KAFKA_V_END) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(prod, 10);
    }
    rd_kafka_flush(prod, 30000);
    rd_kafka_destroy(prod);
    printf("lockstep demo: produced %ld lines to topic 'lines' (4 partitions)\n", nlines);

    /* 3. the word count, stopped gracefully half-way, then resumed */
    char ckpt[4150], out[4150];
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint", base);
    snprintf(out, sizeof out, "%s/out", base);
    lk_conf_t *conf = lk_conf_new();
    const char *props[][2] = {{"app.id", "demo"},
                              {"checkpoint.dir", ckpt},
                              {"kafka.bootstrap.servers", bs},
                              {"kafka.fetch.wait.max.ms", "10"},
                              {"kafka.log_level", "3"},
                              {"pipeline", "wordcount"},
                              {"input.topics", "lines"},
                              {"output.topic", "word-counts"},
                              {"output.dir", out},
                              {"batch.interval.ms", "0"},
                              {"max.records.per.partition", "1000"},
                              {"log.level", "warning"}};
    for (size_t i = 0; i < LK_ARRAY_SIZE(props); i++)
        if (lk__conf_set_scoped(conf, props[i][0], props[i][1], LK__S_LIB | LK__S_CLI, err,
                                sizeof err) != LK_CONF_OK) {
            fprintf(stderr, "lockstep demo: %s\n", err);
            return 1;
        }
    uint64_t total_batches = (uint64_t)(nlines / 4 + 999) / 1000;
    printf("lockstep demo: word count, exactly-once to topic 'word-counts' and to %s\n", out);
    int rc = 0;
    if (run_phase(conf, total_batches / 2 ? total_batches / 2 : 1, tty, err, sizeof err)) {
        fprintf(stderr, "lockstep demo: %s\n", err);
        rc = 1;
    }
    if (!rc) {
        printf("lockstep demo: stopped gracefully; resuming from the checkpoint\n");
        if (run_phase(conf, 0, tty, err, sizeof err)) {
            fprintf(stderr, "lockstep demo: %s\n", err);
            rc = 1;
        }
    }
    lk_conf_destroy(conf);

    /* 4. verify */
    if (!rc && (read_kafka(bs, &t, err, sizeof err) || read_files(out, &t, err, sizeof err))) {
        fprintf(stderr, "lockstep demo: %s\n", err);
        rc = 1;
    }
    if (!rc) {
        size_t bad = 0;
        int64_t words = 0;
        for (size_t i = 0; i < t.n; i++) {
            words += t.e[i].expected;
            if (t.e[i].expected != t.e[i].kafka || t.e[i].expected != t.e[i].files) {
                if (bad++ < 5)
                    fprintf(stderr, "lockstep demo: '%s': input %lld, Kafka %lld, files %lld\n",
                            t.e[i].word, (long long)t.e[i].expected, (long long)t.e[i].kafka,
                            (long long)t.e[i].files);
            }
        }
        qsort(t.e, t.n, sizeof *t.e, by_count);
        printf("\ntop words:\n");
        for (size_t i = 0; i < t.n && i < 10; i++)
            printf("  %-12s %lld\n", t.e[i].word, (long long)t.e[i].kafka);
        if (bad) {
            printf("\nNOT VERIFIED: %zu of %zu words differ from the input\n", bad, t.n);
            rc = 1;
        } else {
            printf("\nverified: %zu distinct words, %lld words in %ld lines; the counts in "
                   "Kafka (read_committed) and in the files equal the counts computed from "
                   "the input\n",
                   t.n, (long long)words, nlines);
        }
    }
    free(t.e);
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(owner);
    if (!keep) {
        char cmd[4300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
        if (system(cmd) != 0)
            fprintf(stderr, "lockstep demo: could not remove %s\n", base);
    } else {
        printf("lockstep demo: checkpoint and output kept in %s (try: lockstep checkpoint "
               "inspect %s)\n",
               base, ckpt);
    }
    return rc;
}
