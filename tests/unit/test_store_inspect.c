/*
 * test_store_inspect.c — `checkpoint inspect` on a checkpoint with known content: the
 * text output's key lines, the exact values of the JSON output, and the CLI binary
 * (LK_CLI, set by CTest) on the same checkpoint — also while its owner holds it open —
 * and on a directory that is not a checkpoint.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <criterion/criterion.h>
#include <ctype.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

TestSuite(store_inspect, .init = tu_scratch_init, .fini = tu_scratch_fini);


#define BATCH_TIME 1700000000000LL /* 2023-11-14T22:13:20.000Z */
#define COMMIT_WALL 1700000001234LL

/* Build the known checkpoint; returns it open. */
static lk__store_t *build(lk_conf_t **confp) {
    char err[512];
    lk_conf_t *conf = lk_conf_new();
    cr_assert_eq(lk_conf_set(conf, "app.id", "inspect-app", err, sizeof err), LK_CONF_OK);
    cr_assert_eq(lk_conf_set(conf, "checkpoint.dir", tu_dir, err, sizeof err), LK_CONF_OK);
    cr_assert_eq(lk_conf_set(conf, "kafka.bootstrap.servers", "b1:9092", err, sizeof err),
                 LK_CONF_OK);
    cr_assert_eq(lk_conf_set(conf, "kafka.sasl.password", "hunter2", err, sizeof err),
                 LK_CONF_OK, "%s", err);
    lk__store_opts_t o;
    lk__store_opts_from_conf(&o, conf);
    o.map_size = 1 << 20;
    lk__store_t *s;
    CHECK(lk__store_open(&s, &o, ES));
    *confp = conf;

    lk__state_db_t counts, empty;
    CHECK(lk__store_state_open(s, "word-counts", &counts, ES));
    CHECK(lk__store_state_open(s, "empty-op", &empty, ES));
    for (uint64_t id = 1; id <= 3; id++) {
        lk__store_txn_t *t = tu_begin(s, 1);
        if (id == 3) {
            CHECK(lk__store_offset_put(t, "orders", 0, 42, ES));
            CHECK(lk__store_offset_put(t, "orders", 1, 7, ES));
            CHECK(lk__store_offset_put(t, "payments", 2, 100, ES));
            CHECK(lk__store_state_put(t, counts, "fox", 3, "1", 1, 1, ES));
            CHECK(lk__store_state_put(t, counts, "dog", 3, "2", 1, 1, ES));
            CHECK(lk__store_state_put(t, counts, "the", 3, "3", 1, 1, ES));
            CHECK(lk__store_acc_add(t, "records", 123, ES));
            CHECK(lk__store_acc_add(t, "errors", -2, ES));
            CHECK(lk__store_fence_put(t, "out", 1, ES));
            CHECK(lk__store_fence_put(t, "files", 5, ES));
            lk__topo_op_t ops[2] = {{"lines", "kafka_stream", 0, "topic=orders"},
                                   {"word-counts", "update_state_by_key", 2, ""}};
            CHECK(lk__store_topology_put(t, ops, 2, ES));
        }
        if (id >= 2)
            for (int i = 0; i < (id == 2 ? 1 : 3); i++) {
                lk__out_record_t r = {.partition = i, .key = "k", .key_len = 1,
                                     .value = "value", .value_len = 5};
                CHECK(lk__store_outbox_append(t, "out", id, &r, ES));
            }
        lk__range_t ranges[2] = {{"orders", 0, 30, 42}, {"orders", 1, 5, 7}};
        lk__batch_rec_t b = {.id = id, .batch_time_ms = BATCH_TIME,
                            .commit_wall_ms = COMMIT_WALL, .records_in = 10,
                            .records_out = 4, .nranges = id == 3 ? 2 : 0, .ranges = ranges};
        CHECK(lk__store_batch_put(t, &b, ES));
        tu_commit(t);
    }
    return s;
}

static char *inspect(lk__store_t *s, int json) {
    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    cr_assert_not_null(fp);
    CHECK(lk__store_inspect(s, fp, json, ES));
    fclose(fp);
    cr_assert_gt(len, 0);
    return text;
}

/* Collapse runs of blanks into one space and trim, so alignment may change. */
static void squeeze(char *out, size_t size, const char *in, size_t n) {
    size_t o = 0;
    int space = 0;
    for (size_t i = 0; i < n && o + 1 < size; i++) {
        if (in[i] == ' ' || in[i] == '\t') {
            space = o > 0;
            continue;
        }
        if (space && o + 1 < size)
            out[o++] = ' ';
        space = 0;
        out[o++] = in[i];
    }
    out[o] = '\0';
}

