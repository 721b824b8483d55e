/*
 * test_store_open.c — opening a checkpoint: single ownership (a second open in this
 * process or another is refused naming the holder's pid), map growth that never loses a
 * write, and every refusal (another app.id, a newer format, corrupt meta or data, a path
 * that is not a checkpoint) leaving the checkpoint byte-for-byte unmodified.
 */
#define _GNU_SOURCE
#include "testutil.h"
#include "core/util_int.h"
#include "state/codec_int.h"
#include "core/crc32c_int.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <lmdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

TestSuite(store_lock, .init = tu_scratch_init, .fini = tu_scratch_fini);
TestSuite(store_map, .init = tu_scratch_init, .fini = tu_scratch_fini);
TestSuite(store_refuse, .init = tu_scratch_init, .fini = tu_scratch_fini);
TestSuite(store_identity, .init = tu_scratch_init, .fini = tu_scratch_fini);


/* ---- lock contention ---- */

Test(store_lock, second_open_in_this_process_is_refused) {
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__store_t *s2 = (lk__store_t *)1;
    lk_err_t e = tu_open_opts(&s2, tu_dir, "app", 1 << 20, 0, ES);
    cr_assert_eq(e, LK_ERR_LOCKED, "second open: %s (%s)", tu_err, lk_err_name(e));
    cr_assert_null(s2);
    char pid[32];
    snprintf(pid, sizeof pid, "pid %ld", (long)getpid());
    cr_assert(strstr(tu_err, pid), "message names the holder (%s): %s", pid, tu_err);
    cr_assert(strstr(tu_err, tu_dir), "message names the checkpoint: %s", tu_err);
    /* the refused open did not disturb the first handle */
    lk__store_txn_t *t = tu_begin(s, 1);
    CHECK(lk__store_offset_put(t, "in", 0, 7, ES));
    tu_commit(t);
    lk__store_close(s);
    s = tu_open(tu_dir, "app");
    t = tu_begin(s, 0);
    int64_t off;
    cr_assert_eq(lk__store_offset_get(t, "in", 0, &off), LK_OK);
    cr_assert_eq(off, 7);
    lk__store_txn_abort(t);
    lk__store_close(s);
}

/* Run fn in a forked child; it reports an error code and a message through a pipe. */
typedef struct {
    lk_err_t err;
    char msg[1024];
} child_result_t;

static child_result_t in_child(lk_err_t (*fn)(char *msg, size_t size)) {
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        close(fds[0]);
        child_result_t r = {0};
        r.err = fn(r.msg, sizeof r.msg);
        ssize_t w = write(fds[1], &r, sizeof r);
        _exit(w == (ssize_t)sizeof r ? 0 : 1);
    }
    close(fds[1]);
    child_result_t r;
    memset(&r, 0, sizeof r);
    ssize_t n = read(fds[0], &r, sizeof r);
    close(fds[0]);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed");
    cr_assert_eq(n, (ssize_t)sizeof r);
    return r;
}

static lk_err_t child_open(char *msg, size_t size) {
    lk__store_t *s = NULL;
    lk_err_t e = tu_open_opts(&s, tu_dir, "app", 1 << 20, 0, msg, size);
    if (!e) /* not expected; release it so the parent's check reports the real problem */
        lk__store_close(s);
    return e;
}

static lk_err_t child_open_readonly(char *msg, size_t size) {
    lk__store_opts_t o = {.dir = tu_dir, .readonly = 1};
    lk__store_t *s = NULL;
    lk_err_t e = lk__store_open(&s, &o, msg, size);
    if (e)
        return e;
    lk__store_txn_t *t;
    if ((e = lk__store_txn_begin(s, 0, &t, msg, size))) {
        lk__store_close(s);
        return e;
    }
    int64_t off = -1;
    e = lk__store_offset_get(t, "in", 0, &off);
    snprintf(msg, size, "offset %lld app %s", (long long)off, lk__store_app_id(s));
    lk__store_txn_abort(t);
    lk__store_close(s);
    return e;
}

Test(store_lock, open_in_another_process_is_refused_naming_the_holder) {
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__store_txn_t *t = tu_begin(s, 1);
    CHECK(lk__store_offset_put(t, "in", 0, 11, ES));
    tu_commit(t);

    child_result_t r = in_child(child_open);
    cr_assert_eq(r.err, LK_ERR_LOCKED, "open in a child: %s (%s)", r.msg,
                 lk_err_name(r.err));
    char pid[32];
    snprintf(pid, sizeof pid, "pid %ld", (long)getpid());
    cr_assert(strstr(r.msg, pid), "message names the holder (%s): %s", pid, r.msg);
    cr_assert(strstr(r.msg, "this process") == NULL, "wrong attribution: %s", r.msg);

    /* a read-only open (inspect) takes no lock and works while the owner runs */
    r = in_child(child_open_readonly);
    cr_assert_eq(r.err, LK_OK, "read-only open in a child: %s (%s)", r.msg,
                 lk_err_name(r.err));
    cr_assert_str_eq(r.msg, "offset 11 app app");

    lk__store_close(s);
    /* after close, another process can open it */
    r = in_child(child_open);
    cr_assert_eq(r.err, LK_OK, "open after close: %s (%s)", r.msg, lk_err_name(r.err));
    /* and so can this one, after the child released it */
    s = tu_open(tu_dir, "app");
    lk__store_close(s);
}

