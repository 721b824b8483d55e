/*
 * metrics.c — the metrics of a running context (metrics_int.h): what the batch loop feeds
 * them (plans, batches, deliveries, progress reports; each call a few stores under one
 * mutex, never I/O), the health verdict behind /healthz, the progress reports behind
 * /progress, and their lifetime. metrics_text.c holds the metric table and writes the
 * exposition (Prometheus text 0.0.4 and OpenMetrics 1.0); metrics_http.c serves
 * /metrics, /healthz and /progress with libmicrohttpd; metrics_priv.h is what the three
 * share. DESIGN.md, Observability.
 */
#define _GNU_SOURCE
#include "metrics_priv.h"

#include <microhttpd.h>

/* ---- the feed from the batch loop ---- */

void lk__metrics_planned(lk__metrics_t *m, const lk__fetch_t *f, lk__receiver_t *rcv) {
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
            lk__part_high_t *n = realloc(m->highs, (m->nhighs + 1) * sizeof *n);
            char *t = strdup(r->range.topic);
            if (!n || !t) { /* out of memory: this partition's lag is not shown */
                if (n)
                    m->highs = n;
                free(t);
                continue;
            }
            m->highs = n;
            m->highs[m->nhighs++] = (lk__part_high_t){t, r->range.partition, r->high, 0, 0, 0};
        }
        m->highs[j].high = r->high;
        /* the cached high watermark may be older than the plan: never negative */
        lk__part_high_t *h = &m->highs[j];
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

static void observe(lk__histogram_t *h, double seconds) {
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
    fputc('}', fp);
    if (p->task >= 0) /* group.mode=consumer: batch numbers are the task's */
        fprintf(fp, ",\"task\":%d", p->task);
    if (p->stage) /* an lk_repartition uid: [A-Za-z0-9._-], nothing to escape */
        fprintf(fp, ",\"stage\":\"%s\"", p->stage);
    fputc('}', fp);
    if (fclose(fp)) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* A task's report names the restore of its keyed state when it moved here (the sinks'
 * restore report: written by the loop thread, which reports progress too). */
static char *with_restore(const lk__metrics_t *m, char *line) {
    for (size_t i = 0; i < m->nsinks; i++) {
        const lk__restore_report_t *r = &m->sinks[i]->restore;
        if (!r->done)
            continue;
        size_t len = strlen(line);
        char *out = NULL;
        if (len < 1 || asprintf(&out,
                                "%.*s,\"restore\":{\"mode\":\"%s\",\"recordsRead\":%llu,"
                                "\"recordsApplied\":%llu,\"seconds\":%.3f}}",
                                (int)(len - 1), line, r->full ? "full" : "tail",
                                (unsigned long long)r->read, (unsigned long long)r->applied,
                                r->seconds) < 0)
            out = NULL;
        free(line);
        return out;
    }
    return line;
}

