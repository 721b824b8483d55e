/*
 * metrics.c — Prometheus metrics, the health probe and the recent progress of a context
 * (metrics_int.h), served by libmicrohttpd (Debian's libmicrohttpd-dev) on its own
 * thread: GET /metrics (text 0.0.4, or OpenMetrics 1.0 when the Accept header asks for
 * it), GET /healthz, GET /progress.
 *
 * The metric table (LK__METRICS) is the one place a metric is declared: it writes the
 * HELP and TYPE lines and the README's metrics reference (`lockstep metrics --markdown`).
 * Values of processed data are read from the checkpoint at scrape time (the last batch
 * id, the accumulators lockstep.records.in/out, lockstep.records.deadlettered,
 * lockstep.data.loss.skipped and each event-time window's <uid>.late, committed with
 * each batch), so they are exact across crashes; lag is the log end seen by the
 * last plan minus the checkpointed offset, never Kafka's committed offsets.
 */
#define _GNU_SOURCE
#include "metrics_int.h"
#include "../core/conf_int.h"
#include "../core/util_int.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * X(ID, name, type, labels, help). Names follow Prometheus conventions: base units,
 * counters end in _total; every sample also carries the label app. type is the
 * Prometheus type (counter, gauge, histogram; info is written as a gauge in 0.0.4).
 */
#define LK__METRICS(X)                                                                     \
    X(BUILD_INFO, "lockstep_build_info", "info", "version, checkpoint_format",            \
      "Always 1; the labels name the lockstep version and the checkpoint format it "      \
      "writes.")                                                                           \
    X(BATCHES, "lockstep_batches_total", "counter", "",                                    \
      "Batches committed to the checkpoint (its last batch id): exact across crashes.")    \
    X(RECORDS, "lockstep_records_total", "counter", "direction=in|out",                    \
      "Input records processed and output records produced by committed batches "         \
      "(checkpoint accumulators lockstep.records.in/out): exact across crashes.")          \
    X(BATCH_DURATION, "lockstep_batch_duration_seconds", "histogram",                      \
      "phase=plan|fetch|process|commit|deliver",                                           \
      "Duration of each phase of the committed batches of this process.")                 \
    X(LAG, "lockstep_consumer_lag_records", "gauge", "topic, partition",                   \
      "Input records not yet processed: the log end seen by the last plan (the last "      \
      "stable offset when reading read_committed) minus the checkpointed offset.")         \
    X(HELD_BACK, "lockstep_consumer_held_back_records", "gauge", "topic, partition",       \
      "Input records behind an open transaction (high watermark minus last stable "        \
      "offset): read_committed cannot read past them until the producer commits or "      \
      "aborts. Non-zero for long: a hanging producer upstream.")                           \
    X(LAST_COMMIT, "lockstep_last_committed_batch_timestamp_seconds", "gauge", "",         \
      "Wall clock time at which the last batch was committed (from its batch record).")     \
    X(OUTBOX_BYTES, "lockstep_outbox_bytes", "gauge", "",                                  \
      "Bytes of output in the checkpoint's outbox, waiting for the sinks.")               \
    X(STATE_ENTRIES, "lockstep_state_entries", "gauge", "operator",                        \
      "Entries in each stateful operator's state database: one per key for keyed "      \
      "state; for a window, its partial aggregates per key and slice plus its "          \
      "bookkeeping (watermark, running values, slice index).")                            \
    X(MAP_USED, "lockstep_checkpoint_map_used_ratio", "gauge", "",                         \
      "Size of the checkpoint's data file over its LMDB map size (the map grows by "       \
      "doubling when full).")                                                              \
    X(TRANSACTIONS, "lockstep_transactions_total", "counter",                              \
      "sink, result=committed|aborted",                                                    \
      "Deliveries of this process per sink: Kafka transactions, or for a file sink one "   \
      "batch's files renamed into place (committed), and deliveries undone (aborted).")    \
    X(FENCED, "lockstep_fenced_total", "counter", "",                                      \
      "Times a sink of this process was fenced by a newer instance.")                     \
    X(SINK_ERRORS, "lockstep_sink_errors_total", "counter", "",                            \
      "Delivery rounds of this process that failed and were retried later.")              \
    X(BATCH_ERRORS, "lockstep_batch_errors_total", "counter", "",                          \
      "Batches of this process that failed for a retriable reason (broker unreachable, "  \
      "fetch timeout) and were retried.")                                                  \
    X(DEADLETTERED, "lockstep_records_deadlettered_total", "counter", "",                  \
      "Malformed input records lockstep run sent to errors.deadletter (a plugin adds "   \
      "its own to the accumulator lockstep.records.deadlettered): from the checkpoint, "  \
      "exact across crashes. Late records are lockstep_late_records_total; records a "   \
      "Kafka sink diverts because they can never be delivered are logged, not counted.")  \
    X(LATE, "lockstep_late_records_total", "counter", "operator",                          \
      "Records that arrived after every event-time window holding them had closed, per "  \
      "window operator (its accumulator <uid>.late, committed with the batch): from the "  \
      "checkpoint, exact across crashes. Raise window.grace.ms if it grows.")              \
    X(DATA_LOSS, "lockstep_data_loss_skipped_total", "counter", "",                        \
      "Input offsets skipped because Kafka deleted them before they were read "           \
      "(on.data.loss=skip; checkpoint accumulator lockstep.data.loss.skipped).")           \
    X(ACCUMULATOR, "lockstep_accumulator", "gauge", "name",                                \
      "The application's accumulators (lk_accumulator_add) as committed in the "         \
      "checkpoint (lockstep's own, lockstep.* and the windows' <uid>.late, are the "     \
      "metrics above).")                                                                       \
    X(HEALTHY, "lockstep_healthy", "gauge", "",                                            \
      "1 when /healthz answers 200, else 0.")