Test(store_lock, lock_of_a_killed_holder_is_released) {
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        lk__store_t *s;
        char err[512];
        char ok = tu_open_opts(&s, tu_dir, "app", 1 << 20, 0, err, sizeof err) == LK_OK;
        if (write(fds[1], &ok, 1) != 1)
            _exit(1);
        pause(); /* hold the checkpoint until killed */
        _exit(0);
    }
    close(fds[1]);
    char ok = 0;
    cr_assert_eq(read(fds[0], &ok, 1), 1);
    close(fds[0]);
    cr_assert(ok, "child could not open");
    lk__store_t *s = (lk__store_t *)1;
    lk_err_t e = tu_open_opts(&s, tu_dir, "app", 1 << 20, 0, ES);
    cr_assert_eq(e, LK_ERR_LOCKED, "%s", tu_err);
    char want[32];
    snprintf(want, sizeof want, "pid %ld", (long)pid);
    cr_assert(strstr(tu_err, want), "message names the child (%s): %s", want, tu_err);
    kill(pid, SIGKILL);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    s = tu_open(tu_dir, "app"); /* the flock died with the holder */
    lk__store_close(s);
}

/* ---- map growth ---- */

static void fill_value(unsigned char *buf, size_t len, uint64_t key) { tu_fill(buf, len, key); }

static void check_values(lk__store_t *s, lk__state_db_t db, uint64_t nkeys, size_t vlen,
                         uint64_t seed_base) {
    unsigned char *want = malloc(vlen);
    lk__store_txn_t *t = tu_begin(s, 0);
    for (uint64_t i = 0; i < nkeys; i++) {
        char key[32];
        int kl = snprintf(key, sizeof key, "k%06llu", (unsigned long long)i);
        const void *v;
        size_t vl;
        lk_err_t e = lk__store_state_get(t, db, key, (size_t)kl, &v, &vl, NULL);
        cr_assert_eq(e, LK_OK, "%s: %s", key, lk_err_name(e));
        cr_assert_eq(vl, vlen, "%s: %zu bytes", key, vl);
        fill_value(want, vlen, seed_base + i);
        cr_assert_eq(memcmp(v, want, vlen), 0, "%s: content differs", key);
    }
    lk__store_txn_abort(t);
    free(want);
}

Test(store_map, grows_within_one_transaction_and_across_transactions) {
    lk__store_t *s;
    CHECK(tu_open_opts(&s, tu_dir, "app", 64 << 10, 0, ES));
    cr_assert_eq(lk__store_map_size(s), 64 << 10);
    lk__log_default_level = LK_LOG_WARNING;
    lk__state_db_t db;
    CHECK(lk__store_state_open(s, "big", &db, ES));
    enum { VLEN = 2000, N1 = 2500 }; /* ~5 MB in one transaction */
    unsigned char v[VLEN];
    lk__store_txn_t *t = tu_begin(s, 1);
    for (uint64_t i = 0; i < N1; i++) {
        char key[32];
        int kl = snprintf(key, sizeof key, "k%06llu", (unsigned long long)i);
        fill_value(v, VLEN, i);
        CHECK(lk__store_state_put(t, db, key, (size_t)kl, v, VLEN, (int64_t)i, ES));
    }
    /* earlier writes of the same txn are readable after the map grew */
    const void *got;
    size_t gl;
    cr_assert_eq(lk__store_state_get(t, db, "k000000", 7, &got, &gl, NULL), LK_OK);
    fill_value(v, VLEN, 0);
    cr_assert_eq(memcmp(got, v, VLEN), 0);
    CHECK(lk__store_offset_put(t, "in", 0, N1, ES));
    tu_commit(t);
    size_t m1 = lk__store_map_size(s);
    cr_assert_geq(m1, (size_t)N1 * VLEN, "map size %zu after %d bytes", m1, N1 * VLEN);
    check_values(s, db, N1, VLEN, 0);

    /* across transactions: rewrite every value (old pages stay until reused) */
    for (uint64_t chunk = 0; chunk < 5; chunk++) {
        t = tu_begin(s, 1);
        for (uint64_t i = chunk * (N1 / 5); i < (chunk + 1) * (N1 / 5); i++) {
            char key[32];
            int kl = snprintf(key, sizeof key, "k%06llu", (unsigned long long)i);
            fill_value(v, VLEN, 1000000 + i);
            CHECK(lk__store_state_put(t, db, key, (size_t)kl, v, VLEN, 0, ES));
        }
        tu_commit(t);
    }
    cr_assert_geq(lk__store_map_size(s), m1);
    check_values(s, db, N1, VLEN, 1000000);
    lk__store_close(s);

    /* reopen with the small initial size: the file's size is adopted, data intact */
    CHECK(tu_open_opts(&s, tu_dir, "app", 64 << 10, 0, ES));
    cr_assert_geq(lk__store_map_size(s), (size_t)N1 * VLEN);
    CHECK(lk__store_state_open(s, "big", &db, ES));
    check_values(s, db, N1, VLEN, 1000000);
    t = tu_begin(s, 0);
    int64_t off;
    cr_assert_eq(lk__store_offset_get(t, "in", 0, &off), LK_OK);
    cr_assert_eq(off, N1);
    lk__store_txn_abort(t);
    lk__store_close(s);
}

