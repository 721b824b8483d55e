/*
 * test_sink_files.c — the file and stdout sinks driven by sink.c's delivery: exact file
 * names and bytes (jsonl with base64 for bytes that are not UTF-8, null keys and
 * tombstones; lines), output partitions, acknowledgement (outbox emptied, fence set),
 * delivery of batches <= upto only and oldest first; crashes at the fault points
 * before-sink-produce, after-sink-produce, during-file-rename and after-sink-commit in
 * a forked child, after which recovery delivers every batch exactly once with identical
 * bytes; I/O failures (a file where a directory must be, a full disk via /dev/full, a
 * target below a regular file) refused with LK_ERR_IO naming sink, batch and path while
 * the outbox keeps the batch; stale temporary files removed at recovery; the transaction
 * state validator; the stdout sink's lines.
 */
#define _GNU_SOURCE
#include "testutil.h"
#include "core/util_int.h"
#include "sink/sink_int.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define APP "app"
#define SINK "files-out"

static char ckpt[1024], out[1024];

static void setup(void) {
    tu_scratch_init();
    tu_path(ckpt, sizeof ckpt, tu_dir, "ckpt");
    tu_path(out, sizeof out, tu_dir, "out");
    lk__log_default_level = LK_LOG_WARNING;
}

TestSuite(sink_files, .init = setup, .fini = tu_scratch_fini, .timeout = 120);


/* ---- helpers ---- */

/* A record; NULL key/value as given, lengths from strlen unless given (binary). */
static lk__out_record_t rec(int32_t p, const char *k, const char *v, int64_t ts) {
    return (lk__out_record_t){.partition = p, .key = k, .key_len = k ? strlen(k) : 0,
                             .value = v, .value_len = v ? strlen(v) : 0, .timestamp_ms = ts};
}

static void commit_batch(lk__store_t *st, const char *sink, uint64_t id,
                         const lk__out_record_t *r, size_t n) {
    lk__store_txn_t *t = tu_begin(st, 1);
    for (size_t i = 0; i < n; i++)
        CHECK(lk__store_outbox_append(t, sink, id, &r[i], ES));
    lk__batch_rec_t b = {.id = id, .batch_time_ms = (int64_t)id * 1000, .records_out = n};
    CHECK(lk__store_batch_put(t, &b, ES));
    tu_commit(t);
}

static lk__sink_t *sink_new(const lk__sink_ops_t *ops, const char *target, const char *format) {
    lk__sink_t *s = lk__sink_new(ops, SINK, target, format, APP);
    cr_assert_not_null(s);
    CHECK(s->ops->open(s, NULL, ES));
    return s;
}

static size_t drain(lk__sink_t *s, lk__store_t *st, uint64_t upto) {
    size_t n = 99;
    CHECK(lk__sink_drain(s, st, upto, &n, ES));
    return n;
}

/* First outbox batch of the sink, 0 if empty. */
static uint64_t outbox_first(lk__store_t *st) {
    lk__store_txn_t *t = tu_begin(st, 0);
    uint64_t first = 0;
    lk_err_t e = lk__store_outbox_first_batch(t, SINK, &first);
    lk__store_txn_abort(t);
    cr_assert(e == LK_OK || e == LK_ERR_NOT_FOUND, "%s", lk_err_name(e));
    return e ? 0 : first;
}

/* The sink's fence, 0 if none. */
static uint64_t fence(lk__store_t *st) {
    lk__store_txn_t *t = tu_begin(st, 0);
    uint64_t b = 0;
    lk_err_t e = lk__store_fence_get(t, SINK, &b);
    lk__store_txn_abort(t);
    cr_assert(e == LK_OK || e == LK_ERR_NOT_FOUND, "%s", lk_err_name(e));
    return e ? 0 : b;
}

/* The checkpoint id of the store last opened (file names carry it). */
static char ckid[LK_CHECKPOINT_ID_LEN + 1];
static lk__store_t *open_store(const char *d, const char *app) {
    lk__store_t *st = tu_open(d, app);
    snprintf(ckid, sizeof ckid, "%s", lk__store_checkpoint_id(st));
    cr_assert_eq(strlen(ckid), LK_CHECKPOINT_ID_LEN);
    return st;
}
#define tu_open open_store

/* "<out>/<p>/app+files-out+<checkpoint id>-<batch:020>.<ext>" */
static const char *fname(char *buf, size_t size, int p, uint64_t batch, const char *ext) {
    snprintf(buf, size, "%s/%d/" APP "+" SINK "+%s-%020llu.%s", out, p, ckid,
             (unsigned long long)batch, ext);
    return buf;
}

static void assert_bytes(const char *path, const char *want, size_t want_len) {
    size_t len = 0;
    char *got = tu_slurp(path, &len);
    cr_assert_not_null(got, "%s is missing", path);
    cr_assert(len == want_len && !memcmp(got, want, len),
              "%s: got %zu bytes:\n%.*s\nwant %zu bytes:\n%.*s", path, len, (int)len, got,
              want_len, (int)want_len, want);
    free(got);
}
#define ASSERT_FILE(path, lit) assert_bytes(path, lit, sizeof lit - 1)

static int exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Number of files named *.tmp below path (recursively). */
static int count_tmp(const char *path) {
    DIR *d = opendir(path);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        size_t l = strlen(e->d_name);
        n += l > 4 && !strcmp(e->d_name + l - 4, ".tmp");
        n += count_tmp(p);
    }
    closedir(d);
    return n;
}

/* ---- the mixed batch: partitions 0 (and -1 → 0) and 3, null key, tombstone, binary ---- */

static const lk__header_t hdr = {"h", "hv", 2};