enum {
#define LK__METRIC_ID(id, ...) LK__M_##id,
    LK__METRICS(LK__METRIC_ID)
#undef LK__METRIC_ID
        LK__M_COUNT
};

static const struct {
    const char *name, *type, *labels, *help;
} metric_defs[] = {
#define LK__METRIC_DEF(id, name, type, labels, help) {name, type, labels, help},
    LK__METRICS(LK__METRIC_DEF)
#undef LK__METRIC_DEF
};

static const char *const phase_names[5] = {"plan", "fetch", "process", "commit", "deliver"};
/* upper bounds in seconds: a 0.1 ms commit to a 30 s fetch timeout */
static const double bucket_le[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                   0.1,    0.25,  0.5,    1,     2.5,  5,     10,  30};
#define NBUCKETS (sizeof bucket_le / sizeof bucket_le[0])

typedef struct {
    uint64_t counts[NBUCKETS + 1]; /* per bucket (not cumulative); the last is +Inf */
    uint64_t count;
    double sum;
} histogram_t;

typedef struct {
    char *topic;
    int32_t partition;
    int64_t high; /* log end of the last plan: the last stable offset (read_committed) */
    int64_t held; /* high watermark - last stable offset: behind open transactions */
    int64_t held_since_ms; /* monotonic: caught up to a held-back end since; 0: not */
    int warned;            /* the hold was logged */
} part_high_t;

struct lk_metrics {
    lk_store_t *store;
    lk_sink_t *const *sinks;
    size_t nsinks;
    char **late_ops; /* uids of the event-time windows: lockstep_late_records_total */
    size_t nlate;
    char *app;
    int64_t stall_ms;
    struct MHD_Daemon *daemon;
    pthread_mutex_t lock; /* everything below */
    histogram_t phases[5];
    part_high_t *highs;
    size_t nhighs;
    uint64_t fenced, sink_errors, batch_errors;
    int running;            /* inside lk_context_run() */
    int ended;              /* lk_context_run() returned */
    lk_err_t end_err;       /* ... with this */
    int64_t last_ok_ms;     /* monotonic: last batch committed or idle */
    int64_t retry_since_ms; /* monotonic: first of the current run of failed batches, 0 */
    int64_t sink_fail_since_ms;
    int sink_fatal;
    char why[512];      /* the last batch error */
    char sink_why[512]; /* the last sink error */
    char end_why[512];
    char *progress[LK__METRICS_PROGRESS_KEEP]; /* ring of JSON objects */
    size_t nprogress, progress_next;
    int64_t last_report_ms;
};

/* ---- the feed from the batch loop ---- */

