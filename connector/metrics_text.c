/*
 * metrics_text.c — the metric table and the exposition (metrics_int.h): LK__METRICS is
 * the one place a metric is declared; it writes the HELP and TYPE lines, the samples in
 * Prometheus text 0.0.4 or OpenMetrics 1.0 (lk__metrics_write), and the README's metrics
 * reference (`lockstep metrics --markdown`, lk__metrics_markdown). DESIGN.md,
 * Observability.
 *
 * Values of processed data are read from the checkpoint at scrape time (the last batch
 * id, the accumulators lockstep.records.in/out, lockstep.records.deadlettered,
 * lockstep.data.loss.skipped and each event-time window's <uid>.late, committed with
 * each batch), so they are exact across crashes; lag is the log end seen by the
 * last plan minus the checkpointed offset, never Kafka's committed offsets.
 */
#define _GNU_SOURCE
#include "metrics_priv.h"

#include <errno.h>
#include <sys/stat.h>

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
    X(RESTORE_RECORDS, "lockstep_restore_records_total", "counter", "mode=full|tail",     \
      "group.mode=consumer: changelog records applied to a task's keyed state when the "  \
      "task moved here from another process (full: its state cleared and rebuilt from "   \
      "the changelog; tail: only what the other process wrote), since the task started "  \
      "in this process.")                                                                  \
    X(RESTORE_SECONDS, "lockstep_restore_seconds", "gauge", "",                            \
      "group.mode=consumer: duration of the task's last restore of keyed state from its "  \
      "changelogs (0: none since the task started in this process).")                      \
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

/* Start a sample: name{app="..." (and task="p" for a task of group.mode=consumer), then
 * the caller adds ",label=..." and "} value". */
static void sample(FILE *fp, const lk__metrics_t *m, const char *name) {
    fprintf(fp, "%s{app=\"", name);
    label_value(fp, m->app);
    fputc('"', fp);
    if (m->task >= 0)
        fprintf(fp, ",task=\"%d\"", m->task);
    if (m->stage[0]) /* an lk_repartition uid: [A-Za-z0-9._-] */
        fprintf(fp, ",stage=\"%s\"", m->stage);
}

/* Start a sample of metric id with one label besides app: name{app="...",label="value";
 * the caller adds any other label and "} value". */
static void sample_label(FILE *fp, const lk__metrics_t *m, int id, const char *label,
                         const char *value) {
    sample(fp, m, metric_defs[id].name);
    fprintf(fp, ",%s=\"", label);
    label_value(fp, value);
    fputc('"', fp);
}

/* A double in the exposition's syntax. */
static void value_double(FILE *fp, double v) {
    fprintf(fp, "%.17g\n", v);
}

typedef struct {
    FILE *fp;
    const lk__metrics_t *m;
    int64_t records_in, records_out, data_loss, deadlettered;
    int64_t *late; /* per m->late_ops */
} acc_ctx_t;

/* The index in m->late_ops of the window whose late-record accumulator (<uid>.late,
 * window_event.c) name is, or -1. */
static long late_index(const lk__metrics_t *m, const char *name) {
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
    sample_label(a->fp, a->m, LK__M_ACCUMULATOR, "name", name);
    fprintf(a->fp, "} %lld\n", (long long)value);
    return 0;
}

static int state_entries(const lk__state_stat_t *st, void *o) {
    acc_ctx_t *a = o;
    sample_label(a->fp, a->m, LK__M_STATE_ENTRIES, "operator", st->uid);
    fprintf(a->fp, "} %llu\n", (unsigned long long)st->entries);
    return 0;
}

/* What one metrics object (a context's, or one task's of a group) shows at a scrape:
 * what the process knows, copied under its lock, and a read transaction on its
 * checkpoint for the rest. */
typedef struct {
    lk__metrics_t *m;
    lk__histogram_t phases[5];
    uint64_t fenced, sink_errors, batch_errors;
    int healthy;
    lk__part_high_t *highs;
    size_t nh;
    lk__store_txn_t *t;
    acc_ctx_t a;
    lk__batch_rec_t last;
    int have_last;
} snap_t;