/* The text has a line equal to fmt (blanks squeezed). */
static void has_line(const char *text, const char *fmt, ...) {
    char want[512], line[512], wsq[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(want, sizeof want, fmt, ap);
    va_end(ap);
    squeeze(wsq, sizeof wsq, want, strlen(want));
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        squeeze(line, sizeof line, p, n);
        if (!strcmp(line, wsq))
            return;
        p += n + (nl != NULL);
    }
    cr_assert_fail("inspect output lacks the line \"%s\":\n%s", wsq, text);
}

Test(store_inspect, text_output) {
    lk_conf_t *conf;
    lk__store_t *s = build(&conf);
    uint64_t obytes = lk__store_outbox_bytes(s);
    char *text = inspect(s, 0);
    has_line(text, "checkpoint %s", tu_dir);
    has_line(text, "app.id inspect-app");
    has_line(text, "format %d", LK_CHECKPOINT_FORMAT);
    has_line(text, "checkpoint id %s", lk__store_checkpoint_id(s));
    has_line(text, "last batch 3 (batch time 2023-11-14T22:13:20.000Z, committed "
                   "2023-11-14T22:13:21.234Z, 10 records in, 4 out)");
    has_line(text, "orders[0] [30, 42)");
    has_line(text, "orders[1] [5, 7)");
    has_line(text, "batches kept 3");
    has_line(text, "topology (2 operators)");
    has_line(text, "word-counts update_state_by_key schema v2");
    has_line(text, "lines kafka_stream schema v0 topic=orders");
    has_line(text, "offsets (3 partitions)");
    has_line(text, "orders[0] 42");
    has_line(text, "orders[1] 7");
    has_line(text, "payments[2] 100");
    has_line(text, "outbox (1 sinks with pending output)");
    has_line(text, "out 2 batches (2..3), 4 records, %llu bytes", (unsigned long long)obytes);
    has_line(text, "fences (2 sinks)");
    cr_assert(strstr(text, "  files") && strstr(text, "delivered through batch 5"),
              "fence of files:\n%s", text);
    cr_assert(strstr(text, "delivered through batch 1"), "fence of out:\n%s", text);
    has_line(text, "accumulators (2)");
    has_line(text, "records 123");
    has_line(text, "errors -2");
    has_line(text, "state (2 operators)");
    cr_assert(strstr(text, "word-counts") && strstr(text, "3 entries"), "%s", text);
    cr_assert(strstr(text, "0 entries"), "empty-op has 0 entries:\n%s", text);
    has_line(text, "kafka.sasl.password=[redacted]");
    has_line(text, "kafka.bootstrap.servers=b1:9092");
    has_line(text, "app.id=inspect-app");
    cr_assert_null(strstr(text, "hunter2"), "secret in the output:\n%s", text);
    free(text);
    lk__store_close(s);
    lk_conf_destroy(conf);
}

static json_t *parse(const char *text) {
    json_error_t je;
    json_t *doc = json_loads(text, 0, &je);
    cr_assert_not_null(doc, "not JSON (%s at line %d):\n%s", je.text, je.line, text);
    cr_assert(json_is_object(doc));
    return doc;
}

static json_t *get(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    cr_assert_not_null(v, "JSON lacks \"%s\"", key);
    return v;
}

static void expect_json(json_t *got, const char *want_text) {
    json_error_t je;
    json_t *want = json_loads(want_text, 0, &je);
    cr_assert_not_null(want, "bad expected JSON: %s", je.text);
    char *g = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS);
    cr_assert(json_equal(got, want), "got %s\nwant %s", g, want_text);
    free(g);
    json_decref(want);
}

/* Everything the checkpoint says, checked exactly (values that depend on the moment
 * of the run or on page accounting are checked for shape). */
