/*
 * test_cli_checkpoint.c — `lockstep checkpoint export` and `reset-offsets` through the
 * CLI binary (LK_CLI, set by CTest) on a checkpoint with known content: exact JSON
 * lines (text, binary and 8-byte values), the operator filter, --output, export of a
 * checkpoint its owner holds open; reset-offsets' dry run (nothing changes on disk),
 * exactly the named partitions changed with --yes (read back through the store API),
 * the pending plan dropped, refusal while the checkpoint is held, for an unknown
 * topic, partition or app.id, and usage errors (exit 2).
 */
#define _GNU_SOURCE
#include "testutil.h"
#include "core/util_int.h"

#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char ck[4200]; /* the checkpoint: tu_dir/ck */

static void setup(void) {
    tu_scratch_init();
    tu_path(ck, sizeof ck, tu_dir, "ck");
}

TestSuite(cli_checkpoint, .init = setup, .fini = tu_scratch_fini);


#define APP "cli-app"
#define T0 1700000000000LL /* 2023-11-14T22:13:20.000Z */

static const char *cli(void) {
    const char *p = getenv("LK_CLI");
    cr_assert(p && *p,
              "LK_CLI is not set: it names the lockstep binary; run this test through "
              "ctest (which sets it), or set LK_CLI=build/lockstep");
    return p;
}

static char *read_all(const char *path) {
    char *s = tu_slurp(path, NULL);
    cr_assert_not_null(s, "open %s", path);
    return s;
}

/* Run `lockstep ARGS` (ARGS printf-formatted, shell syntax); stdout and stderr into
 * malloc'ed strings (NULL: discarded). Returns the exit status. */