static void snap_free(snap_t *s) {
    for (size_t i = 0; i < s->nh; i++)
        free(s->highs[i].topic);
    free(s->highs);
    free(s->a.late);
    lk__store_txn_abort(s->t);
}

static lk_err_t snap_take(snap_t *s, lk__metrics_t *m, FILE *fp, char *errstr,
                          size_t errstr_size) {
    char why[600];
    memset(s, 0, sizeof *s);
    s->m = m;
    pthread_mutex_lock(&m->lock);
    memcpy(s->phases, m->phases, sizeof s->phases);
    s->fenced = m->fenced;
    s->sink_errors = m->sink_errors;
    s->batch_errors = m->batch_errors;
    s->healthy = lk__metrics_health_locked(m, why, sizeof why);
    size_t nhighs = m->nhighs;
    s->highs = malloc((nhighs ? nhighs : 1) * sizeof *s->highs);
    /* late_ops is fixed at creation: no lock needed for it */
    int64_t *late = calloc(m->nlate ? m->nlate : 1, sizeof *late);
    for (size_t i = 0; s->highs && i < nhighs; i++) {
        s->highs[s->nh] = m->highs[i];
        if ((s->highs[s->nh].topic = strdup(m->highs[i].topic)))
            s->nh++;
    }
    pthread_mutex_unlock(&m->lock);
    s->a = (acc_ctx_t){fp, m, 0, 0, 0, 0, late};
    if (!s->highs || !late)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "metrics: out of memory");
    lk_err_t e = lk__store_txn_begin(m->store, 0, &s->t, errstr, errstr_size);
    if (e)
        return e;
    lk__store_acc_foreach(s->t, acc_internal, &s->a);
    s->have_last = lk__store_batch_last(s->t, &s->last) == LK_OK;
    return LK_OK;
}

/* The exposition of n metrics objects (one, or a group's tasks, whose samples carry
 * their task label): each metric's HELP and TYPE once, then every object's samples.
 * healthy is lockstep_healthy's value. */
