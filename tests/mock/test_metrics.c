/*
 * test_metrics.c — observability (issue 17): the Prometheus metrics, /healthz and
 * /progress.
 *
 * library: lk_context_metrics_write() on an in-process context over the mock cluster,
 *   batch by batch with lk_context_run_once(), so every value is exact: records, batches,
 *   lag per partition going to 0 as max.records.per.partition lets the input drain, state
 *   entries, accumulators, phase histogram counts; the counters survive a restart (read
 *   from the checkpoint). Both formats are parsed by Debian's python3-prometheus-client
 *   (the text 0.0.4 parser and the strict OpenMetrics 1.0 parser).
 * cli: a real `lockstep run` with metrics.listen, scraped over HTTP while input flows:
 *   every metric present and parsed, /healthz 200, /progress one entry per batch, 404
 *   for other paths, a taken port refused at start with a clear message; the broker
 *   going down turns /healthz to 503 past health.stall.ms and back to 200 when it
 *   returns (`lockstep mock-broker` takes down/up on stdin).
 * crash: SIGKILL mid-run, restart: the record counters equal the input exactly (copy
 *   pipeline: in = out = N), as a run without crashes, and never went backwards; a
 *   windowed run with dead letters and late records ends with the counters of a run
 *   without a crash.
 * every metric: a windowed count-by-key run where each metric is present, passes
 *   promtool and prometheus_client, and moves by exactly what was sent; late records
 *   per event-time window (lockstep_late_records_total) exact, and back after a restart.
 */
#define _GNU_SOURCE
#include "cliproc.h"
#include "mockutil.h"
#include "testutil.h"
#include "wc_ops.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

TestSuite(metrics, .init = cp_init, .fini = cp_fini, .timeout = 180);

/* The value of the sample whose name and labels are exactly `series` (as written:
 * name{app="...",...}); -1 when absent. */
static double value_of(const char *text, const char *series) {
    size_t n = strlen(series);
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (!strncmp(l, series, n) && l[n] == ' ')
            return strtod(l + n + 1, NULL);
    return -1;
}

/* Lint text 0.0.4 with `promtool check metrics` (Debian's prometheus package, listed in
 * .ci/packages): it refuses what does not parse (exit 1) and what breaks the naming
 * conventions, e.g. a counter without _total or a non-base unit (exit 3). It accepts an
 * empty text, so the caller checks the families too. A missing promtool fails. */
static void check_with_promtool(const char *file, const char *text) {
    char cmd[1200], *out;
    snprintf(cmd, sizeof cmd, "promtool check metrics < '%s' 2>&1", file);
    int rc = tu_run(cmd, &out);
    cr_assert_eq(rc, 0, "promtool check metrics refused the exposition (exit %d; 127: install "
                 "Debian's prometheus package): %s\n---\n%s", rc, out, text);
    free(out);
}

/* Parse text with python3-prometheus-client (and text 0.0.4 with promtool too); returns
 * the parser's output (family names and types), failing the test when a parser refuses
 * the text. */
static char *parse_with_prometheus_client(const char *text, int openmetrics) {
    const char *file = cp_path(openmetrics ? "scrape.om" : "scrape.txt");
    tu_write_file(file, text, strlen(text));
    if (!openmetrics)
        check_with_promtool(file, text);
    const char *script =
        openmetrics
            ? "from prometheus_client.openmetrics.parser import text_string_to_metric_families as p"
            : "from prometheus_client.parser import text_string_to_metric_families as p";
    char cmd[1500], *out;
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c '%s\nimport sys\nfor f in p(open(sys.argv[1]).read()):\n"
             "    print(f.name, f.type, len(f.samples))' '%s' 2>&1",
             script, file);
    int rc = tu_run(cmd, &out);
    cr_assert_eq(rc, 0, "prometheus_client (%s) refused the exposition: %s\n---\n%s",
                 openmetrics ? "OpenMetrics" : "text 0.0.4", out, text);
    return out;
}

/* Every metric of the issue that exists today, as parsed family names. */
static void check_families(const char *parsed, int openmetrics) {
    static const char *const fams[] = {
        "lockstep_build_info gauge", "lockstep_batches counter", "lockstep_records counter",
        "lockstep_batch_duration_seconds histogram", "lockstep_consumer_lag_records gauge",
        "lockstep_consumer_held_back_records gauge",
        "lockstep_last_committed_batch_timestamp_seconds gauge", "lockstep_outbox_bytes gauge",
        "lockstep_state_entries gauge", "lockstep_checkpoint_map_used_ratio gauge",
        "lockstep_fenced counter", "lockstep_data_loss_skipped counter",
        "lockstep_records_deadlettered counter", "lockstep_late_records counter",
        "lockstep_transactions counter", "lockstep_sink_errors counter",
        "lockstep_batch_errors counter", "lockstep_accumulator gauge", "lockstep_healthy gauge"};
    for (size_t i = 0; i < sizeof fams / sizeof *fams; i++) {
        const char *want = fams[i];
        if (openmetrics && !strcmp(want, "lockstep_build_info gauge"))
            want = "lockstep_build info";
        cr_assert_not_null(strstr(parsed, want), "family '%s' missing from: %s", want, parsed);
    }
}

/* ---- library: exact values batch by batch ---- */

static const char *outdir;

static void define_wc(lk_pipeline_t *p, void *opaque) {
    (void)opaque;
    lk_stream_t *lines = lk_kafka_stream(p, "lines");
    lk_stream_t *words = lk_flat_map(lines, "split-words", wc_split_words, NULL);
    lk_stream_t *counts = lk_update_state_by_key(words, "word-counts", 1, wc_add_counts, NULL);
    lk_to_files(counts, "counts-out", outdir, "jsonl");
}

static char *metrics_text(lk_context_t *ctx, int om) {
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    cr_assert_eq(lk_context_metrics_write(ctx, fp, om), LK_OK, "%s", lk_context_errstr(ctx));
    fclose(fp);
    return buf;
}

#define S(series) value_of(text, "lockstep_" series)