static size_t mixed(lk__out_record_t *r) {
    size_t n = 0;
    r[n] = rec(0, "k1", "v1", 1000);
    r[n].nheaders = 1, r[n++].headers = &hdr; /* jsonl writes them; lines does not */
    r[n++] = rec(-1, NULL, "no key", 1001);
    r[n++] = rec(3, "gone", NULL, 1002);
    r[n++] = (lk__out_record_t){.partition = 0, .key = "\xff\x00\x01", .key_len = 3,
                               .value = "\x80" "abc", .value_len = 4, .timestamp_ms = 1003};
    r[n++] = rec(3, "q", "say \"hi\"\n\t\xc3\xbc", 1700000000123LL);
    r[n++] = (lk__out_record_t){.partition = 0, .key = "a\0b", .key_len = 3, .value = "",
                               .value_len = 0, .timestamp_ms = -7};
    r[n++] = rec(0, "bad", "\xc3\x28", 5);
    return n;
}

#define MIXED_JSONL_P0                                                                   \
    "{\"key\":\"k1\",\"value\":\"v1\",\"timestamp\":1000,\"headers\":[{\"name\":\"h\",\"value\":\"hv\"}]}\n"  \
    "{\"key\":null,\"value\":\"no key\",\"timestamp\":1001}\n"                             \
    "{\"key_base64\":\"/wAB\",\"value_base64\":\"gGFiYw==\",\"timestamp\":1003}\n"         \
    "{\"key\":\"a\\u0000b\",\"value\":\"\",\"timestamp\":-7}\n"                            \
    "{\"key\":\"bad\",\"value_base64\":\"wyg=\",\"timestamp\":5}\n"
#define MIXED_JSONL_P3                                                                   \
    "{\"key\":\"gone\",\"value\":null,\"timestamp\":1002}\n"                               \
    "{\"key\":\"q\",\"value\":\"say \\\"hi\\\"\\n\\t\xc3\xbc\",\"timestamp\":1700000000123}\n"
#define MIXED_LINES_P0 "v1\nno key\n\x80" "abc\n\n\xc3\x28\n"
#define MIXED_LINES_P3 "say \"hi\"\\n\t\xc3\xbc\n" /* one record, one line */

static void commit_mixed(lk__store_t *st, uint64_t id) {
    lk__out_record_t r[16];
    commit_batch(st, SINK, id, r, mixed(r));
}

/* ---- formats, partitions, acknowledgement ---- */

Test(sink_files, jsonl_exact_names_and_bytes) {
    lk__store_t *st = tu_open(ckpt, APP);
    commit_mixed(st, 1);
    lk__sink_t *s = sink_new(&lk__sink_files_ops, out, "jsonl");
    cr_assert_eq(drain(s, st, 1), 1);
    char p[4096];
    ASSERT_FILE(fname(p, sizeof p, 0, 1, "jsonl"), MIXED_JSONL_P0);
    ASSERT_FILE(fname(p, sizeof p, 3, 1, "jsonl"), MIXED_JSONL_P3);
    cr_assert_eq(tu_dir_entries(out), 2, "only partitions 0 and 3");
    cr_assert_eq(tu_dir_entries(tu_path(p, sizeof p, out, "0")), 1);
    cr_assert_eq(tu_dir_entries(tu_path(p, sizeof p, out, "3")), 1);
    cr_assert_eq(outbox_first(st), 0, "the outbox is acknowledged");
    cr_assert_eq(fence(st), 1);
    cr_assert_eq(s->state, LK__TXN_READY);
    cr_assert_eq(lk__store_outbox_bytes(st), 0);
    lk__sink_destroy(s);
    lk__store_close(st);
}

Test(sink_files, lines_exact_names_and_bytes) {
    lk__store_t *st = tu_open(ckpt, APP);
    commit_mixed(st, 1);
    /* partition 5 holds only a tombstone: no file (and no directory) for it */
    lk__out_record_t r[] = {rec(5, "x", NULL, 1), rec(0, "y", "2nd batch", 2)};
    commit_batch(st, SINK, 2, r, 2);
    lk__sink_t *s = sink_new(&lk__sink_files_ops, out, "lines");
    cr_assert_eq(drain(s, st, 2), 2);
    char p[4096];
    ASSERT_FILE(fname(p, sizeof p, 0, 1, "txt"), MIXED_LINES_P0);
    ASSERT_FILE(fname(p, sizeof p, 3, 1, "txt"), MIXED_LINES_P3);
    ASSERT_FILE(fname(p, sizeof p, 0, 2, "txt"), "2nd batch\n");
    cr_assert_not(exists(fname(p, sizeof p, 5, 2, "txt")));
    cr_assert_eq(tu_dir_entries(out), 2, "only partitions 0 and 3");
    cr_assert_eq(tu_dir_entries(tu_path(p, sizeof p, out, "0")), 2);
    cr_assert_eq(outbox_first(st), 0);
    cr_assert_eq(fence(st), 2);
    lk__sink_destroy(s);
    lk__store_close(st);
}

Test(sink_files, batch_for_one_partition_writes_only_its_directory) {
    lk__store_t *st = tu_open(ckpt, APP);
    lk__out_record_t r[] = {rec(3, "a", "1", 10), rec(3, "b", "2", 11)};
    commit_batch(st, SINK, 1, r, 2);
    lk__sink_t *s = sink_new(&lk__sink_files_ops, out, "jsonl");
    cr_assert_eq(drain(s, st, 1), 1);
    char p[4096];
    ASSERT_FILE(fname(p, sizeof p, 3, 1, "jsonl"),
                "{\"key\":\"a\",\"value\":\"1\",\"timestamp\":10}\n"
                "{\"key\":\"b\",\"value\":\"2\",\"timestamp\":11}\n");
    cr_assert_eq(tu_dir_entries(out), 1);
    cr_assert_not(exists(tu_path(p, sizeof p, out, "0")));
    lk__sink_destroy(s);
    lk__store_close(st);
}

/* A files sink that records the order of the batches it begins. */
static uint64_t begun[16];
static size_t nbegun;
static lk_err_t recording_begin(lk__sink_t *s, uint64_t batch, char *errstr,
                                size_t errstr_size) {
    cr_assert_lt(nbegun, LK_ARRAY_SIZE(begun));
    begun[nbegun++] = batch;
    return lk__sink_files_ops.begin(s, batch, errstr, errstr_size);
}

