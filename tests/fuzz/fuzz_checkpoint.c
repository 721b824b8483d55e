/*
 * fuzz_checkpoint.c — libFuzzer target for the checkpoint record decoders: every kind of
 * value the store reads from LMDB (offsets with fingerprints, batch records, the pending
 * plan, outbox chunks, fences, accumulators, state values, topology, configuration, the
 * meta header) decoded from arbitrary bytes through lk__store_decode(), exactly as the
 * store decodes what it reads. The result must be LK_OK or a refusal with a message;
 * ASan and UBSan watch every read.
 *
 * Input: byte 0 picks the record kind; byte 1 bit 0 seals the value (the harness appends
 * the right CRC32C, so the fuzzer reaches the decoders behind the checksum instead of
 * stopping at it); byte 2 is the key length (the key follows), the rest is the value.
 * LK_FUZZ_VERBOSE=1 prints each input's result (to check what the seeds reach).
 *
 * Built by tests/fuzz/checkpoint.cmake (LK_BUILD_FUZZ=ON, clang). Linked with replay.c
 * instead of libFuzzer it replays the files named on its command line, so the seed corpus
 * (tests/fuzz/corpus/checkpoint) runs as a unit test.
 */
#define _GNU_SOURCE
#include "lockstep.h"
#include "core/crc32c_int.h"
#include "core/util_int.h"
#include "state/store_int.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lk__store_t *store;
static char *store_dir;

/* The scratch checkpoint goes when the process ends. */
static void remove_store(void) {
    lk__store_close(store);
    const char *files[] = {"data.mdb", "lock.mdb", "LOCK"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/%s", store_dir, files[i]);
        unlink(p);
    }
    rmdir(store_dir);
}

static void open_store(void) {
    static char dir[] = "/tmp/lk-fuzz-checkpoint.XXXXXX";
    const char *tmp = getenv("TMPDIR");
    char *path = NULL;
    if (tmp && tmp[0] && asprintf(&path, "%s/lk-fuzz-checkpoint.XXXXXX", tmp) > 0) {
        if (!mkdtemp(path))
            abort();
    } else if (!(path = mkdtemp(dir))) {
        abort();
    }
    lk__store_opts_t o = {.dir = path, .app_id = "fuzz", .map_size = 1 << 20};
    char err[512];
    if (lk__store_open(&store, &o, err, sizeof err)) {
        fprintf(stderr, "fuzz_checkpoint: %s\n", err);
        abort();
    }
    store_dir = path;
    atexit(remove_store);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!store)
        open_store();
    if (size < 3)
        return 0;
    lk__store_record_t kind = (lk__store_record_t)(data[0] % LK_REC_KINDS);
    int seal = data[1] & 1;
    size_t klen = data[2];
    data += 3;
    size += -3;
    if (klen > size)
        klen = size;
    const uint8_t *key = data;
    size_t vlen = size - klen;
    /* a copy of exactly vlen (+4) bytes: ASan sees any read past the value */
    uint8_t *val = malloc(vlen + 4 + 1);
    if (!val)
        return 0;
    memcpy(val, data + klen, vlen);
    if (seal) {
        uint32_t c = lk__crc32c(lk__crc32c(0, val, vlen), key, klen);
        lk__put_be32(val + vlen, c);
        vlen += 4;
    }
    char err[256];
    lk__store_txn_t *t;
    if (lk__store_txn_begin(store, 0, &t, err, sizeof err))
        abort();
    lk_err_t e = lk__store_decode(t, kind, key, klen, val, vlen);
    if (e == LK_ERR_CORRUPT && !lk__store_txn_errstr(t)[0] && kind != LK_REC_STATE)
        abort(); /* a refusal without a message */
    if (e != LK_OK && e != LK_ERR_CORRUPT && e != LK_ERR_INVALID_ARG &&
        e != LK_ERR_FORMAT_TOO_NEW && e != LK_ERR_NOMEM)
        abort();
    if (getenv("LK_FUZZ_VERBOSE"))
        fprintf(stderr, "kind %d: %s %s\n", (int)kind, lk_err_name(e), lk__store_txn_errstr(t));
    lk__store_txn_abort(t);
    free(val);
    return 0;
}