Test(metrics, library_exact_values_and_restart) {
    mu_cluster_t c;
    mu_start(&c, 1);
    mu_topic(&c, "lines", 2);
    /* one distinct word per record: every record updates one key, so records out = in */
    for (int i = 0; i < 6; i++)
        mu_produce(&c, "lines", 0, NULL, cp_fmt("a%d", i));
    for (int i = 0; i < 2; i++)
        mu_produce(&c, "lines", 1, NULL, cp_fmt("b%d", i));
    mu_flush(&c);
    outdir = cp_path("out");
    lk_conf_t *conf = mu_conf(&c, "mt", cp_path("ckpt"));
    mu_set(conf, "max.records.per.partition", "4");
    char err[1024];
    lk_context_t *ctx = lk_context_get_or_create(conf, define_wc, NULL, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);

    /* before any batch: zeros, no lag known yet */
    char *text = metrics_text(ctx, 0);
    cr_assert_eq(S("batches_total{app=\"mt\"}"), 0, "%s", text);
    cr_assert_eq(S("records_total{app=\"mt\",direction=\"in\"}"), 0, "%s", text);
    cr_assert_eq(S("consumer_lag_records{app=\"mt\",topic=\"lines\",partition=\"0\"}"), -1,
                 "%s", text);
    cr_assert_not_null(strstr(text, cp_fmt("lockstep_build_info{app=\"mt\",version=\"%s\","
                                        "checkpoint_format=\"2\"} 1\n",
                                        lk_version_str())),
                       "%s", text);
    free(text);

    /* batch 1: p0 [0,4) and p1 [0,2); p0 has 2 left */
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    text = metrics_text(ctx, 0);
    cr_assert_eq(S("batches_total{app=\"mt\"}"), 1, "%s", text);
    cr_assert_eq(S("records_total{app=\"mt\",direction=\"in\"}"), 6, "%s", text);
    cr_assert_eq(S("records_total{app=\"mt\",direction=\"out\"}"), 6, "%s", text);
    cr_assert_eq(S("consumer_lag_records{app=\"mt\",topic=\"lines\",partition=\"0\"}"), 2,
                 "%s", text);
    cr_assert_eq(S("consumer_lag_records{app=\"mt\",topic=\"lines\",partition=\"1\"}"), 0,
                 "%s", text);
    /* the mock has no transactions markers, so no last stable offset below the high
     * watermark (docs/DESIGN.md): the held-back gauge is there and 0; the kafka tier's open
     * transaction scenario is where it moves */
    cr_assert_eq(S("consumer_held_back_records{app=\"mt\",topic=\"lines\",partition=\"0\"}"), 0,
                 "%s", text);
    cr_assert_eq(S("state_entries{app=\"mt\",operator=\"word-counts\"}"), 6, "%s", text);
    cr_assert_eq(S("accumulator{app=\"mt\",name=\"lines\"}"), 6, "%s", text);
    cr_assert_eq(S("batch_duration_seconds_count{app=\"mt\",phase=\"commit\"}"), 1, "%s", text);
    cr_assert_eq(S("batch_duration_seconds_bucket{app=\"mt\",phase=\"plan\",le=\"+Inf\"}"), 1,
                 "%s", text);
    cr_assert_gt(S("last_committed_batch_timestamp_seconds{app=\"mt\"}"), 1.6e9, "%s", text);
    double used = S("checkpoint_map_used_ratio{app=\"mt\"}");
    cr_assert(used > 0 && used <= 1, "%s", text);
    /* the loop has not run: not healthy */
    cr_assert_eq(S("healthy{app=\"mt\"}"), 0, "%s", text);
    char *parsed = parse_with_prometheus_client(text, 0);
    check_families(parsed, 0);
    free(parsed);
    free(text);

    /* batch 2: the rest of p0; lag 0 everywhere */
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    text = metrics_text(ctx, 1);
    cr_assert_eq(S("batches_total{app=\"mt\"}"), 2, "%s", text);
    cr_assert_eq(S("records_total{app=\"mt\",direction=\"in\"}"), 8, "%s", text);
    cr_assert_eq(S("records_total{app=\"mt\",direction=\"out\"}"), 8, "%s", text);
    cr_assert_eq(S("consumer_lag_records{app=\"mt\",topic=\"lines\",partition=\"0\"}"), 0,
                 "%s", text);
    cr_assert_eq(S("consumer_lag_records{app=\"mt\",topic=\"lines\",partition=\"1\"}"), 0,
                 "%s", text);
    cr_assert_eq(S("state_entries{app=\"mt\",operator=\"word-counts\"}"), 8, "%s", text);
    /* the file sink delivered both batches, one commit each */
    cr_assert_eq(S("transactions_total{app=\"mt\",sink=\"counts-out\",result=\"committed\"}"),
                 2, "%s", text);
    cr_assert_eq(S("batch_duration_seconds_count{app=\"mt\",phase=\"deliver\"}"), 2, "%s", text);
    cr_assert(strstr(text, "# EOF\n") && !strcmp(strstr(text, "# EOF\n"), "# EOF\n"),
              "OpenMetrics ends with # EOF: %s", text);
    parsed = parse_with_prometheus_client(text, 1);
    check_families(parsed, 1);
    free(parsed);
    free(text);

    /* restart: the processed-data counters come back from the checkpoint */
    lk_context_destroy(ctx);
    ctx = lk_context_get_or_create(conf, define_wc, NULL, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    text = metrics_text(ctx, 0);
    cr_assert_eq(S("batches_total{app=\"mt\"}"), 2, "%s", text);
    cr_assert_eq(S("records_total{app=\"mt\",direction=\"in\"}"), 8, "%s", text);
    cr_assert_eq(S("records_total{app=\"mt\",direction=\"out\"}"), 8, "%s", text);
    cr_assert_eq(S("accumulator{app=\"mt\",name=\"lines\"}"), 8, "%s", text);
    /* this process has timed no batch yet */
    cr_assert_eq(S("batch_duration_seconds_count{app=\"mt\",phase=\"commit\"}"), 0, "%s", text);
    free(text);
    cr_assert_eq(lk_context_metrics_write(ctx, NULL, 0), LK_ERR_INVALID_ARG);
    cr_assert_eq(lk_context_metrics_write(NULL, stdout, 0), LK_ERR_INVALID_ARG);
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
    mu_stop(&c);
}

/* ---- library: late records of event-time windows ---- */

/* The windows see each input record as is: its value, decimal ms, is its event time
 * (ev_time). What they aggregate is not looked at: the latest value. */
static void ev_latest(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *a,
                      const lk_bytes_t *v, lk_bytes_t *out, void *opaque) {
    (void)b, (void)key, (void)a, (void)opaque;
    *out = *v;
}

static int64_t ev_time(lk_batch_t *b, const lk_record_t *r, void *opaque) {
    (void)b, (void)opaque;
    char buf[32] = "";
    memcpy(buf, r->value, r->value_len < sizeof buf - 1 ? r->value_len : sizeof buf - 1);
    return strtoll(buf, NULL, 10);
}

static void ev_drop(lk_batch_t *b, const lk_record_t *recs, size_t n, void *opaque) {
    (void)b, (void)recs, (void)n, (void)opaque;
}

/* two event-time windows (each its own late count) and a keyed state that has none */
static void define_ev(lk_pipeline_t *p, void *opaque) {
    (void)opaque;
    lk_stream_t *in = lk_kafka_stream(p, "ev");
    lk_window_spec_t tight = {.kind = LK_WINDOW_TUMBLING, .size_ms = 1000,
                              .event_time = ev_time};
    lk_window_spec_t lenient = tight;
    lenient.grace_ms = 100000;
    lk_foreach_batch(lk_window_by_event_time(in, "tight", 1, &tight, ev_latest, NULL),
                     "drop-tight", ev_drop, NULL);
    lk_foreach_batch(lk_window_by_event_time(in, "lenient", 1, &lenient, ev_latest, NULL),
                     "drop-lenient", ev_drop, NULL);
    lk_foreach_batch(lk_update_state_by_key(in, "totals", 1, wc_add_counts, NULL),
                     "drop-totals", ev_drop, NULL);
}

Test(metrics, library_late_records_counted_per_window_from_the_checkpoint) {
    mu_cluster_t c;
    mu_start(&c, 1);
    mu_topic(&c, "ev", 1);
    /* batch 1: nothing can be late yet (the watermark is committed with a batch) */
    mu_produce(&c, "ev", 0, "a", "1000");
    mu_produce(&c, "ev", 0, "b", "5000");
    mu_flush(&c);
    lk_conf_t *conf = mu_conf(&c, "ml", cp_path("ckpt"));
    char err[1024];
    lk_context_t *ctx = lk_context_get_or_create(conf, define_ev, NULL, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    /* both windows have the metric from the start, at 0; the keyed state has none */
    char *text = metrics_text(ctx, 0);
    cr_assert_eq(S("late_records_total{app=\"ml\",operator=\"tight\"}"), 0, "%s", text);
    cr_assert_eq(S("late_records_total{app=\"ml\",operator=\"lenient\"}"), 0, "%s", text);
    cr_assert_null(strstr(text, "lockstep_late_records_total{app=\"ml\",operator=\"totals\"}"),
                   "%s", text);
    free(text);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    text = metrics_text(ctx, 0);
    cr_assert_eq(S("late_records_total{app=\"ml\",operator=\"tight\"}"), 0, "%s", text);
    free(text);

    /* batch 2: the watermark is 5000 (grace 0) for tight: 1500 and 100 are late there;
     * lenient (grace 100 s) takes them; 6000 is on time for both */
    mu_produce(&c, "ev", 0, "c", "1500");
    mu_produce(&c, "ev", 0, "d", "100");
    mu_produce(&c, "ev", 0, "e", "6000");
    mu_flush(&c);
    cr_assert_eq(lk_context_run_once(ctx), LK_OK, "%s", lk_context_errstr(ctx));
    text = metrics_text(ctx, 0);
    cr_assert_eq(S("records_total{app=\"ml\",direction=\"in\"}"), 5, "%s", text);
    cr_assert_eq(S("late_records_total{app=\"ml\",operator=\"tight\"}"), 2, "%s", text);
    cr_assert_eq(S("late_records_total{app=\"ml\",operator=\"lenient\"}"), 0, "%s", text);
    /* the same count is not exposed twice: the window's accumulator is this metric */
    cr_assert_null(strstr(text, "name=\"tight.late\""), "%s", text);
    char *parsed = parse_with_prometheus_client(text, 0);
    check_families(parsed, 0);
    free(parsed);
    free(text);
    text = metrics_text(ctx, 1);
    parsed = parse_with_prometheus_client(text, 1);
    cr_assert_not_null(strstr(parsed, "lockstep_late_records counter 2"), "%s", parsed);
    free(parsed);
    free(text);

    /* restart: the count comes back from the checkpoint, not from the process */
    lk_context_destroy(ctx);
    ctx = lk_context_get_or_create(conf, define_ev, NULL, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    text = metrics_text(ctx, 0);
    cr_assert_eq(S("late_records_total{app=\"ml\",operator=\"tight\"}"), 2, "%s", text);
    free(text);
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
    mu_stop(&c);
}

Test(metrics, listen_address_refused_when_malformed) {
    mu_cluster_t c;
    mu_start(&c, 1);
    mu_topic(&c, "lines", 1);
    outdir = cp_path("out");
    static const char *const bad[] = {"9464", "127.0.0.1:", "127.0.0.1:http", ":9464",
                                      "127.0.0.1:70000"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        lk_conf_t *conf = mu_conf(&c, "mt", cp_path("ckpt"));
        mu_set(conf, "metrics.listen", bad[i]);
        char err[1024] = "";
        lk_context_t *ctx = lk_context_get_or_create(conf, define_wc, NULL, err, sizeof err);
        cr_assert_null(ctx, "metrics.listen=%s accepted", bad[i]);
        cr_assert_not_null(strstr(err, "metrics.listen") ? strstr(err, "HOST:PORT") : NULL,
                           "metrics.listen=%s: %s", bad[i], err);
        lk_conf_destroy(conf);
    }
    mu_stop(&c);
}

/* ---- lockstep run, scraped over HTTP ---- */

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

typedef struct {
    int status; /* 0: connection refused */
    char *headers, *body;
} http_t;

static void http_free(http_t *h) {
    free(h->headers);
    h->headers = h->body = NULL;
}

/* GET path over HTTP/1.0 (the server closes after the response). */
static http_t http_get(int port, const char *url, const char *accept) {
    http_t h = {0};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return h;
    }
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n%s%s%s\r\n", url,
                     accept ? "Accept: " : "", accept ? accept : "", accept ? "\r\n" : "");
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
    *sep = 0;
    h.headers = buf;
    h.body = sep + 4;
    cr_assert_eq(sscanf(buf, "HTTP/1.%*d %d", &h.status), 1, "%s", buf);
    return h;
}

/* A record with Kafka timestamp ts (ms; 0: now), the event time of window.time=event. */
static void produce_at(const char *topic, int partition, const char *value, int64_t ts) {
    cp_produce(topic, partition, NULL, value, ts);
}

static void produce(const char *topic, int partition, const char *value) {
    produce_at(topic, partition, value, 0);
}

/* `lockstep run` of the copy pipeline lines -> out with metrics.listen on port. */
static pid_t run_start(int port, const char *const *extra) {
    const char *argv[64] = {cp_cli(), "run"};
    int n = 2;
    const char *common[] = {"app.id=mc",
                            cp_fmt("checkpoint.dir=%s", cp_path("ckpt")),
                            cp_fmt("kafka.bootstrap.servers=%s", cp_bootstraps),
                            cp_fmt("metrics.listen=127.0.0.1:%d", port),
                            "pipeline=copy",
                            "input.topics=lines",
                            "output.topic=out",
                            "kafka.fetch.wait.max.ms=10",
                            "batch.interval.ms=0",
                            "log.level=warning",
                            "kafka.log_level=3",
                            "checkpoint.map.size=4M",
                            "sink.kafka.timeout.ms=10000"};
    int plugin = 0; /* a plugin's pipeline instead of the copy */
    for (int i = 0; extra && extra[i]; i++)
        plugin |= !strncmp(extra[i], "pipeline.plugin=", 16);
    for (size_t i = 0; i < sizeof common / sizeof *common; i++) {
        if (plugin && !strcmp(common[i], "pipeline=copy"))
            continue;
        argv[n++] = "-X";
        argv[n++] = common[i];
    }
    for (int i = 0; extra && extra[i]; i++) {
        argv[n++] = "-X";
        argv[n++] = extra[i];
    }
    argv[n] = NULL;
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int o = open(cp_path("stdout.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(cp_path("stderr.txt"), O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(o, 1);
        dup2(e, 2);
        execv(argv[0], (char **)argv);
        _exit(127);
    }
    return pid;
}

/* Scrape until `series` reaches at least want (bounded); returns the last scrape. The
 * run must still be running. */
static char *scrape_until(int port, const char *series, double want) {
    double v = -1;
    for (int i = 0; i < 3000; i++) {
        int st;
        if (cp_run_pid > 0 && waitpid(cp_run_pid, &st, WNOHANG) == cp_run_pid) {
            cp_run_pid = 0;
            char *err = cp_slurp(cp_path("stderr.txt"));
            cr_assert_fail("lockstep run exited early (status %d): %s", st, err);
        }
        http_t h = http_get(port, "/metrics", NULL);
        if (h.status == 200) {
            v = value_of(h.body, series);
            if (v >= want) {
                char *text = strdup(h.body);
                http_free(&h);
                return text;
            }
        }
        http_free(&h);
        usleep(10000);
    }
    cr_assert_fail("%s is %g, not %g, after 30 s", series, v, want);
    return NULL;
}

/* /healthz until its status is want (bounded by seconds); returns its reason line. */
static char *health_until(int port, int want, int seconds) {
    http_t h = {0};
    for (int i = 0; i < seconds * 20; i++) {
        http_free(&h);
        h = http_get(port, "/healthz", NULL);
        if (h.status == want) {
            char *why = strdup(h.body);
            http_free(&h);
            return why;
        }
        usleep(50000);
    }
    cr_assert_fail("/healthz answered %d (%s), not %d, for %d s", h.status,
                   h.body ? h.body : "", want, seconds);
    return NULL;
}

#define N_INPUT 200

Test(metrics, cli_scrape_health_progress) {
    cp_broker_start((const char *const[]){"lines:2", "out:2", NULL});
    for (int i = 0; i < N_INPUT / 2; i++)
        produce("lines", i % 2, cp_fmt("v%d", i));
    cp_flush();
    int port = free_port();
    cp_run_pid = run_start(port, (const char *const[]){"health.stall.ms=1500",
                                                    "retry.backoff.max.ms=200", NULL});
    char *text = scrape_until(port, "lockstep_records_total{app=\"mc\",direction=\"in\"}",
                              N_INPUT / 2);
    cr_assert_eq(value_of(text, "lockstep_records_total{app=\"mc\",direction=\"in\"}"),
                 N_INPUT / 2, "%s", text);
    free(text);
    /* more input: the counters move with it and the lag drains to 0 */
    for (int i = N_INPUT / 2; i < N_INPUT; i++)
        produce("lines", i % 2, cp_fmt("v%d", i));
    cp_flush();
    text = scrape_until(port, "lockstep_records_total{app=\"mc\",direction=\"out\"}", N_INPUT);
    free(text);
    /* the lag is reported by the next plan, which finds nothing new */
    for (int i = 0; i < 300; i++) {
        http_t h = http_get(port, "/metrics", NULL);
        text = strdup(h.body);
        http_free(&h);
        if (value_of(text, "lockstep_consumer_lag_records{app=\"mc\",topic=\"lines\",partition=\"0\"}") == 0 &&
            value_of(text, "lockstep_consumer_lag_records{app=\"mc\",topic=\"lines\",partition=\"1\"}") == 0 &&
            value_of(text, "lockstep_outbox_bytes{app=\"mc\"}") == 0)
            break;
        free(text);
        text = NULL;
        usleep(10000);
    }
    cr_assert_not_null(text, "the lag and the outbox did not drain to 0 in 3 s");
    cr_assert_eq(value_of(text, "lockstep_records_total{app=\"mc\",direction=\"in\"}"), N_INPUT);
    cr_assert_eq(value_of(text, "lockstep_records_total{app=\"mc\",direction=\"out\"}"), N_INPUT);
    cr_assert_eq(value_of(text, "lockstep_outbox_bytes{app=\"mc\"}"), 0, "%s", text);
    cr_assert_eq(value_of(text, "lockstep_healthy{app=\"mc\"}"), 1, "%s", text);
    cr_assert_eq(value_of(text, "lockstep_fenced_total{app=\"mc\"}"), 0, "%s", text);
    /* the copy's Kafka sink committed one transaction per batch with output */
    double txns = value_of(text, "lockstep_transactions_total{app=\"mc\",sink=\"to-kafka\","
                                 "result=\"committed\"}");
    cr_assert_gt(txns, 0, "%s", text);
    cr_assert_eq(value_of(text, "lockstep_transactions_total{app=\"mc\",sink=\"to-kafka\","
                                "result=\"aborted\"}"),
                 0, "%s", text);
    double batches = value_of(text, "lockstep_batches_total{app=\"mc\"}");
    cr_assert_gt(batches, 0, "%s", text);
    char *parsed = parse_with_prometheus_client(text, 0);
    check_families(parsed, 0);
    free(parsed);
    free(text);

    http_t h = http_get(port, "/metrics", NULL);
    cr_assert_eq(h.status, 200);
    cr_assert_not_null(strstr(h.headers, "Content-Type: text/plain; version=0.0.4; charset=utf-8"),
                       "%s", h.headers);
    http_free(&h);
    h = http_get(port, "/metrics", "application/openmetrics-text; version=1.0.0");
    cr_assert_eq(h.status, 200);
    cr_assert_not_null(strstr(h.headers, "Content-Type: application/openmetrics-text; "
                                         "version=1.0.0; charset=utf-8"),
                       "%s", h.headers);
    parsed = parse_with_prometheus_client(h.body, 1);
    check_families(parsed, 1);
    free(parsed);
    http_free(&h);

    h = http_get(port, "/healthz", NULL);
    cr_assert_eq(h.status, 200, "%s", h.body);
    cr_assert_str_eq(h.body, "ok\n");
    http_free(&h);

    /* /progress: one entry per batch of this process, input summing to the input */
    h = http_get(port, "/progress", NULL);
    cr_assert_eq(h.status, 200);
    json_error_t je;
    json_t *arr = json_loads(h.body, 0, &je);
    cr_assert(json_is_array(arr), "/progress is not a JSON array (%s): %s", je.text, h.body);
    size_t i;
    json_t *e;
    long long rows = 0, last = 0;
    json_array_foreach(arr, i, e) {
        rows += json_integer_value(json_object_get(e, "numInputRows"));
        last = json_integer_value(json_object_get(e, "batch"));
        cr_assert(json_is_object(json_object_get(e, "durationMs")), "%s", h.body);
    }
    cr_assert_eq(rows, N_INPUT, "%s", h.body);
    cr_assert_eq(last, (long long)batches, "%s", h.body);
    json_decref(arr);
    http_free(&h);

    h = http_get(port, "/nothing", NULL);
    cr_assert_eq(h.status, 404);
    http_free(&h);

    /* the broker goes away: 503 past health.stall.ms, 200 again once it is back */
    cp_broker_command("down");
    char *why = health_until(port, 503, 20);
    cr_assert(!strncmp(why, "stalled", 7) || !strncmp(why, "stuck retrying", 14),
              "503 reason: %s", why);
    cr_assert_eq(strchr(why, '\n'), why + strlen(why) - 1, "one line: %s", why);
    /* not at the first failed batch: only past health.stall.ms (1500) without progress */
    const char *since = strstr(why, " for ");
    long long stalled_ms = since ? strtoll(since + 5, NULL, 10) : -1;
    cr_assert_gt(stalled_ms, 1500, "503 before health.stall.ms: %s", why);
    free(why);
    cp_broker_command("up");
    why = health_until(port, 200, 60);
    cr_assert_str_eq(why, "ok\n");
    free(why);

    kill(cp_run_pid, SIGTERM);
    cr_assert_eq(cp_wait_exit(&cp_run_pid, 60), 0, "%s", cp_slurp(cp_path("stderr.txt")));
    /* the server is gone with the process */
    h = http_get(port, "/healthz", NULL);
    cr_assert_eq(h.status, 0);
}

/* The value of series in a scrape, failing when the series is absent. */
static double must(const char *text, const char *series) {
    double v = value_of(text, series);
    cr_assert_neq(v, -1, "%s missing from the scrape:\n%s", series, text);
    return v;
}

#define MC(series) "lockstep_" series
#define EV_ENV(s) "{app=\"mc\"" s "}"

/* Every metric of the issue on a `lockstep run` whose pipeline has all they describe:
 * count-by-key over event-time windows (state, late records), a Kafka output and a
 * Kafka dead letter (malformed input, late records). Scraped after a first input and
 * after the rest: each is present and parses (prometheus_client, both formats, and
 * promtool), each of processed data moves by exactly what was sent, and the lag drains
 * to 0. What this happy path cannot move (fencing, data loss, errors; held back: the
 * mock has no last stable offset) is present at 0; other tests move it. */
/* group.mode=consumer: one endpoint per process serves the tasks running there, each
 * sample labelled with its task, in one exposition that both parsers and promtool accept
 * (each family's HELP and TYPE once); /healthz names the tasks; /progress entries carry
 * their task. */
Test(metrics, cli_group_mode_one_endpoint_for_the_tasks) {
    cp_broker_start((const char *const[]){"lines:2", "out:2", "mc.progress:2", NULL});
    for (int i = 0; i < N_INPUT; i++)
        produce("lines", i % 2, cp_fmt("v%d", i));
    cp_flush();
    int port = free_port();
    cp_run_pid = run_start(port, (const char *const[]){"group.mode=consumer",
                                                    "group.session.timeout.ms=6000", NULL});
    const char *in0 = "lockstep_records_total{app=\"mc\",task=\"0\",direction=\"in\"}";
    const char *in1 = "lockstep_records_total{app=\"mc\",task=\"1\",direction=\"in\"}";
    char *text = scrape_until(port, in0, N_INPUT / 2);
    free(text);
    text = scrape_until(port, in1, N_INPUT / 2);
    cr_assert_eq(value_of(text, in0) + value_of(text, in1), N_INPUT, "%s", text);
    cr_assert_eq(value_of(text, "lockstep_healthy{app=\"mc\",task=\"0\"}"), 1, "%s", text);
    cr_assert_eq(value_of(text, "lockstep_healthy{app=\"mc\"}"), 1, "%s", text);
    const char *h = strstr(text, "# HELP lockstep_records_total");
    cr_assert(h && !strstr(h + 1, "# HELP lockstep_records_total"), "a family twice: %s", text);
    char *parsed = parse_with_prometheus_client(text, 0);
    check_families(parsed, 0);
    free(parsed);
    free(text);
    http_t om = http_get(port, "/metrics", "application/openmetrics-text");
    cr_assert_eq(om.status, 200);
    parsed = parse_with_prometheus_client(om.body, 1);
    check_families(parsed, 1);
    free(parsed);
    http_free(&om);
    char *why = health_until(port, 200, 10);
    cr_assert(strstr(why, "2 tasks running here"), "%s", why);
    free(why);
    /* a batch is reported once its delivery settled (sink.overlap): bounded wait */
    http_t pr = {0};
    for (int i = 0; i < 300; i++) {
        http_free(&pr);
        pr = http_get(port, "/progress", NULL);
        if (pr.status == 200 && strstr(pr.body, "\"task\":0") && strstr(pr.body, "\"task\":1"))
            break;
        usleep(10000);
    }
    cr_assert(pr.body && strstr(pr.body, "\"task\":0") && strstr(pr.body, "\"task\":1"),
              "/progress: %s", pr.body ? pr.body : "");
    http_free(&pr);
    kill(cp_run_pid, SIGTERM);
    cr_assert_eq(cp_wait_exit(&cp_run_pid, 30), 0, "%s", cp_slurp(cp_path("stderr.txt")));
}

/* lk_repartition scaled out: the stage after it runs tasks of the same numbers, whose
 * samples carry stage="<uid>" (without it, two series of one name and labels: an
 * exposition Prometheus refuses), /progress entries their "stage", and the process is
 * healthy with its 4 tasks. Pipeline: tests/mock/plugins/repartition_copy.c. */
Test(metrics, cli_group_mode_stages_are_labelled) {
    const char *plugin = getenv("LK_REPARTITION_PLUGIN");
    cr_assert(plugin && plugin[0], "LK_REPARTITION_PLUGIN is not set (run through ctest)");
    cp_broker_start((const char *const[]){"lines:2", "out:2", "mc.progress:2",
                                          "mc.by-key.progress:2", "mc.by-key.repartition:2",
                                          NULL});
    for (int i = 0; i < N_INPUT; i++)
        cp_produce("lines", i % 2, cp_fmt("k%d", i % 7), cp_fmt("v%d", i), 0);
    cp_flush();
    int port = free_port();
    cp_run_pid = run_start(port, (const char *const[]){
                                  "group.mode=consumer", "group.session.timeout.ms=6000",
                                  cp_fmt("pipeline.plugin=%s", plugin), NULL});
    const char *s0 =
        "lockstep_records_total{app=\"mc\",task=\"0\",stage=\"by-key\",direction=\"in\"}";
    const char *s1 =
        "lockstep_records_total{app=\"mc\",task=\"1\",stage=\"by-key\",direction=\"in\"}";
    char *text = NULL;
    for (int i = 0; i < 600; i++) { /* both tasks of stage 2 read everything (bounded) */
        free(text);
        text = scrape_until(port, s0, 1);
        if (value_of(text, s0) + value_of(text, s1) >= N_INPUT)
            break;
        usleep(20000);
    }
    cr_assert_eq(value_of(text, s0) + value_of(text, s1), N_INPUT, "%s", text);
    cr_assert_eq(value_of(text, "lockstep_records_total{app=\"mc\",task=\"0\",direction=\"in\"}") +
                     value_of(text, "lockstep_records_total{app=\"mc\",task=\"1\",direction=\"in\"}"),
                 N_INPUT, "%s", text);
    char *parsed = parse_with_prometheus_client(text, 0);
    check_families(parsed, 0);
    free(parsed);
    free(text);
    char *why = health_until(port, 200, 10);
    cr_assert(strstr(why, "4 tasks running here"), "%s", why);
    free(why);
    http_t pr = {0};
    for (int i = 0; i < 300; i++) {
        http_free(&pr);
        pr = http_get(port, "/progress", NULL);
        if (pr.status == 200 && strstr(pr.body, "\"stage\":\"by-key\""))
            break;
        usleep(10000);
    }
    cr_assert(pr.body && strstr(pr.body, "\"stage\":\"by-key\""), "/progress: %s",
              pr.body ? pr.body : "");
    http_free(&pr);
    kill(cp_run_pid, SIGTERM);
    cr_assert_eq(cp_wait_exit(&cp_run_pid, 30), 0, "%s", cp_slurp(cp_path("stderr.txt")));
}

Test(metrics, cli_every_metric_present_and_moving) {
    cp_broker_start((const char *const[]){"lines:2", "out:2", "dead:1", NULL});
    /* A: three on-time records in [1000, 2000) over both partitions, one malformed */
    produce_at("lines", 0, "{\"k\":\"a\"}", 1000);
    produce_at("lines", 0, "{\"k\":\"b\"}", 1500);
    produce_at("lines", 1, "{\"k\":\"a\"}", 1200);
    produce_at("lines", 1, "not json", 1300);
    cp_flush();
    int port = free_port();
    cp_run_pid = run_start(port, (const char *const[]){
                                  "pipeline=count-by-key", "key.field=k", "window.time=event",
                                  "window.size.ms=1000", "errors.deadletter=dead",
                                  "health.stall.ms=60000", NULL});
    char *a = scrape_until(port, MC("records_total") EV_ENV(",direction=\"in\""), 4);
    cr_assert_eq(must(a, MC("records_total") EV_ENV(",direction=\"in\"")), 4, "%s", a);
    /* the window [1000, 2000) is open: only the dead letter is out yet */
    cr_assert_eq(must(a, MC("records_total") EV_ENV(",direction=\"out\"")), 1, "%s", a);
    cr_assert_eq(must(a, MC("records_deadlettered_total") EV_ENV("")), 1, "%s", a);
    cr_assert_eq(must(a, MC("late_records_total") EV_ENV(",operator=\"windowed-counts\"")), 0,
                 "%s", a);
    cr_assert_eq(must(a, MC("accumulator") EV_ENV(",name=\"errors.malformed\"")), 1, "%s", a);
    double state_a = must(a, MC("state_entries") EV_ENV(",operator=\"windowed-counts\""));
    cr_assert_gt(state_a, 0, "%s", a);

    /* B: both partitions pass 10000: the watermark closes [1000, 2000), whose two keys
     * are written out (a: 2, b: 1) */
    produce_at("lines", 0, "{\"k\":\"c\"}", 10000);
    produce_at("lines", 1, "{\"k\":\"c\"}", 10000);
    cp_flush();
    char *b = scrape_until(port, MC("records_total") EV_ENV(",direction=\"out\""), 3);
    cr_assert_eq(must(b, MC("records_total") EV_ENV(",direction=\"in\"")), 6, "%s", b);
    cr_assert_eq(must(b, MC("records_total") EV_ENV(",direction=\"out\"")), 3, "%s", b);
    /* C: a record of the closed window, after the watermark passed it: late */
    produce_at("lines", 0, "{\"k\":\"d\"}", 1100);
    cp_flush();
    char *z = scrape_until(port, MC("late_records_total") EV_ENV(",operator=\"windowed-counts\""),
                           1);
    cr_assert_eq(must(z, MC("late_records_total") EV_ENV(",operator=\"windowed-counts\"")), 1,
                 "%s", z);
    /* and the lag drains to 0 on both partitions once a plan finds nothing new */
    for (int i = 0; i < 300; i++) {
        if (must(z, MC("consumer_lag_records") EV_ENV(",topic=\"lines\",partition=\"0\"")) == 0 &&
            must(z, MC("consumer_lag_records") EV_ENV(",topic=\"lines\",partition=\"1\"")) == 0 &&
            must(z, MC("outbox_bytes") EV_ENV("")) == 0)
            break;
        free(z);
        z = scrape_until(port, MC("records_total") EV_ENV(",direction=\"in\""), 7);
        usleep(10000);
    }
    cr_assert_eq(must(z, MC("consumer_lag_records") EV_ENV(",topic=\"lines\",partition=\"0\"")),
                 0, "%s", z);
    cr_assert_eq(must(z, MC("consumer_lag_records") EV_ENV(",topic=\"lines\",partition=\"1\"")),
                 0, "%s", z);
    cr_assert_eq(must(z, MC("outbox_bytes") EV_ENV("")), 0, "%s", z);

    /* processed data, exactly */
    cr_assert_eq(must(z, MC("records_total") EV_ENV(",direction=\"in\"")), 7, "%s", z);
    /* out: two window results, the malformed record's and the late record's dead letters */
    cr_assert_eq(must(z, MC("records_total") EV_ENV(",direction=\"out\"")), 4, "%s", z);
    cr_assert_eq(must(z, MC("records_deadlettered_total") EV_ENV("")), 1, "%s", z);
    cr_assert_eq(must(z, MC("accumulator") EV_ENV(",name=\"errors.malformed\"")), 1, "%s", z);
    cr_assert_null(strstr(z, "name=\"windowed-counts.late\""), "exposed twice: %s", z);
    /* what moved between the first scrape and the last */
    cr_assert_gt(must(z, MC("batches_total") EV_ENV("")), must(a, MC("batches_total") EV_ENV("")),
                 "%s", z);
    cr_assert_gt(must(z, MC("last_committed_batch_timestamp_seconds") EV_ENV("")),
                 must(a, MC("last_committed_batch_timestamp_seconds") EV_ENV("")), "%s", z);
    cr_assert_neq(must(z, MC("state_entries") EV_ENV(",operator=\"windowed-counts\"")), state_a,
                  "%s", z);
    static const char *const phases[] = {"plan", "fetch", "process", "commit", "deliver"};
    for (size_t i = 0; i < 5; i++) {
        const char *count = cp_fmt(MC("batch_duration_seconds_count") EV_ENV(",phase=\"%s\""),
                                phases[i]);
        const char *inf = cp_fmt(
            MC("batch_duration_seconds_bucket") EV_ENV(",phase=\"%s\",le=\"+Inf\""), phases[i]);
        cr_assert_gt(must(z, count), must(a, count), "%s", z);
        cr_assert_eq(must(z, inf), must(z, count), "%s", z);
        cr_assert_geq(must(z, cp_fmt(MC("batch_duration_seconds_sum") EV_ENV(",phase=\"%s\""),
                                  phases[i])),
                      0, "%s", z);
    }
    /* the output, the dead letters and the late record go in one Kafka transaction per
     * batch: the one sink committed more */
    const char *txn = NULL;
    for (const char *l = strstr(z, "lockstep_transactions_total{"); l;
         l = strstr(l + 1, "lockstep_transactions_total{"))
        if (strstr(l, "result=\"committed\"") &&
            strstr(l, "result=\"committed\"") < strchr(l, '\n')) {
            txn = l;
            break;
        }
    cr_assert_not_null(txn, "%s", z);
    char series[300];
    snprintf(series, sizeof series, "%.*s", (int)(strchr(txn, ' ') - txn), txn);
    cr_assert_gt(must(z, series), value_of(a, series) > 0 ? value_of(a, series) : 0, "%s", z);
    cr_assert_gt(must(z, MC("checkpoint_map_used_ratio") EV_ENV("")), 0, "%s", z);
    cr_assert_leq(must(z, MC("checkpoint_map_used_ratio") EV_ENV("")), 1, "%s", z);
    cr_assert_eq(must(z, MC("healthy") EV_ENV("")), 1, "%s", z);
    cr_assert_not_null(strstr(z, cp_fmt(MC("build_info") "{app=\"mc\",version=\"%s\","
                                     "checkpoint_format=\"",
                                     lk_version_str())),
                       "%s", z);
    /* present, at 0 on this happy path */
    cr_assert_eq(
        must(z, MC("consumer_held_back_records") EV_ENV(",topic=\"lines\",partition=\"0\"")), 0,
        "%s", z);
    cr_assert_eq(must(z, MC("fenced_total") EV_ENV("")), 0, "%s", z);
    cr_assert_eq(must(z, MC("data_loss_skipped_total") EV_ENV("")), 0, "%s", z);
    cr_assert_eq(must(z, MC("sink_errors_total") EV_ENV("")), 0, "%s", z);
    cr_assert_eq(must(z, MC("batch_errors_total") EV_ENV("")), 0, "%s", z);

    char *parsed = parse_with_prometheus_client(z, 0);
    check_families(parsed, 0);
    free(parsed);
    http_t h = http_get(port, "/metrics", "application/openmetrics-text; version=1.0.0");
    cr_assert_eq(h.status, 200);
    parsed = parse_with_prometheus_client(h.body, 1);
    check_families(parsed, 1);
    free(parsed);
    http_free(&h);
    free(a);
    free(b);
    free(z);
    kill(cp_run_pid, SIGTERM);
    cr_assert_eq(cp_wait_exit(&cp_run_pid, 60), 0, "%s", cp_slurp(cp_path("stderr.txt")));
}

Test(metrics, cli_port_in_use_is_refused) {
    cp_broker_start((const char *const[]){"lines:1", "out:1", NULL});
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(fd, 1), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    cp_run_pid = run_start(ntohs(a.sin_port), NULL);
    int rc = cp_wait_exit(&cp_run_pid, 30);
    close(fd);
    char *err = cp_slurp(cp_path("stderr.txt"));
    cr_assert_eq(rc, 1, "exit status %d: %s", rc, err);
    cr_assert_not_null(strstr(err, cp_fmt("metrics.listen=127.0.0.1:%d: cannot listen: Address "
                                       "already in use (another process uses the port",
                                       ntohs(a.sin_port))),
                       "%s", err);
    free(err);
}

Test(metrics, crash_does_not_double_count) {
    cp_broker_start((const char *const[]){"lines:2", "out:2", NULL});
    for (int i = 0; i < 4 * N_INPUT; i++)
        produce("lines", i % 2, cp_fmt("v%d", i));
    cp_flush();
    int port = free_port();
    /* small batches, so that the kill lands mid-run with most input still to do */
    const char *const small[] = {"max.records.per.partition=5", NULL};
    cp_run_pid = run_start(port, small);
    char *text = scrape_until(port, "lockstep_records_total{app=\"mc\",direction=\"in\"}", 100);
    double before = value_of(text, "lockstep_records_total{app=\"mc\",direction=\"in\"}");
    free(text);
    kill(cp_run_pid, SIGKILL);
    cr_assert_eq(cp_wait_exit(&cp_run_pid, 30), 128 + SIGKILL);
    cp_run_pid = run_start(port, small);
    /* never backwards: the first answer of the new process is at least the last one */
    http_t h = {0};
    for (int i = 0; i < 3000 && h.status != 200; i++) {
        http_free(&h);
        h = http_get(port, "/metrics", NULL);
        if (h.status != 200)
            usleep(10000);
    }
    cr_assert_eq(h.status, 200, "no /metrics from the restarted process");
    cr_assert_geq(value_of(h.body, "lockstep_records_total{app=\"mc\",direction=\"in\"}"),
                  before, "%s", h.body);
    http_free(&h);
    text = scrape_until(port, "lockstep_records_total{app=\"mc\",direction=\"in\"}", 4 * N_INPUT);
    cr_assert_eq(value_of(text, "lockstep_records_total{app=\"mc\",direction=\"in\"}"),
                 4 * N_INPUT, "%s", text);
    free(text);
    /* the copy writes one record per input record: out equals in, as without a crash */
    text = scrape_until(port, "lockstep_records_total{app=\"mc\",direction=\"out\"}", 4 * N_INPUT);
    cr_assert_eq(value_of(text, "lockstep_records_total{app=\"mc\",direction=\"out\"}"),
                 4 * N_INPUT, "%s", text);
    cr_assert_eq(value_of(text, "lockstep_records_total{app=\"mc\",direction=\"in\"}"),
                 4 * N_INPUT, "%s", text);
    free(text);
    kill(cp_run_pid, SIGTERM);
    cr_assert_eq(cp_wait_exit(&cp_run_pid, 60), 0, "%s", cp_slurp(cp_path("stderr.txt")));
}

/* The counters of processed data a windowed run with dead letters and late records ends
 * with (app's series, after all N_WIN input records are in). */
typedef struct {
    double batches, in, out, dead, late, malformed;
} win_counters_t;

#define N_WIN 300

static win_counters_t windowed_run(const char *app, int kill_at) {
    int port = free_port();
    const char *const extra[] = {cp_fmt("app.id=%s", app),
                                 cp_fmt("checkpoint.dir=%s", cp_path(app)),
                                 "pipeline=count-by-key", "key.field=k", "window.time=event",
                                 "window.size.ms=1000", "errors.deadletter=dead",
                                 "max.records.per.partition=5", NULL};
    const char *in = cp_fmt("lockstep_records_total{app=\"%s\",direction=\"in\"}", app);
    cp_run_pid = run_start(port, extra);
    if (kill_at) {
        char *text = scrape_until(port, in, kill_at);
        free(text);
        kill(cp_run_pid, SIGKILL);
        cr_assert_eq(cp_wait_exit(&cp_run_pid, 30), 128 + SIGKILL);
        cp_run_pid = run_start(port, extra);
    }
    char *z = scrape_until(port, in, N_WIN);
    win_counters_t c = {
        must(z, cp_fmt("lockstep_batches_total{app=\"%s\"}", app)),
        must(z, in),
        must(z, cp_fmt("lockstep_records_total{app=\"%s\",direction=\"out\"}", app)),
        must(z, cp_fmt("lockstep_records_deadlettered_total{app=\"%s\"}", app)),
        must(z,
             cp_fmt("lockstep_late_records_total{app=\"%s\",operator=\"windowed-counts\"}", app)),
        must(z, cp_fmt("lockstep_accumulator{app=\"%s\",name=\"errors.malformed\"}", app))};
    free(z);
    kill(cp_run_pid, SIGTERM);
    cr_assert_eq(cp_wait_exit(&cp_run_pid, 60), 0, "%s", cp_slurp(cp_path("stderr.txt")));
    return c;
}

/* Dead letters and late records, like records, are counted from the checkpoint: a run
 * killed with SIGKILL mid-way and restarted ends with the counters of a run without a
 * crash. The input is all there before the start and batches take 5 records each, so
 * both runs cut the same batches (a killed batch is replayed from its recorded plan) and
 * the same records are late. */
Test(metrics, crash_windowed_counters_equal_a_run_without_crashes) {
    cp_broker_start((const char *const[]){"lines:1", "out:1", "dead:1", NULL});
    for (int i = 0; i < N_WIN; i++) {
        if (i % 7 == 3)
            produce_at("lines", 0, "not json", 1 + i * 100);
        else if (i % 10 == 9) /* in [0, 1000): late once the watermark passed 1000 */
            produce_at("lines", 0, "{\"k\":\"late\"}", 1);
        else
            produce_at("lines", 0, cp_fmt("{\"k\":\"k%d\"}", i % 13), 1 + i * 100);
    }
    cp_flush();
    win_counters_t ref = windowed_run("calm", 0);
    win_counters_t crashed = windowed_run("crashed", 100);
    /* (measured: 60 batches, 300 in, 293 out, 43 dead letters, 25 late) */
    cr_assert_eq(ref.in, N_WIN);
    cr_assert_gt(ref.late, 0);
    cr_assert_gt(ref.dead, 0);
    cr_assert_eq(crashed.batches, ref.batches, "batches %g, without a crash %g", crashed.batches,
                 ref.batches);
    cr_assert_eq(crashed.in, ref.in);
    cr_assert_eq(crashed.out, ref.out, "out %g, without a crash %g", crashed.out, ref.out);
    cr_assert_eq(crashed.dead, ref.dead, "dead letters %g, without a crash %g", crashed.dead,
                 ref.dead);
    cr_assert_eq(crashed.late, ref.late, "late %g, without a crash %g", crashed.late, ref.late);
    cr_assert_eq(crashed.malformed, ref.malformed);
}

Test(metrics, cli_deadletters_counted) {
    cp_broker_start((const char *const[]){"lines:1", "out:1", NULL});
    static const char *const input[] = {"{\"k\":\"a\"}", "not json", "{\"k\":\"b\"}",
                                        "{\"nokey\":1}", "{\"k\":\"a\"}"};
    for (size_t i = 0; i < sizeof input / sizeof *input; i++)
        produce("lines", 0, input[i]);
    cp_flush();
    int port = free_port();
    cp_run_pid = run_start(port, (const char *const[]){
                                     "pipeline=count-by-key", "key.field=k",
                                     cp_fmt("errors.deadletter=file:%s", cp_path("dlq")), NULL});
    char *text = scrape_until(port, "lockstep_records_total{app=\"mc\",direction=\"in\"}", 5);
    cr_assert_eq(value_of(text, "lockstep_records_total{app=\"mc\",direction=\"in\"}"), 5,
                 "%s", text);
    cr_assert_eq(value_of(text, "lockstep_records_deadlettered_total{app=\"mc\"}"), 2, "%s", text);
    cr_assert_eq(value_of(text, "lockstep_accumulator{app=\"mc\",name=\"errors.malformed\"}"), 2,
                 "%s", text);
    /* lockstep's own accumulators are metrics of their own, not lockstep_accumulator */
    cr_assert_null(strstr(text, "name=\"lockstep."), "%s", text);
    /* keys a and b */
    cr_assert_eq(value_of(text, "lockstep_state_entries{app=\"mc\",operator=\"counts\"}"), 2,
                 "%s", text);
    free(text);
    kill(cp_run_pid, SIGTERM);
    cr_assert_eq(cp_wait_exit(&cp_run_pid, 60), 0, "%s", cp_slurp(cp_path("stderr.txt")));
}

/* ---- library: the health verdicts of lk_context_run's life ---- */

static void fail_batch(lk_batch_t *b, const lk_record_t *recs, size_t n, void *opaque) {
    (void)recs;
    (void)opaque;
    if (n)
        lk_batch_fail(b, "this pipeline refuses its input");
}

static void define_failing(lk_pipeline_t *p, void *opaque) {
    (void)opaque;
    lk_foreach_batch(lk_kafka_stream(p, "lines"), "refuse", fail_batch, NULL);
}

static void *run_thread(void *ctx) {
    return (void *)(intptr_t)lk_context_run(ctx);
}

Test(metrics, library_health_states) {
    mu_cluster_t c;
    mu_start(&c, 1);
    mu_topic(&c, "lines", 1);
    outdir = cp_path("out");
    int port = free_port();
    lk_conf_t *conf = mu_conf(&c, "mh", cp_path("ckpt"));
    mu_set(conf, "metrics.listen", cp_fmt("127.0.0.1:%d", port));
    mu_set(conf, "stop.gracefully.on.shutdown", "false");
    char err[1024];
    lk_context_t *ctx = lk_context_get_or_create(conf, define_wc, NULL, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    http_t h = http_get(port, "/healthz", NULL);
    cr_assert_eq(h.status, 503);
    cr_assert_str_eq(h.body, "not running: the batch loop has not started\n");
    http_free(&h);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, run_thread, ctx), 0);
    char *why = health_until(port, 200, 30);
    cr_assert_str_eq(why, "ok\n");
    free(why);
    lk_context_stop(ctx, 1);
    void *rc;
    pthread_join(th, &rc);
    cr_assert_eq((lk_err_t)(intptr_t)rc, LK_OK, "%s", lk_context_errstr(ctx));
    h = http_get(port, "/healthz", NULL);
    cr_assert_eq(h.status, 503);
    cr_assert_str_eq(h.body, "stopped: the batch loop has returned\n");
    http_free(&h);
    lk_context_destroy(ctx);
    /* the port is free again once the context is gone */
    h = http_get(port, "/healthz", NULL);
    cr_assert_eq(h.status, 0);
    lk_conf_destroy(conf);

    /* a pipeline that fails its batch: run returns the error, /healthz says fatal */
    mu_produce(&c, "lines", 0, NULL, "x");
    mu_flush(&c);
    conf = mu_conf(&c, "mf", cp_path("ckpt2"));
    mu_set(conf, "metrics.listen", cp_fmt("127.0.0.1:%d", port));
    mu_set(conf, "stop.gracefully.on.shutdown", "false");
    ctx = lk_context_get_or_create(conf, define_failing, NULL, err, sizeof err);
    cr_assert_not_null(ctx, "%s", err);
    lk_err_t e = lk_context_run(ctx);
    cr_assert_neq(e, LK_OK);
    h = http_get(port, "/healthz", NULL);
    cr_assert_eq(h.status, 503);
    cr_assert(!strncmp(h.body, "fatal: ", 7) && strstr(h.body, "this pipeline refuses its input"),
              "%s", h.body);
    cr_assert_eq(strchr(h.body, '\n'), h.body + strlen(h.body) - 1, "one line: %s", h.body);
    http_free(&h);
    h = http_get(port, "/metrics", NULL);
    cr_assert_eq(value_of(h.body, "lockstep_healthy{app=\"mf\"}"), 0, "%s", h.body);
    cr_assert_eq(value_of(h.body, "lockstep_batches_total{app=\"mf\"}"), 0, "%s", h.body);
    http_free(&h);
    lk_context_destroy(ctx);
    lk_conf_destroy(conf);
    mu_stop(&c);
}