static lk_err_t write_set(lk__metrics_t *const *ms, size_t n, FILE *fp, int om, int healthy,
                          char *errstr, size_t errstr_size) {
    snap_t *sn = calloc(n ? n : 1, sizeof *sn);
    if (!sn)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "metrics: out of memory");
    lk_err_t e = LK_OK;
    size_t taken = 0;
    for (; taken < n && !e; taken++)
        e = snap_take(&sn[taken], ms[taken], fp, errstr, errstr_size);
    if (e) {
        for (size_t i = 0; i < taken; i++)
            snap_free(&sn[i]);
        free(sn);
        return e;
    }

    head(fp, LK__M_BUILD_INFO, om);
    for (size_t k = 0; k < n; k++) {
        sample_label(fp, sn[k].m, LK__M_BUILD_INFO, "version", lk_version_str());
        fprintf(fp, ",checkpoint_format=\"%d\"} 1\n", lk__store_format(sn[k].m->store));
    }

    head(fp, LK__M_BATCHES, om);
    for (size_t k = 0; k < n; k++) {
        sample(fp, sn[k].m, metric_defs[LK__M_BATCHES].name);
        fprintf(fp, "} %llu\n", (unsigned long long)(sn[k].have_last ? sn[k].last.id : 0));
    }

    head(fp, LK__M_RECORDS, om);
    for (size_t k = 0; k < n; k++)
        for (int d = 0; d < 2; d++) {
            sample(fp, sn[k].m, metric_defs[LK__M_RECORDS].name);
            fprintf(fp, ",direction=\"%s\"} %lld\n", d ? "out" : "in",
                    (long long)(d ? sn[k].a.records_out : sn[k].a.records_in));
        }

    head(fp, LK__M_BATCH_DURATION, om);
    for (size_t k = 0; k < n; k++)
        for (int p = 0; p < 5; p++) {
            const lk__histogram_t *h = &sn[k].phases[p];
            uint64_t cum = 0;
            for (size_t b = 0; b <= NBUCKETS; b++) {
                cum += h->counts[b];
                sample(fp, sn[k].m, "lockstep_batch_duration_seconds_bucket");
                fprintf(fp, ",phase=\"%s\",le=\"", phase_names[p]);
                if (b < NBUCKETS)
                    fprintf(fp, "%g", bucket_le[b]);
                else
                    fputs("+Inf", fp);
                fprintf(fp, "\"} %llu\n", (unsigned long long)cum);
            }
            sample(fp, sn[k].m, "lockstep_batch_duration_seconds_sum");
            fprintf(fp, ",phase=\"%s\"} ", phase_names[p]);
            value_double(fp, h->sum);
            sample(fp, sn[k].m, "lockstep_batch_duration_seconds_count");
            fprintf(fp, ",phase=\"%s\"} %llu\n", phase_names[p], (unsigned long long)h->count);
        }

    head(fp, LK__M_LAG, om);
    for (size_t k = 0; k < n; k++)
        for (size_t i = 0; i < sn[k].nh; i++) {
            const lk__part_high_t *hi = &sn[k].highs[i];
            int64_t off;
            if (lk__store_offset_get(sn[k].t, hi->topic, hi->partition, &off) != LK_OK)
                continue; /* not yet in the checkpoint: no lag to tell */
            sample_label(fp, sn[k].m, LK__M_LAG, "topic", hi->topic);
            fprintf(fp, ",partition=\"%d\"} %lld\n", (int)hi->partition,
                    (long long)(hi->high > off ? hi->high - off : 0));
        }

    head(fp, LK__M_HELD_BACK, om);
    for (size_t k = 0; k < n; k++)
        for (size_t i = 0; i < sn[k].nh; i++) {
            sample_label(fp, sn[k].m, LK__M_HELD_BACK, "topic", sn[k].highs[i].topic);
            fprintf(fp, ",partition=\"%d\"} %lld\n", (int)sn[k].highs[i].partition,
                    (long long)sn[k].highs[i].held);
        }

    head(fp, LK__M_LAST_COMMIT, om);
    for (size_t k = 0; k < n; k++) {
        sample(fp, sn[k].m, metric_defs[LK__M_LAST_COMMIT].name);
        fputs("} ", fp);
        value_double(fp, sn[k].have_last ? (double)sn[k].last.commit_wall_ms / 1000.0 : 0);
    }
    head(fp, LK__M_OUTBOX_BYTES, om);
    for (size_t k = 0; k < n; k++) {
        sample(fp, sn[k].m, metric_defs[LK__M_OUTBOX_BYTES].name);
        fprintf(fp, "} %llu\n", (unsigned long long)lk__store_outbox_bytes(sn[k].m->store));
    }

    head(fp, LK__M_STATE_ENTRIES, om);
    for (size_t k = 0; k < n; k++)
        lk__store_state_stats(sn[k].t, state_entries, &sn[k].a);

    head(fp, LK__M_MAP_USED, om);
    for (size_t k = 0; k < n; k++) {
        char path[4200];
        struct stat st;
        double used = 0;
        lk__store_t *store = sn[k].m->store;
        lk__fmt(path, sizeof path, "%s/data.mdb", lk__store_dir(store));
        if (stat(path, &st) == 0 && lk__store_map_size(store))
            used = (double)st.st_size / (double)lk__store_map_size(store);
        sample(fp, sn[k].m, metric_defs[LK__M_MAP_USED].name);
        fputs("} ", fp);
        value_double(fp, used);
    }

    head(fp, LK__M_TRANSACTIONS, om);
    for (size_t k = 0; k < n; k++) {
        const lk__metrics_t *m = sn[k].m;
        for (size_t i = 0; i < m->nsinks; i++)
            for (int c = 0; c < 2; c++) {
                sample_label(fp, m, LK__M_TRANSACTIONS, "sink", m->sinks[i]->name);
                fprintf(fp, ",result=\"%s\"} %llu\n", c ? "aborted" : "committed",
                        (unsigned long long)(c ? atomic_load(&m->sinks[i]->txn_aborted)
                                               : atomic_load(&m->sinks[i]->txn_committed)));
            }
    }

    static const int counters[] = {LK__M_FENCED, LK__M_SINK_ERRORS, LK__M_BATCH_ERRORS,
                                   LK__M_DEADLETTERED};
    for (size_t c = 0; c < LK_ARRAY_SIZE(counters); c++) {
        head(fp, counters[c], om);
        for (size_t k = 0; k < n; k++) {
            uint64_t v = c == 0   ? sn[k].fenced
                         : c == 1 ? sn[k].sink_errors
                         : c == 2 ? sn[k].batch_errors
                                  : (uint64_t)sn[k].a.deadlettered;
            sample(fp, sn[k].m, metric_defs[counters[c]].name);
            fprintf(fp, "} %llu\n", (unsigned long long)v);
        }
    }
    head(fp, LK__M_LATE, om);
    for (size_t k = 0; k < n; k++)
        for (size_t i = 0; i < sn[k].m->nlate; i++) { /* 0 until its first late record */
            sample_label(fp, sn[k].m, LK__M_LATE, "operator", sn[k].m->late_ops[i]);
            fprintf(fp, "} %lld\n", (long long)sn[k].a.late[i]);
        }
    head(fp, LK__M_DATA_LOSS, om);
    for (size_t k = 0; k < n; k++) {
        sample(fp, sn[k].m, metric_defs[LK__M_DATA_LOSS].name);
        fprintf(fp, "} %llu\n", (unsigned long long)sn[k].a.data_loss);
    }

    head(fp, LK__M_ACCUMULATOR, om);
    for (size_t k = 0; k < n; k++)
        lk__store_acc_foreach(sn[k].t, acc_user, &sn[k].a);

    head(fp, LK__M_RESTORE_RECORDS, om);
    for (size_t k = 0; k < n; k++) {
        const lk__metrics_t *m = sn[k].m;
        unsigned long long full = 0, tail = 0;
        for (size_t i = 0; i < m->nsinks; i++) {
            full += atomic_load(&m->sinks[i]->restore_applied_full);
            tail += atomic_load(&m->sinks[i]->restore_applied_tail);
        }
        sample_label(fp, m, LK__M_RESTORE_RECORDS, "mode", "full");
        fprintf(fp, "} %llu\n", full);
        sample_label(fp, m, LK__M_RESTORE_RECORDS, "mode", "tail");
        fprintf(fp, "} %llu\n", tail);
    }
    head(fp, LK__M_RESTORE_SECONDS, om);
    for (size_t k = 0; k < n; k++) {
        const lk__metrics_t *m = sn[k].m;
        unsigned long long us = 0;
        for (size_t i = 0; i < m->nsinks; i++)
            us += atomic_load(&m->sinks[i]->restore_us);
        sample(fp, m, metric_defs[LK__M_RESTORE_SECONDS].name);
        fputs("} ", fp);
        value_double(fp, (double)us / 1e6);
    }

    head(fp, LK__M_HEALTHY, om);
    for (size_t k = 0; k < n; k++) {
        sample(fp, sn[k].m, metric_defs[LK__M_HEALTHY].name);
        fprintf(fp, "} %d\n", n == 1 && sn[k].m->task < 0 ? healthy : sn[k].healthy);
    }
    for (size_t k = 0; k < n; k++)
        snap_free(&sn[k]);
    free(sn);
    return LK_OK;
}