/* The writer of store_map.state_open_adopts_a_map_another_process_grew: grows the map of
 * a 64 KiB checkpoint to several MiB, writing into state.grown. */
static lk_err_t child_grow(char *msg, size_t size) {
    lk__store_t *s = NULL;
    lk_err_t e = tu_open_opts(&s, tu_dir, "app", 64 << 10, 0, msg, size);
    if (e)
        return e;
    lk__state_db_t db;
    lk__store_txn_t *t = NULL;
    if (!(e = lk__store_state_open(s, "grown", &db, msg, size)))
        e = lk__store_txn_begin(s, 1, &t, msg, size);
    unsigned char v[2000];
    for (uint64_t i = 0; !e && i < 2000; i++) {
        char key[32];
        int kl = snprintf(key, sizeof key, "k%06llu", (unsigned long long)i);
        fill_value(v, sizeof v, i);
        e = lk__store_state_put(t, db, key, (size_t)kl, v, sizeof v, 0, msg, size);
    }
    if (!e) {
        e = lk__store_txn_commit(t, msg, size);
        t = NULL;
    }
    lk__store_txn_abort(t);
    if (!e)
        snprintf(msg, size, "map %zu", lk__store_map_size(s));
    lk__store_close(s);
    return e;
}

/* Another process grew the map after this one opened the checkpoint (inspect reading a
 * running application's checkpoint): opening a state database adopts the new size, as
 * every transaction does, instead of failing with MDB_MAP_RESIZED. */
Test(store_map, state_open_adopts_a_map_another_process_grew) {
    lk__store_t *s;
    CHECK(tu_open_opts(&s, tu_dir, "app", 64 << 10, 0, ES));
    lk__store_close(s);
    lk__store_opts_t o = {.dir = tu_dir, .readonly = 1, .map_size = 64 << 10};
    CHECK(lk__store_open(&s, &o, ES));
    cr_assert_eq(lk__store_map_size(s), 64 << 10);
    lk__log_default_level = LK_LOG_WARNING;
    child_result_t r = in_child(child_grow);
    cr_assert_eq(r.err, LK_OK, "writer: %s (%s)", r.msg, lk_err_name(r.err));
    lk__state_db_t db;
    CHECK(lk__store_state_open(s, "grown", &db, ES));
    cr_assert_geq(lk__store_map_size(s), (size_t)2000 * 2000);
    check_values(s, db, 2000, 2000, 0);
    lk__store_close(s);
}

Test(store_map, one_value_far_larger_than_the_map) {
    lk__store_t *s;
    CHECK(tu_open_opts(&s, tu_dir, "app", 64 << 10, 0, ES));
    lk__log_default_level = LK_LOG_WARNING;
    lk__state_db_t db;
    CHECK(lk__store_state_open(s, "big", &db, ES));
    size_t len = 6u << 20; /* 96 times the initial map */
    unsigned char *v = malloc(len);
    fill_value(v, len, 42);
    lk__store_txn_t *t = tu_begin(s, 1);
    CHECK(lk__store_offset_put(t, "in", 0, 1, ES));
    CHECK(lk__store_state_put(t, db, "huge", 4, v, len, 5, ES));
    lk__out_record_t r = {.partition = 0, .value = v, .value_len = len / 2};
    CHECK(lk__store_outbox_append(t, "out", 1, &r, ES));
    lk__batch_rec_t b = {.id = 1};
    CHECK(lk__store_batch_put(t, &b, ES));
    tu_commit(t);
    cr_assert_geq(lk__store_map_size(s), len + len / 2);
    cr_assert_eq(lk__store_committed_batch(s), 1);
    for (int pass = 0; pass < 2; pass++) {
        t = tu_begin(s, 0);
        const void *got;
        size_t gl;
        int64_t upd;
        cr_assert_eq(lk__store_state_get(t, db, "huge", 4, &got, &gl, &upd), LK_OK);
        cr_assert_eq(gl, len);
        cr_assert_eq(upd, 5);
        cr_assert_eq(memcmp(got, v, len), 0, "huge value differs");
        uint64_t first;
        cr_assert_eq(lk__store_outbox_first_batch(t, "out", &first), LK_OK);
        cr_assert_eq(first, 1);
        lk__store_txn_abort(t);
        uint64_t bytes = lk__store_outbox_bytes(s);
        cr_assert_gt(bytes, len / 2);
        lk__store_close(s);
        CHECK(tu_open_opts(&s, tu_dir, "app", 64 << 10, 0, ES));
        CHECK(lk__store_state_open(s, "big", &db, ES));
        cr_assert_eq(lk__store_outbox_bytes(s), bytes);
    }
    lk__store_close(s);
    free(v);
}

/* ---- refusals ---- */

static void make_checkpoint(const char *app) {
    lk__store_t *s = tu_open(tu_dir, app);
    lk__state_db_t db;
    CHECK(lk__store_state_open(s, "op", &db, ES));
    lk__store_txn_t *t = tu_begin(s, 1);
    CHECK(lk__store_offset_put(t, "in", 0, 123, ES));
    CHECK(lk__store_state_put(t, db, "k", 1, "v", 1, 1, ES));
    lk__batch_rec_t b = {.id = 9};
    CHECK(lk__store_batch_put(t, &b, ES));
    tu_commit(t);
    lk__store_close(s);
}

