/*
 * test_conf.c — configuration: defaults, validation of every property type with the
 * reasons users see, unknown keys with suggestions, kafka.* pass-through validated by
 * librdkafka, secrets redacted, .properties files, and the generated reference.
 */
#define _GNU_SOURCE
#include "lockstep.h"
#include "core/conf_int.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static lk_conf_t *conf;
static char err[1024];

static void setup(void) {
    conf = lk_conf_new();
    cr_assert_not_null(conf);
    err[0] = 0;
}
static void teardown(void) {
    lk_conf_destroy(conf);
}

TestSuite(conf, .init = setup, .fini = teardown);

Test(conf, defaults) {
    cr_assert_str_eq(lk_conf_get(conf, "checkpoint.sync"), "batch");
    cr_assert_eq(lk__conf_int(conf, LK__P_CHECKPOINT_SYNC), 0);
    cr_assert_eq(lk__conf_int(conf, LK__P_CHECKPOINT_MAP_SIZE), 256 << 20);
    cr_assert_eq(lk__conf_int(conf, LK__P_CHECKPOINT_SYNC_INTERVAL_MS), 1000);
    cr_assert_str_eq(lk_conf_get(conf, "app.id"), "");
    cr_assert_null(lk_conf_get(conf, "no.such.key"));
    cr_assert_null(lk_conf_get(conf, "kafka.bootstrap.servers"));
}

Test(conf, destroy_null_is_noop) {
    lk_conf_destroy(NULL);
}

Test(conf, set_and_get) {
    cr_assert_eq(lk_conf_set(conf, "app.id", "word-count_1.v2", err, sizeof err), LK_CONF_OK);
    cr_assert_str_eq(lk_conf_get(conf, "app.id"), "word-count_1.v2");
    cr_assert_eq(lk_conf_set(conf, "checkpoint.sync", "interval", err, sizeof err), LK_CONF_OK);
    cr_assert_eq(lk__conf_int(conf, LK__P_CHECKPOINT_SYNC), 1);
    cr_assert_eq(lk_conf_set(conf, "checkpoint.map.size", "64KiB", err, sizeof err), LK_CONF_OK);
    cr_assert_eq(lk__conf_int(conf, LK__P_CHECKPOINT_MAP_SIZE), 65536);
    cr_assert_eq(lk_conf_set(conf, "checkpoint.map.size", "2G", err, sizeof err), LK_CONF_OK);
    cr_assert_eq(lk__conf_int(conf, LK__P_CHECKPOINT_MAP_SIZE), (int64_t)2 << 30);
}

Test(conf, invalid_values_name_key_and_range) {
    cr_assert_eq(lk_conf_set(conf, "checkpoint.sync.interval.ms", "0", err, sizeof err),
                 LK_CONF_INVALID);
    cr_assert(strstr(err, "checkpoint.sync.interval.ms") && strstr(err, "1..3600000"), "%s", err);
    cr_assert_eq(lk_conf_set(conf, "checkpoint.sync.interval.ms", "12abc", err, sizeof err),
                 LK_CONF_INVALID);
    cr_assert(strstr(err, "not an integer"), "%s", err);
    cr_assert_eq(lk_conf_set(conf, "checkpoint.sync", "sometimes", err, sizeof err),
                 LK_CONF_INVALID);
    cr_assert(strstr(err, "batch|interval"), "%s", err);
    cr_assert_eq(lk_conf_set(conf, "checkpoint.map.size", "12Q", err, sizeof err),
                 LK_CONF_INVALID);
    cr_assert_eq(lk_conf_set(conf, "checkpoint.map.size", "1K", err, sizeof err),
                 LK_CONF_INVALID);
    cr_assert(strstr(err, "out of range"), "%s", err);
    cr_assert_eq(lk_conf_set(conf, "app.id", "has space", err, sizeof err), LK_CONF_INVALID);
    cr_assert(strstr(err, "invalid character ' '"), "%s", err);
    cr_assert_eq(lk_conf_set(conf, "app.id", "", err, sizeof err), LK_CONF_INVALID);
    /* a rejected value leaves the old one */
    cr_assert_str_eq(lk_conf_get(conf, "checkpoint.sync"), "batch");
}