static int run(char **out, char **err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int run(char **out, char **err, const char *fmt, ...) {
    char args[8192], cmd[16384], errpath[4200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    tu_path(errpath, sizeof errpath, tu_dir, "stderr.txt");
    snprintf(cmd, sizeof cmd, "'%s' %s 2>'%s'", cli(), args, errpath);
    int st = tu_run(cmd, out);
    char *e = read_all(errpath);
    unlink(errpath);
    if (err)
        *err = e;
    else
        free(e);
    return st;
}

static const unsigned char I2[8] = {2, 0, 0, 0, 0, 0, 0, 0};
static const unsigned char I3[8] = {3, 0, 0, 0, 0, 0, 0, 0};
static const unsigned char D15[8] = {0, 0, 0, 0, 0, 0, 0xf8, 0x3f}; /* 1.5, little-endian */
static const unsigned char Z8[8] = {0};

/* The known checkpoint: four operators (one empty), offsets of two topics, a pending
 * plan. Returned closed unless keep_open. */
static lk__store_t *build(int keep_open) {
    lk__store_t *s = tu_open(ck, APP);
    lk__state_db_t counts, names, bin, empty;
    CHECK(lk__store_state_open(s, "counts", &counts, ES));
    CHECK(lk__store_state_open(s, "names", &names, ES));
    CHECK(lk__store_state_open(s, "bin-keys", &bin, ES));
    CHECK(lk__store_state_open(s, "empty-op", &empty, ES));
    lk__store_txn_t *t = tu_begin(s, 1);
    CHECK(lk__store_state_put(t, counts, "fox", 3, I3, 8, T0 + 123, ES));
    CHECK(lk__store_state_put(t, counts, "dog", 3, I2, 8, T0 + 123, ES));
    CHECK(lk__store_state_put(t, counts, "mean", 4, D15, 8, T0, ES));
    CHECK(lk__store_state_put(t, counts, "zero", 4, Z8, 8, T0, ES));
    CHECK(lk__store_state_put(t, names, "greeting", 8, "say \"hi\"\n\t\xc3\xbc", 12, T0, ES));
    CHECK(lk__store_state_put(t, names, "\xc3\xbc" "ber", 5, "ok", 2, T0 + 1000, ES));
    CHECK(lk__store_state_put(t, names, "del", 3, "x\x7f", 2, T0, ES));
    CHECK(lk__store_state_put(t, bin, "\xff\x00\x01", 3, "\xc3\x28", 2, T0, ES));
    CHECK(lk__store_state_put(t, bin, "a\0b", 3, "", 0, 0, ES));
    CHECK(lk__store_offset_put(t, "orders", 0, 42, ES));
    CHECK(lk__store_offset_put(t, "orders", 1, 7, ES));
    CHECK(lk__store_offset_put(t, "orders", 2, 100, ES));
    CHECK(lk__store_offset_put(t, "payments", 0, 5, ES));
    lk__range_t ranges[2] = {{"orders", 0, 30, 42}, {"orders", 1, 5, 7}};
    lk__batch_rec_t b = {.id = 3, .batch_time_ms = T0, .commit_wall_ms = T0,
                        .nranges = 2, .ranges = ranges};
    CHECK(lk__store_batch_put(t, &b, ES));
    tu_commit(t);
    lk__range_t next[2] = {{"orders", 0, 42, 50}, {"orders", 1, 7, 9}};
    lk__batch_rec_t plan = {.id = 4, .batch_time_ms = T0 + 1000, .nranges = 2,
                           .ranges = next};
    CHECK(lk__store_plan_put(s, &plan, ES));
    if (keep_open)
        return s;
    lk__store_close(s);
    return NULL;
}

#define L_BIN                                                                            \
    "{\"operator\":\"bin-keys\",\"key_base64\":\"YQBi\",\"value\":\"\","                 \
    "\"updated\":\"1970-01-01T00:00:00.000Z\"}\n"                                        \
    "{\"operator\":\"bin-keys\",\"key_base64\":\"/wAB\",\"value_base64\":\"wyg=\","      \
    "\"updated\":\"2023-11-14T22:13:20.000Z\"}\n"
#define L_COUNTS                                                                         \
    "{\"operator\":\"counts\",\"key\":\"dog\",\"value_base64\":\"AgAAAAAAAAA=\","        \
    "\"updated\":\"2023-11-14T22:13:20.123Z\"}\n"                                        \
    "{\"operator\":\"counts\",\"key\":\"fox\",\"value_base64\":\"AwAAAAAAAAA=\","        \
    "\"updated\":\"2023-11-14T22:13:20.123Z\"}\n"                                        \
    "{\"operator\":\"counts\",\"key\":\"mean\",\"value_base64\":\"AAAAAAAA+D8=\","       \
    "\"updated\":\"2023-11-14T22:13:20.000Z\"}\n"                                        \
    "{\"operator\":\"counts\",\"key\":\"zero\",\"value_base64\":\"AAAAAAAAAAA=\","       \
    "\"updated\":\"2023-11-14T22:13:20.000Z\"}\n"
#define L_NAMES                                                                          \
    "{\"operator\":\"names\",\"key\":\"del\",\"value_base64\":\"eH8=\","                 \
    "\"updated\":\"2023-11-14T22:13:20.000Z\"}\n"                                        \
    "{\"operator\":\"names\",\"key\":\"greeting\",\"value\":\"say \\\"hi\\\"\\n\\t\xc3\xbc\"," \
    "\"updated\":\"2023-11-14T22:13:20.000Z\"}\n"                                        \
    "{\"operator\":\"names\",\"key\":\"\xc3\xbc" "ber\",\"value\":\"ok\","               \
    "\"updated\":\"2023-11-14T22:13:21.000Z\"}\n"
#define L_ALL L_BIN L_COUNTS L_NAMES

/* ---- export ---- */

Test(cli_checkpoint, export_all_exact) {
    build(0);
    uint64_t before = tu_dir_digest(ck);
    char *out, *err;
    int st = run(&out, &err, "checkpoint export '%s'", ck);
    cr_assert_eq(st, 0, "exit %d: %s", st, err);
    cr_assert_str_eq(out, L_ALL);
    cr_assert_str_empty(err);
    cr_assert_eq(tu_dir_digest(ck), before, "export modified the checkpoint");
    free(out);
    free(err);
}

Test(cli_checkpoint, export_one_operator) {
    build(0);
    char *out;
    cr_assert_eq(run(&out, NULL, "checkpoint export '%s' --operator counts", ck), 0);
    cr_assert_str_eq(out, L_COUNTS);
    free(out);
    cr_assert_eq(run(&out, NULL, "checkpoint export --operator=names '%s'", ck), 0);
    cr_assert_str_eq(out, L_NAMES);
    free(out);
    /* an operator without entries: no lines, no error */
    cr_assert_eq(run(&out, NULL, "checkpoint export '%s' --operator empty-op", ck), 0);
    cr_assert_str_empty(out);
    free(out);
}

Test(cli_checkpoint, export_unknown_operator) {
    build(0);
    char *out, *err;
    int st = run(&out, &err, "checkpoint export '%s' --operator word-counts", ck);
    cr_assert_eq(st, 1, "exit %d", st);
    cr_assert_str_empty(out);
    cr_assert(strstr(err, "lockstep: "), "%s", err);
    cr_assert(strstr(err, "no state for operator 'word-counts'"), "%s", err);
    cr_assert(strstr(err, "operators with state: bin-keys, counts, empty-op, names"), "%s",
              err);
    cr_assert(strstr(err, "(LK_ERR_NOT_FOUND)"), "%s", err);
    free(out);
    free(err);
}

Test(cli_checkpoint, export_while_owner_holds_it) {
    lk__store_t *s = build(1);
    char *out, *err;
    int st = run(&out, &err, "checkpoint export '%s'", ck);
    cr_assert_eq(st, 0, "exit %d: %s", st, err);
    cr_assert_str_eq(out, L_ALL);
    free(out);
    free(err);
    /* a commit of the owner shows in the next export */
    lk__state_db_t counts;
    CHECK(lk__store_state_open(s, "counts", &counts, ES));
    lk__store_txn_t *t = tu_begin(s, 1);
    CHECK(lk__store_state_del(t, counts, "zero", 4, ES));
    tu_commit(t);
    cr_assert_eq(run(&out, NULL, "checkpoint export '%s' --operator counts", ck), 0);
    cr_assert(!strstr(out, "zero") && strstr(out, "\"fox\""), "%s", out);
    free(out);
    lk__store_close(s);
}

Test(cli_checkpoint, export_output_file) {
    build(0);
    char file[4300], tmp[4400];
    tu_path(file, sizeof file, tu_dir, "state.jsonl");
    snprintf(tmp, sizeof tmp, "%s.tmp", file);
    tu_write_file(file, "old content\n", 12); /* replaced */
    char *out, *err;
    int st = run(&out, &err, "checkpoint export '%s' --output '%s'", ck, file);
    cr_assert_eq(st, 0, "exit %d: %s", st, err);
    char *got = read_all(file);
    cr_assert_str_eq(got, L_ALL);
    free(got);
    cr_assert_neq(access(tmp, F_OK), 0, "the temporary file is left behind");
    cr_assert(strstr(out, "exported 9 entries of 4 operators to"), "stdout: %s", out);
    free(out);
    free(err);
    /* an error leaves the old file alone and no temporary file */
    st = run(NULL, &err, "checkpoint export '%s' --operator nope --output '%s'", ck, file);
    cr_assert_eq(st, 1);
    free(err);
    got = read_all(file);
    cr_assert_str_eq(got, L_ALL);
    free(got);
    cr_assert_neq(access(tmp, F_OK), 0);
    /* an unwritable destination */
    tu_path(file, sizeof file, tu_dir, "missing/state.jsonl");
    st = run(NULL, &err, "checkpoint export '%s' --output '%s'", ck, file);
    cr_assert_eq(st, 1);
    cr_assert(strstr(err, "cannot create") && strstr(err, "(LK_ERR_IO)"), "%s", err);
    free(err);
}

/* --output into a checkpoint directory is refused before anything is written: with
 * DIR/data.mdb the export replaced the checkpoint's data by its own text. */
Test(cli_checkpoint, export_into_a_checkpoint_directory_is_refused) {
    build(0);
    uint64_t before = tu_dir_digest(ck);
    char file[4600], alias[4300], other[4300];
    const char *targets[] = {"%s/data.mdb", "%s/state.jsonl", "%s/../ck/lock.mdb"};
    for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++) {
        snprintf(file, sizeof file, targets[i], ck);
        char *err;
        int st = run(NULL, &err, "checkpoint export '%s' --output '%s'", ck, file);
        cr_assert_eq(st, 1, "%s: exit %d", file, st);
        cr_assert(strstr(err, "is inside the checkpoint directory") &&
                      strstr(err, "(LK_ERR_INVALID_ARG)"),
                  "%s: %s", file, err);
        free(err);
        cr_assert_eq(tu_dir_digest(ck), before, "%s: the checkpoint was modified", file);
    }
    /* through a symlink to the checkpoint directory */
    tu_path(alias, sizeof alias, tu_dir, "alias");
    cr_assert_eq(symlink(ck, alias), 0);
    snprintf(file, sizeof file, "%s/data.mdb", alias);
    char *err;
    cr_assert_eq(run(NULL, &err, "checkpoint export '%s' --output '%s'", ck, file), 1);
    cr_assert(strstr(err, "is inside the checkpoint directory"), "%s", err);
    free(err);
    /* into another checkpoint's directory */
    tu_path(other, sizeof other, tu_dir, "other");
    lk__store_close(tu_open(other, "other-app"));
    uint64_t other_before = tu_dir_digest(other);
    snprintf(file, sizeof file, "%s/data.mdb", other);
    cr_assert_eq(run(NULL, &err, "checkpoint export '%s' --output '%s'", ck, file), 1);
    cr_assert(strstr(err, "which holds a checkpoint (data.mdb)"), "%s", err);
    free(err);
    cr_assert_eq(tu_dir_digest(other), other_before);
    cr_assert_eq(tu_dir_digest(ck), before);
}

Test(cli_checkpoint, export_usage_errors) {
    build(0);
    char *out, *err;
    cr_assert_eq(run(&out, NULL, "checkpoint export --help"), 0);
    cr_assert(strstr(out, "Usage: lockstep checkpoint export DIR") &&
                  strstr(out, "value_base64") && strstr(out, "consistent"),
              "%s", out);
    free(out);
    static const char *const bad[] = {
        "checkpoint export",                     /* no DIR */
        "checkpoint export '%s' --bogus",        /* unknown option */
        "checkpoint export '%s' --operator",     /* missing value */
        "checkpoint export '%s' --output",       /* missing value */
        "checkpoint export '%s' --operator=",    /* empty value */
        "checkpoint export '%s' '%s'",           /* two DIRs */
        "checkpoint export '%s' --operator a --operator b",
    };
    for (size_t i = 0; i < LK_ARRAY_SIZE(bad); i++) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
        int st = run(&out, &err, bad[i], ck, ck);
#pragma GCC diagnostic pop
        cr_assert_eq(st, 2, "%s: exit %d", bad[i], st);
        cr_assert_str_empty(out, "%s", bad[i]);
        cr_assert(strstr(err, "Usage: lockstep checkpoint export"), "%s: %s", bad[i], err);
        free(out);
        free(err);
    }
    /* not a checkpoint: exit 1, nothing created */
    char p[4300];
    tu_path(p, sizeof p, tu_dir, "nothing");
    cr_assert_eq(run(NULL, &err, "checkpoint export '%s'", p), 1);
    cr_assert(strstr(err, "(LK_ERR_NOT_CHECKPOINT)"), "%s", err);
    free(err);
    cr_assert_neq(access(p, F_OK), 0);
}