static void check_doc(json_t *doc, uint64_t obytes) {
    cr_assert_str_eq(json_string_value(get(doc, "checkpoint")), tu_dir);
    cr_assert_str_eq(json_string_value(get(doc, "app_id")), "inspect-app");
    cr_assert_eq(json_integer_value(get(doc, "format")), LK_CHECKPOINT_FORMAT);
    const char *cid = json_string_value(get(doc, "checkpoint_id"));
    cr_assert(cid && strlen(cid) == LK_CHECKPOINT_ID_LEN &&
                  strspn(cid, "0123456789abcdef") == LK_CHECKPOINT_ID_LEN,
              "checkpoint_id: %s", cid ? cid : "(null)");
    const char *created = json_string_value(get(doc, "created"));
    cr_assert(created && strlen(created) == 24 && created[10] == 'T' && created[23] == 'Z',
              "created: %s", created ? created : "(null)");
    cr_assert_geq(json_integer_value(get(doc, "map_size")), 1 << 20);
    expect_json(get(doc, "last_batch"),
                "{\"id\": 3, \"batch_time\": \"2023-11-14T22:13:20.000Z\","
                " \"committed\": \"2023-11-14T22:13:21.234Z\", \"records_in\": 10,"
                " \"records_out\": 4, \"ranges\": ["
                "  {\"topic\": \"orders\", \"partition\": 0, \"from\": 30, \"until\": 42},"
                "  {\"topic\": \"orders\", \"partition\": 1, \"from\": 5, \"until\": 7}]}");
    cr_assert_eq(json_integer_value(get(doc, "batches_kept")), 3);
    expect_json(get(doc, "topology"),
                "[{\"uid\": \"lines\", \"kind\": \"kafka_stream\", \"schema_version\": 0,"
                "  \"params\": \"topic=orders\"},"
                " {\"uid\": \"word-counts\", \"kind\": \"update_state_by_key\","
                "  \"schema_version\": 2, \"params\": \"\"}]");
    expect_json(get(doc, "offsets"),
                "[{\"topic\": \"orders\", \"partition\": 0, \"offset\": 42},"
                " {\"topic\": \"orders\", \"partition\": 1, \"offset\": 7},"
                " {\"topic\": \"payments\", \"partition\": 2, \"offset\": 100}]");
    char want[512];
    snprintf(want, sizeof want,
             "[{\"sink\": \"out\", \"batches\": 2, \"records\": 4, \"bytes\": %llu,"
             "  \"first_batch\": 2, \"last_batch\": 3}]",
             (unsigned long long)obytes);
    expect_json(get(doc, "outbox"), want);
    json_t *fences = get(doc, "fences");
    cr_assert_eq(json_array_size(fences), 2);
    cr_assert_str_eq(json_string_value(get(json_array_get(fences, 0), "sink")), "files");
    cr_assert_eq(json_integer_value(get(json_array_get(fences, 0), "batch")), 5);
    cr_assert_str_eq(json_string_value(get(json_array_get(fences, 1), "sink")), "out");
    cr_assert_eq(json_integer_value(get(json_array_get(fences, 1), "batch")), 1);
    cr_assert(json_is_string(get(json_array_get(fences, 0), "recorded")));
    expect_json(get(doc, "accumulators"), "{\"errors\": -2, \"records\": 123}");
    json_t *state = get(doc, "state");
    cr_assert_eq(json_array_size(state), 2);
    cr_assert_str_eq(json_string_value(get(json_array_get(state, 0), "uid")), "empty-op");
    cr_assert_eq(json_integer_value(get(json_array_get(state, 0), "entries")), 0);
    cr_assert_str_eq(json_string_value(get(json_array_get(state, 1), "uid")), "word-counts");
    cr_assert_eq(json_integer_value(get(json_array_get(state, 1), "entries")), 3);
    cr_assert_gt(json_integer_value(get(json_array_get(state, 1), "bytes")), 0);
    json_t *config = get(doc, "config");
    cr_assert_str_eq(json_string_value(get(config, "app.id")), "inspect-app");
    cr_assert_str_eq(json_string_value(get(config, "checkpoint.dir")), tu_dir);
    cr_assert_str_eq(json_string_value(get(config, "kafka.bootstrap.servers")), "b1:9092");
    cr_assert_str_eq(json_string_value(get(config, "kafka.sasl.password")), "[redacted]");
}

Test(store_inspect, json_output) {
    lk_conf_t *conf;
    lk__store_t *s = build(&conf);
    uint64_t obytes = lk__store_outbox_bytes(s);
    cr_assert_gt(obytes, 0);
    char *text = inspect(s, 1);
    cr_assert_null(strstr(text, "hunter2"));
    json_t *doc = parse(text);
    check_doc(doc, obytes);
    json_decref(doc);
    free(text);
    lk__store_close(s);
    lk_conf_destroy(conf);
}

