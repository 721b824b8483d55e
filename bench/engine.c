/*
 * bench/engine.c — the engine without Kafka, for bench/run.
 *
 * Mode 1 (default): word count of the lines in --input (one per line), in batches of
 * --batch lines, two cases interleaved round by round, medians reported:
 *   lockstep engine   the pipeline of `lockstep run pipeline=wordcount` (split-words ->
 *                     update_state_by_key word-counts -> format-counts -> to_kafka
 *                     outbox) driven through the lk__batch_* internals exactly as the
 *                     batch loop drives it (connector/context_loop.c): pending plan put
 *                     (unsynced txn), one write txn with the records pushed through the
 *                     stages, offsets of 8 partitions and the batch record, commit with
 *                     fsync (checkpoint.sync=batch); then the outbox acknowledged as a
 *                     sink that delivered instantly would (unsynced txn). The input is
 *                     synthetic records in memory: no Kafka.
 *   raw LMDB puts     the same state updates, straight into LMDB: per batch, one txn
 *                     with get + put of an 8-byte counter for every distinct word of the
 *                     batch (words split and summed per batch beforehand, untimed),
 *                     commit with fsync. The storage ceiling.
 *   lockstep repartitioned  the lockstep engine case with lk_repartition "by-word" in
 *                     front of word-counts, in one context (group.mode=single): a
 *                     pass-through, which must cost nothing measurable (summary:
 *                     repartition_ratio, against the lockstep engine of the same run).
 *   lockstep changelog  the lockstep engine case with the changelog's capture on, as a
 *                     task of group.mode=consumer has it (DESIGN.md, Scale-out):
 *                     word-counts' database marked with lk__store_state_changelog (member
 *                     "word-counts", partition 0) and every batch's transaction marked with
 *                     lk__store_txn_capture, so each state write is also appended to the
 *                     changelog member's outbox in the batch's transaction; the delivery
 *                     acknowledges that member too (outbox deleted, fence with a changelog
 *                     position, as sink/sink.c does). Everything else identical, in one
 *                     context, so the difference is the capture alone: its LMDB cost
 *                     (summary: changelog_ratio, its rate over the lockstep engine's of the
 *                     same run). The Kafka side (producing the changelog records in the
 *                     task's transaction) is not in it: no Kafka here.
 * Each round starts every case from an empty directory. One JSON line per case and round
 * goes to stdout ({"case":..,"round":..,"lines":..,"seconds":..,"batches":..}), then a
 * JSON summary line; bench/run reads them.
 *
 * Mode 2: --prepare-state DIR --app-id ID --keys K adds K keys (k000000000..) with
 * 8-byte counts to state.word-counts of the checkpoint in DIR, in transactions of 100k
 * puts, for the recovery benchmark.
 */
#define _GNU_SOURCE
#include "lockstep.h"
#include "connector/pipeline_int.h"
#include "core/util_int.h"
#include "state/store_int.h"

#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <lmdb.h>
#include <limits.h>
#include <stdio.h>
#include "cli/builtin.h"

#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#define PARTITIONS 8
#define TOPIC "lines"
#define MAX_ROUNDS 32

/* ---- the built-in wordcount: the very operators of cli/builtin.c ---- */

static void define_wordcount(lk_pipeline_t *p, void *opaque) {
    lk_stream_t *in = lk_kafka_stream(p, TOPIC);
    lk_stream_t *words = lk_flat_map(in, "split-words", lk__wc_split_words, NULL);
    if (opaque) /* the repartitioned case: a pass-through in one context */
        words = lk_repartition(words, "by-word");
    lk_stream_t *counts = lk_update_state_by_key(words, "word-counts", 1, lk__wc_add_count, NULL);
    lk_stream_t *out = lk_map(counts, "format-counts", lk__wc_format_count, NULL);
    lk_to_kafka(out, "to-kafka", "word-counts");
}

/* ---- input ---- */

typedef struct {
    char *buf;
    size_t *off, *len;
    size_t n;
} lines_t;