lk_err_t lk__metrics_write(lk__metrics_t *m, FILE *fp, int om, char *errstr,
                           size_t errstr_size) {
    lk_err_t e;
    if (m->store) {
        char why[600];
        int healthy = lk__metrics_health(m, why, sizeof why);
        e = write_set(&m, 1, fp, om, healthy, errstr, errstr_size);
    } else {
        /* a group's: its running tasks' metrics, each sample labelled with its task, then
         * the process's health without a task label (a scrape holds the member lock, so
         * no task's metrics go while they are written) */
        char why[700];
        int healthy = lk__metrics_health(m, why, sizeof why);
        pthread_mutex_lock(&m->members_lock);
        e = write_set(m->members, m->nmembers, fp, om, healthy, errstr, errstr_size);
        pthread_mutex_unlock(&m->members_lock);
        if (!e) { /* lockstep_healthy is the last family written: the process's sample */
            sample(fp, m, metric_defs[LK__M_HEALTHY].name);
            fprintf(fp, "} %d\n", healthy);
        }
    }
    if (!e && om)
        fputs("# EOF\n", fp);
    if (!e && ferror(fp))
        return lk__err(LK_ERR_IO, errstr, errstr_size, "metrics: write failed: %s",
                       strerror(errno));
    return e;
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