void lk__metrics_planned(lk_metrics_t *m, const lk__fetch_t *f, lk_receiver_t *rcv) {
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < f->nranges; i++) {
        const lk__range_msgs_t *r = &f->ranges[i];
        int64_t hwm = lk__receiver_fetched_high(rcv, r->range.topic, r->range.partition);
        size_t j;
        for (j = 0; j < m->nhighs; j++)
            if (m->highs[j].partition == r->range.partition &&
                !strcmp(m->highs[j].topic, r->range.topic))
                break;
        if (j == m->nhighs) {
            part_high_t *n = realloc(m->highs, (m->nhighs + 1) * sizeof *n);
            char *t = strdup(r->range.topic);
            if (!n || !t) { /* out of memory: this partition's lag is not shown */
                if (n)
                    m->highs = n;
                free(t);
                continue;
            }
            m->highs = n;
            m->highs[m->nhighs++] = (part_high_t){t, r->range.partition, r->high, 0, 0, 0};
        }
        m->highs[j].high = r->high;
        /* the cached high watermark may be older than the plan: never negative */
        part_high_t *h = &m->highs[j];
        h->held = hwm > r->high ? hwm - r->high : 0;
        /* caught up to the last stable offset with records behind it for longer than
         * health.stall.ms: say so once (Kafka shows no lag for it, and nothing else
         * would tell of a hanging transactional producer upstream) */
        int64_t now = lk__mono_ms();
        if (h->held && r->range.until >= r->high) {
            if (!h->held_since_ms)
                h->held_since_ms = now;
            else if (!h->warned && now - h->held_since_ms > m->stall_ms) {
                h->warned = 1;
                lk__log(LK_LOG_WARNING,
                        "%s[%d]: %lld records held back behind an open transaction for %lld "
                        "ms (offset %lld is the last stable offset): a transactional producer "
                        "has neither committed nor aborted; read_committed waits for it",
                        h->topic, (int)h->partition, (long long)h->held,
                        (long long)(now - h->held_since_ms), (long long)r->high);
            }
        } else {
            if (h->warned)
                lk__log(LK_LOG_NOTICE, "%s[%d]: no longer held back by an open transaction",
                        h->topic, (int)h->partition);
            h->held_since_ms = 0;
            h->warned = 0;
        }
    }
    pthread_mutex_unlock(&m->lock);
}

static void observe(histogram_t *h, double seconds) {
    size_t b = 0;
    while (b < NBUCKETS && seconds > bucket_le[b])
        b++;
    h->counts[b]++;
    h->count++;
    h->sum += seconds;
}

char *lk__metrics_progress_line(const lk_progress_t *p, int64_t now, double secs) {
    char *buf = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&buf, &len);
    if (!fp)
        return NULL;
    fprintf(fp,
            "{\"batch\":%llu,\"batchTime\":%lld,\"timestamp\":%lld,\"numInputRows\":%llu,"
            "\"inputBytes\":%llu,\"numOutputRows\":%llu,\"inputRowsPerSecond\":%.1f,"
            "\"durationMs\":{\"plan\":%.2f,\"fetch\":%.2f,\"process\":%.2f,"
            "\"commit\":%.2f,\"deliver\":%.2f},\"outboxBytes\":%llu,\"lag\":{\"total\":%lld",
            (unsigned long long)p->batch, (long long)p->batch_time_ms, (long long)now,
            (unsigned long long)p->records_in, (unsigned long long)p->bytes_in,
            (unsigned long long)p->records_out, (double)p->records_in / secs, p->plan_ms,
            p->fetch_ms, p->process_ms, p->commit_ms, p->deliver_ms,
            (unsigned long long)p->outbox_bytes, (long long)p->lag);
    /* topic names are [A-Za-z0-9._-] (Kafka's rule): nothing to escape */
    for (size_t i = 0; i < p->ntopics; i++)
        fprintf(fp, ",\"%s\":%lld", p->topics[i], (long long)p->topic_lag[i]);
    fputs("}}", fp);
    if (fclose(fp)) {
        free(buf);
        return NULL;
    }
    return buf;
}

void lk__metrics_progress(lk_metrics_t *m, const lk_progress_t *p) {
    if (!m)
        return;
    double ms[5] = {p->plan_ms, p->fetch_ms, p->process_ms, p->commit_ms, p->deliver_ms};
    int64_t now = lk__wall_ms();
    pthread_mutex_lock(&m->lock);
    for (int i = 0; i < 5; i++)
        observe(&m->phases[i], ms[i] > 0 ? ms[i] / 1000.0 : 0);
    double secs = m->last_report_ms ? (double)(now - m->last_report_ms) / 1000.0 : 0;
    if (secs <= 0)
        secs = (ms[0] + ms[1] + ms[2] + ms[3] + ms[4]) / 1000.0;
    if (secs <= 0)
        secs = 1e-3;
    m->last_report_ms = now;
    pthread_mutex_unlock(&m->lock);
    char *line = lk__metrics_progress_line(p, now, secs); /* formatted outside the lock */
    if (!line)
        return;
    pthread_mutex_lock(&m->lock);
    free(m->progress[m->progress_next]);
    m->progress[m->progress_next] = line;
    m->progress_next = (m->progress_next + 1) % LK__METRICS_PROGRESS_KEEP;
    if (m->nprogress < LK__METRICS_PROGRESS_KEEP)
        m->nprogress++;
    pthread_mutex_unlock(&m->lock);
}