/* The checkpoint still opens with app and holds what make_checkpoint wrote. */
static void expect_intact(const char *app) {
    lk__store_t *s = tu_open(tu_dir, app);
    cr_assert_eq(lk__store_committed_batch(s), 9);
    lk__store_txn_t *t = tu_begin(s, 0);
    int64_t off;
    cr_assert_eq(lk__store_offset_get(t, "in", 0, &off), LK_OK);
    cr_assert_eq(off, 123);
    lk__store_txn_abort(t);
    lk__store_close(s);
}

/* Open must fail with want, leave the directory's files unmodified and say so clearly. */
static void expect_refusal(const char *path, const char *app, int readonly, lk_err_t want,
                           const char *must_contain) {
    uint64_t before = tu_dir_digest(path);
    lk__store_opts_t o = {.dir = path, .app_id = app, .readonly = readonly,
                         .map_size = 1 << 20};
    lk__store_t *s = (lk__store_t *)1;
    tu_err[0] = '\0';
    lk_err_t e = lk__store_open(&s, &o, ES);
    cr_assert_eq(e, want, "open %s: got %s (%s), want %s", path, lk_err_name(e), tu_err,
                 lk_err_name(want));
    cr_assert_null(s, "no handle on failure");
    cr_assert(strstr(tu_err, path), "the message names the path: %s", tu_err);
    if (must_contain)
        cr_assert(strstr(tu_err, must_contain), "the message should contain \"%s\": %s",
                  must_contain, tu_err);
    cr_assert_eq(tu_dir_digest(path), before, "refused open modified %s", path);
}

Test(store_refuse, another_app_id) {
    make_checkpoint("app-a");
    expect_refusal(tu_dir, "app-b", 0, LK_ERR_APP_MISMATCH, "\"app-a\"");
    cr_assert(strstr(tu_err, "\"app-b\""), "names the requested id: %s", tu_err);
    expect_intact("app-a");
}

#define TEST_CHECKPOINT_ID "00112233445566778899aabbccddeeff"