Test(conf, unknown_key_suggests) {
    cr_assert_eq(lk_conf_set(conf, "checkpoint.dri", "/x", err, sizeof err), LK_CONF_UNKNOWN);
    cr_assert(strstr(err, "did you mean \"checkpoint.dir\""), "%s", err);
    cr_assert_eq(lk_conf_set(conf, "bootstrap.servers", "x:1", err, sizeof err),
                 LK_CONF_UNKNOWN);
    cr_assert(strstr(err, "kafka."), "%s", err);
}

Test(conf, kafka_passthrough_validated_by_librdkafka) {
    cr_assert_eq(lk_conf_set(conf, "kafka.bootstrap.servers", "b1:9092,b2:9092", err, sizeof err),
                 LK_CONF_OK);
    cr_assert_str_eq(lk_conf_get(conf, "kafka.bootstrap.servers"), "b1:9092,b2:9092");
    cr_assert_eq(lk_conf_set(conf, "kafka.no.such.thing", "1", err, sizeof err), LK_CONF_UNKNOWN);
    cr_assert(strstr(err, "no.such.thing"), "%s", err);
    cr_assert_eq(lk_conf_set(conf, "kafka.message.max.bytes", "-5", err, sizeof err),
                 LK_CONF_INVALID);
    cr_assert(strstr(err, "kafka.message.max.bytes"), "%s", err);
    cr_assert_eq(lk__conf_kafka_count(conf), 1);
    const char *k, *v;
    lk__conf_kafka_get(conf, 0, &k, &v);
    cr_assert_str_eq(k, "bootstrap.servers");
    /* setting again replaces */
    cr_assert_eq(lk_conf_set(conf, "kafka.bootstrap.servers", "b3:9092", err, sizeof err), LK_CONF_OK);
    cr_assert_eq(lk__conf_kafka_count(conf), 1);
    cr_assert_str_eq(lk_conf_get(conf, "kafka.bootstrap.servers"), "b3:9092");
}

static void collect(const char *k, const char *v, void *o) {
    char *buf = o;
    strcat(buf, k);
    strcat(buf, "=");
    strcat(buf, v);
    strcat(buf, "\n");
}

Test(conf, secrets_redacted) {
    cr_assert_eq(lk_conf_set(conf, "kafka.sasl.password", "hunter2", err, sizeof err), LK_CONF_OK);
    cr_assert_eq(lk_conf_set(conf, "kafka.ssl.key.password", "k3y", err, sizeof err), LK_CONF_OK);
    cr_assert_eq(lk_conf_set(conf, "kafka.sasl.username", "alice", err, sizeof err), LK_CONF_OK);
    char buf[8192] = "";
    lk_conf_foreach(conf, 1, collect, buf);
    cr_assert_null(strstr(buf, "hunter2"), "%s", buf);
    cr_assert_null(strstr(buf, "k3y"), "%s", buf);
    cr_assert(strstr(buf, "kafka.sasl.password=[redacted]"), "%s", buf);
    cr_assert(strstr(buf, "kafka.sasl.username=alice"), "%s", buf);
    buf[0] = 0;
    lk_conf_foreach(conf, 0, collect, buf);
    cr_assert(strstr(buf, "kafka.sasl.password=hunter2"), "%s", buf);
}

Test(conf, dup_is_deep) {
    lk_conf_set(conf, "app.id", "a", err, sizeof err);
    lk_conf_set(conf, "kafka.client.id", "c", err, sizeof err);
    lk_conf_t *d = lk_conf_dup(conf);
    lk_conf_set(conf, "app.id", "b", err, sizeof err);
    cr_assert_str_eq(lk_conf_get(d, "app.id"), "a");
    cr_assert_str_eq(lk_conf_get(d, "kafka.client.id"), "c");
    lk_conf_destroy(d);
}

Test(conf, validate_requires_keys) {
    cr_assert_eq(lk_conf_validate(conf, err, sizeof err), LK_ERR_CONF_INVALID);
    cr_assert(strstr(err, "app.id is required"), "%s", err);
    lk_conf_set(conf, "app.id", "a", err, sizeof err);
    cr_assert_eq(lk_conf_validate(conf, err, sizeof err), LK_ERR_CONF_INVALID);
    cr_assert(strstr(err, "checkpoint.dir is required"), "%s", err);
    lk_conf_set(conf, "checkpoint.dir", "/tmp/x", err, sizeof err);
    cr_assert_eq(lk_conf_validate(conf, err, sizeof err), LK_OK);
}

static const char *write_file(char *dir, const char *text) {
    static char path[4200];
    snprintf(path, sizeof path, "%s/app.properties", dir);
    FILE *fp = fopen(path, "w");
    cr_assert_not_null(fp);
    fputs(text, fp);
    fclose(fp);
    return path;
}