Test(sink_files, delivers_only_up_to_upto_oldest_first) {
    lk__store_t *st = tu_open(ckpt, APP);
    /* committed out of order: delivery order must come from the batch ids */
    lk__out_record_t r3 = rec(0, "k", "three", 3), r1 = rec(0, "k", "one", 1),
                    r2 = rec(1, "k", "two", 2), other = rec(0, "k", "other sink", 1);
    commit_batch(st, SINK, 3, &r3, 1);
    commit_batch(st, SINK, 1, &r1, 1);
    commit_batch(st, SINK, 2, &r2, 1);
    commit_batch(st, "another-sink", 4, &other, 1);
    lk__sink_ops_t ops = lk__sink_files_ops;
    ops.begin = recording_begin;
    lk__sink_t *s = sink_new(&ops, out, "lines");
    char p[4096];

    cr_assert_eq(drain(s, st, 0), 0, "nothing is durable yet");
    cr_assert_eq(nbegun, 0);
    cr_assert_eq(outbox_first(st), 1);

    cr_assert_eq(drain(s, st, 2), 2);
    cr_assert_eq(nbegun, 2);
    cr_assert_eq(begun[0], 1);
    cr_assert_eq(begun[1], 2);
    ASSERT_FILE(fname(p, sizeof p, 0, 1, "txt"), "one\n");
    ASSERT_FILE(fname(p, sizeof p, 1, 2, "txt"), "two\n");
    cr_assert_not(exists(fname(p, sizeof p, 0, 3, "txt")), "batch 3 > upto");
    cr_assert_eq(outbox_first(st), 3);
    cr_assert_eq(fence(st), 2);

    cr_assert_eq(drain(s, st, 100), 1);
    cr_assert_eq(nbegun, 3);
    cr_assert_eq(begun[2], 3);
    ASSERT_FILE(fname(p, sizeof p, 0, 3, "txt"), "three\n");
    cr_assert_eq(outbox_first(st), 0);
    cr_assert_eq(fence(st), 3);
    cr_assert_eq(drain(s, st, 100), 0);
    cr_assert_eq(nbegun, 3);

    /* the other sink's outbox is untouched */
    lk__store_txn_t *t = tu_begin(st, 0);
    uint64_t first = 0;
    cr_assert_eq(lk__store_outbox_first_batch(t, "another-sink", &first), LK_OK);
    cr_assert_eq(first, 4);
    lk__store_txn_abort(t);
    lk__sink_destroy(s);
    lk__store_close(st);
}

/* ---- crashes at fault points ---- */

/* Fork a child that drains the sink up to batch 10 with LOCKSTEP_FAULTPOINT=point; it
 * must die of SIGKILL. The parent must not hold the store open (flock). */
static void crash_child(const char *point, const char *format) {
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_neq(pid, -1, "fork");
    if (pid == 0) {
        setenv("LOCKSTEP_FAULTPOINT", point, 1); /* before the child's first fault point */
        char err[1024];
        lk__store_t *st;
        if (tu_open_opts(&st, ckpt, APP, 0, 0, err, sizeof err)) {
            fprintf(stderr, "child: open: %s\n", err);
            _exit(10);
        }
        lk__sink_t *s = lk__sink_new(&lk__sink_files_ops, SINK, out, format, APP);
        if (!s || s->ops->open(s, NULL, err, sizeof err))
            _exit(11);
        size_t n;
        lk_err_t e = lk__sink_drain(s, st, 10, &n, err, sizeof err);
        fprintf(stderr, "child: drain returned %s (%s) without reaching %s\n",
                lk_err_name(e), err, point);
        _exit(12);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
              "child should die at %s: status 0x%x", point, status);
}

/* Batches 1 (mixed) and 2 in the outbox; the store is closed afterwards. */
static void prepare_two_batches(void) {
    lk__store_t *st = tu_open(ckpt, APP);
    commit_mixed(st, 1);
    lk__out_record_t r = rec(0, "z", "last", 2000);
    commit_batch(st, SINK, 2, &r, 1);
    lk__store_close(st);
}

#define BATCH2_JSONL "{\"key\":\"z\",\"value\":\"last\",\"timestamp\":2000}\n"

/* Recover in the parent and check both batches exactly once with the expected bytes. */
static void recover_and_check(void) {
    lk__store_t *st = tu_open(ckpt, APP);
    lk__sink_t *s = sink_new(&lk__sink_files_ops, out, "jsonl");
    cr_assert_eq(drain(s, st, 10), 2);
    char p[4096];
    cr_assert_eq(count_tmp(out), 0, "no temporary file is left");
    ASSERT_FILE(fname(p, sizeof p, 0, 1, "jsonl"), MIXED_JSONL_P0);
    ASSERT_FILE(fname(p, sizeof p, 3, 1, "jsonl"), MIXED_JSONL_P3);
    ASSERT_FILE(fname(p, sizeof p, 0, 2, "jsonl"), BATCH2_JSONL);
    cr_assert_eq(tu_dir_entries(out), 2);
    cr_assert_eq(tu_dir_entries(tu_path(p, sizeof p, out, "0")), 2);
    cr_assert_eq(tu_dir_entries(tu_path(p, sizeof p, out, "3")), 1);
    cr_assert_eq(outbox_first(st), 0);
    cr_assert_eq(fence(st), 2);
    cr_assert_eq(drain(s, st, 10), 0, "nothing is delivered twice");
    lk__sink_destroy(s);
    lk__store_close(st);
}

static void assert_batch1_pending(void) {
    lk__store_t *st = tu_open(ckpt, APP);
    cr_assert_eq(outbox_first(st), 1, "the outbox still holds batch 1");
    cr_assert_eq(fence(st), 0);
    lk__store_close(st);
}

Test(sink_files, crash_before_sink_produce) {
    prepare_two_batches();
    crash_child("before-sink-produce", "jsonl");
    cr_assert_eq(tu_dir_entries(out), 0, "recover created the directory; nothing else");
    assert_batch1_pending();
    recover_and_check();
}

Test(sink_files, crash_after_sink_produce) {
    prepare_two_batches();
    crash_child("after-sink-produce", "jsonl");
    char p[4096], tmp[4200];
    cr_assert_eq(count_tmp(out), 2, "temporary files of partitions 0 and 3");
    cr_assert_not(exists(fname(p, sizeof p, 0, 1, "jsonl")));
    snprintf(tmp, sizeof tmp, "%s.tmp", fname(p, sizeof p, 3, 1, "jsonl"));
    cr_assert(exists(tmp), "%s", tmp);
    assert_batch1_pending();
    recover_and_check();
}