static int load_lines(const char *path, lines_t *l) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "bench_engine: %s: %s\n", path, strerror(errno));
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    l->buf = malloc((size_t)sz + 1);
    if (!l->buf || fread(l->buf, 1, (size_t)sz, f) != (size_t)sz) {
        fclose(f);
        return -1;
    }
    fclose(f);
    size_t n = 0;
    for (long i = 0; i < sz; i++)
        n += l->buf[i] == '\n';
    l->off = malloc((n + 1) * sizeof *l->off);
    l->len = malloc((n + 1) * sizeof *l->len);
    size_t start = 0;
    l->n = 0;
    for (size_t i = 0; i < (size_t)sz; i++)
        if (l->buf[i] == '\n') {
            l->off[l->n] = start;
            l->len[l->n++] = i - start;
            start = i + 1;
        }
    return 0;
}

/* ---- raw LMDB: pre-split, pre-summed updates per batch ---- */

typedef struct {
    const char *w;
    size_t len;
    int64_t n;
    uint64_t h;
} upd_t;

typedef struct {
    char *words; /* word bytes of all batches */
    upd_t *u;
    size_t nu;
    size_t *start; /* batch i: u[start[i] .. start[i+1]) */
    size_t nbatches;
} updates_t;

static uint64_t fnv(const char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h;
}

static int build_updates(const lines_t *l, size_t batch, updates_t *up) {
    size_t total = 0;
    for (size_t i = 0; i < l->n; i++)
        total += l->len[i] + 1;
    up->words = malloc(total + 1);
    up->u = malloc((total / 2 + 1) * sizeof *up->u);
    up->nbatches = (l->n + batch - 1) / batch;
    up->start = malloc((up->nbatches + 1) * sizeof *up->start);
    size_t cap = 1;
    while (cap < batch * 4)
        cap <<= 1;
    upd_t **slots = calloc(cap, sizeof *slots);
    if (!up->words || !up->u || !up->start || !slots)
        return -1;
    char *wp = up->words;
    up->nu = 0;
    for (size_t bi = 0; bi < up->nbatches; bi++) {
        up->start[bi] = up->nu;
        memset(slots, 0, cap * sizeof *slots);
        size_t end = (bi + 1) * batch < l->n ? (bi + 1) * batch : l->n;
        for (size_t i = bi * batch; i < end; i++) {
            const unsigned char *p = (const unsigned char *)l->buf + l->off[i],
                                *e = p + l->len[i];
            char word[LK__WC_WORD_MAX];
            size_t n;
            while ((n = lk__wc_next_word(&p, e, word))) {
                if (n > LK__WC_WORD_MAX)
                    continue; /* lockstep dead-letters such records (never in bench data) */
                uint64_t h = fnv(word, n);
                size_t j = h & (cap - 1);
                while (slots[j] && !(slots[j]->h == h && slots[j]->len == n &&
                                     !memcmp(slots[j]->w, word, n)))
                    j = (j + 1) & (cap - 1);
                if (slots[j]) {
                    slots[j]->n++;
                    continue;
                }
                memcpy(wp, word, n);
                upd_t *u = &up->u[up->nu++];
                *u = (upd_t){wp, n, 1, h};
                wp += n;
                slots[j] = u;
            }
        }
    }
    up->start[up->nbatches] = up->nu;
    free(slots);
    return 0;
}

/* ---- cases ---- */