Test(store_inspect, empty_checkpoint) {
    lk__store_t *s = tu_open(tu_dir, "fresh");
    char *text = inspect(s, 0);
    has_line(text, "last batch none");
    has_line(text, "offsets (0 partitions)");
    has_line(text, "outbox (0 sinks with pending output)");
    free(text);
    text = inspect(s, 1);
    json_t *doc = parse(text);
    cr_assert(json_is_null(get(doc, "last_batch")));
    cr_assert_eq(json_integer_value(get(doc, "batches_kept")), 0);
    cr_assert_eq(json_array_size(get(doc, "offsets")), 0);
    cr_assert_eq(json_array_size(get(doc, "outbox")), 0);
    cr_assert_eq(json_array_size(get(doc, "fences")), 0);
    cr_assert_eq(json_object_size(get(doc, "accumulators")), 0);
    cr_assert_eq(json_array_size(get(doc, "state")), 0);
    json_decref(doc);
    free(text);
    lk__store_close(s);
}

static const char *cli(void) {
    const char *p = getenv("LK_CLI");
    cr_assert(p && *p,
              "LK_CLI is not set: it names the lockstep binary; run this test through "
              "ctest (which sets it), or set LK_CLI=build/lockstep");
    return p;
}

Test(store_inspect, cli_json_matches) {
    const char *bin = cli();
    lk_conf_t *conf;
    lk__store_t *s = build(&conf);
    uint64_t obytes = lk__store_outbox_bytes(s);
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "'%s' checkpoint inspect '%s' --json", bin, tu_dir);
    /* while the owner holds the checkpoint open: read-only inspect is allowed */
    char *out = NULL;
    int st = tu_run(cmd, &out);
    cr_assert_eq(st, 0, "%s exited %d:\n%s", cmd, st, out);
    json_t *doc = parse(out);
    check_doc(doc, obytes);
    json_decref(doc);
    free(out);
    lk__store_close(s);
    lk_conf_destroy(conf);
    /* and after it closed */
    st = tu_run(cmd, &out);
    cr_assert_eq(st, 0, "%s exited %d", cmd, st);
    doc = parse(out);
    check_doc(doc, obytes);
    json_decref(doc);
    free(out);
    /* the text form works too */
    snprintf(cmd, sizeof cmd, "'%s' checkpoint inspect '%s'", bin, tu_dir);
    st = tu_run(cmd, &out);
    cr_assert_eq(st, 0);
    has_line(out, "app.id inspect-app");
    has_line(out, "orders[0] 42");
    free(out);
}

Test(store_inspect, cli_refuses_a_non_checkpoint) {
    const char *bin = cli();
    char p[4200], cmd[9000];
    tu_write_file(tu_path(p, sizeof p, tu_dir, "notes.txt"), "x", 1);
    uint64_t before = tu_dir_digest(tu_dir);
    /* stderr only */
    snprintf(cmd, sizeof cmd, "'%s' checkpoint inspect '%s' --json 2>&1 >/dev/null", bin, tu_dir);
    char *err = NULL;
    int st = tu_run(cmd, &err);
    cr_assert_eq(st, 1, "exit status %d, stderr: %s", st, err);
    cr_assert(strstr(err, tu_dir), "stderr names the directory: %s", err);
    cr_assert(strstr(err, "not a lockstep checkpoint"), "stderr says why: %s", err);
    cr_assert(strstr(err, "LK_ERR_NOT_CHECKPOINT"), "stderr: %s", err);
    free(err);
    /* stdout only: nothing */
    snprintf(cmd, sizeof cmd, "'%s' checkpoint inspect '%s' --json 2>/dev/null", bin, tu_dir);
    char *out = NULL;
    st = tu_run(cmd, &out);
    cr_assert_eq(st, 1);
    cr_assert_str_empty(out, "stdout on error: %s", out);
    free(out);
    cr_assert_eq(tu_dir_digest(tu_dir), before);
    cr_assert_eq(tu_dir_entries(tu_dir), 1, "inspect created files");
    /* a missing directory is not created */
    tu_path(p, sizeof p, tu_dir, "missing");
    snprintf(cmd, sizeof cmd, "'%s' checkpoint inspect '%s' 2>&1 >/dev/null", bin, p);
    st = tu_run(cmd, &err);
    cr_assert_eq(st, 1, "exit status %d: %s", st, err);
    cr_assert(strstr(err, p), "stderr: %s", err);
    free(err);
    cr_assert_eq(tu_dir_entries(tu_dir), 1, "inspect created the missing directory");
}