/* ---- reset-offsets ---- */

typedef struct {
    int64_t o0, o1, o2, p0; /* orders[0..2], payments[0]; -1: no offset */
    int plan;               /* a pending plan exists */
} offs_t;

static offs_t read_back(void) {
    lk__store_t *s = tu_open(ck, APP);
    lk__store_txn_t *t = tu_begin(s, 0);
    offs_t r;
    int64_t *dst[4] = {&r.o0, &r.o1, &r.o2, &r.p0};
    const char *topic[4] = {"orders", "orders", "orders", "payments"};
    int32_t part[4] = {0, 1, 2, 0};
    for (int i = 0; i < 4; i++) {
        lk_err_t e = lk__store_offset_get(t, topic[i], part[i], dst[i]);
        cr_assert(e == LK_OK || e == LK_ERR_NOT_FOUND, "%s", lk_err_name(e));
        if (e)
            *dst[i] = -1;
    }
    lk__batch_rec_t plan;
    r.plan = lk__store_plan_get(t, &plan) == LK_OK;
    lk__store_txn_abort(t);
    lk__store_close(s);
    return r;
}

static void expect_offs(int64_t o0, int64_t o1, int64_t o2, int64_t p0, int plan) {
    offs_t r = read_back();
    cr_assert(r.o0 == o0 && r.o1 == o1 && r.o2 == o2 && r.p0 == p0 && r.plan == plan,
              "offsets orders[0..2]=%lld,%lld,%lld payments[0]=%lld plan=%d; want "
              "%lld,%lld,%lld %lld plan=%d",
              (long long)r.o0, (long long)r.o1, (long long)r.o2, (long long)r.p0, r.plan,
              (long long)o0, (long long)o1, (long long)o2, (long long)p0, plan);
}