static double now_s(void) { return (double)lk__mono_ns() / 1e9; }

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int run_lockstep(const lines_t *l, size_t batch, const char *dir, int repartition,
                        int changelog, double *secs, size_t *batches) {
    char err[1024];
    lk__store_t *s;
    lk__store_opts_t so = {0};
    so.dir = dir;
    so.app_id = "bench-engine";
    so.map_size = (size_t)256 << 20;
    lk_err_t e = lk__store_open(&s, &so, err, sizeof err);
    if (e) {
        fprintf(stderr, "bench_engine: open %s: %s\n", dir, err);
        return -1;
    }
    lk_pipeline_t *p = lk__pipeline_new();
    define_wordcount(p, repartition ? p : NULL);
    if (p->failed || lk__pipeline_open_state(p, s, err, sizeof err)) {
        fprintf(stderr, "bench_engine: pipeline: %s %s\n", p->err, err);
        return -1;
    }
    if (changelog) { /* as connector/context.c marks a task's state databases */
        lk__state_db_t db;
        if ((e = lk__store_state_find(s, "word-counts", &db)) ||
            (e = lk__store_state_changelog(s, db, "word-counts", 0))) {
            fprintf(stderr, "bench_engine: changelog: %s\n", lk_err_name(e));
            return -1;
        }
    }
    int64_t changelog_next = 0; /* the changelog position a delivery records */
    lk_batch_t b;
    memset(&b, 0, sizeof b);
    int64_t offs[PARTITIONS] = {0};
    lk__range_t ranges[PARTITIONS];
    double t0 = now_s();
    uint64_t id = 0;
    for (size_t start = 0; start < l->n; start += batch) {
        id++;
        size_t end = start + batch < l->n ? start + batch : l->n;
        int64_t until[PARTITIONS];
        memcpy(until, offs, sizeof until);
        for (size_t i = start; i < end; i++)
            until[i % PARTITIONS]++;
        for (int q = 0; q < PARTITIONS; q++)
            ranges[q] = (lk__range_t){TOPIC, q, offs[q], until[q]};
        int64_t bt = lk__wall_ms();
        lk__batch_rec_t plan = {id, bt, 0, 0, 0, PARTITIONS, ranges};
        if ((e = lk__store_plan_put(s, &plan, err, sizeof err)))
            goto fail;
        lk__store_txn_t *t;
        if ((e = lk__store_txn_begin(s, 1, &t, err, sizeof err)))
            goto fail;
        if (changelog) /* as connector/context_loop.c marks every batch's transaction */
            lk__store_txn_capture(t, id, bt);
        lk__batch_begin(&b, p, id, bt, t, 0);
        for (size_t i = start; i < end && !b.err; i++) {
            int q = (int)(i % PARTITIONS);
            lk_record_t r = {NULL, 0, l->buf + l->off[i], l->len[i], bt, TOPIC, q, offs[q]++};
            lk__batch_push_input(&b, p, &r);
        }
        if (!b.err)
            lk__batch_end(&b, p);
        e = b.err;
        for (int q = 0; q < PARTITIONS && !e; q++)
            e = lk__store_offset_put(t, TOPIC, q, until[q], err, sizeof err);
        lk__batch_rec_t rec = {id, bt, 0, end - start, b.records_out, PARTITIONS, ranges};
        if (!e)
            e = lk__store_batch_put(t, &rec, err, sizeof err);
        if (e) {
            lk__store_txn_abort(t);
            goto fail;
        }
        if ((e = lk__store_txn_commit(t, err, sizeof err)))
            goto fail;
        lk__pipeline_committed(p);
        lk__batch_reset(&b, p);
        /* the sink delivered at once: acknowledge as sink/sink.c does */
        if ((e = lk__store_txn_begin(s, 1, &t, err, sizeof err)))
            goto fail;
        /* the changelog member delivered with the outputs: every state write of the batch
         * is one changelog record, and the fence records the position after them */
        changelog_next += (int64_t)b.records_out;
        if ((e = lk__store_outbox_ack(t, "to-kafka", id, err, sizeof err)) ||
            (e = lk__store_fence_put(t, "to-kafka", id, err, sizeof err)) ||
            (changelog &&
             ((e = lk__store_outbox_ack(t, "word-counts", id, err, sizeof err)) ||
              (e = lk__store_fence_put_offset(t, "word-counts", id, changelog_next, err,
                                              sizeof err))))) {
            lk__store_txn_abort(t);
            goto fail;
        }
        if ((e = lk__store_txn_commit_unsynced(t, err, sizeof err)))
            goto fail;
    }
    *secs = now_s() - t0;
    *batches = id;
    lk__batch_free(&b);
    lk__pipeline_destroy(p);
    lk__store_close(s);
    return 0;
fail:
    fprintf(stderr, "bench_engine: batch %llu: %s %s (%s)\n", (unsigned long long)id, err,
            b.errstr, lk_err_name(e));
    return -1;
}

static int mdb_fail(const char *what, int rc) {
    fprintf(stderr, "bench_engine: raw LMDB: %s: %s\n", what, mdb_strerror(rc));
    return -1;
}

