/*
 * bench/store.c — how fast is the checkpoint store compared with the storage it is built
 * on? One batch = N keyed state updates (read-modify-write of an 8-byte counter, keys
 * drawn from a keyspace of words) + M outbox records + the offsets of P partitions + the
 * batch record, committed as one transaction. Four cases run in the same process, on the
 * same filesystem, interleaved round by round so machine noise hits every side alike:
 *   lockstep sync=batch     lk__store_* with fsync on every commit (sync_interval = 0)
 *   raw LMDB fsync          the same data through lmdb.h, default flags: the ceiling
 *   lockstep group commit   sync_interval = 1, fsync every 1000 ms
 *   raw LMDB NOSYNC         MDB_NOSYNC + mdb_env_sync every 1000 ms (the same policy)
 * It prints per-round results, the median of each case, the ratios lockstep/raw, and
 * the peak RSS. Run `bench_store --help` for the options.
 */
#define _GNU_SOURCE
#include "lockstep.h"
#include "core/util_int.h"
#include "state/store_int.h"

#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <lmdb.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#define MAX_ROUNDS 64
#define MAX_PARTITIONS 1024
#define WORD_MAX 16
#define GROUP_COMMIT_MS 1000
#define TOPIC "input"
#define SINK "out"

/* ---- options ---- */

typedef struct {
    double seconds, warmup;
    int rounds;
    size_t keys, updates, outbox, value_size, partitions, map_mib;
    int zipf;
    const char *base;
    int keep;
} opts_t;

static void usage(FILE *fp, const char *prog) {
    fprintf(fp,
            "usage: %s [options]\n"
            "\n"
            "Measures batches/s of the lockstep checkpoint store against raw LMDB doing the\n"
            "same writes, with fsync per commit and with group commit (fsync every %d ms).\n"
            "Cases run interleaved for --rounds rounds; the median is reported.\n"
            "\n"
            "  --seconds S      measured duration of each case in each round (default 3)\n"
            "  --warmup S       untimed batches per case before round 1 (default 1)\n"
            "  --rounds N       rounds of the four cases, order alternating (default 3)\n"
            "  --keys N         keyspace: number of distinct words (default 100000)\n"
            "  --updates N      state updates per batch (default 1000)\n"
            "  --outbox N       outbox records per batch (default 100)\n"
            "  --value-size N   bytes of each outbox value (default 64)\n"
            "  --partitions N   input partitions whose offsets each batch commits (default 8)\n"
            "  --zipf           draw keys Zipf(s=1) instead of uniformly\n"
            "  --map-mib N      initial LMDB map size of every case, MiB (default 1024)\n"
            "  --dir D          parent of the temporary directory (default $TMPDIR or /tmp)\n"
            "  --keep           keep the temporary directory\n"
            "  -h, --help       this text\n",
            prog, GROUP_COMMIT_MS);
}

static int parse_size(const char *s, size_t min, size_t max, size_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < min || v > max)
        return -1;
    *out = (size_t)v;
    return 0;
}