Test(sink_files, crash_during_file_rename) {
    prepare_two_batches();
    crash_child("during-file-rename", "jsonl");
    char p[4096], tmp[4200];
    cr_assert_eq(count_tmp(out), 2);
    /* the temporary files are complete (fsynced before the renames); no final name */
    snprintf(tmp, sizeof tmp, "%s.tmp", fname(p, sizeof p, 0, 1, "jsonl"));
    ASSERT_FILE(tmp, MIXED_JSONL_P0);
    cr_assert_not(exists(p));
    snprintf(tmp, sizeof tmp, "%s.tmp", fname(p, sizeof p, 3, 1, "jsonl"));
    ASSERT_FILE(tmp, MIXED_JSONL_P3);
    cr_assert_not(exists(p));
    assert_batch1_pending();
    recover_and_check();
}

Test(sink_files, crash_after_sink_commit_keeps_the_delivered_file) {
    prepare_two_batches();
    crash_child("after-sink-commit", "jsonl");
    char p0[4096], p3[4096];
    fname(p0, sizeof p0, 0, 1, "jsonl");
    fname(p3, sizeof p3, 3, 1, "jsonl");
    cr_assert_eq(count_tmp(out), 0);
    ASSERT_FILE(p0, MIXED_JSONL_P0);
    ASSERT_FILE(p3, MIXED_JSONL_P3);
    size_t l0, l3;
    char *before0 = tu_slurp(p0, &l0), *before3 = tu_slurp(p3, &l3);
    struct stat st0;
    cr_assert_eq(stat(p0, &st0), 0);
    assert_batch1_pending(); /* delivered, not acknowledged */
    recover_and_check();
    struct stat st1;
    cr_assert_eq(stat(p0, &st1), 0);
    /* the final name is never replaced: the redelivery finds the same bytes there */
    cr_assert_eq(st0.st_ino, st1.st_ino, "batch 1's file was replaced");
    assert_bytes(p0, before0, l0);
    assert_bytes(p3, before3, l3);
    free(before0);
    free(before3);
}

/* ---- I/O failures ---- */


Test(sink_files, file_where_partition_directory_must_be_is_refused) {
    lk__store_t *st = tu_open(ckpt, APP);
    lk__sink_t *s = sink_new(&lk__sink_files_ops, out, "jsonl");
    cr_assert_eq(drain(s, st, 10), 0); /* recovered: creates out */
    char p[4096];
    tu_write_file(tu_path(p, sizeof p, out, "0"), "x", 1);
    commit_mixed(st, 1);
    size_t n = 99;
    tu_err[0] = '\0';
    cr_assert_eq(lk__sink_drain(s, st, 10, &n, ES), LK_ERR_FATAL, "%s", tu_err);
    cr_assert(strstr(tu_err, "partition 0") && strstr(tu_err, p) &&
                  strstr(tu_err, "is not a directory"),
              "%s", tu_err);
    cr_assert_eq(s->state, LK__TXN_FATAL);
    cr_assert_not(exists(fname(p, sizeof p, 3, 1, "jsonl")), "no partial batch");
    cr_assert_eq(outbox_first(st), 1, "the outbox keeps the batch");
    lk__sink_destroy(s);
    /* fixed: delivered */
    unlink(tu_path(p, sizeof p, out, "0"));
    s = sink_new(&lk__sink_files_ops, out, "jsonl");
    cr_assert_eq(drain(s, st, 10), 1);
    ASSERT_FILE(fname(p, sizeof p, 0, 1, "jsonl"), MIXED_JSONL_P0);
    ASSERT_FILE(fname(p, sizeof p, 3, 1, "jsonl"), MIXED_JSONL_P3);
    cr_assert_eq(outbox_first(st), 0);
    lk__sink_destroy(s);
    lk__store_close(st);
}

Test(sink_files, io_error_file_too_large) {
    lk__store_t *st = tu_open(ckpt, APP);
    lk__sink_t *s = sink_new(&lk__sink_files_ops, out, "jsonl");
    cr_assert_eq(drain(s, st, 10), 0);
    commit_mixed(st, 1);
    /* a write the OS refuses (as a full disk would): files may not exceed 10 bytes */
    struct rlimit old;
    cr_assert_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    struct rlimit small = {10, old.rlim_max};
    signal(SIGXFSZ, SIG_IGN);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
    char p[4096];
    size_t n = 99;
    tu_err[0] = '\0';
    lk_err_t e = lk__sink_drain(s, st, 10, &n, ES);
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    cr_assert_eq(e, LK_ERR_IO, "%s (%s)", tu_err, lk_err_name(e));
    cr_assert(strstr(tu_err, "File too large") && strstr(tu_err, "batch 1"), "%s", tu_err);
    cr_assert_eq(s->state, LK__TXN_READY, "a failed delivery is retriable");
    cr_assert_eq(outbox_first(st), 1, "the outbox keeps the batch");
    cr_assert_eq(count_tmp(out), 0, "abort removes temporary files");
    cr_assert_not(exists(fname(p, sizeof p, 0, 1, "jsonl")), "no partial batch");
    cr_assert_eq(drain(s, st, 10), 1);
    ASSERT_FILE(fname(p, sizeof p, 3, 1, "jsonl"), MIXED_JSONL_P3);
    lk__sink_destroy(s);
    lk__store_close(st);
}