Test(cli_checkpoint, reset_dry_run_writes_nothing) {
    build(0);
    uint64_t before = tu_dir_digest(ck);
    char *out, *err;
    int st = run(&out, &err,
                 "checkpoint reset-offsets '%s' --app-id " APP " --topic orders --to 10", ck);
    cr_assert_eq(st, 0, "exit %d: %s", st, err);
    cr_assert(strstr(out, "orders[0]: 42 -> 10\n"), "%s", out);
    cr_assert(strstr(out, "orders[1]: 7 -> 10\n"), "%s", out);
    cr_assert(strstr(out, "orders[2]: 100 -> 10\n"), "%s", out);
    cr_assert(!strstr(out, "payments"), "%s", out);
    cr_assert(strstr(out, "pending plan of batch 4: dropped"), "%s", out);
    cr_assert(strstr(out, "dry run, nothing written"), "%s", out);
    free(out);
    free(err);
    cr_assert_eq(tu_dir_digest(ck), before, "the dry run modified the checkpoint");
    expect_offs(42, 7, 100, 5, 1);
}

Test(cli_checkpoint, reset_named_partitions) {
    build(0);
    char *out, *err, want[8192];
    int st = run(&out, &err,
                 "checkpoint reset-offsets '%s' --app-id=" APP
                 " --topic orders --partition 2 --partition 0 --to 10 --yes",
                 ck);
    cr_assert_eq(st, 0, "exit %d: %s", st, err);
    snprintf(want, sizeof want,
             "checkpoint %s (app.id " APP ")\n"
             "  orders[0]: 42 -> 10\n"
             "  orders[2]: 100 -> 10\n"
             "  pending plan of batch 4: dropped (it holds the old offsets)\n"
             "written: 2 offsets changed\n",
             ck);
    cr_assert_str_eq(out, want);
    cr_assert_str_empty(err);
    free(out);
    free(err);
    expect_offs(10, 7, 10, 5, 0);
    /* the other records are untouched */
    lk__store_t *s = tu_open(ck, APP);
    lk__state_db_t counts;
    CHECK(lk__store_state_open(s, "counts", &counts, ES));
    lk__store_txn_t *t = tu_begin(s, 0);
    const void *v;
    size_t vlen;
    cr_assert_eq(lk__store_state_get(t, counts, "fox", 3, &v, &vlen, NULL), LK_OK);
    cr_assert(vlen == 8 && !memcmp(v, I3, 8));
    lk__batch_rec_t last;
    cr_assert_eq(lk__store_batch_last(t, &last), LK_OK);
    cr_assert_eq(last.id, 3);
    lk__store_txn_abort(t);
    lk__store_close(s);
}

