/*
 * sample_checkpoint.c — writes a small, realistic checkpoint (a word count that ran a
 * few batches over two partitions, with output waiting in the outbox) through the store
 * API, so `lockstep checkpoint inspect` has something to show before the full pipeline
 * runs. Usage: lockstep_sample_checkpoint DIR
 */
#define _POSIX_C_SOURCE 200809L
#include "lockstep.h"
#include "core/util_int.h"
#include "state/store_int.h"

#include <stdio.h>
#include <string.h>

static const char *const corpus[] = {
    "the quick brown fox jumps over the lazy dog",
    "exactly once means no loss and no duplicates",
    "offsets state and output move in lockstep",
    "the checkpoint is one lmdb transaction per batch",
};

static int fail(const char *what, lk_err_t e, const char *err) {
    fprintf(stderr, "sample_checkpoint: %s: %s (%s)\n", what, err, lk_err_name(e));
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    char err[512];
    lk_conf_t *conf = lk_conf_new();
    lk_conf_set(conf, "app.id", "sample-wordcount", err, sizeof err);
    lk_conf_set(conf, "checkpoint.dir", argv[1], err, sizeof err);
    lk_conf_set(conf, "kafka.bootstrap.servers", "localhost:9092", err, sizeof err);
    lk_conf_set(conf, "kafka.sasl.password", "hunter2", err, sizeof err);
    lk_store_opts_t o;
    lk__store_opts_from_conf(&o, conf);
    lk_store_t *s;
    lk_err_t e = lk__store_open(&s, &o, err, sizeof err);
    if (e) {
        lk_conf_destroy(conf);
        return fail("open", e, err);
    }
    lk_state_db_t counts;
    if ((e = lk__store_state_open(s, "word-counts", &counts, err, sizeof err)))
        goto out;
    lk_store_txn_t *t;
    uint64_t first = lk__store_committed_batch(s) + 1;
    int64_t start_ms = lk__wall_ms() - 10000;
    for (uint64_t b = first; b < first + 4; b++) {
        if ((e = lk__store_txn_begin(s, 1, &t, err, sizeof err)))
            goto out;
        const char *line = corpus[(b - 1) % LK_ARRAY_SIZE(corpus)];
        char words[256];
        snprintf(words, sizeof words, "%s", line);
        uint64_t nout = 0;
        for (char *save, *w = strtok_r(words, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
            const void *v;
            size_t vl;
            int64_t n = 0;
            if (lk__store_state_get(t, counts, w, strlen(w), &v, &vl, NULL) == LK_OK &&
                vl == sizeof n)
                memcpy(&n, v, sizeof n);
            n++;
            if ((e = lk__store_state_put(t, counts, w, strlen(w), &n, sizeof n,
                                         start_ms + (int64_t)b * 1000, err, sizeof err)))
                break;
            char val[32];
            int vlen = snprintf(val, sizeof val, "%lld", (long long)n);
            lk_out_record_t r = {-1, w, strlen(w), val, (size_t)vlen, start_ms + (int64_t)b * 1000, 0, NULL};
            if ((e = lk__store_outbox_append(t, "word-counts-out", b, &r, err, sizeof err)))
                break;
            nout++;
        }
        lk_range_t ranges[2] = {{"lines", 0, (int64_t)b - 1, (int64_t)b},
                                {"lines", 1, (int64_t)b - 1, (int64_t)b - 1}};
        lk_batch_rec_t rec = {b, start_ms + (int64_t)b * 1000, 0, 1, nout, 2, ranges};
        if (!e)
            e = lk__store_offset_put(t, "lines", 0, (int64_t)b, err, sizeof err);
        if (!e)
            e = lk__store_offset_put(t, "lines", 1, (int64_t)b - 1, err, sizeof err);
        if (!e)
            e = lk__store_acc_add(t, "lines-read", 1, err, sizeof err);
        if (!e)
            e = lk__store_batch_put(t, &rec, err, sizeof err);
        if (!e && b > first) /* the sink delivered the previous batch */
            e = lk__store_outbox_ack(t, "word-counts-out", b - 1, err, sizeof err);
        if (!e && b > first)
            e = lk__store_fence_put(t, "word-counts-out", b - 1, err, sizeof err);
        if (!e) {
            lk_topo_op_t ops[] = {{"lines", "kafka_stream", 0, "topic=lines"},
                                  {"split-words", "flat_map", 0, ""},
                                  {"word-counts", "update_state_by_key", 1, ""},
                                  {"word-counts-out", "to_kafka", 0, "topic=word-counts"}};
            e = lk__store_topology_put(t, ops, LK_ARRAY_SIZE(ops), err, sizeof err);
        }
        if (e) {
            lk__store_txn_abort(t);
            goto out;
        }
        if ((e = lk__store_txn_commit(t, err, sizeof err)))
            goto out;
    }
out:
    lk__store_close(s);
    lk_conf_destroy(conf);
    if (e)
        return fail("write", e, err);
    printf("sample checkpoint written to %s\n", argv[1]);
    return 0;
}