Test(sink_files, io_error_directory_below_a_regular_file) {
    lk__store_t *st = tu_open(ckpt, APP);
    char file[4096], target[4200];
    tu_write_file(tu_path(file, sizeof file, tu_dir, "plain-file"), "x", 1);
    snprintf(target, sizeof target, "%s/sub/dir", file);
    commit_mixed(st, 1);
    lk__sink_t *s = sink_new(&lk__sink_files_ops, target, "jsonl");
    size_t n = 99;
    tu_err[0] = '\0';
    lk_err_t e = lk__sink_drain(s, st, 10, &n, ES);
    cr_assert_eq(e, LK_ERR_IO, "%s (%s)", tu_err, lk_err_name(e));
    cr_assert_eq(n, 0);
    cr_assert(strstr(tu_err, "sink '" SINK "'") && strstr(tu_err, target) &&
                  strstr(tu_err, "Not a directory"),
              "%s", tu_err);
    cr_assert_eq(outbox_first(st), 1);
    cr_assert_eq(s->state, LK__TXN_READY);
    lk__sink_destroy(s);
    lk__store_close(st);
}

/* ---- recovery, open, the state machine ---- */

Test(sink_files, recover_creates_directory_and_removes_only_our_temporary_files) {
    char target[4200], p[4300];
    snprintf(target, sizeof target, "%s/a/b/c", tu_dir);
    /* creates a/b/c */
    lk__store_t *st = tu_open(ckpt, APP);
    lk__sink_t *s = sink_new(&lk__sink_files_ops, target, "jsonl");
    cr_assert_eq(drain(s, st, 10), 0);
    struct stat sb;
    cr_assert(stat(target, &sb) == 0 && S_ISDIR(sb.st_mode));
    lk__sink_destroy(s);

    /* stale files of an interrupted delivery, and files that are not ours: another
     * application whose id starts with ours ("app-b": the old prefix match took them),
     * another sink, another checkpoint, the old naming */
    char mine[2][300], keep[9][300];
    const char *id = ckid;
    snprintf(mine[0], 300, "2/app+files-out+%s-00000000000000000007.jsonl.tmp", id);
    snprintf(mine[1], 300, "10/app+files-out+%s-00000000000000000001.txt.tmp", id);
    snprintf(keep[0], 300, "2/app+files-out+%s-00000000000000000006.jsonl", id);
    snprintf(keep[1], 300, "2/other+files-out+%s-00000000000000000007.jsonl.tmp", id);
    snprintf(keep[2], 300, "2/app-b+files-out+%s-00000000000000000007.jsonl.tmp", id);
    snprintf(keep[3], 300, "2/app+files-out-2+%s-00000000000000000007.jsonl.tmp", id);
    snprintf(keep[4], 300, "2/app+files-out+%032d-00000000000000000007.jsonl.tmp", 0);
    snprintf(keep[5], 300, "2/app+files-out+%s-0000000000000000007.jsonl.tmp", id);
    snprintf(keep[6], 300, "notapartition/app+files-out+%s-00000000000000000001.jsonl.tmp", id);
    snprintf(keep[7], 300, "2/app-b-00000000000000000007.jsonl.tmp");
    snprintf(keep[8], 300, "app+files-out+%s-00000000000000000001.jsonl.tmp", id);
    snprintf(p, sizeof p, "%s/2", target), mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/10", target), mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/notapartition", target), mkdir(p, 0755);
    for (size_t i = 0; i < LK_ARRAY_SIZE(mine); i++)
        tu_write_file((snprintf(p, sizeof p, "%.3900s/%.280s", target, mine[i]), p), "partial", 7);
    for (size_t i = 0; i < LK_ARRAY_SIZE(keep); i++)
        tu_write_file((snprintf(p, sizeof p, "%.3900s/%.280s", target, keep[i]), p), "keep", 4);

    s = sink_new(&lk__sink_files_ops, target, "jsonl");
    snprintf(s->checkpoint_id, sizeof s->checkpoint_id, "%s", ckid); /* lk__sink_recover's */
    uint64_t f = 42;
    CHECK(s->ops->recover(s, &f, ES));
    cr_assert_eq(f, 0, "files report no fence: the outbox acknowledgement is the fence");
    for (size_t i = 0; i < LK_ARRAY_SIZE(mine); i++)
        cr_assert_not(exists((snprintf(p, sizeof p, "%.3900s/%.280s", target, mine[i]), p)), "%s", p);
    for (size_t i = 0; i < LK_ARRAY_SIZE(keep); i++)
        cr_assert(exists((snprintf(p, sizeof p, "%.3900s/%.280s", target, keep[i]), p)), "%s", p);
    lk__sink_destroy(s);
    lk__store_close(st);
}

Test(sink_files, open_refuses_unknown_format_and_empty_directory) {
    lk__sink_t *s = lk__sink_new(&lk__sink_files_ops, SINK, out, "csv", APP);
    tu_err[0] = '\0';
    cr_assert_eq(s->ops->open(s, NULL, ES), LK_ERR_INVALID_ARG);
    cr_assert(strstr(tu_err, SINK) && strstr(tu_err, "csv"), "%s", tu_err);
    lk__sink_destroy(s);
    s = lk__sink_new(&lk__sink_files_ops, SINK, "", "lines", APP);
    cr_assert_eq(s->ops->open(s, NULL, ES), LK_ERR_INVALID_ARG);
    cr_assert(strstr(tu_err, SINK), "%s", tu_err);
    lk__sink_destroy(s);
    cr_assert_str_eq(lk__sink_files_ops.kind, "files");
    cr_assert_eq(lk__sink_files_ops.exactly_once, 1);
    cr_assert_str_eq(lk__sink_stdout_ops.kind, "stdout");
    cr_assert_eq(lk__sink_stdout_ops.exactly_once, 0);
}