Test(cli_checkpoint, reset_delete_and_every_partition) {
    build(0);
    char *out, *err;
    int st = run(&out, &err,
                 "checkpoint reset-offsets '%s' --app-id " APP
                 " --topic orders --partition 1 --delete --yes",
                 ck);
    cr_assert_eq(st, 0, "exit %d: %s", st, err);
    cr_assert(strstr(out, "  orders[1]: 7 -> deleted"), "%s", out);
    cr_assert(strstr(out, "written: 1 offset changed"), "%s", out);
    free(out);
    free(err);
    expect_offs(42, -1, 100, 5, 0);
    /* without --partition: every partition of the topic in the checkpoint */
    st = run(&out, &err,
             "checkpoint reset-offsets '%s' --app-id " APP " --topic orders --to 0 --yes", ck);
    cr_assert_eq(st, 0, "exit %d: %s", st, err);
    cr_assert(strstr(out, "orders[0]: 42 -> 0\n") && strstr(out, "orders[2]: 100 -> 0\n"),
              "%s", out);
    cr_assert(!strstr(out, "pending plan"), "no plan is left to drop: %s", out);
    free(out);
    free(err);
    expect_offs(0, -1, 0, 5, 0);
    /* the same offset again: reported as unchanged */
    st = run(&out, NULL,
             "checkpoint reset-offsets '%s' --app-id " APP " --topic payments --to 5 --yes",
             ck);
    cr_assert_eq(st, 0);
    cr_assert(strstr(out, "payments[0]: 5 -> 5 (unchanged)"), "%s", out);
    free(out);
    expect_offs(0, -1, 0, 5, 0);
}