void lk__metrics_loop(lk_metrics_t *m, int running, lk_err_t err, const char *why) {
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    m->running = running;
    if (running) {
        m->ended = 0;
        m->last_ok_ms = lk__mono_ms(); /* the stall clock starts now */
        m->retry_since_ms = 0;
    } else {
        m->ended = 1;
        m->end_err = err;
        lk__fmt(m->end_why, sizeof m->end_why, "%s", err && why ? why : "");
    }
    pthread_mutex_unlock(&m->lock);
}

void lk__metrics_batch(lk_metrics_t *m, lk_err_t err, const char *why) {
    if (!m)
        return;
    int64_t now = lk__mono_ms();
    pthread_mutex_lock(&m->lock);
    if (!err) {
        m->last_ok_ms = now;
        m->retry_since_ms = 0;
    } else {
        m->batch_errors++;
        if (!m->retry_since_ms)
            m->retry_since_ms = now;
        lk__fmt(m->why, sizeof m->why, "%s", why ? why : lk_err_str(err));
    }
    pthread_mutex_unlock(&m->lock);
}

void lk__metrics_sink(lk_metrics_t *m, lk_err_t err, const char *why) {
    if (!m)
        return;
    int64_t now = lk__mono_ms();
    pthread_mutex_lock(&m->lock);
    if (!err) {
        m->sink_fail_since_ms = 0;
    } else {
        if (err == LK_ERR_FENCED)
            m->fenced++;
        if (err == LK_ERR_FENCED || err == LK_ERR_FATAL || err == LK_ERR_STATE ||
            err == LK_ERR_CORRUPT) /* what stops the application */
            m->sink_fatal = 1;
        else
            m->sink_errors++;
        if (!m->sink_fail_since_ms)
            m->sink_fail_since_ms = now;
        lk__fmt(m->sink_why, sizeof m->sink_why, "%s", why ? why : lk_err_str(err));
    }
    pthread_mutex_unlock(&m->lock);
}

/* ---- health ---- */

static int health_locked(lk_metrics_t *m, char *why, size_t size) {
    int64_t now = lk__mono_ms();
    if (m->sink_fatal) {
        lk__fmt(why, size, "fatal: %s", m->sink_why);
        return 0;
    }
    if (m->ended) {
        if (m->end_err)
            lk__fmt(why, size, "fatal: %s (%s)", m->end_why, lk_err_name(m->end_err));
        else
            lk__fmt(why, size, "stopped: the batch loop has returned");
        return 0;
    }
    if (!m->running) {
        lk__fmt(why, size, "not running: the batch loop has not started");
        return 0;
    }
    if (m->sink_fail_since_ms && now - m->sink_fail_since_ms > m->stall_ms) {
        lk__fmt(why, size, "stalled on a sink: delivery failing for %lld ms: %s",
                (long long)(now - m->sink_fail_since_ms), m->sink_why);
        return 0;
    }
    if (now - m->last_ok_ms > m->stall_ms) {
        if (m->retry_since_ms)
            lk__fmt(why, size, "stuck retrying: no batch committed for %lld ms: %s",
                    (long long)(now - m->last_ok_ms), m->why);
        else
            lk__fmt(why, size, "stalled: no batch committed or idle for %lld ms",
                    (long long)(now - m->last_ok_ms));
        return 0;
    }
    lk__fmt(why, size, "ok");
    return 1;
}

int lk__metrics_health(lk_metrics_t *m, char *why, size_t why_size) {
    pthread_mutex_lock(&m->lock);
    int ok = health_locked(m, why, why_size);
    pthread_mutex_unlock(&m->lock);
    return ok;
}

void lk__metrics_progress_json(lk_metrics_t *m, FILE *fp) {
    pthread_mutex_lock(&m->lock);
    fputc('[', fp);
    size_t first = (m->progress_next + LK__METRICS_PROGRESS_KEEP - m->nprogress) %
                   LK__METRICS_PROGRESS_KEEP;
    for (size_t i = 0; i < m->nprogress; i++)
        fprintf(fp, "%s%s", i ? ",\n" : "\n", m->progress[(first + i) % LK__METRICS_PROGRESS_KEEP]);
    fputs("\n]\n", fp);
    pthread_mutex_unlock(&m->lock);
}

/* ---- the exposition ---- */

/* A label value: backslash, double quote and newline escaped (both formats). */
static void label_value(FILE *fp, const char *v) {
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            fprintf(fp, "\\%c", *v);
        else if (*v == '\n')
            fputs("\\n", fp);
        else
            fputc(*v, fp);
    }
}

/* HELP and TYPE of metric id; OpenMetrics names counters and infos without their
 * suffix. */