Test(conf, properties_file) {
    char dir[256];
    tu_tmpdir(dir, sizeof dir);
    const char *path = write_file(dir,
                                  "# a comment\n"
                                  "! another comment\n"
                                  "   \n"
                                  "app.id = wordcount\n"
                                  "checkpoint.dir:/var/lib/wc\n"
                                  "checkpoint.sync interval\n"
                                  "kafka.bootstrap.servers = host1:9092,\\\n"
                                  "    host2:9092\n"
                                  "kafka.client.id = caf\\u00e9\\tx\n");
    cr_assert_eq(lk_conf_load_file(conf, path, err, sizeof err), LK_CONF_OK, "%s", err);
    cr_assert_str_eq(lk_conf_get(conf, "app.id"), "wordcount");
    cr_assert_str_eq(lk_conf_get(conf, "checkpoint.dir"), "/var/lib/wc");
    cr_assert_str_eq(lk_conf_get(conf, "checkpoint.sync"), "interval");
    cr_assert_str_eq(lk_conf_get(conf, "kafka.bootstrap.servers"), "host1:9092,host2:9092");
    cr_assert_str_eq(lk_conf_get(conf, "kafka.client.id"), "caf\xc3\xa9\tx");
    tu_rmrf(dir);
}

Test(conf, properties_file_errors_name_line) {
    char dir[256];
    tu_tmpdir(dir, sizeof dir);
    const char *path = write_file(dir, "app.id=ok\n\ncheckpoint.sync=never\n");
    cr_assert_eq(lk_conf_load_file(conf, path, err, sizeof err), LK_CONF_INVALID);
    cr_assert(strstr(err, "app.properties:3:") && strstr(err, "checkpoint.sync"), "%s", err);
    path = write_file(dir, "app.id=ok\ncheckpont.dir=/x\n");
    cr_assert_eq(lk_conf_load_file(conf, path, err, sizeof err), LK_CONF_UNKNOWN);
    cr_assert(strstr(err, ":2:") && strstr(err, "did you mean"), "%s", err);
    cr_assert_eq(lk_conf_load_file(conf, "/nonexistent/x.properties", err, sizeof err),
                 LK_CONF_INVALID);
    cr_assert(strstr(err, "cannot open"), "%s", err);
    tu_rmrf(dir);
}

/* The reference as lk_conf_print_reference() writes it (malloc'ed); both forms when
 * markdown is -1. */
static char *reference(int markdown) {
    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    if (markdown != 0)
        lk_conf_print_reference(fp, 1);
    if (markdown != 1)
        lk_conf_print_reference(fp, 0);
    fclose(fp);
    return text;
}

Test(conf, reference_lists_every_property) {
    char *text = reference(1);
    const char *keys[] = {"`app.id`", "`checkpoint.dir`", "`checkpoint.sync`",
                          "`checkpoint.sync.interval.ms`", "`checkpoint.map.size`",
                          "`checkpoint.batch.history`", "`log.level`", "`kafka.*`"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++)
        cr_assert(strstr(text, keys[i]), "missing %s", keys[i]);
    free(text);
}

Test(conf, parse_bytes) {
    int64_t v;
    cr_assert_eq(lk__parse_bytes("4096", &v), 0);
    cr_assert_eq(v, 4096);
    cr_assert_eq(lk__parse_bytes("1m", &v), 0);
    cr_assert_eq(v, 1 << 20);
    cr_assert_eq(lk__parse_bytes("3GB", &v), 0);
    cr_assert_eq(v, (int64_t)3 << 30);
    cr_assert_eq(lk__parse_bytes("-1", &v), -1);
    cr_assert_eq(lk__parse_bytes("", &v), -1);
    cr_assert_eq(lk__parse_bytes("99999999999T", &v), -1);
}

/* ---- hostile configuration (issue 15, items 12 and 13) ---- */

static const char *write_bytes(char *dir, const void *data, size_t len) {
    static char path[4200];
    snprintf(path, sizeof path, "%s/app.properties", dir);
    tu_write_file(path, data, len);
    return path;
}