Test(sink_files, transition_validator_and_sticky_fatal) {
    lk__sink_t *s = sink_new(&lk__sink_files_ops, out, "jsonl");
    cr_assert_eq(s->state, LK__TXN_READY);
    /* what the table refuses (making such a transition is a bug: test_sink_txn.c) */
    cr_assert(!lk__sink_transition_allowed(LK__TXN_READY, LK__TXN_COMMITTED));
    cr_assert(!lk__sink_transition_allowed(LK__TXN_READY, LK__TXN_PRODUCED));
    cr_assert(!lk__sink_transition_allowed(LK__TXN_BEGUN, LK__TXN_COMMITTED));
    cr_assert(!lk__sink_transition_allowed(LK__TXN_COMMITTED, LK__TXN_PRODUCED));
    /* the legal cycle */
    CHECK(lk__sink_transition(s, LK__TXN_BEGUN, ES));
    CHECK(lk__sink_transition(s, LK__TXN_PRODUCED, ES));
    CHECK(lk__sink_transition(s, LK__TXN_COMMITTED, ES));
    /* the next batch may begin before this one's acknowledgement (overlapped delivery) */
    CHECK(lk__sink_transition(s, LK__TXN_BEGUN, ES));
    CHECK(lk__sink_transition(s, LK__TXN_PRODUCED, ES));
    CHECK(lk__sink_transition(s, LK__TXN_COMMITTED, ES));
    CHECK(lk__sink_transition(s, LK__TXN_READY, ES));
    /* FATAL is sticky */
    CHECK(lk__sink_transition(s, LK__TXN_FATAL, ES));
    static const lk__txn_state_t all[] = {LK__TXN_READY, LK__TXN_BEGUN, LK__TXN_PRODUCED,
                                          LK__TXN_COMMITTED, LK__TXN_FATAL};
    for (size_t i = 0; i < LK_ARRAY_SIZE(all); i++) {
        lk_err_t e = lk__sink_transition(s, all[i], ES);
        cr_assert(e == LK_ERR_FATAL, "FATAL -> %s: %s", lk__txn_state_name(all[i]),
                  lk_err_name(e));
        cr_assert(strstr(tu_err, "FATAL"), "%s", tu_err);
        cr_assert_eq(s->state, LK__TXN_FATAL);
    }
    /* and a FATAL sink delivers nothing */
    lk__store_t *st = tu_open(ckpt, APP);
    commit_mixed(st, 1);
    size_t n = 99;
    cr_assert_eq(lk__sink_drain(s, st, 10, &n, ES), LK_ERR_FATAL);
    cr_assert_eq(n, 0);
    cr_assert_eq(outbox_first(st), 1);
    cr_assert_eq(tu_dir_entries(out), -1, "not even recovered");
    lk__sink_destroy(s);
    lk__store_close(st);
}

/* ---- stdout ---- */

Test(sink_files, stdout_prints_key_tab_value) {
    lk__store_t *st = tu_open(ckpt, APP);
    lk__out_record_t r[] = {rec(0, "k1", "v1", 1), rec(2, "gone", NULL, 2),
                           rec(-1, NULL, "no key", 3)};
    commit_batch(st, SINK, 1, r, 3);
    lk__out_record_t r2 = rec(0, "k2", "v2", 4);
    commit_batch(st, SINK, 2, &r2, 1);
    lk__sink_t *s = sink_new(&lk__sink_stdout_ops, "stdout", NULL);
    uint64_t f = 42;
    CHECK(s->ops->recover(s, &f, ES));
    cr_assert_eq(f, 0);

    char path[4096];
    tu_path(path, sizeof path, tu_dir, "stdout.txt");
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert(saved >= 0 && fd >= 0);
    dup2(fd, STDOUT_FILENO);
    close(fd);
    size_t n = 99;
    lk_err_t e = lk__sink_drain(s, st, 10, &n, ES);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    cr_assert_eq(e, LK_OK, "%s", tu_err);
    cr_assert_eq(n, 2);
    ASSERT_FILE(path, "k1\tv1\ngone\t(deleted)\n\tno key\nk2\tv2\n");
    cr_assert_eq(outbox_first(st), 0);
    cr_assert_eq(fence(st), 2);
    lk__sink_destroy(s);
    lk__store_close(st);
}

/* ---- hostile directories and names (issue 15 items 8-10, issue 13 item 5) ---- */

static lk__sink_t *sink_conf(const char *target, int allow_shared) {
    lk_conf_t *c = lk_conf_new();
    cr_assert_eq(lk_conf_set(c, "dir.allow.shared", allow_shared ? "true" : "false", ES),
                 LK_CONF_OK);
    lk__sink_t *s = lk__sink_new(&lk__sink_files_ops, SINK, target, "jsonl", APP);
    CHECK(s->ops->open(s, c, ES));
    lk_conf_destroy(c);
    return s;
}

static lk_err_t drain_err(lk__sink_t *s, lk__store_t *st) {
    size_t n = 99;
    tu_err[0] = '\0';
    return lk__sink_drain(s, st, 10, &n, ES);
}

Test(sink_files, directory_writable_by_others_is_refused) {
    lk__store_t *st = tu_open(ckpt, APP);
    cr_assert_eq(mkdir(out, 0700), 0);
    cr_assert_eq(chmod(out, 0777), 0);
    commit_mixed(st, 1);
    lk__sink_t *s = sink_conf(out, 1); /* not even for a shared group */
    cr_assert_eq(drain_err(s, st), LK_ERR_FATAL, "%s", tu_err);
    cr_assert(strstr(tu_err, out) && strstr(tu_err, "writable by every user (mode 0777)"), "%s",
              tu_err);
    cr_assert_eq(tu_dir_entries(out), 0, "nothing written");
    lk__sink_destroy(s);
    /* group-writable: refused by default, accepted with tu_dir.allow.shared */
    cr_assert_eq(chmod(out, 0770), 0);
    s = sink_conf(out, 0);
    cr_assert_eq(drain_err(s, st), LK_ERR_FATAL, "%s", tu_err);
    cr_assert(strstr(tu_err, "writable by its group (mode 0770)") &&
                  strstr(tu_err, "dir.allow.shared"),
              "%s", tu_err);
    lk__sink_destroy(s);
    s = sink_conf(out, 1);
    cr_assert_eq(drain_err(s, st), LK_OK, "%s", tu_err);
    char p[4096];
    ASSERT_FILE(fname(p, sizeof p, 0, 1, "jsonl"), MIXED_JSONL_P0);
    lk__sink_destroy(s);
    lk__store_close(st);
}