static int run_raw(const updates_t *up, const char *dir, double *secs, size_t *batches) {
    MDB_env *env;
    MDB_dbi dbi;
    size_t map = (size_t)256 << 20;
    int rc;
    if (mkdir(dir, 0755))
        return -1;
    if ((rc = mdb_env_create(&env)) || (rc = mdb_env_set_maxdbs(env, 4)) ||
        (rc = mdb_env_set_mapsize(env, map)) || (rc = mdb_env_open(env, dir, MDB_NOTLS, 0644)))
        return mdb_fail("open", rc);
    MDB_txn *txn;
    if ((rc = mdb_txn_begin(env, NULL, 0, &txn)) ||
        (rc = mdb_dbi_open(txn, "state", MDB_CREATE, &dbi)) || (rc = mdb_txn_commit(txn)))
        return mdb_fail("dbi", rc);
    double t0 = now_s();
    for (size_t bi = 0; bi < up->nbatches; bi++) {
    again:
        if ((rc = mdb_txn_begin(env, NULL, 0, &txn)))
            return mdb_fail("begin", rc);
        for (size_t i = up->start[bi]; i < up->start[bi + 1]; i++) {
            MDB_val k = {up->u[i].len, (void *)up->u[i].w}, v;
            int64_t c = 0;
            rc = mdb_get(txn, dbi, &k, &v);
            if (rc == 0 && v.mv_size == sizeof c)
                memcpy(&c, v.mv_data, sizeof c);
            else if (rc && rc != MDB_NOTFOUND)
                goto fail;
            c += up->u[i].n;
            v = (MDB_val){sizeof c, &c};
            if ((rc = mdb_put(txn, dbi, &k, &v, 0)))
                goto fail;
        }
        rc = mdb_txn_commit(txn);
        if (rc == MDB_MAP_FULL) {
            map *= 2;
            mdb_env_set_mapsize(env, map);
            goto again;
        }
        if (rc)
            return mdb_fail("commit", rc);
        continue;
    fail:
        mdb_txn_abort(txn);
        if (rc == MDB_MAP_FULL) {
            map *= 2;
            mdb_env_set_mapsize(env, map);
            goto again;
        }
        return mdb_fail("put", rc);
    }
    *secs = now_s() - t0;
    *batches = up->nbatches;
    mdb_env_close(env);
    return 0;
}