void lk__metrics_progress(lk__metrics_t *m, const lk_progress_t *p) {
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
    line = with_restore(m, line);
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

void lk__metrics_loop(lk__metrics_t *m, int running, lk_err_t err, const char *why) {
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

/* One outcome of a run of batches or of sink deliveries: a success ends the run (*since
 * 0); a failure starts it (*since, when not yet) and says why. Returns the time, now. */
static int64_t note_outcome(int64_t *since, char *last_why, size_t size, lk_err_t err,
                            const char *why) {
    int64_t now = lk__mono_ms();
    if (!err) {
        *since = 0;
        return now;
    }
    if (!*since)
        *since = now;
    lk__fmt(last_why, size, "%s", why ? why : lk_err_str(err));
    return now;
}

void lk__metrics_batch(lk__metrics_t *m, lk_err_t err, const char *why) {
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    int64_t now = note_outcome(&m->retry_since_ms, m->why, sizeof m->why, err, why);
    if (!err)
        m->last_ok_ms = now;
    else
        m->batch_errors++;
    pthread_mutex_unlock(&m->lock);
}

void lk__metrics_sink(lk__metrics_t *m, lk_err_t err, const char *why) {
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    note_outcome(&m->sink_fail_since_ms, m->sink_why, sizeof m->sink_why, err, why);
    if (err == LK_ERR_FENCED)
        m->fenced++;
    if (err == LK_ERR_FENCED || err == LK_ERR_FATAL || err == LK_ERR_STATE ||
        err == LK_ERR_CORRUPT) /* what stops the application */
        m->sink_fatal = 1;
    else if (err)
        m->sink_errors++;
    pthread_mutex_unlock(&m->lock);
}

/* ---- health ---- */

int lk__metrics_health_locked(lk__metrics_t *m, char *why, size_t size) {
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

int lk__metrics_health(lk__metrics_t *m, char *why, size_t why_size) {
    pthread_mutex_lock(&m->lock);
    int ok = lk__metrics_health_locked(m, why, why_size);
    pthread_mutex_unlock(&m->lock);
    if (!ok || m->store)
        return ok;
    /* a group: healthy while every task running here is ("ok" with no task here: the
     * group assigned this process none, which is not a fault) */
    pthread_mutex_lock(&m->members_lock);
    for (size_t i = 0; i < m->nmembers && ok; i++) {
        char w[600];
        pthread_mutex_lock(&m->members[i]->lock);
        ok = lk__metrics_health_locked(m->members[i], w, sizeof w);
        pthread_mutex_unlock(&m->members[i]->lock);
        if (!ok)
            lk__fmt(why, why_size, "task %d%s%s: %s", m->members[i]->task,
                    m->members[i]->stage[0] ? " of stage " : "", m->members[i]->stage, w);
    }
    if (ok)
        lk__fmt(why, why_size, "ok: %zu task%s running here", m->nmembers,
                m->nmembers == 1 ? "" : "s");
    pthread_mutex_unlock(&m->members_lock);
    return ok;
}

/* The kept progress reports of m, each after sep (the first after first_sep). */
static int progress_entries(lk__metrics_t *m, FILE *fp, int any) {
    pthread_mutex_lock(&m->lock);
    size_t first = (m->progress_next + LK__METRICS_PROGRESS_KEEP - m->nprogress) %
                   LK__METRICS_PROGRESS_KEEP;
    for (size_t i = 0; i < m->nprogress; i++, any = 1)
        fprintf(fp, "%s%s", any ? ",\n" : "\n",
                m->progress[(first + i) % LK__METRICS_PROGRESS_KEEP]);
    pthread_mutex_unlock(&m->lock);
    return any;
}

void lk__metrics_progress_json(lk__metrics_t *m, FILE *fp) {
    fputc('[', fp);
    if (m->store) {
        progress_entries(m, fp, 0);
    } else { /* a group: each running task's, task by task (each entry names its task) */
        pthread_mutex_lock(&m->members_lock);
        for (size_t i = 0, any = 0; i < m->nmembers; i++)
            any = (size_t)progress_entries(m->members[i], fp, (int)any);
        pthread_mutex_unlock(&m->members_lock);
    }
    fputs("\n]\n", fp);
}

void lk__metrics_set_task(lk__metrics_t *m, int task, const char *stage) {
    if (m) {
        m->task = task;
        lk__fmt(m->stage, sizeof m->stage, "%s", stage ? stage : "");
    }
}

lk_err_t lk__metrics_member_add(lk__metrics_t *g, lk__metrics_t *m) {
    if (!g || !m)
        return LK_OK;
    pthread_mutex_lock(&g->members_lock);
    lk__metrics_t **n = g->members;
    if (g->nmembers == g->members_cap &&
        (n = lk__vec_reserve(g->members, &g->members_cap, g->nmembers + 1, sizeof *n, 8)))
        g->members = n;
    if (n)
        g->members[g->nmembers++] = m;
    pthread_mutex_unlock(&g->members_lock);
    return n ? LK_OK : LK_ERR_NOMEM;
}

void lk__metrics_member_remove(lk__metrics_t *g, lk__metrics_t *m) {
    if (!g || !m)
        return;
    pthread_mutex_lock(&g->members_lock); /* waits for a scrape that reads m */
    for (size_t i = 0; i < g->nmembers; i++)
        if (g->members[i] == m) {
            memmove(&g->members[i], &g->members[i + 1],
                    (g->nmembers - i - 1) * sizeof *g->members);
            g->nmembers--;
            break;
        }
    pthread_mutex_unlock(&g->members_lock);
}

lk_err_t lk__metrics_new(lk__metrics_t **out, lk__store_t *store, const lk_conf_t *conf,
                         lk__sink_t *const *sinks, size_t nsinks,
                         const char *const *late_ops, size_t nlate, char *errstr,
                         size_t errstr_size) {
    *out = NULL;
    lk__metrics_t *m = calloc(1, sizeof *m);
    if (!m || !(m->app = strdup(store ? lk__store_app_id(store)
                                      : lk__conf_str(conf, LK__P_APP_ID)))) {
        free(m);
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    }
    m->store = store;
    m->task = -1;
    pthread_mutex_init(&m->members_lock, NULL);
    m->sinks = sinks;
    m->nsinks = nsinks;
    m->stall_ms = lk__conf_int(conf, LK__P_HEALTH_STALL_MS);
    m->log_level = lk__conf_log_level(conf);
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
        lk_err_t e = lk__metrics_listen(m, listen_at, errstr, errstr_size);
        if (e) {
            lk__metrics_destroy(m);
            return e;
        }
    }
    *out = m;
    return LK_OK;
}

void lk__metrics_destroy(lk__metrics_t *m) {
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
    pthread_mutex_destroy(&m->members_lock);
    free(m->members); /* a group's: the tasks own theirs */
    free(m->app);
    free(m);
}