Test(conf, properties_trailing_backslash_at_eof_is_refused) {
    char dir[256];
    tu_tmpdir(dir, sizeof dir);
    /* the old loader dropped the line: "app.id is required" later, for a key that was set */
    const char *path = write_file(dir, "checkpoint.dir=/x\napp.id=abc\\");
    cr_assert_eq(lk_conf_load_file(conf, path, err, sizeof err), LK_CONF_INVALID);
    cr_assert(strstr(err, "app.properties:2: the last line ends with '\\'"), "%s", err);
    /* with its newline too */
    path = write_file(dir, "app.id=abc\\\n");
    cr_assert_eq(lk_conf_load_file(conf, path, err, sizeof err), LK_CONF_INVALID);
    cr_assert(strstr(err, "app.properties:1: the last line ends with '\\'"), "%s", err);
    /* a continuation into an empty line ends the value there (as Java's Properties) */
    path = write_file(dir, "app.id=abc\\\n\n");
    cr_assert_eq(lk_conf_load_file(conf, path, err, sizeof err), LK_CONF_OK, "%s", err);
    cr_assert_str_eq(lk_conf_get(conf, "app.id"), "abc");
    /* an even number of backslashes is an escaped backslash, not a continuation */
    path = write_file(dir, "plugin.x=a\\\\");
    cr_assert_eq(lk_conf_load_file(conf, path, err, sizeof err), LK_CONF_OK, "%s", err);
    cr_assert_str_eq(lk_conf_get(conf, "plugin.x"), "a\\");
    tu_rmrf(dir);
}

Test(conf, properties_nul_byte_is_refused) {
    char dir[256];
    tu_tmpdir(dir, sizeof dir);
    /* the old loader kept "ab": the rest of the value vanished silently */
    const char *path = write_bytes(dir, "app.id=x\nplugin.v=ab\0cd\n", 24);
    cr_assert_eq(lk_conf_load_file(conf, path, err, sizeof err), LK_CONF_INVALID);
    cr_assert(strstr(err, "app.properties:2: contains a NUL byte"), "%s", err);
    cr_assert_null(lk_conf_get(conf, "plugin.v"));
    tu_rmrf(dir);
}

Test(conf, properties_escaped_nul_is_refused) {
    char dir[256];
    tu_tmpdir(dir, sizeof dir);
    const char *path = write_file(dir, "plugin.v=ab\\u0000cd\n");
    cr_assert_eq(lk_conf_load_file(conf, path, err, sizeof err), LK_CONF_INVALID);
    cr_assert(strstr(err, "app.properties:1: \\u0000 (a NUL character) is not allowed"), "%s",
              err);
    cr_assert_null(lk_conf_get(conf, "plugin.v"));
    tu_rmrf(dir);
}

Test(conf, properties_surrogate_pairs_become_utf8) {
    char dir[256];
    tu_tmpdir(dir, sizeof dir);
    /* U+1F600 as Java writes it: a UTF-16 surrogate pair */
    const char *path = write_file(dir, "plugin.v=a\\uD83D\\uDE00b\n");
    cr_assert_eq(lk_conf_load_file(conf, path, err, sizeof err), LK_CONF_OK, "%s", err);
    cr_assert_str_eq(lk_conf_get(conf, "plugin.v"), "a\xf0\x9f\x98\x80" "b");
    path = write_file(dir, "plugin.v=\\uD83Dx\n");
    cr_assert_eq(lk_conf_load_file(conf, path, err, sizeof err), LK_CONF_INVALID);
    cr_assert(strstr(err, "high surrogate without its low half"), "%s", err);
    tu_rmrf(dir);
}

Test(conf, properties_dev_zero_fails_fast, .timeout = 10) {
    /* the old loader grew one line without bound (12 GB in 20 s) */
    cr_assert_eq(lk_conf_load_file(conf, "/dev/zero", err, sizeof err), LK_CONF_INVALID);
    cr_assert_str_eq(err, "/dev/zero:1: contains a NUL byte: not a text .properties file");
}