/* Replace meta/header through raw LMDB. */
static void put_raw_header(const void *data, size_t len) {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 16), 0);
    cr_assert_eq(mdb_env_open(env, tu_dir, 0, 0644), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
    MDB_val k = {6, "header"}, v = {len, (void *)data};
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

/* Append the checksum a format-2 value carries: CRC32C of the value and then the key,
 * big-endian. */
static void seal_header(lk__buf_t *b) {
    unsigned char tail[4];
    lk__put_be32(tail, lk__crc32c(lk__crc32c(0, b->data, b->len), "header", 6));
    lk__buf_append(b, tail, 4);
}

static void put_header(int64_t ver, const char *magic, int64_t format, const char *app) {
    lk__buf_t b;
    lk__buf_init(&b);
    lk__pack_array(&b, format >= 2 ? 6 : 5); /* format 2 added the checkpoint id */
    lk__pack_i64(&b, ver);
    lk__pack_str(&b, magic);
    lk__pack_i64(&b, format);
    lk__pack_str(&b, app);
    lk__pack_i64(&b, 1700000000000LL);
    if (format >= 2)
        lk__pack_str(&b, TEST_CHECKPOINT_ID);
    if (format >= 2)
        seal_header(&b);
    put_raw_header(b.data, b.len);
    lk__buf_free(&b);
}

Test(store_refuse, newer_format) {
    make_checkpoint("app");
    put_header(1, LK_CHECKPOINT_MAGIC, 99, "app");
    expect_refusal(tu_dir, "app", 0, LK_ERR_FORMAT_TOO_NEW, "99");
    cr_assert(strstr(tu_err, "upgrade"), "says what to do: %s", tu_err);
    expect_refusal(tu_dir, NULL, 1, LK_ERR_FORMAT_TOO_NEW, "99");
    /* the format check comes before the app check */
    expect_refusal(tu_dir, "other", 0, LK_ERR_FORMAT_TOO_NEW, "99");
    /* once the header is put back, everything is there */
    put_header(1, LK_CHECKPOINT_MAGIC, LK_CHECKPOINT_FORMAT, "app");
    expect_intact("app");
}

Test(store_refuse, corrupt_meta_header) {
    make_checkpoint("app");
    unsigned char junk[40];
    tu_fill(junk, sizeof junk, 7);
    junk[0] = 0xc1; /* never valid msgpack */
    put_raw_header(junk, sizeof junk);
    expect_refusal(tu_dir, "app", 0, LK_ERR_CORRUPT, "meta");
    expect_refusal(tu_dir, NULL, 1, LK_ERR_CORRUPT, "meta");
    /* valid msgpack, wrong magic */
    put_header(1, "something-else", 1, "app");
    expect_refusal(tu_dir, "app", 0, LK_ERR_CORRUPT, "meta");
    /* valid msgpack, wrong shape */
    put_raw_header("\x93\x01\x02\x03", 4);
    expect_refusal(tu_dir, "app", 0, LK_ERR_CORRUPT, "meta");
}

Test(store_refuse, meta_without_header) {
    make_checkpoint("app");
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 16), 0);
    cr_assert_eq(mdb_env_open(env, tu_dir, 0, 0644), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
    MDB_val k = {6, "header"};
    cr_assert_eq(mdb_del(txn, dbi, &k, NULL), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    expect_refusal(tu_dir, "app", 0, LK_ERR_CORRUPT, "header");
}

Test(store_refuse, corrupt_data_file) {
    make_checkpoint("app");
    char p[4200];
    tu_path(p, sizeof p, tu_dir, "data.mdb");
    struct stat st;
    cr_assert_eq(stat(p, &st), 0);
    size_t len = (size_t)st.st_size;
    cr_assert_gt(len, 0);
    unsigned char *junk = malloc(len);
    tu_fill(junk, len, 99);
    tu_write_file(p, junk, len);
    free(junk);
    expect_refusal(tu_dir, "app", 0, LK_ERR_CORRUPT, "corrupt");
    expect_refusal(tu_dir, NULL, 1, LK_ERR_CORRUPT, "corrupt");
    cr_assert_eq((size_t)(stat(p, &st), st.st_size), len, "data.mdb size changed");
}

Test(store_refuse, nonempty_directory_without_checkpoint) {
    char p[4200];
    tu_write_file(tu_path(p, sizeof p, tu_dir, "notes.txt"), "mine", 4);
    expect_refusal(tu_dir, "app", 0, LK_ERR_NOT_CHECKPOINT, "not empty");
    expect_refusal(tu_dir, NULL, 1, LK_ERR_NOT_CHECKPOINT, NULL);
    cr_assert_eq(tu_dir_entries(tu_dir), 1, "something was created next to notes.txt");
    cr_assert_neq(access(tu_path(p, sizeof p, tu_dir, "LOCK"), F_OK), 0, "LOCK was created");
    /* a subdirectory counts as content too */
    cr_assert_eq(unlink(tu_path(p, sizeof p, tu_dir, "notes.txt")), 0);
    cr_assert_eq(mkdir(tu_path(p, sizeof p, tu_dir, "sub"), 0755), 0);
    expect_refusal(tu_dir, "app", 0, LK_ERR_NOT_CHECKPOINT, "not empty");
    cr_assert_eq(tu_dir_entries(tu_dir), 1);
}

Test(store_refuse, regular_file) {
    char p[4200];
    tu_path(p, sizeof p, tu_dir, "file");
    tu_write_file(p, "content", 7);
    uint64_t before = tu_file_digest(p);
    for (int ro = 0; ro < 2; ro++) {
        lk__store_opts_t o = {.dir = p, .app_id = "app", .readonly = ro};
        lk__store_t *s = (lk__store_t *)1;
        lk_err_t e = lk__store_open(&s, &o, ES);
        cr_assert_eq(e, LK_ERR_NOT_CHECKPOINT, "%s (%s)", tu_err, lk_err_name(e));
        cr_assert_null(s);
        cr_assert(strstr(tu_err, p) && strstr(tu_err, "not a directory"), "message: %s", tu_err);
    }
    cr_assert_eq(tu_file_digest(p), before);
    cr_assert_eq(tu_dir_entries(tu_dir), 1);
}

Test(store_refuse, lmdb_environment_that_is_not_ours) {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 4), 0);
    cr_assert_eq(mdb_env_open(env, tu_dir, 0, 0644), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "other", MDB_CREATE, &dbi), 0);
    MDB_val k = {3, "key"}, v = {5, "value"};
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    expect_refusal(tu_dir, "app", 0, LK_ERR_NOT_CHECKPOINT, "no meta");
    expect_refusal(tu_dir, NULL, 1, LK_ERR_NOT_CHECKPOINT, "no meta");

    /* only the unnamed database, with data */
    char sub[4200];
    tu_path(sub, sizeof sub, tu_dir, "plain");
    cr_assert_eq(mkdir(sub, 0755), 0);
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_open(env, sub, 0, 0644), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    expect_refusal(sub, "app", 0, LK_ERR_NOT_CHECKPOINT, NULL);
}

Test(store_refuse, readonly_open_of_a_missing_or_empty_dir) {
    char p[4200];
    tu_path(p, sizeof p, tu_dir, "missing/deeper");
    lk__store_opts_t o = {.dir = p, .readonly = 1};
    lk__store_t *s = (lk__store_t *)1;
    lk_err_t e = lk__store_open(&s, &o, ES);
    cr_assert_eq(e, LK_ERR_NOT_CHECKPOINT, "%s (%s)", tu_err, lk_err_name(e));
    cr_assert_null(s);
    cr_assert(strstr(tu_err, p), "message: %s", tu_err);
    cr_assert_eq(tu_dir_entries(tu_dir), 0, "the missing tu_dir was created");
    /* an empty directory is not a checkpoint either (read-only never creates) */
    o.dir = tu_dir;
    e = lk__store_open(&s, &o, ES);
    cr_assert_eq(e, LK_ERR_NOT_CHECKPOINT, "%s (%s)", tu_err, lk_err_name(e));
    cr_assert_eq(tu_dir_entries(tu_dir), 0, "read-only open created files");
}