static int prepare_state(const char *dir, const char *app, long long keys) {
    char err[1024];
    lk__store_t *s;
    lk__store_opts_t so = {0};
    so.dir = dir;
    so.app_id = app;
    so.sync_interval = 1; /* one sync at close is enough for a prepared checkpoint */
    lk_err_t e = lk__store_open(&s, &so, err, sizeof err);
    lk__state_db_t db;
    if (!e)
        e = lk__store_state_open(s, "word-counts", &db, err, sizeof err);
    if (e) {
        fprintf(stderr, "bench_engine: %s: %s\n", dir, err);
        return 1;
    }
    double t0 = now_s();
    int64_t now = lk__wall_ms();
    for (long long k = 0; k < keys;) {
        lk__store_txn_t *t;
        if ((e = lk__store_txn_begin(s, 1, &t, err, sizeof err)))
            break;
        for (long long i = 0; i < 100000 && k < keys && !e; i++, k++) {
            char key[16];
            int n = snprintf(key, sizeof key, "k%09lld", k);
            int64_t c = 1;
            e = lk__store_state_put(t, db, key, (size_t)n, &c, sizeof c, now, err, sizeof err);
        }
        if (e) {
            lk__store_txn_abort(t);
            break;
        }
        if ((e = lk__store_txn_commit(t, err, sizeof err)))
            break;
    }
    if (!e)
        e = lk__store_sync(s, err, sizeof err);
    lk__store_close(s);
    if (e) {
        fprintf(stderr, "bench_engine: preparing %s: %s\n", dir, err);
        return 1;
    }
    printf("{\"keys\":%lld,\"seconds\":%.3f}\n", keys, now_s() - t0);
    return 0;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    const char *input = NULL, *base = NULL, *prep = NULL, *app = NULL;
    size_t batch = 20000;
    int rounds = 3;
    long long keys = 0;
    static const struct option lopts[] = {
        {"input", required_argument, NULL, 'i'},  {"batch", required_argument, NULL, 'b'},
        {"rounds", required_argument, NULL, 'r'}, {"dir", required_argument, NULL, 'd'},
        {"prepare-state", required_argument, NULL, 'P'},
        {"app-id", required_argument, NULL, 'a'}, {"keys", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
        switch (c) {
        case 'i': input = optarg; break;
        case 'b': batch = (size_t)atoll(optarg); break;
        case 'r': rounds = atoi(optarg); break;
        case 'd': base = optarg; break;
        case 'P': prep = optarg; break;
        case 'a': app = optarg; break;
        case 'k': keys = atoll(optarg); break;
        case 'h':
            printf("usage: %s --input FILE [--batch LINES] [--rounds N] [--dir PARENT]\n"
                   "       %s --prepare-state DIR --app-id ID --keys K\n"
                   "(see the comment at the top of bench/engine.c)\n",
                   argv[0], argv[0]);
            return 0;
        default: return 2;
        }
    }
    lk__log_default_level = LK_LOG_WARNING;
    if (prep) {
        if (!app || keys <= 0) {
            fprintf(stderr, "bench_engine: --prepare-state needs --app-id and --keys\n");
            return 2;
        }
        return prepare_state(prep, app, keys);
    }
    if (!input || batch == 0 || rounds < 1 || rounds > MAX_ROUNDS) {
        fprintf(stderr, "bench_engine: --input FILE is required (see --help)\n");
        return 2;
    }
    lines_t l;
    updates_t up;
    if (load_lines(input, &l) || build_updates(&l, batch, &up)) {
        fprintf(stderr, "bench_engine: cannot load %s\n", input);
        return 1;
    }
    char top[PATH_MAX];
    snprintf(top, sizeof top, "%s/bench-engine.XXXXXX",
             base ? base : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(top)) {
        fprintf(stderr, "bench_engine: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    double lk_rate[MAX_ROUNDS], raw_rate[MAX_ROUNDS], rep_rate[MAX_ROUNDS], cl_rate[MAX_ROUNDS];
    static const char *const names[] = {"lockstep-engine", "raw-lmdb", "lockstep-repartition",
                                        "lockstep-changelog"};
    int status = 0;
    for (int r = 0; r < rounds && !status; r++) {
        for (int j = 0; j < 4 && !status; j++) {
            int k = (j + r) % 4; /* order rotates */
            char dir[PATH_MAX + 32];
            snprintf(dir, sizeof dir, "%s/%s-%d", top, names[k], r);
            double secs;
            size_t nb;
            status = k == 1 ? run_raw(&up, dir, &secs, &nb)
                            : run_lockstep(&l, batch, dir, k == 2, k == 3, &secs, &nb);
            if (status)
                break;
            double rate = (double)l.n / secs;
            (k == 0 ? lk_rate : k == 1 ? raw_rate : k == 2 ? rep_rate : cl_rate)[r] = rate;
            printf("{\"case\":\"%s\",\"round\":%d,\"lines\":%zu,\"seconds\":%.4f,"
                   "\"batches\":%zu,\"lines_per_s\":%.1f}\n",
                   names[k], r + 1, l.n, secs, nb, rate);
            fflush(stdout);
            nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        }
    }
    nftw(top, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (status)
        return 1;
    qsort(lk_rate, (size_t)rounds, sizeof *lk_rate, cmp_d);
    qsort(raw_rate, (size_t)rounds, sizeof *raw_rate, cmp_d);
    double ml = rounds % 2 ? lk_rate[rounds / 2] : (lk_rate[rounds / 2 - 1] + lk_rate[rounds / 2]) / 2;
    double mr = rounds % 2 ? raw_rate[rounds / 2] : (raw_rate[rounds / 2 - 1] + raw_rate[rounds / 2]) / 2;
    qsort(rep_rate, (size_t)rounds, sizeof *rep_rate, cmp_d);
    double mp = rounds % 2 ? rep_rate[rounds / 2] : (rep_rate[rounds / 2 - 1] + rep_rate[rounds / 2]) / 2;
    qsort(cl_rate, (size_t)rounds, sizeof *cl_rate, cmp_d);
    double mc = rounds % 2 ? cl_rate[rounds / 2] : (cl_rate[rounds / 2 - 1] + cl_rate[rounds / 2]) / 2;
    printf("{\"summary\":true,\"lines\":%zu,\"batch\":%zu,\"batches\":%zu,\"updates\":%zu,"
           "\"rounds\":%d,\"lockstep_lines_per_s\":%.1f,\"raw_lines_per_s\":%.1f,"
           "\"repartition_lines_per_s\":%.1f,\"repartition_ratio\":%.3f,"
           "\"changelog_lines_per_s\":%.1f,\"changelog_ratio\":%.3f}\n",
           l.n, batch, up.nbatches, up.nu, rounds, ml, mr, mp, mp / ml, mc, mc / ml);
    return 0;
}