static void head(FILE *fp, int id, int om) {
    const char *name = metric_defs[id].name, *type = metric_defs[id].type;
    size_t len = strlen(name);
    if (om && !strcmp(type, "counter"))
        len -= strlen("_total");
    else if (om && !strcmp(type, "info"))
        len -= strlen("_info");
    else if (!strcmp(type, "info"))
        type = "gauge";
    fprintf(fp, "# HELP %.*s %s\n# TYPE %.*s %s\n", (int)len, name, metric_defs[id].help,
            (int)len, name, type);
}

/* Start a sample: name{app="...", then the caller adds ",label=..." and "} value". */
static void sample(FILE *fp, const lk_metrics_t *m, const char *name) {
    fprintf(fp, "%s{app=\"", name);
    label_value(fp, m->app);
    fputc('"', fp);
}

static void sample_u64(FILE *fp, const lk_metrics_t *m, int id, uint64_t v) {
    sample(fp, m, metric_defs[id].name);
    fprintf(fp, "} %llu\n", (unsigned long long)v);
}

typedef struct {
    FILE *fp;
    const lk_metrics_t *m;
    int64_t records_in, records_out, data_loss, deadlettered;
    int64_t *late; /* per m->late_ops */
} acc_ctx_t;

/* The index in m->late_ops of the window whose late-record accumulator (<uid>.late,
 * window.c) name is, or -1. */
static long late_index(const lk_metrics_t *m, const char *name) {
    size_t n = strlen(name);
    if (n < 5 || strcmp(name + n - 5, ".late"))
        return -1;
    for (size_t i = 0; i < m->nlate; i++)
        if (strlen(m->late_ops[i]) == n - 5 && !memcmp(m->late_ops[i], name, n - 5))
            return (long)i;
    return -1;
}

static int acc_internal(const char *name, int64_t value, void *o) {
    acc_ctx_t *a = o;
    long li = late_index(a->m, name);
    if (li >= 0)
        a->late[li] = value;
    else if (!strcmp(name, "lockstep.records.in"))
        a->records_in = value;
    else if (!strcmp(name, "lockstep.records.out"))
        a->records_out = value;
    else if (!strcmp(name, "lockstep.data.loss.skipped"))
        a->data_loss = value;
    else if (!strcmp(name, "lockstep.records.deadlettered"))
        a->deadlettered = value;
    return 0;
}

static int acc_user(const char *name, int64_t value, void *o) {
    acc_ctx_t *a = o;
    /* lockstep's own and the windows' late records: exposed as metrics above */
    if (!strncmp(name, "lockstep.", 9) || late_index(a->m, name) >= 0)
        return 0;
    sample(a->fp, a->m, metric_defs[LK__M_ACCUMULATOR].name);
    fputs(",name=\"", a->fp);
    label_value(a->fp, name);
    fprintf(a->fp, "\"} %lld\n", (long long)value);
    return 0;
}

static int state_entries(const lk__state_stat_t *st, void *o) {
    acc_ctx_t *a = o;
    sample(a->fp, a->m, metric_defs[LK__M_STATE_ENTRIES].name);
    fputs(",operator=\"", a->fp);
    label_value(a->fp, st->uid);
    fprintf(a->fp, "\"} %llu\n", (unsigned long long)st->entries);
    return 0;
}

/* A double in the exposition's syntax. */
static void value_double(FILE *fp, double v) {
    fprintf(fp, "%.17g\n", v);
}