Test(store_refuse, missing_arguments) {
    lk__store_t *s;
    lk__store_opts_t o = {.dir = tu_dir};
    cr_assert_eq(lk__store_open(&s, &o, ES), LK_ERR_INVALID_ARG);
    cr_assert(strstr(tu_err, "app.id"), "%s", tu_err);
    o = (lk__store_opts_t){.app_id = "app"};
    cr_assert_eq(lk__store_open(&s, &o, ES), LK_ERR_INVALID_ARG);
    cr_assert(strstr(tu_err, "checkpoint.dir"), "%s", tu_err);
    cr_assert_eq(tu_dir_entries(tu_dir), 0);
}

/* ---- creation ---- */

Test(store_refuse, missing_nested_dir_is_created) {
    char p[4200];
    tu_path(p, sizeof p, tu_dir, "a/b/c");
    lk__store_t *s = tu_open(p, "app");
    cr_assert_str_eq(lk__store_app_id(s), "app");
    cr_assert_eq(lk__store_format(s), LK_CHECKPOINT_FORMAT);
    int64_t now = lk__wall_ms();
    cr_assert(lk__store_created_ms(s) <= now && lk__store_created_ms(s) > now - 60000);
    lk__store_close(s);
    char d[4200];
    cr_assert_eq(access(tu_path(d, sizeof d, p, "data.mdb"), F_OK), 0);
    s = tu_open(p, "app");
    lk__store_close(s);
}

Test(store_refuse, dir_with_only_lock_files_is_created) {
    char p[4200];
    tu_write_file(tu_path(p, sizeof p, tu_dir, "LOCK"), "12345\n", 6);
    lk__store_t *s = tu_open(tu_dir, "app");
    lk__store_close(s);
    s = tu_open(tu_dir, "app");
    lk__store_close(s);
}

/*
 * A process killed while creating a checkpoint, after LMDB created data.mdb but before
 * the first commit, leaves an environment in which nothing was ever committed. It holds
 * nothing to lose, so it is created again (and not refused forever as "not a
 * checkpoint"); a read-only open still calls it no checkpoint.
 */
Test(store_refuse, creation_killed_before_the_first_commit) {
    MDB_env *env;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_open(env, tu_dir, 0, 0644), 0);
    mdb_env_close(env);
    char p[4200];
    cr_assert_eq(access(tu_path(p, sizeof p, tu_dir, "data.mdb"), F_OK), 0);
    expect_refusal(tu_dir, NULL, 1, LK_ERR_NOT_CHECKPOINT, NULL);
    lk__store_t *s = NULL;
    lk_err_t e = tu_open_opts(&s, tu_dir, "app", 1 << 20, 0, ES);
    cr_assert_eq(e, LK_OK, "open after a killed creation: %s (%s)", tu_err, lk_err_name(e));
    cr_assert_str_eq(lk__store_app_id(s), "app");
    lk__store_txn_t *t = tu_begin(s, 1);
    CHECK(lk__store_offset_put(t, "in", 0, 1, ES));
    tu_commit(t);
    lk__store_close(s);
    s = tu_open(tu_dir, "app");
    lk__store_close(s);
    expect_refusal(tu_dir, "other", 0, LK_ERR_APP_MISMATCH, "\"app\"");
}

/* ---- identity ---- */

static int is_checkpoint_id(const char *id) {
    return strlen(id) == LK_CHECKPOINT_ID_LEN &&
           strspn(id, "0123456789abcdef") == LK_CHECKPOINT_ID_LEN;
}

Test(store_identity, a_new_checkpoint_gets_a_random_id_that_stays) {
    char p1[4200], p2[4200], id1[LK_CHECKPOINT_ID_LEN + 1];
    tu_path(p1, sizeof p1, tu_dir, "one");
    tu_path(p2, sizeof p2, tu_dir, "two");
    lk__store_t *s = tu_open(p1, "app");
    cr_assert(is_checkpoint_id(lk__store_checkpoint_id(s)), "id: %s",
              lk__store_checkpoint_id(s));
    cr_assert_eq(lk__store_migrated_from(s), 0);
    strcpy(id1, lk__store_checkpoint_id(s));
    lk__store_close(s);
    s = tu_open(p1, "app");
    cr_assert_str_eq(lk__store_checkpoint_id(s), id1, "the id is kept across opens");
    lk__store_close(s);
    lk__store_opts_t o = {.dir = p1, .readonly = 1};
    CHECK(lk__store_open(&s, &o, ES));
    cr_assert_str_eq(lk__store_checkpoint_id(s), id1, "read-only open sees the same id");
    lk__store_close(s);
    /* another checkpoint of the same app.id is another checkpoint */
    s = tu_open(p2, "app");
    cr_assert(is_checkpoint_id(lk__store_checkpoint_id(s)));
    cr_assert_str_neq(lk__store_checkpoint_id(s), id1);
    lk__store_close(s);
}

/* A checkpoint of format 1 (no id) is migrated at its first writable open: it gets an
 * id, keeps everything else; read-only it is described as it is and left untouched. */
/* A checkpoint as format 1 wrote it (no checksums, no id), made with raw LMDB: an offset,
 * batch record 9, nstate state entries of operator "op" (enough to split pages when the
 * migration makes every value longer), an outbox chunk, a fence and an accumulator. */
static void make_format_1(const char *app, int nstate) {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 16), 0);
    cr_assert_eq(mdb_env_set_mapsize(env, 64 << 20), 0);
    cr_assert_eq(mdb_env_open(env, tu_dir, 0, 0644), 0);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    lk__buf_t b;
    lk__buf_init(&b);