Test(conf, properties_line_and_file_caps) {
    char dir[256];
    tu_tmpdir(dir, sizeof dir);
    size_t n = (1 << 20) + 100;
    char *big = malloc(n + 32);
    cr_assert_not_null(big);
    strcpy(big, "app.id=x\nplugin.v=");
    memset(big + strlen(big), 'a', n);
    big[n] = '\n';
    const char *path = write_bytes(dir, big, n + 1);
    cr_assert_eq(lk_conf_load_file(conf, path, err, sizeof err), LK_CONF_INVALID);
    cr_assert(strstr(err, "app.properties:2: line longer than the 1024 KiB"), "%s", err);
    free(big);
    /* a file larger than the cap is refused before it is read */
    char huge[4200];
    snprintf(huge, sizeof huge, "%s/huge.properties", dir);
    FILE *fp = fopen(huge, "w");
    cr_assert_not_null(fp);
    cr_assert_eq(ftruncate(fileno(fp), (off_t)9 << 20), 0);
    fclose(fp);
    cr_assert_eq(lk_conf_load_file(conf, huge, err, sizeof err), LK_CONF_INVALID);
    cr_assert(strstr(err, "9437184 bytes is larger than the 8 MiB"), "%s", err);
    /* a directory is named as such */
    cr_assert_eq(lk_conf_load_file(conf, dir, err, sizeof err), LK_CONF_INVALID);
    cr_assert(strstr(err, "is a directory"), "%s", err);
    tu_rmrf(dir);
}

Test(conf, secret_keys) {
    const char *secret[] = {"kafka.sasl.password", "kafka.ssl.key.password",
                            "kafka.ssl.key.pem", "kafka.ssl.keystore.password",
                            "kafka.sasl.oauthbearer.config",
                            "kafka.sasl.oauthbearer.client.secret", "kafka.ssl.key.location",
                            "plugin.api.token", "plugin.db.key", "plugin.apikey",
                            "plugin.s3.secret_access_key", "plugin.db.PASSWORD",
                            "plugin.gcp-credentials", "plugin.x.auth_token.file"};
    const char *open_[] = {"kafka.bootstrap.servers", "kafka.sasl.username",
                           "kafka.ssl.certificate.location", "kafka.client.id", "app.id",
                           "checkpoint.dir", "plugin.batch.size", "plugin.keyspace",
                           "plugin.monkeys",
                           "plugin.keyspace.name"};
    for (size_t i = 0; i < sizeof secret / sizeof *secret; i++)
        cr_assert(lk__conf_is_secret(secret[i]), "%s should be secret", secret[i]);
    for (size_t i = 0; i < sizeof open_ / sizeof *open_; i++)
        cr_assert(!lk__conf_is_secret(open_[i]), "%s should not be secret", open_[i]);
}

Test(conf, plugin_secrets_redacted) {
    cr_assert_eq(lk_conf_set(conf, "plugin.api.token", "tok-123", err, sizeof err), LK_CONF_OK);
    cr_assert_eq(lk_conf_set(conf, "plugin.db.key", "k-456", err, sizeof err), LK_CONF_OK);
    cr_assert_eq(lk_conf_set(conf, "plugin.batch.size", "10", err, sizeof err), LK_CONF_OK);
    char buf[8192] = "";
    lk_conf_foreach(conf, 1, collect, buf);
    cr_assert_null(strstr(buf, "tok-123"), "%s", buf);
    cr_assert_null(strstr(buf, "k-456"), "%s", buf);
    cr_assert(strstr(buf, "plugin.api.token=[redacted]\n"), "%s", buf);
    cr_assert(strstr(buf, "plugin.db.key=[redacted]\n"), "%s", buf);
    cr_assert(strstr(buf, "plugin.batch.size=10\n"), "%s", buf);
    /* the plugin itself still reads the value */
    cr_assert_str_eq(lk_conf_get(conf, "plugin.api.token"), "tok-123");
}

Test(conf, rejected_cli_argument_echoes_only_the_key) {
    const char *cli = getenv("LK_CLI");
    cr_assert_not_null(cli, "LK_CLI not set");
    char cmd[4400], *out = NULL;
    /* a typo in the key: the old message quoted the whole argument, password included */
    snprintf(cmd, sizeof cmd, "%s run -X kafka.sasl.pasword=hunter2 2>&1", cli);
    cr_assert_eq(tu_run(cmd, &out), 2, "%s", out);
    cr_assert_null(strstr(out, "hunter2"), "%s", out);
    cr_assert(strstr(out, "lockstep: -X kafka.sasl.pasword: "), "%s", out);
    free(out);
    out = NULL;
    snprintf(cmd, sizeof cmd, "%s run -X hunter2 2>&1", cli);
    cr_assert_eq(tu_run(cmd, &out), 2, "%s", out);
    cr_assert_null(strstr(out, "hunter2"), "%s", out);
    cr_assert(strstr(out, "has no '='"), "%s", out);
    free(out);
}

/* Scope (core/conf_int.h): the library checks the properties it reads; the CLI-scope
 * ones (read only by the lockstep command) it stores as given. */