lk_err_t lk__metrics_write(lk_metrics_t *m, FILE *fp, int om, char *errstr,
                           size_t errstr_size) {
    /* what the process knows, copied under the lock; the checkpoint is read after */
    histogram_t phases[5];
    uint64_t fenced, sink_errors, batch_errors;
    char why[600];
    pthread_mutex_lock(&m->lock);
    memcpy(phases, m->phases, sizeof phases);
    fenced = m->fenced;
    sink_errors = m->sink_errors;
    batch_errors = m->batch_errors;
    int healthy = health_locked(m, why, sizeof why);
    size_t nhighs = m->nhighs;
    part_high_t *highs = malloc((nhighs ? nhighs : 1) * sizeof *highs);
    /* late_ops is fixed at creation: no lock needed for it */
    int64_t *late = calloc(m->nlate ? m->nlate : 1, sizeof *late);
    size_t nh = 0;
    for (size_t i = 0; highs && i < nhighs; i++) {
        highs[nh] = m->highs[i];
        if ((highs[nh].topic = strdup(m->highs[i].topic)))
            nh++;
    }
    pthread_mutex_unlock(&m->lock);
    if (!highs || !late) {
        for (size_t i = 0; i < nh; i++)
            free(highs[i].topic);
        free(highs);
        free(late);
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "metrics: out of memory");
    }

    lk_store_txn_t *t;
    lk_err_t e = lk__store_txn_begin(m->store, 0, &t, errstr, errstr_size);
    if (e) {
        for (size_t i = 0; i < nh; i++)
            free(highs[i].topic);
        free(highs);
        free(late);
        return e;
    }
    acc_ctx_t a = {fp, m, 0, 0, 0, 0, late};
    lk__store_acc_foreach(t, acc_internal, &a);

    head(fp, LK__M_BUILD_INFO, om);
    sample(fp, m, "lockstep_build_info");
    fputs(",version=\"", fp);
    label_value(fp, lk_version_str());
    fprintf(fp, "\",checkpoint_format=\"%d\"} 1\n", lk__store_format(m->store));

    head(fp, LK__M_BATCHES, om);
    lk_batch_rec_t last;
    int have_last = lk__store_batch_last(t, &last) == LK_OK;
    sample_u64(fp, m, LK__M_BATCHES, have_last ? last.id : 0);

    head(fp, LK__M_RECORDS, om);
    sample(fp, m, metric_defs[LK__M_RECORDS].name);
    fprintf(fp, ",direction=\"in\"} %lld\n", (long long)a.records_in);
    sample(fp, m, metric_defs[LK__M_RECORDS].name);
    fprintf(fp, ",direction=\"out\"} %lld\n", (long long)a.records_out);

    head(fp, LK__M_BATCH_DURATION, om);
    for (int p = 0; p < 5; p++) {
        uint64_t cum = 0;
        for (size_t b = 0; b <= NBUCKETS; b++) {
            cum += phases[p].counts[b];
            sample(fp, m, "lockstep_batch_duration_seconds_bucket");
            fprintf(fp, ",phase=\"%s\",le=\"", phase_names[p]);
            if (b < NBUCKETS)
                fprintf(fp, "%g", bucket_le[b]);
            else
                fputs("+Inf", fp);
            fprintf(fp, "\"} %llu\n", (unsigned long long)cum);
        }
        sample(fp, m, "lockstep_batch_duration_seconds_sum");
        fprintf(fp, ",phase=\"%s\"} ", phase_names[p]);
        value_double(fp, phases[p].sum);
        sample(fp, m, "lockstep_batch_duration_seconds_count");
        fprintf(fp, ",phase=\"%s\"} %llu\n", phase_names[p], (unsigned long long)phases[p].count);
    }

    head(fp, LK__M_LAG, om);
    for (size_t i = 0; i < nh; i++) {
        int64_t off;
        if (lk__store_offset_get(t, highs[i].topic, highs[i].partition, &off) != LK_OK)
            continue; /* not yet in the checkpoint: no lag to tell */
        int64_t lag = highs[i].high > off ? highs[i].high - off : 0;
        sample(fp, m, metric_defs[LK__M_LAG].name);
        fputs(",topic=\"", fp);
        label_value(fp, highs[i].topic);
        fprintf(fp, "\",partition=\"%d\"} %lld\n", (int)highs[i].partition, (long long)lag);
    }

    head(fp, LK__M_HELD_BACK, om);
    for (size_t i = 0; i < nh; i++) {
        sample(fp, m, metric_defs[LK__M_HELD_BACK].name);
        fputs(",topic=\"", fp);
        label_value(fp, highs[i].topic);
        fprintf(fp, "\",partition=\"%d\"} %lld\n", (int)highs[i].partition,
                (long long)highs[i].held);
    }

    head(fp, LK__M_LAST_COMMIT, om);
    sample(fp, m, metric_defs[LK__M_LAST_COMMIT].name);
    fputs("} ", fp);
    value_double(fp, have_last ? (double)last.commit_wall_ms / 1000.0 : 0);

    head(fp, LK__M_OUTBOX_BYTES, om);
    sample_u64(fp, m, LK__M_OUTBOX_BYTES, lk__store_outbox_bytes(m->store));

    head(fp, LK__M_STATE_ENTRIES, om);
    lk__store_state_stats(t, state_entries, &a);

    head(fp, LK__M_MAP_USED, om);
    char path[4200];
    struct stat st;
    double used = 0;
    lk__fmt(path, sizeof path, "%s/data.mdb", lk__store_dir(m->store));
    if (stat(path, &st) == 0 && lk__store_map_size(m->store))
        used = (double)st.st_size / (double)lk__store_map_size(m->store);
    sample(fp, m, metric_defs[LK__M_MAP_USED].name);
    fputs("} ", fp);
    value_double(fp, used);

    head(fp, LK__M_TRANSACTIONS, om);
    for (size_t i = 0; i < m->nsinks; i++)
        for (int c = 0; c < 2; c++) {
            sample(fp, m, metric_defs[LK__M_TRANSACTIONS].name);
            fputs(",sink=\"", fp);
            label_value(fp, m->sinks[i]->name);
            fprintf(fp, "\",result=\"%s\"} %llu\n", c ? "aborted" : "committed",
                    (unsigned long long)(c ? atomic_load(&m->sinks[i]->txn_aborted)
                                           : atomic_load(&m->sinks[i]->txn_committed)));
        }

    head(fp, LK__M_FENCED, om);
    sample_u64(fp, m, LK__M_FENCED, fenced);
    head(fp, LK__M_SINK_ERRORS, om);
    sample_u64(fp, m, LK__M_SINK_ERRORS, sink_errors);
    head(fp, LK__M_BATCH_ERRORS, om);
    sample_u64(fp, m, LK__M_BATCH_ERRORS, batch_errors);
    head(fp, LK__M_DEADLETTERED, om);
    sample_u64(fp, m, LK__M_DEADLETTERED, (uint64_t)a.deadlettered);
    head(fp, LK__M_LATE, om);
    for (size_t i = 0; i < m->nlate; i++) { /* 0 until the window's first late record */
        sample(fp, m, metric_defs[LK__M_LATE].name);
        fputs(",operator=\"", fp);
        label_value(fp, m->late_ops[i]);
        fprintf(fp, "\"} %lld\n", (long long)late[i]);
    }
    head(fp, LK__M_DATA_LOSS, om);
    sample_u64(fp, m, LK__M_DATA_LOSS, (uint64_t)a.data_loss);

    head(fp, LK__M_ACCUMULATOR, om);
    lk__store_acc_foreach(t, acc_user, &a);

    head(fp, LK__M_HEALTHY, om);
    sample_u64(fp, m, LK__M_HEALTHY, (uint64_t)healthy);
    if (om)
        fputs("# EOF\n", fp);
    lk__store_txn_abort(t);
    for (size_t i = 0; i < nh; i++)
        free(highs[i].topic);
    free(highs);
    free(late);
    if (ferror(fp))
        return lk__err(LK_ERR_IO, errstr, errstr_size, "metrics: write failed: %s",
                       strerror(errno));
    return LK_OK;
}