static int parse_opts(int argc, char **argv, opts_t *o) {
    *o = (opts_t){3.0, 1.0, 3, 100000, 1000, 100, 64, 8, 1024, 0, NULL, 0};
    static const struct option lopts[] = {
        {"seconds", required_argument, NULL, 's'}, {"warmup", required_argument, NULL, 'w'},
        {"rounds", required_argument, NULL, 'r'},  {"keys", required_argument, NULL, 'k'},
        {"updates", required_argument, NULL, 'u'}, {"outbox", required_argument, NULL, 'o'},
        {"value-size", required_argument, NULL, 'v'},
        {"partitions", required_argument, NULL, 'p'},
        {"map-mib", required_argument, NULL, 'm'}, {"zipf", no_argument, NULL, 'z'},
        {"dir", required_argument, NULL, 'd'},     {"keep", no_argument, NULL, 'K'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    int c;
    size_t n;
    while ((c = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 's':
        case 'w': {
            double d = strtod(optarg, &end);
            if (end == optarg || *end || !(d >= 0) || d > 3600 || (c == 's' && d <= 0)) {
                fprintf(stderr, "%s: bad --%s '%s'\n", argv[0],
                        c == 's' ? "seconds" : "warmup", optarg);
                return -1;
            }
            if (c == 's')
                o->seconds = d;
            else
                o->warmup = d;
            break;
        }
        case 'r':
            if (parse_size(optarg, 1, MAX_ROUNDS, &n))
                goto bad;
            o->rounds = (int)n;
            break;
        case 'k':
            if (parse_size(optarg, 1, 100000000, &o->keys))
                goto bad;
            break;
        case 'u':
            if (parse_size(optarg, 0, 10000000, &o->updates))
                goto bad;
            break;
        case 'o':
            if (parse_size(optarg, 0, 10000000, &o->outbox))
                goto bad;
            break;
        case 'v':
            if (parse_size(optarg, 0, 1 << 20, &o->value_size))
                goto bad;
            break;
        case 'p':
            if (parse_size(optarg, 0, MAX_PARTITIONS, &o->partitions))
                goto bad;
            break;
        case 'm':
            if (parse_size(optarg, 1, (size_t)1 << 20, &o->map_mib))
                goto bad;
            break;
        case 'z':
            o->zipf = 1;
            break;
        case 'd':
            o->base = optarg;
            break;
        case 'K':
            o->keep = 1;
            break;
        case 'h':
            usage(stdout, argv[0]);
            exit(0);
        default:
            usage(stderr, argv[0]);
            return -1;
        }
        continue;
    bad:
        fprintf(stderr, "%s: bad value '%s' for an option\n", argv[0], optarg);
        return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "%s: unexpected argument '%s'\n", argv[0], argv[optind]);
        return -1;
    }
    return 0;
}

/* ---- workload: words, key choice ---- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A bijection on 32-bit integers, so word prefixes are unique but not in index order. */
static uint32_t mix32(uint32_t x) {
    x *= 0x9E3779B1u;
    x ^= x >> 16;
    x *= 0x85EBCA6Bu;
    x ^= x >> 13;
    return x;
}

typedef struct {
    char (*words)[WORD_MAX];
    unsigned char *wlen;
    double *cdf; /* Zipf only */
    size_t n;
} keyspace_t;

/* Word i: 7 letters encoding mix32(i) (unique), then 0..5 more letters: 7..12 bytes. */
static int keyspace_init(keyspace_t *ks, size_t n, int zipf) {
    ks->n = n;
    ks->words = malloc(n * sizeof *ks->words);
    ks->wlen = malloc(n);
    ks->cdf = NULL;
    if (!ks->words || !ks->wlen)
        return -1;
    for (size_t i = 0; i < n; i++) {
        uint32_t x = mix32((uint32_t)i);
        char *w = ks->words[i];
        size_t len = 0;
        for (int d = 0; d < 7; d++, x /= 26)
            w[len++] = (char)('a' + x % 26);
        uint64_t seed = i;
        uint64_t r = splitmix64(&seed);
        size_t extra = (size_t)(r % 6);
        for (size_t e = 0; e < extra; e++)
            w[len++] = (char)('a' + (r >> (8 + 5 * e)) % 26);
        ks->wlen[i] = (unsigned char)len;
    }
    if (zipf) {
        if (!(ks->cdf = malloc(n * sizeof *ks->cdf)))
            return -1;
        double sum = 0;
        for (size_t i = 0; i < n; i++)
            ks->cdf[i] = (sum += 1.0 / (double)(i + 1));
        for (size_t i = 0; i < n; i++)
            ks->cdf[i] /= sum;
    }
    return 0;
}

static void keyspace_free(keyspace_t *ks) {
    free(ks->words);
    free(ks->wlen);
    free(ks->cdf);
}

/* Rank r of the Zipf distribution is word r; words are in pseudo-random key order. */
static size_t pick_key(const keyspace_t *ks, uint64_t *rng) {
    uint64_t r = splitmix64(rng);
    if (!ks->cdf)
        return (size_t)(r % ks->n);
    double u = (double)(r >> 11) * 0x1.0p-53;
    size_t lo = 0, hi = ks->n - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ks->cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* ---- the cases ---- */

enum { LOCKSTEP_SYNC, RAW_SYNC, LOCKSTEP_GROUP, RAW_NOSYNC, NCASES };
static const char *const case_names[NCASES] = {
    "lockstep sync=batch", "raw LMDB (fsync)", "lockstep sync=1000ms",
    "raw LMDB NOSYNC+1s sync"};

typedef struct {
    int id;
    int raw, group;
    char dir[PATH_MAX];
    /* lockstep */
    lk__store_t *s;
    lk__state_db_t db;
    /* raw */
    MDB_env *env;
    MDB_dbi state, outbox, offsets, batches;
    size_t map_size;
    int64_t last_sync_ns;
    /* common */
    uint64_t next_batch; /* id of the next batch */
    uint64_t rng;
    double rate[MAX_ROUNDS]; /* batches/s per round */
    uint64_t nb[MAX_ROUNDS];
    double secs[MAX_ROUNDS];
    uint64_t total_batches; /* including warm-up and keyspace load */
} bcase_t;

typedef struct {
    opts_t o;
    keyspace_t ks;
    unsigned char *value; /* outbox value template */
    unsigned char *rawbuf; /* raw outbox value / batch record scratch */
    size_t rawbuf_cap;
    lk__range_t *ranges;
    char errstr[1024];
} bench_t;

static volatile sig_atomic_t stop_flag;
static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static int64_t now_ns(void) { return lk__mono_ns(); }


static int64_t batch_time_ms(uint64_t batch) { return 1700000000000ll + (int64_t)batch * 100; }

/* Offset of partition p after batch b: each batch consumes updates/partitions records. */
static int64_t offset_after(const bench_t *b, uint64_t batch, size_t p) {
    int64_t per = (int64_t)(b->o.updates / (b->o.partitions ? b->o.partitions : 1));
    return (int64_t)batch * per + (int64_t)p;
}

static int lk_fail(bench_t *b, const char *what, lk_err_t e) {
    fprintf(stderr, "bench_store: %s: %s (%s)\n", what, b->errstr, lk_err_name(e));
    return -1;
}

static int mdb_fail(const char *what, int rc) {
    fprintf(stderr, "bench_store: raw LMDB: %s: %s\n", what, mdb_strerror(rc));
    return -1;
}

/* One lockstep batch: begin, state RMW, outbox, offsets, batch record, commit. */
static int lockstep_batch(bench_t *b, bcase_t *c) {
    lk__store_txn_t *t;
    char *es = b->errstr;
    size_t esz = sizeof b->errstr;
    uint64_t id = c->next_batch;
    int64_t bt = batch_time_ms(id);
    lk_err_t e = lk__store_txn_begin(c->s, 1, &t, es, esz);
    if (e)
        return lk_fail(b, "begin", e);
    size_t last_key = 0;
    for (size_t i = 0; i < b->o.updates; i++) {
        size_t k = pick_key(&b->ks, &c->rng);
        const char *w = b->ks.words[k];
        size_t wl = b->ks.wlen[k];
        const void *v;
        size_t vl;
        uint64_t n = 0;
        e = lk__store_state_get(t, c->db, w, wl, &v, &vl, NULL);
        if (e == LK_OK && vl == sizeof n)
            memcpy(&n, v, sizeof n);
        else if (e != LK_OK && e != LK_ERR_NOT_FOUND) {
            lk__fmt(es, esz, "state get failed");
            goto fail;
        }
        n++;
        if ((e = lk__store_state_put(t, c->db, w, wl, &n, sizeof n, bt, es, esz)))
            goto fail;
        last_key = k;
    }
    for (size_t i = 0; i < b->o.outbox; i++) {
        size_t k = (last_key + i) % b->ks.n;
        lk__out_record_t r = {-1,           b->ks.words[k], b->ks.wlen[k], b->value,
                             b->o.value_size, bt,          0,             NULL};
        if ((e = lk__store_outbox_append(t, SINK, id, &r, es, esz)))
            goto fail;
    }
    for (size_t p = 0; p < b->o.partitions; p++) {
        b->ranges[p] = (lk__range_t){TOPIC, (int32_t)p, offset_after(b, id - 1, p),
                                    offset_after(b, id, p)};
        if ((e = lk__store_offset_put(t, TOPIC, (int32_t)p, offset_after(b, id, p), es, esz)))
            goto fail;
    }
    lk__batch_rec_t rec = {id, bt, 0, b->o.updates, b->o.outbox, b->o.partitions, b->ranges};
    if ((e = lk__store_batch_put(t, &rec, es, esz)))
        goto fail;
    if ((e = lk__store_txn_commit(t, es, esz)))
        return lk_fail(b, "commit", e);
    c->next_batch++;
    return 0;
fail:
    lk__store_txn_abort(t);
    return lk_fail(b, "batch", e);
}

static int raw_grow(bcase_t *c) {
    size_t n = c->map_size * 2;
    int rc = mdb_env_set_mapsize(c->env, n);
    if (rc)
        return mdb_fail("growing the map", rc);
    c->map_size = n;
    return 0;
}

static unsigned char *rawbuf(bench_t *b, size_t need) {
    if (need > b->rawbuf_cap) {
        unsigned char *n = realloc(b->rawbuf, need);
        if (!n)
            return NULL;
        b->rawbuf = n;
        b->rawbuf_cap = need;
    }
    return b->rawbuf;
}

/*
 * One raw LMDB batch with the same keys and comparable bytes: state value = the 8-byte
 * counter; outbox key = sink\0 lk__put_be64(batch) lk__put_be32(seq), value = key, value, timestamp;
 * offsets key = topic\0 lk__put_be32(partition), value = 8 bytes; batch record = its fields and
 * ranges as fixed-size binary. MAP_FULL: grow and redo the batch (same keys).
 */
static int raw_batch(bench_t *b, bcase_t *c) {
    uint64_t id = c->next_batch;
    int64_t bt = batch_time_ms(id);
    uint64_t rng0 = c->rng;
    MDB_txn *txn;
    int rc;
again:
    c->rng = rng0;
    if ((rc = mdb_txn_begin(c->env, NULL, 0, &txn)))
        return mdb_fail("begin", rc);
    size_t last_key = 0;
    for (size_t i = 0; i < b->o.updates; i++) {
        size_t k = pick_key(&b->ks, &c->rng);
        MDB_val key = {b->ks.wlen[k], b->ks.words[k]}, val;
        uint64_t n = 0;
        rc = mdb_get(txn, c->state, &key, &val);
        if (rc == 0 && val.mv_size == sizeof n)
            memcpy(&n, val.mv_data, sizeof n);
        else if (rc && rc != MDB_NOTFOUND)
            goto fail;
        n++;
        val = (MDB_val){sizeof n, &n};
        if ((rc = mdb_put(txn, c->state, &key, &val, 0)))
            goto fail;
        last_key = k;
    }
    size_t sl = strlen(SINK);
    for (size_t i = 0; i < b->o.outbox; i++) {
        unsigned char kb[64];
        size_t k = (last_key + i) % b->ks.n;
        memcpy(kb, SINK, sl + 1);
        lk__put_be64(kb + sl + 1, id);
        lk__put_be32(kb + sl + 9, (uint32_t)i);
        size_t wl = b->ks.wlen[k], need = wl + b->o.value_size + 8;
        unsigned char *vb = rawbuf(b, need);
        if (!vb) {
            rc = ENOMEM;
            goto fail;
        }
        memcpy(vb, b->ks.words[k], wl);
        memcpy(vb + wl, b->value, b->o.value_size);
        lk__put_be64(vb + wl + b->o.value_size, (uint64_t)bt);
        MDB_val key = {sl + 13, kb}, val = {need, vb};
        if ((rc = mdb_put(txn, c->outbox, &key, &val, 0)))
            goto fail;
    }
    size_t tl = strlen(TOPIC);
    for (size_t p = 0; p < b->o.partitions; p++) {
        unsigned char kb[64], vb[8];
        memcpy(kb, TOPIC, tl + 1);
        lk__put_be32(kb + tl + 1, (uint32_t)p);
        lk__put_be64(vb, (uint64_t)offset_after(b, id, p));
        MDB_val key = {tl + 5, kb}, val = {8, vb};
        if ((rc = mdb_put(txn, c->offsets, &key, &val, 0)))
            goto fail;
    }
    {
        size_t need = 48 + b->o.partitions * (tl + 1 + 4 + 16);
        unsigned char *vb = rawbuf(b, need), kb[8], *q;
        if (!vb) {
            rc = ENOMEM;
            goto fail;
        }
        lk__put_be64(vb, id);
        lk__put_be64(vb + 8, (uint64_t)bt);
        lk__put_be64(vb + 16, (uint64_t)lk__wall_ms());
        lk__put_be64(vb + 24, b->o.updates);
        lk__put_be64(vb + 32, b->o.outbox);
        lk__put_be64(vb + 40, b->o.partitions);
        q = vb + 48;
        for (size_t p = 0; p < b->o.partitions; p++) {
            memcpy(q, TOPIC, tl + 1);
            lk__put_be32(q + tl + 1, (uint32_t)p);
            lk__put_be64(q + tl + 5, (uint64_t)offset_after(b, id - 1, p));
            lk__put_be64(q + tl + 13, (uint64_t)offset_after(b, id, p));
            q += tl + 21;
        }
        lk__put_be64(kb, id);
        MDB_val key = {8, kb}, val = {need, vb};
        if ((rc = mdb_put(txn, c->batches, &key, &val, 0)))
            goto fail;
    }
    rc = mdb_txn_commit(txn);
    if (rc == MDB_MAP_FULL) {
        if (raw_grow(c))
            return -1;
        goto again;
    }
    if (rc)
        return mdb_fail("commit", rc);
    if (c->group && now_ns() - c->last_sync_ns >= (int64_t)GROUP_COMMIT_MS * 1000000) {
        if ((rc = mdb_env_sync(c->env, 1)))
            return mdb_fail("sync", rc);
        c->last_sync_ns = now_ns();
    }
    c->next_batch++;
    return 0;
fail:
    mdb_txn_abort(txn);
    if (rc == MDB_MAP_FULL) {
        if (raw_grow(c))
            return -1;
        goto again;
    }
    return mdb_fail("batch", rc);
}

static int run_batch(bench_t *b, bcase_t *c) {
    int r = c->raw ? raw_batch(b, c) : lockstep_batch(b, c);
    if (r == 0)
        c->total_batches++;
    return r;
}

static int case_open(bench_t *b, bcase_t *c, const char *top) {
    snprintf(c->dir, sizeof c->dir, "%s/case%d", top, c->id);
    c->next_batch = 1;
    c->rng = 0x5EED0000ull; /* the same key sequence for every case */
    size_t map = b->o.map_mib << 20;
    if (!c->raw) {
        lk__store_opts_t so = {0};
        so.dir = c->dir;
        so.app_id = "bench-store";
        so.sync_interval = c->group;
        so.sync_interval_ms = GROUP_COMMIT_MS;
        so.map_size = map;
        lk_err_t e = lk__store_open(&c->s, &so, b->errstr, sizeof b->errstr);
        if (e)
            return lk_fail(b, "open", e);
        if ((e = lk__store_state_open(c->s, "word-counts", &c->db, b->errstr,
                                      sizeof b->errstr)))
            return lk_fail(b, "state open", e);
        return 0;
    }
    if (mkdir(c->dir, 0755)) {
        fprintf(stderr, "bench_store: mkdir %s: %s\n", c->dir, strerror(errno));
        return -1;
    }
    int rc = mdb_env_create(&c->env);
    if (!rc)
        rc = mdb_env_set_maxdbs(c->env, 16);
    if (!rc)
        rc = mdb_env_set_mapsize(c->env, map);
    if (!rc)
        rc = mdb_env_open(c->env, c->dir, MDB_NOTLS | (c->group ? MDB_NOSYNC : 0), 0644);
    if (rc)
        return mdb_fail("open", rc);
    c->map_size = map;
    MDB_txn *txn;
    if ((rc = mdb_txn_begin(c->env, NULL, 0, &txn)))
        return mdb_fail("begin", rc);
    if ((rc = mdb_dbi_open(txn, "state.word-counts", MDB_CREATE, &c->state)) ||
        (rc = mdb_dbi_open(txn, "outbox", MDB_CREATE, &c->outbox)) ||
        (rc = mdb_dbi_open(txn, "offsets", MDB_CREATE, &c->offsets)) ||
        (rc = mdb_dbi_open(txn, "batches", MDB_CREATE, &c->batches)) ||
        (rc = mdb_txn_commit(txn))) {
        if (rc != 0)
            mdb_txn_abort(txn);
        return mdb_fail("creating databases", rc);
    }
    c->last_sync_ns = now_ns();
    return 0;
}

static void case_close(bcase_t *c) {
    if (c->s)
        lk__store_close(c->s);
    c->s = NULL;
    if (c->env)
        mdb_env_close(c->env);
    c->env = NULL;
}

/* Put every key of the keyspace with counter 0 (so the state is at its full size). */
static int case_load(bench_t *b, bcase_t *c) {
    const size_t chunk = 20000;
    uint64_t zero = 0;
    for (size_t i0 = 0; i0 < b->ks.n; i0 += chunk) {
        size_t i1 = i0 + chunk < b->ks.n ? i0 + chunk : b->ks.n;
        if (!c->raw) {
            lk__store_txn_t *t;
            lk_err_t e = lk__store_txn_begin(c->s, 1, &t, b->errstr, sizeof b->errstr);
            for (size_t i = i0; !e && i < i1; i++)
                e = lk__store_state_put(t, c->db, b->ks.words[i], b->ks.wlen[i], &zero,
                                        sizeof zero, 0, b->errstr, sizeof b->errstr);
            if (e) {
                lk__store_txn_abort(t);
                return lk_fail(b, "loading the keyspace", e);
            }
            if ((e = lk__store_txn_commit(t, b->errstr, sizeof b->errstr)))
                return lk_fail(b, "loading the keyspace", e);
        } else {
            MDB_txn *txn;
            int rc;
        again:
            if ((rc = mdb_txn_begin(c->env, NULL, 0, &txn)))
                return mdb_fail("begin", rc);
            for (size_t i = i0; !rc && i < i1; i++) {
                MDB_val k = {b->ks.wlen[i], b->ks.words[i]}, v = {sizeof zero, &zero};
                rc = mdb_put(txn, c->state, &k, &v, 0);
            }
            if (rc)
                mdb_txn_abort(txn);
            else
                rc = mdb_txn_commit(txn);
            if (rc == MDB_MAP_FULL) {
                if (raw_grow(c))
                    return -1;
                goto again;
            }
            if (rc)
                return mdb_fail("loading the keyspace", rc);
        }
    }
    return 0;
}

/* Sum of all counters: must equal updates x batches, proving both sides did the work. */
static int sum_state(const void *k, size_t kl, const void *v, size_t vl, int64_t upd,
                     void *opaque) {
    (void)k;
    (void)kl;
    (void)upd;
    uint64_t n = 0;
    if (vl == sizeof n)
        memcpy(&n, v, sizeof n);
    *(uint64_t *)opaque += n;
    return 0;
}

static int case_verify(bench_t *b, bcase_t *c) {
    uint64_t sum = 0, want = (c->next_batch - 1) * (uint64_t)b->o.updates;
    if (!c->raw) {
        lk__store_txn_t *t;
        lk_err_t e = lk__store_txn_begin(c->s, 0, &t, b->errstr, sizeof b->errstr);
        if (e)
            return lk_fail(b, "verify", e);
        e = lk__store_state_foreach(t, c->db, sum_state, &sum);
        lk__store_txn_abort(t);
        if (e)
            return lk_fail(b, "verify", e);
    } else {
        MDB_txn *txn;
        MDB_cursor *cur;
        MDB_val k, v;
        int rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &txn);
        if (rc || (rc = mdb_cursor_open(txn, c->state, &cur)))
            return mdb_fail("verify", rc);
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
             rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
            sum_state(k.mv_data, k.mv_size, v.mv_data, v.mv_size, 0, &sum);
        mdb_cursor_close(cur);
        mdb_txn_abort(txn);
    }
    if (sum != want) {
        fprintf(stderr, "bench_store: %s: counters sum to %llu, expected %llu\n",
                case_names[c->id], (unsigned long long)sum, (unsigned long long)want);
        return -1;
    }
    return 0;
}

/* Run batches of case c for `seconds`; returns the number of batches, -1 on error. */
static long long run_for(bench_t *b, bcase_t *c, double seconds, double *elapsed) {
    int64_t t0 = now_ns(), limit = (int64_t)(seconds * 1e9), t;
    long long n = 0;
    do {
        if (run_batch(b, c))
            return -1;
        n++;
        t = now_ns() - t0;
    } while (t < limit && !stop_flag);
    *elapsed = (double)t / 1e9;
    return n;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, int n) {
    double tmp[MAX_ROUNDS];
    memcpy(tmp, v, (size_t)n * sizeof *v);
    qsort(tmp, (size_t)n, sizeof *tmp, cmp_double);
    return n % 2 ? tmp[n / 2] : (tmp[n / 2 - 1] + tmp[n / 2]) / 2;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    if (remove(path))
        fprintf(stderr, "bench_store: cannot remove %s: %s\n", path, strerror(errno));
    return 0;
}

static const char *fs_name(const char *path) {
    struct statfs sf;
    if (statfs(path, &sf))
        return "unknown";
    switch ((unsigned long)sf.f_type) {
    case 0xEF53: return "ext2/3/4";
    case 0x58465342: return "xfs";
    case 0x9123683E: return "btrfs";
    case 0x01021994: return "tmpfs (fsync is free: results meaningless for sync)";
    case 0x794C7630: return "overlayfs";
    case 0x2FC12FC1: return "zfs";
    case 0x65735546: return "fuse";
    default: return "other";
    }
}

static void print_ratio(const char *label, const bcase_t *a, const bcase_t *r, int rounds) {
    double per[MAX_ROUNDS] = {0};
    printf("%-34s", label);
    for (int i = 0; i < rounds; i++)
        per[i] = r->rate[i] > 0 ? a->rate[i] / r->rate[i] : 0;
    printf(" %5.2fx  (median of per-round pairs; rounds:", median(per, rounds));
    for (int i = 0; i < rounds; i++)
        printf(" %.2f", per[i]);
    printf(")\n");
}

int main(int argc, char **argv) {
    bench_t b;
    memset(&b, 0, sizeof b);
    if (parse_opts(argc, argv, &b.o))
        return 2;
    const opts_t *o = &b.o;
    setvbuf(stdout, NULL, _IOLBF, 0);
    lk__log_default_level = LK_LOG_WARNING; /* map growth notices would clutter the table */

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    const char *base = o->base ? o->base : getenv("TMPDIR");
    if (!base || !base[0])
        base = "/tmp";
    char top[PATH_MAX - 64]; /* room for /caseN below */
    int tl = snprintf(top, sizeof top, "%s/lockstep-bench-store.XXXXXX", base);
    if (tl < 0 || (size_t)tl >= sizeof top) {
        fprintf(stderr, "bench_store: directory name too long: %s\n", base);
        return 2;
    }
    if (!mkdtemp(top)) {
        fprintf(stderr, "bench_store: cannot create a directory under %s: %s\n", base,
                strerror(errno));
        return 1;
    }

    int status = 1;
    bcase_t cases[NCASES];
    memset(cases, 0, sizeof cases);
    for (int i = 0; i < NCASES; i++) {
        cases[i].id = i;
        cases[i].raw = i == RAW_SYNC || i == RAW_NOSYNC;
        cases[i].group = i == LOCKSTEP_GROUP || i == RAW_NOSYNC;
    }
    b.value = malloc(o->value_size ? o->value_size : 1);
    b.ranges = calloc(o->partitions ? o->partitions : 1, sizeof *b.ranges);
    if (!b.value || !b.ranges || keyspace_init(&b.ks, o->keys, o->zipf)) {
        fprintf(stderr, "bench_store: out of memory\n");
        goto out;
    }
    for (size_t i = 0; i < o->value_size; i++)
        b.value[i] = (unsigned char)('A' + i % 26);

    struct utsname un;
    uname(&un);
    printf("bench_store: checkpoint store vs raw LMDB (%s)\n", mdb_version(NULL, NULL, NULL));
    printf("batch = %zu state updates (8-byte counter RMW, %zu-word keyspace, %s) + %zu "
           "outbox records (%zu-byte values) + %zu offsets + 1 batch record, one txn\n",
           o->updates, o->keys, o->zipf ? "Zipf s=1" : "uniform", o->outbox, o->value_size,
           o->partitions);
    printf("dir %s on %s; %ld CPUs; %s %s\n", top, fs_name(top), sysconf(_SC_NPROCESSORS_ONLN),
           un.sysname, un.release);
    printf("%d rounds x %.1f s per case after %.1f s warm-up per case; group commit = fsync "
           "every %d ms\n\n",
           o->rounds, o->seconds, o->warmup, GROUP_COMMIT_MS);

    for (int i = 0; i < NCASES; i++)
        if (case_open(&b, &cases[i], top) || case_load(&b, &cases[i]))
            goto out;
    for (int i = 0; i < NCASES && o->warmup > 0; i++) {
        double el;
        if (run_for(&b, &cases[i], o->warmup, &el) < 0)
            goto out;
    }

    /* rounds: pairs adjacent, order alternating (A C B D, then C A D B, ...) */
    static const int order[2][NCASES] = {{LOCKSTEP_SYNC, RAW_SYNC, LOCKSTEP_GROUP, RAW_NOSYNC},
                                         {RAW_SYNC, LOCKSTEP_SYNC, RAW_NOSYNC, LOCKSTEP_GROUP}};
    printf("%-5s %-26s %9s %8s %11s %13s %9s\n", "round", "case", "batches", "seconds",
           "batches/s", "updates/s", "ms/batch");
    int rounds = 0;
    for (int r = 0; r < o->rounds && !stop_flag; r++) {
        for (int j = 0; j < NCASES && !stop_flag; j++) {
            bcase_t *c = &cases[order[r % 2][j]];
            double el;
            long long n = run_for(&b, c, o->seconds, &el);
            if (n < 0)
                goto out;
            c->nb[r] = (uint64_t)n;
            c->secs[r] = el;
            c->rate[r] = (double)n / el;
            printf("%-5d %-26s %9llu %8.2f %11.1f %13.0f %9.3f\n", r + 1, case_names[c->id],
                   n, el, c->rate[r], c->rate[r] * (double)o->updates, 1000.0 / c->rate[r]);
        }
        if (!stop_flag)
            rounds++;
    }
    if (rounds == 0) {
        fprintf(stderr, "bench_store: interrupted before a round completed\n");
        goto out;
    }

    printf("\nmedian of %d round%s:\n", rounds, rounds > 1 ? "s" : "");
    printf("%-26s %11s %13s %9s %15s\n", "case", "batches/s", "updates/s", "ms/batch",
           "batches (all)");
    for (int i = 0; i < NCASES; i++) {
        bcase_t *c = &cases[i];
        double m = median(c->rate, rounds);
        printf("%-26s %11.1f %13.0f %9.3f %15llu\n", case_names[i], m, m * (double)o->updates,
               1000.0 / m, (unsigned long long)c->total_batches);
    }
    printf("\n");
    print_ratio("lockstep/raw (sync=batch, fsync)", &cases[LOCKSTEP_SYNC], &cases[RAW_SYNC],
                rounds);
    print_ratio("lockstep/raw (group commit)", &cases[LOCKSTEP_GROUP], &cases[RAW_NOSYNC],
                rounds);
    print_ratio("lockstep: group commit / sync", &cases[LOCKSTEP_GROUP],
                &cases[LOCKSTEP_SYNC], rounds);
    print_ratio("raw LMDB: nosync / sync", &cases[RAW_NOSYNC], &cases[RAW_SYNC], rounds);

    for (int i = 0; i < NCASES; i++)
        if (case_verify(&b, &cases[i]))
            goto out;
    printf("\nverified: in every case the counters sum to updates x committed batches\n");
    for (int i = 0; i < NCASES; i++)
        case_close(&cases[i]);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("\npeak RSS %.1f MiB (includes LMDB map pages touched); user %.1f s, sys %.1f s\n",
           (double)ru.ru_maxrss / 1024.0,
           (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6);
    status = 0;
out:
    for (int i = 0; i < NCASES; i++)
        case_close(&cases[i]);
    if (o->keep)
        printf("kept %s\n", top);
    else
        nftw(top, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    keyspace_free(&b.ks);
    free(b.value);
    free(b.rawbuf);
    free(b.ranges);
    return status;
}