Test(conf, cli_scope_keys_are_stored_unchecked_by_lk_conf_set) {
    cr_assert_eq(lk_conf_set(conf, "window.time", "wall", err, sizeof err), LK_CONF_OK, "%s",
                 err);
    cr_assert_str_eq(lk_conf_get(conf, "window.time"), "wall");
    cr_assert_eq(lk__conf_int(conf, LK__P_WINDOW_TIME), 0, "an unchecked value reads as the "
                                                           "default's");
    cr_assert_eq(lk_conf_set(conf, "pipeline", "no-such-pipeline", err, sizeof err),
                 LK_CONF_OK, "%s", err);
    cr_assert_eq(lk_conf_set(conf, "output.dir", "", err, sizeof err), LK_CONF_OK, "%s", err);
    /* a good value keeps its typed value: the CLI reads what a library caller set */
    cr_assert_eq(lk_conf_set(conf, "window.time", "event", err, sizeof err), LK_CONF_OK);
    cr_assert_eq(lk__conf_int(conf, LK__P_WINDOW_TIME), 1);
    cr_assert_eq(lk_conf_set(conf, "window.size.ms", "60000", err, sizeof err), LK_CONF_OK);
    cr_assert_eq(lk__conf_int(conf, LK__P_WINDOW_SIZE_MS), 60000);
    lk_conf_t *copy = lk_conf_dup(conf);
    cr_assert_eq(lk__conf_int(copy, LK__P_WINDOW_TIME), 1);
    lk_conf_destroy(copy);
    /* library properties are still checked, and unknown keys still unknown */
    cr_assert_eq(lk_conf_set(conf, "checkpoint.sync", "never", err, sizeof err),
                 LK_CONF_INVALID);
    cr_assert_eq(lk_conf_set(conf, "errors.tolerance", "some", err, sizeof err),
                 LK_CONF_INVALID, "read by the Kafka sink: library scope");
    cr_assert_eq(lk_conf_set(conf, "window.tme", "event", err, sizeof err), LK_CONF_UNKNOWN);
    cr_assert(strstr(err, "did you mean \"window.time\""), "%s", err);
}

Test(conf, cli_scope_keys_are_checked_in_the_cli_scope) {
    unsigned cli = LK__S_LIB | LK__S_CLI;
    cr_assert_eq(lk__conf_set_scoped(conf, "window.time", "wall", cli, err, sizeof err),
                 LK_CONF_INVALID);
    cr_assert(strstr(err, "window.time") && strstr(err, "is not one of batch|event"), "%s", err);
    cr_assert_str_eq(lk_conf_get(conf, "window.time"), "batch", "a refused value is not kept");
    cr_assert_eq(lk__conf_set_scoped(conf, "output.partition", "keep", cli, err, sizeof err),
                 LK_CONF_OK, "%s", err);
    cr_assert_eq(lk__conf_int(conf, LK__P_OUTPUT_PARTITION), 1);
    cr_assert_eq(lk__conf_set_scoped(conf, "batch.interval.ms", "-5", cli, err, sizeof err),
                 LK_CONF_INVALID);

    char dir[256];
    tu_tmpdir(dir, sizeof dir);
    const char *path = write_file(dir, "app.id=ok\npipeline=no-such-pipeline\n");
    cr_assert_eq(lk__conf_load_file_scoped(conf, path, cli, err, sizeof err), LK_CONF_INVALID);
    cr_assert(strstr(err, "app.properties:2:") && strstr(err, "pipeline"), "%s", err);
    cr_assert_eq(lk_conf_load_file(conf, path, err, sizeof err), LK_CONF_OK, "%s", err);
    cr_assert_str_eq(lk_conf_get(conf, "pipeline"), "no-such-pipeline");
    tu_rmrf(dir);
}

Test(conf, reference_shows_each_property_scope) {
    char *text = reference(-1);
    cr_assert(strstr(text, "| Property | Scope | Type |"), "%s", text);
    cr_assert(strstr(text, "| `app.id` | library | identifier |"), "%s", text);
    cr_assert(strstr(text, "| `pipeline` | CLI | enum |"), "%s", text);
    cr_assert(strstr(text, "| `errors.deadletter` | library |"), "%s", text);
    cr_assert(strstr(text, "  window.time (CLI, enum, default batch)\n"), "%s", text);
    cr_assert(strstr(text, "  app.id (library, identifier, required)\n"), "%s", text);
    free(text);
}