void lk__metrics_markdown(FILE *fp) {
    fputs("| Metric | Type | Labels (besides `app`) | Description |\n"
          "|---|---|---|---|\n",
          fp);
    for (int i = 0; i < LK__M_COUNT; i++) {
        fprintf(fp, "| `%s` | %s | ", metric_defs[i].name, metric_defs[i].type);
        for (const char *c = metric_defs[i].labels; *c; c++) /* '|' would end the cell */
            fputs(*c == '|' ? "\\|" : (char[2]){*c, 0}, fp);
        fprintf(fp, " | %s |\n", metric_defs[i].help);
    }
}

/* ---- the HTTP server ---- */

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
                             char *body, size_t len) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version,
                              const char *upload_data, size_t *upload_data_size,
                              void **con_cls) {
    (void)version;
    (void)upload_data;
    (void)con_cls;
    lk_metrics_t *m = cls;
    if (*upload_data_size) /* a request body is not read: refused below */
        *upload_data_size = 0;
    char *body = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&body, &len);
    if (!fp)
        return MHD_NO;
    unsigned status = MHD_HTTP_OK;
    const char *type = "text/plain; charset=utf-8";
    if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
        status = MHD_HTTP_METHOD_NOT_ALLOWED;
        fputs("only GET and HEAD are served\n", fp);
    } else if (!strcmp(url, "/metrics")) {
        const char *accept = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Accept");
        int om = accept && strstr(accept, "application/openmetrics-text");
        char err[512];
        if (lk__metrics_write(m, fp, om, err, sizeof err)) {
            fclose(fp);
            free(body);
            body = NULL;
            fp = open_memstream(&body, &len);
            if (!fp)
                return MHD_NO;
            status = MHD_HTTP_INTERNAL_SERVER_ERROR;
            fprintf(fp, "%s\n", err);
        } else {
            type = om ? "application/openmetrics-text; version=1.0.0; charset=utf-8"
                      : "text/plain; version=0.0.4; charset=utf-8";
        }
    } else if (!strcmp(url, "/healthz")) {
        char why[700];
        status = lk__metrics_health(m, why, sizeof why) ? MHD_HTTP_OK
                                                         : MHD_HTTP_SERVICE_UNAVAILABLE;
        fprintf(fp, "%s\n", why);
    } else if (!strcmp(url, "/progress")) {
        type = "application/json";
        lk__metrics_progress_json(m, fp);
    } else {
        status = MHD_HTTP_NOT_FOUND;
        fputs("not found: lockstep serves /metrics, /healthz and /progress\n", fp);
    }
    if (fclose(fp)) {
        free(body);
        return MHD_NO;
    }
    return reply(c, status, type, body, len);
}