Test(sink_files, directory_of_another_user_is_refused) {
    if (geteuid() != 0) {
        tu_scratch_fini();
        cr_skip_test("needs root to give the directory to another uid (chown 65534)");
    }
    lk__store_t *st = tu_open(ckpt, APP);
    cr_assert_eq(mkdir(out, 0755), 0);
    cr_assert_eq(chown(out, 65534, 65534), 0);
    commit_mixed(st, 1);
    lk__sink_t *s = sink_conf(out, 0);
    cr_assert_eq(drain_err(s, st), LK_ERR_FATAL, "%s", tu_err);
    cr_assert(strstr(tu_err, "is owned by uid 65534, not by this user (uid 0)"), "%s", tu_err);
    cr_assert_eq(tu_dir_entries(out), 0, "nothing written");
    lk__sink_destroy(s);
    /* a partition directory pre-created by that user with a link at the next temporary
     * name: refused, the link's target untouched */
    cr_assert_eq(chown(out, 0, 0), 0);
    cr_assert_eq(chmod(out, 0700), 0);
    char p[4096], tmp[4200], victim[4200];
    cr_assert_eq(mkdir(tu_path(p, sizeof p, out, "0"), 0755), 0);
    cr_assert_eq(chown(p, 65534, 65534), 0);
    snprintf(victim, sizeof victim, "%s/victim", tu_dir);
    tu_write_file(victim, "root's file", 11);
    snprintf(tmp, sizeof tmp, "%s.tmp", fname(p, sizeof p, 0, 1, "jsonl"));
    cr_assert_eq(symlink(victim, tmp), 0);
    s = sink_conf(out, 0);
    cr_assert_eq(drain_err(s, st), LK_ERR_FATAL, "%s", tu_err);
    cr_assert(strstr(tu_err, "partition 0") && strstr(tu_err, "owned by uid 65534"), "%s", tu_err);
    ASSERT_FILE(victim, "root's file");
    lk__sink_destroy(s);
    lk__store_close(st);
}

Test(sink_files, link_at_the_temporary_name_is_not_followed) {
    lk__store_t *st = tu_open(ckpt, APP);
    char p[4096], tmp[4200], victim[4200];
    cr_assert_eq(mkdir(out, 0700), 0);
    cr_assert_eq(mkdir(tu_path(p, sizeof p, out, "0"), 0700), 0);
    snprintf(victim, sizeof victim, "%s/victim", tu_dir);
    tu_write_file(victim, "someone's file", 14);
    snprintf(tmp, sizeof tmp, "%s.tmp", fname(p, sizeof p, 0, 1, "jsonl"));
    cr_assert_eq(symlink(victim, tmp), 0);
    commit_mixed(st, 1);
    lk__sink_t *s = sink_new(&lk__sink_files_ops, out, "jsonl");
    cr_assert_eq(drain(s, st, 10), 1);
    ASSERT_FILE(victim, "someone's file");
    ASSERT_FILE(fname(p, sizeof p, 0, 1, "jsonl"), MIXED_JSONL_P0);
    struct stat sb;
    cr_assert_eq(lstat(fname(p, sizeof p, 0, 1, "jsonl"), &sb), 0);
    cr_assert(S_ISREG(sb.st_mode), "the output is a file of its own, not the link");
    lk__sink_destroy(s);
    lk__store_close(st);
}

Test(sink_files, partition_directory_that_is_a_link_is_refused) {
    lk__store_t *st = tu_open(ckpt, APP);
    char p[4096], elsewhere[4200];
    cr_assert_eq(mkdir(out, 0700), 0);
    snprintf(elsewhere, sizeof elsewhere, "%s/elsewhere", tu_dir);
    cr_assert_eq(mkdir(elsewhere, 0700), 0);
    cr_assert_eq(symlink(elsewhere, tu_path(p, sizeof p, out, "0")), 0);
    commit_mixed(st, 1);
    lk__sink_t *s = sink_new(&lk__sink_files_ops, out, "jsonl");
    cr_assert_eq(drain_err(s, st), LK_ERR_FATAL, "%s", tu_err);
    cr_assert(strstr(tu_err, "is a symbolic link") && strstr(tu_err, p), "%s", tu_err);
    cr_assert_eq(tu_dir_entries(elsewhere), 0);
    lk__sink_destroy(s);
    lk__store_close(st);
}

Test(sink_files, created_directories_0700_and_files_0600) {
    mode_t old = umask(022);
    lk__store_t *st = tu_open(ckpt, APP);
    commit_mixed(st, 1);
    lk__sink_t *s = sink_new(&lk__sink_files_ops, out, "jsonl");
    cr_assert_eq(drain(s, st, 10), 1);
    umask(old);
    char p[4096];
    struct stat sb;
    cr_assert_eq(stat(out, &sb), 0);
    cr_assert_eq(sb.st_mode & 07777, 0700);
    cr_assert_eq(stat(tu_path(p, sizeof p, out, "3"), &sb), 0);
    cr_assert_eq(sb.st_mode & 07777, 0700);
    cr_assert_eq(stat(fname(p, sizeof p, 3, 1, "jsonl"), &sb), 0);
    cr_assert_eq(sb.st_mode & 07777, 0600);
    lk__sink_destroy(s);
    lk__store_close(st);
}

Test(sink_files, new_checkpoint_never_overwrites_an_old_ones_files) {
    /* "start with a new checkpoint directory" under the same app.id: batch numbers start
     * at 1 again; the old checkpoint's batch 1 stays as it was */
    lk__store_t *st = tu_open(ckpt, APP);
    char old_id[LK_CHECKPOINT_ID_LEN + 1], p[4096], oldf[4096];
    snprintf(old_id, sizeof old_id, "%s", ckid);
    lk__out_record_t a = rec(0, "k", "old checkpoint", 1);
    commit_batch(st, SINK, 1, &a, 1);
    lk__sink_t *s = sink_new(&lk__sink_files_ops, out, "jsonl");
    cr_assert_eq(drain(s, st, 10), 1);
    fname(oldf, sizeof oldf, 0, 1, "jsonl");
    lk__sink_destroy(s);
    lk__store_close(st);
    tu_rmrf(ckpt);
    st = tu_open(ckpt, APP);
    cr_assert_str_neq(ckid, old_id, "a new checkpoint has a new id");
    lk__out_record_t b = rec(0, "k", "new checkpoint", 2);
    commit_batch(st, SINK, 1, &b, 1);
    s = sink_new(&lk__sink_files_ops, out, "jsonl");
    cr_assert_eq(drain(s, st, 10), 1);
    ASSERT_FILE(oldf, "{\"key\":\"k\",\"value\":\"old checkpoint\",\"timestamp\":1}\n");
    ASSERT_FILE(fname(p, sizeof p, 0, 1, "jsonl"),
                "{\"key\":\"k\",\"value\":\"new checkpoint\",\"timestamp\":2}\n");
    lk__sink_destroy(s);
    lk__store_close(st);
}