#define PUT(db, kp, kl)                                                                    \
    do {                                                                                   \
        cr_assert_eq(mdb_dbi_open(txn, db, MDB_CREATE, &dbi), 0);                          \
        MDB_val k_ = {kl, (void *)(kp)}, v_ = {b.len, b.data};                             \
        cr_assert_eq(mdb_put(txn, dbi, &k_, &v_, 0), 0);                                   \
        lk__buf_reset(&b);                                                                 \
    } while (0)
    lk__pack_array(&b, 5);
    lk__pack_i64(&b, 1);
    lk__pack_str(&b, LK_CHECKPOINT_MAGIC);
    lk__pack_i64(&b, 1);
    lk__pack_str(&b, app);
    lk__pack_i64(&b, 1700000000000LL);
    PUT("meta", "header", 6);
    lk__pack_array(&b, 2);
    lk__pack_i64(&b, 1);
    lk__pack_i64(&b, 123);
    PUT("offsets", "in\0\0\0\0\0", 7);
    lk__pack_array(&b, 7);
    lk__pack_i64(&b, 1);
    lk__pack_i64(&b, 9);
    lk__pack_i64(&b, 1700000000000LL);
    lk__pack_i64(&b, 1700000000001LL);
    lk__pack_i64(&b, 5);
    lk__pack_i64(&b, 1);
    lk__pack_array(&b, 1);
    lk__pack_array(&b, 4);
    lk__pack_str(&b, "in");
    lk__pack_i64(&b, 0);
    lk__pack_i64(&b, 118);
    lk__pack_i64(&b, 123);
    PUT("batches", "\0\0\0\0\0\0\0\x09", 8);
    lk__pack_array(&b, 6);
    lk__pack_i64(&b, 1);
    lk__pack_i64(&b, -1);
    lk__pack_bin_or_nil(&b, "key", 3);
    lk__pack_bin_or_nil(&b, "value", 5);
    lk__pack_i64(&b, 42);
    lk__pack_array(&b, 0);
    PUT("outbox", "out\0\0\0\0\0\0\0\0\x09\0\0\0\0", 16);
    lk__pack_array(&b, 3);
    lk__pack_i64(&b, 1);
    lk__pack_i64(&b, 8);
    lk__pack_i64(&b, 1700000000000LL);
    PUT("fences", "out", 3);
    lk__pack_array(&b, 2);
    lk__pack_i64(&b, 1);
    lk__pack_i64(&b, 77);
    PUT("acc", "records", 7);
    for (int i = 0; i < nstate; i++) {
        char key[32];
        int kl = snprintf(key, sizeof key, "k%06d", i);
        lk__pack_array(&b, 3);
        lk__pack_i64(&b, 1);
        lk__pack_i64(&b, i);
        lk__pack_bin_or_nil(&b, key, (size_t)kl);
        PUT("state.op", key, (size_t)kl);
    }
#undef PUT
    lk__buf_free(&b);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

static int check_out_record(const lk__out_record_t *r, void *o) {
    cr_assert_eq(r->partition, -1);
    cr_assert_eq(r->key_len, 3);
    cr_assert_eq(memcmp(r->key, "key", 3), 0);
    cr_assert_eq(r->value_len, 5);
    cr_assert_eq(r->timestamp_ms, 42);
    (*(int *)o)++;
    return 0;
}

/* Everything make_format_1 wrote reads back exactly. */
static void expect_format_1_content(lk__store_t *s, int nstate) {
    cr_assert_eq(lk__store_committed_batch(s), 9);
    lk__state_db_t db;
    CHECK(lk__store_state_open(s, "op", &db, ES));
    lk__store_txn_t *t = tu_begin(s, 0);
    int64_t off = -1;
    cr_assert_eq(lk__store_offset_get(t, "in", 0, &off), LK_OK, "%s",
                 lk__store_txn_errstr(t));
    cr_assert_eq(off, 123);
    lk__batch_rec_t rec;
    cr_assert_eq(lk__store_batch_get(t, 9, &rec), LK_OK, "%s", lk__store_txn_errstr(t));
    cr_assert_eq(rec.records_in, 5);
    cr_assert_eq(rec.nranges, 1);
    cr_assert_eq(rec.ranges[0].from, 118);
    cr_assert_eq(rec.ranges[0].until, 123);
    uint64_t fence = 0;
    cr_assert_eq(lk__store_fence_get(t, "out", &fence), LK_OK);
    cr_assert_eq(fence, 8);
    int64_t acc = 0;
    cr_assert_eq(lk__store_acc_get(t, "records", &acc), LK_OK);
    cr_assert_eq(acc, 77);
    int nrec = 0;
    cr_assert_eq(lk__store_outbox_foreach(t, "out", 9, check_out_record, &nrec), LK_OK, "%s",
                 lk__store_txn_errstr(t));
    cr_assert_eq(nrec, 1);
    for (int i = 0; i < nstate; i += nstate / 7 + 1) {
        char key[32];
        int kl = snprintf(key, sizeof key, "k%06d", i);
        const void *val;
        size_t vlen;
        int64_t upd;
        cr_assert_eq(lk__store_state_get(t, db, key, (size_t)kl, &val, &vlen, &upd), LK_OK,
                     "%s: %s", key, lk__store_txn_errstr(t));
        cr_assert_eq(vlen, (size_t)kl);
        cr_assert_eq(memcmp(val, key, vlen), 0);
        cr_assert_eq(upd, i);
    }
    lk__store_txn_abort(t);
}

