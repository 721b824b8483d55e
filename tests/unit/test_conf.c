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

Test(conf, reference_lists_every_property) {
    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    lk_conf_print_reference(fp, 1);
    fclose(fp);
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