/* Refused while this process holds the checkpoint (flock is per open file
 * description, so the CLI conflicts with an open in the test process). */
Test(cli_checkpoint, reset_refused_while_held) {
    lk__store_t *s = build(1);
    uint64_t before = tu_dir_digest(ck);
    char *out, *err, pid[64];
    snprintf(pid, sizeof pid, "held by pid %ld", (long)getpid());
    for (int yes = 0; yes < 2; yes++) {
        int st = run(&out, &err,
                     "checkpoint reset-offsets '%s' --app-id " APP " --topic orders "
                     "--partition 0 --to 1%s",
                     ck, yes ? " --yes" : "");
        cr_assert_eq(st, 1, "exit %d: %s", st, out);
        cr_assert_str_empty(out);
        cr_assert(strstr(err, "lockstep: checkpoint ") && strstr(err, "is in use"), "%s",
                  err);
        cr_assert(strstr(err, pid), "names the holder (%s): %s", pid, err);
        cr_assert(strstr(err, "(LK_ERR_LOCKED)"), "%s", err);
        free(out);
        free(err);
    }
    cr_assert_eq(tu_dir_digest(ck), before);
    lk__store_close(s);
    expect_offs(42, 7, 100, 5, 1);
}

Test(cli_checkpoint, reset_refuses_unknown_targets) {
    build(0);
    uint64_t before = tu_dir_digest(ck);
    char *out, *err;
    int st = run(&out, &err,
                 "checkpoint reset-offsets '%s' --app-id " APP " --topic order --to 1 --yes",
                 ck);
    cr_assert_eq(st, 1);
    cr_assert_str_empty(out);
    cr_assert(strstr(err, "has no offsets for topic 'order'; topics with offsets: orders, "
                          "payments (LK_ERR_NOT_FOUND)"),
              "%s", err);
    free(out);
    free(err);
    st = run(&out, &err,
             "checkpoint reset-offsets '%s' --app-id " APP
             " --topic orders --partition 0 --partition 3 --to 1 --yes",
             ck);
    cr_assert_eq(st, 1);
    cr_assert_str_empty(out);
    cr_assert(strstr(err, "has no offset for orders[3]; partitions of orders with offsets: "
                          "0, 1, 2 (LK_ERR_NOT_FOUND)"),
              "%s", err);
    free(out);
    free(err);
    st = run(&out, &err,
             "checkpoint reset-offsets '%s' --app-id other --topic orders --to 1 --yes", ck);
    cr_assert_eq(st, 1);
    cr_assert(strstr(err, "(LK_ERR_APP_MISMATCH)"), "%s", err);
    free(out);
    free(err);
    cr_assert_eq(tu_dir_digest(ck), before);
    expect_offs(42, 7, 100, 5, 1);
    /* a missing directory is not created as a new checkpoint */
    char p[4300];
    tu_path(p, sizeof p, tu_dir, "nothing");
    st = run(NULL, &err, "checkpoint reset-offsets '%s' --app-id " APP
                         " --topic orders --to 1 --yes", p);
    cr_assert_eq(st, 1);
    cr_assert(strstr(err, "(LK_ERR_NOT_CHECKPOINT)"), "%s", err);
    free(err);
    cr_assert_neq(access(p, F_OK), 0, "a checkpoint was created");
}