Test(store_identity, format_1_is_migrated_at_the_first_writable_open) {
    enum { NSTATE = 5000 };
    make_format_1("app", NSTATE);
    uint64_t before = tu_dir_digest(tu_dir);
    lk__store_opts_t o = {.dir = tu_dir, .readonly = 1};
    lk__store_t *s;
    CHECK(lk__store_open(&s, &o, ES));
    cr_assert_eq(lk__store_format(s), 1);
    cr_assert_str_eq(lk__store_checkpoint_id(s), "");
    expect_format_1_content(s, NSTATE); /* read as it is, without checksums */
    lk__store_close(s);
    cr_assert_eq(tu_dir_digest(tu_dir), before, "a read-only open migrated the checkpoint");

    s = tu_open(tu_dir, "app");
    uint64_t obytes = lk__store_outbox_bytes(s);
    cr_assert_eq(lk__store_format(s), LK_CHECKPOINT_FORMAT);
    cr_assert_eq(lk__store_migrated_from(s), 1);
    cr_assert(is_checkpoint_id(lk__store_checkpoint_id(s)), "id: %s",
              lk__store_checkpoint_id(s));
    cr_assert_eq(lk__store_created_ms(s), 1700000000000LL, "creation time kept");
    char id[LK_CHECKPOINT_ID_LEN + 1];
    strcpy(id, lk__store_checkpoint_id(s));
    expect_format_1_content(s, NSTATE);
    lk__store_close(s);
    s = tu_open(tu_dir, "app");
    cr_assert_eq(lk__store_migrated_from(s), 0, "migrated once");
    cr_assert_str_eq(lk__store_checkpoint_id(s), id);
    cr_assert_eq(lk__store_outbox_bytes(s), obytes, "outbox bytes counted with checksums");
    expect_format_1_content(s, NSTATE); /* now checked against their checksums */
    lk__store_close(s);
}

Test(store_identity, a_current_header_without_a_valid_id_is_corrupt) {
    make_checkpoint("app");
    lk__buf_t b;
    lk__buf_init(&b);
    lk__pack_array(&b, 5); /* format 2 but no id */
    lk__pack_i64(&b, 1);
    lk__pack_str(&b, LK_CHECKPOINT_MAGIC);
    lk__pack_i64(&b, LK_CHECKPOINT_FORMAT);
    lk__pack_str(&b, "app");
    lk__pack_i64(&b, 1700000000000LL);
    seal_header(&b);
    put_raw_header(b.data, b.len);
    expect_refusal(tu_dir, "app", 0, LK_ERR_CORRUPT, "checkpoint id");
    expect_refusal(tu_dir, NULL, 1, LK_ERR_CORRUPT, "checkpoint id");
    lk__buf_reset(&b);
    lk__pack_array(&b, 6); /* an id that is not 32 lowercase hex characters */
    lk__pack_i64(&b, 1);
    lk__pack_str(&b, LK_CHECKPOINT_MAGIC);
    lk__pack_i64(&b, LK_CHECKPOINT_FORMAT);
    lk__pack_str(&b, "app");
    lk__pack_i64(&b, 1700000000000LL);
    lk__pack_str(&b, "00112233445566778899AABBCCDDEEFF");
    seal_header(&b);
    put_raw_header(b.data, b.len);
    lk__buf_free(&b);
    expect_refusal(tu_dir, "app", 0, LK_ERR_CORRUPT, "checkpoint id");
}

/* A dry run (reset-offsets without --yes) takes the lock but must write nothing: a
 * format-1 checkpoint is not migrated, and a write transaction is refused. */
Test(store_identity, no_migrate_leaves_format_1_as_it_is) {
    make_format_1("app", 10);
    uint64_t before = tu_dir_digest(tu_dir);
    lk__store_opts_t o = {.dir = tu_dir, .app_id = "app", .no_migrate = 1, .map_size = 1 << 20};
    lk__store_t *s;
    CHECK(lk__store_open(&s, &o, ES));
    cr_assert_eq(lk__store_format(s), 1);
    cr_assert_str_eq(lk__store_checkpoint_id(s), "");
    expect_format_1_content(s, 10);
    lk__store_txn_t *t = (lk__store_txn_t *)1;
    cr_assert_eq(lk__store_txn_begin(s, 1, &t, ES), LK_ERR_STATE);
    /* the lock is held as by any writable open */
    lk__store_t *s2 = (lk__store_t *)1;
    cr_assert_eq(tu_open_opts(&s2, tu_dir, "app", 1 << 20, 0, ES), LK_ERR_LOCKED);
    lk__store_close(s);
    cr_assert_eq(tu_dir_digest(tu_dir), before, "the dry run modified the checkpoint");
    /* a current checkpoint opens as usual with the flag */
    s = tu_open(tu_dir, "app");
    cr_assert_eq(lk__store_format(s), LK_CHECKPOINT_FORMAT);
    lk__store_close(s);
    CHECK(lk__store_open(&s, &o, ES));
    t = tu_begin(s, 1);
    lk__store_txn_abort(t);
    lk__store_close(s);
}