Test(sink_files, final_name_with_other_bytes_is_never_overwritten) {
    lk__store_t *st = tu_open(ckpt, APP);
    char p[4096];
    cr_assert_eq(mkdir(out, 0700), 0);
    cr_assert_eq(mkdir(tu_path(p, sizeof p, out, "0"), 0700), 0);
    tu_write_file(fname(p, sizeof p, 0, 1, "jsonl"), "edited\n", 7);
    commit_mixed(st, 1);
    lk__sink_t *s = sink_new(&lk__sink_files_ops, out, "jsonl");
    cr_assert_eq(drain_err(s, st), LK_ERR_FATAL, "%s", tu_err);
    cr_assert(strstr(tu_err, "exists with other content") && strstr(tu_err, p), "%s", tu_err);
    ASSERT_FILE(p, "edited\n");
    cr_assert_eq(count_tmp(out), 0);
    cr_assert_eq(outbox_first(st), 1, "the outbox keeps the batch");
    lk__sink_destroy(s);
    lk__store_close(st);
}

Test(sink_files, checkpoint_directory_not_private_is_refused) {
    /* the check lives in core/util.c; store.c calls it where the checkpoint is opened */
    cr_assert_eq(mkdir(ckpt, 0700), 0);
    cr_assert_eq(chmod(ckpt, 0777), 0);
    lk__store_t *st = NULL;
    char err[1024] = "";
    cr_assert_eq(tu_open_opts(&st, ckpt, APP, 0, 0, err, sizeof err), LK_ERR_CONF_INVALID);
    cr_assert(strstr(err, ckpt) && strstr(err, "writable by every user"), "%s", err);
    cr_assert_eq(tu_dir_entries(ckpt), 0, "no LOCK, no lock.mdb created");
    if (geteuid() == 0) {
        cr_assert_eq(chmod(ckpt, 0755), 0);
        cr_assert_eq(chown(ckpt, 65534, 65534), 0);
        cr_assert_eq(tu_open_opts(&st, ckpt, APP, 0, 0, err, sizeof err), LK_ERR_CONF_INVALID);
        cr_assert(strstr(err, "owned by uid 65534"), "%s", err);
        cr_assert_eq(tu_dir_entries(ckpt), 0, "no LOCK, no lock.mdb created");
    }
    /* created by lockstep: 0700, data files 0600 */
    tu_rmrf(ckpt);
    mode_t old = umask(022);
    st = tu_open(ckpt, APP);
    umask(old);
    struct stat sb;
    char p[4096];
    cr_assert_eq(stat(ckpt, &sb), 0);
    cr_assert_eq(sb.st_mode & 07777, 0700);
    cr_assert_eq(stat(tu_path(p, sizeof p, ckpt, "data.mdb"), &sb), 0);
    cr_assert_eq(sb.st_mode & 07777, 0600);
    lk__store_close(st);
}

Test(sink_files, record_with_many_headers_is_delivered) {
    /* a copied record may carry any number of headers; the outbox decoder had room for 64
     * and called a record with more "corrupt" */
    lk__store_t *st = tu_open(ckpt, APP);
    lk__header_t hs[70];
    char names[70][8];
    for (int i = 0; i < 70; i++) {
        snprintf(names[i], sizeof names[i], "h%d", i);
        hs[i] = (lk__header_t){names[i], i % 2 ? "v" : NULL, i % 2};
    }
    lk__out_record_t r = rec(0, "k", "v", 5);
    r.headers = hs;
    r.nheaders = 70;
    commit_batch(st, SINK, 1, &r, 1);
    lk__sink_t *s = sink_new(&lk__sink_files_ops, out, "jsonl");
    cr_assert_eq(drain(s, st, 10), 1);
    char p[4096];
    size_t len;
    char *text = tu_slurp(fname(p, sizeof p, 0, 1, "jsonl"), &len);
    cr_assert_not_null(text);
    cr_assert(strstr(text, "{\"name\":\"h0\",\"value\":null},{\"name\":\"h1\",\"value\":\"v\"}"),
              "%s", text);
    cr_assert(strstr(text, "{\"name\":\"h69\",\"value\":\"v\"}]}\n"), "%s", text);
    free(text);
    lk__sink_destroy(s);
    lk__store_close(st);
}

Test(sink_files, batch_delivered_before_the_upgrade_is_not_written_again) {
    /* a batch the previous version (names <app>-<batch>.<ext>) delivered but did not
     * acknowledge before the upgrade: delivered again now, it must not appear twice */
    lk__store_t *st = tu_open(ckpt, APP);
    char p[4096], legacy[4200];
    cr_assert_eq(mkdir(out, 0700), 0);
    cr_assert_eq(mkdir(tu_path(p, sizeof p, out, "0"), 0700), 0);
    snprintf(legacy, sizeof legacy, "%s/0/" APP "-00000000000000000001.jsonl", out);
    tu_write_file(legacy, MIXED_JSONL_P0, strlen(MIXED_JSONL_P0));
    commit_mixed(st, 1);
    lk__sink_t *s = sink_new(&lk__sink_files_ops, out, "jsonl");
    cr_assert_eq(drain(s, st, 10), 1);
    cr_assert_not(exists(fname(p, sizeof p, 0, 1, "jsonl")), "partition 0 not written twice");
    ASSERT_FILE(legacy, MIXED_JSONL_P0);
    ASSERT_FILE(fname(p, sizeof p, 3, 1, "jsonl"), MIXED_JSONL_P3); /* not delivered before */
    cr_assert_eq(count_tmp(out), 0);
    lk__sink_destroy(s);
    lk__store_close(st);
}