/* Bind metrics.listen (HOST:PORT, [IPv6]:PORT) ourselves, so that a taken port is
 * refused with the OS's reason rather than libmicrohttpd's NULL. */
static lk_err_t bind_listen(const char *listen_at, int *fd_out, char *errstr,
                            size_t errstr_size) {
    char host[256];
    const char *colon = strrchr(listen_at, ':');
    const char *port = colon ? colon + 1 : NULL;
    size_t hl = colon ? (size_t)(colon - listen_at) : 0;
    if (hl >= 2 && listen_at[0] == '[' && listen_at[hl - 1] == ']') {
        listen_at++;
        hl -= 2;
    }
    char *end = NULL;
    long pn = port && *port ? strtol(port, &end, 10) : -1;
    if (!colon || hl == 0 || hl >= sizeof host || !end || *end || pn < 0 || pn > 65535)
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "metrics.listen='%s': expected HOST:PORT, e.g. 127.0.0.1:9464 "
                       "([::1]:9464 for IPv6)",
                       listen_at);
    memcpy(host, listen_at, hl);
    host[hl] = 0;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai)
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "metrics.listen: cannot resolve host '%s': %s", host, gai_strerror(gai));
    int fd = -1, err = 0;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) || listen(fd, 32)) {
            err = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        return lk__err(LK_ERR_IO, errstr, errstr_size,
                       "metrics.listen=%s:%s: cannot listen: %s%s", host, port, strerror(err),
                       err == EADDRINUSE ? " (another process uses the port: stop it or "
                                           "choose another port in metrics.listen)"
                                         : "");
    *fd_out = fd;
    return LK_OK;
}

lk_err_t lk__metrics_new(lk_metrics_t **out, lk_store_t *store, const lk_conf_t *conf,
                         lk_sink_t *const *sinks, size_t nsinks,
                         const char *const *late_ops, size_t nlate, char *errstr,
                         size_t errstr_size) {
    *out = NULL;
    lk_metrics_t *m = calloc(1, sizeof *m);
    if (!m || !(m->app = strdup(lk__store_app_id(store)))) {
        free(m);
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    }
    m->store = store;
    m->sinks = sinks;
    m->nsinks = nsinks;
    m->stall_ms = lk__conf_int(conf, LK__P_HEALTH_STALL_MS);
    pthread_mutex_init(&m->lock, NULL);
    if (nlate && !(m->late_ops = calloc(nlate, sizeof *m->late_ops))) {
        lk__metrics_destroy(m);
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    }
    for (; m->nlate < nlate; m->nlate++)
        if (!(m->late_ops[m->nlate] = strdup(late_ops[m->nlate]))) {
            lk__metrics_destroy(m);
            return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        }
    const char *listen_at = lk__conf_str(conf, LK__P_METRICS_LISTEN);
    if (listen_at[0]) {
        int fd = -1;
        lk_err_t e = bind_listen(listen_at, &fd, errstr, errstr_size);
        if (e) {
            lk__metrics_destroy(m);
            return e;
        }
        /* the server thread leaves SIGTERM/SIGINT to the batch loop */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        m->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, handle, m,
                                     MHD_OPTION_LISTEN_SOCKET, fd,
                                     MHD_OPTION_CONNECTION_LIMIT, (unsigned)16,
                                     MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                                     MHD_OPTION_END);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (!m->daemon) {
            close(fd);
            lk__metrics_destroy(m);
            return lk__err(LK_ERR_IO, errstr, errstr_size,
                           "metrics.listen=%s: libmicrohttpd could not start its server",
                           listen_at);
        }
        lk__log(LK_LOG_INFO, "metrics: serving /metrics, /healthz and /progress on %s",
                listen_at);
    }
    *out = m;
    return LK_OK;
}

void lk__metrics_destroy(lk_metrics_t *m) {
    if (!m)
        return;
    if (m->daemon)
        MHD_stop_daemon(m->daemon); /* joins its thread; closes the listening socket */
    for (size_t i = 0; i < m->nhighs; i++)
        free(m->highs[i].topic);
    free(m->highs);
    for (size_t i = 0; i < m->nlate; i++)
        free(m->late_ops[i]);
    free(m->late_ops);
    for (size_t i = 0; i < LK__METRICS_PROGRESS_KEEP; i++)
        free(m->progress[i]);
    pthread_mutex_destroy(&m->lock);
    free(m->app);
    free(m);
}