Test(cli_checkpoint, reset_usage_errors) {
    build(0);
    uint64_t before = tu_dir_digest(ck);
    char *out, *err;
    cr_assert_eq(run(&out, NULL, "checkpoint reset-offsets --help"), 0);
    cr_assert(strstr(out, "Usage: lockstep checkpoint reset-offsets DIR") &&
                  strstr(out, "--yes") && strstr(out, "dry run") && strstr(out, "--delete"),
              "%s", out);
    free(out);
    static const char *const bad[] = {
        "--app-id " APP " --topic orders --to 1",                      /* no DIR */
        "'%s' --topic orders --to 1 --yes",                            /* no --app-id */
        "'%s' --app-id " APP " --to 1 --yes",                          /* no --topic */
        "'%s' --app-id " APP " --topic orders --yes",                  /* no target */
        "'%s' --app-id " APP " --topic orders --to 1 --delete --yes",  /* both */
        "'%s' --app-id " APP " --topic orders --to -1 --yes",          /* negative */
        "'%s' --app-id " APP " --topic orders --to 12x --yes",         /* not a number */
        "'%s' --app-id " APP " --topic orders --to --yes",             /* missing value */
        "'%s' --app-id " APP " --topic orders --partition x --to 1",   /* bad partition */
        "'%s' --app-id " APP " --topic orders --partition -1 --to 1",
        "'%s' --app-id " APP " --topic orders --to 1 --force",         /* unknown option */
        "'%s' --app-id " APP " --topic orders --topic x --to 1",       /* two topics */
        "'%s' '%s' --app-id " APP " --topic orders --to 1",            /* two DIRs */
    };
    for (size_t i = 0; i < LK_ARRAY_SIZE(bad); i++) {
        char args[1024];
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
        snprintf(args, sizeof args, bad[i], ck, ck);
#pragma GCC diagnostic pop
        int st = run(&out, &err, "checkpoint reset-offsets %s", args);
        cr_assert_eq(st, 2, "%s: exit %d", bad[i], st);
        cr_assert_str_empty(out, "%s", bad[i]);
        cr_assert(strstr(err, "Usage: lockstep checkpoint reset-offsets"), "%s: %s", bad[i],
                  err);
        free(out);
        free(err);
    }
    cr_assert_eq(tu_dir_digest(ck), before);
    expect_offs(42, 7, 100, 5, 1);
    /* the family's help lists the subcommands */
    cr_assert_eq(run(&out, NULL, "checkpoint --help"), 0);
    cr_assert(strstr(out, "export DIR") && strstr(out, "reset-offsets DIR"), "%s", out);
    free(out);
}
