/*
 * mockutil.c — mock cluster helpers for the mock test tier (see mockutil.h).
 */
#define _GNU_SOURCE
#include "mockutil.h"
#include "../unit/testutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

void mu_start(mu_cluster_t *c, int brokers) {
    memset(c, 0, sizeof *c);
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
    c->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    cr_assert_not_null(c->rk, "%s", err);
    c->mc = rd_kafka_mock_cluster_new(c->rk, brokers);
    cr_assert_not_null(c->mc, "mock cluster");
    c->bootstraps = rd_kafka_mock_cluster_bootstraps(c->mc);
    conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", c->bootstraps, err, sizeof err);
    rd_kafka_conf_set(conf, "linger.ms", "0", err, sizeof err);
    rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
    c->producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    cr_assert_not_null(c->producer, "%s", err);
}

void mu_stop(mu_cluster_t *c) {
    if (c->producer) {
        rd_kafka_flush(c->producer, 10000);
        rd_kafka_destroy(c->producer);
    }
    if (c->mc)
        rd_kafka_mock_cluster_destroy(c->mc);
    if (c->rk)
        rd_kafka_destroy(c->rk);
    memset(c, 0, sizeof *c);
}

void mu_topic(mu_cluster_t *c, const char *topic, int partitions) {
    rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(c->mc, topic, partitions, 1);
    cr_assert_eq(e, 0, "create topic %s: %s", topic, rd_kafka_err2str(e));
}

void mu_produce(mu_cluster_t *c, const char *topic, int partition, const char *key,
                const char *value) {
    rd_kafka_resp_err_t e;
    do {
        e = rd_kafka_producev(c->producer, RD_KAFKA_V_TOPIC(topic),
                              RD_KAFKA_V_PARTITION(partition),
                              RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
                              RD_KAFKA_V_VALUE((void *)value, value ? strlen(value) : 0),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(c->producer, 10);
    } while (e == RD_KAFKA_RESP_ERR__QUEUE_FULL);
    cr_assert_eq(e, 0, "produce: %s", rd_kafka_err2str(e));
}

void mu_flush(mu_cluster_t *c) {
    cr_assert_eq(rd_kafka_flush(c->producer, 30000), 0, "flush");
}

void mu_set(lk_conf_t *conf, const char *key, const char *value) {
    char err[512];
    cr_assert_eq(lk_conf_set(conf, key, value, err, sizeof err), LK_CONF_OK, "%s=%s: %s", key,
                 value, err);
}

lk_conf_t *mu_conf(mu_cluster_t *c, const char *app, const char *dir) {
    lk_conf_t *conf = lk_conf_new();
    mu_set(conf, "app.id", app);
    mu_set(conf, "checkpoint.dir", dir);
    mu_set(conf, "kafka.bootstrap.servers", c->bootstraps);
    mu_set(conf, "batch.interval.ms", "0");
    mu_set(conf, "log.level", "warning");
    mu_set(conf, "kafka.log_level", "3");
    mu_set(conf, "checkpoint.map.size", "4M");
    /* The mock answers a fetch long-poll only when fetch.wait.max.ms expires, not when
     * data arrives (a real broker answers at once): keep the poll short. */
    mu_set(conf, "kafka.fetch.wait.max.ms", "10");
    return conf;
}

rd_kafka_t *mu_reader(const char *bootstraps, const char *group) {
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "bootstrap.servers", bootstraps, err, sizeof err);
    rd_kafka_conf_set(c, "group.id", group, err, sizeof err);
    rd_kafka_conf_set(c, "isolation.level", "read_committed", err, sizeof err);
    rd_kafka_conf_set(c, "enable.partition.eof", "true", err, sizeof err);
    rd_kafka_conf_set(c, "enable.auto.commit", "false", err, sizeof err);
    rd_kafka_conf_set(c, "fetch.wait.max.ms", "10", err, sizeof err);
    rd_kafka_conf_set(c, "log_level", "3", err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof err);
    cr_assert_not_null(rk, "%s", err);
    return rk;
}

mu_cluster_t mu_cl;

void mu_fixture_init(void) {
    mu_start(&mu_cl, 1);
    tu_scratch_init();
}

void mu_fixture_fini(void) {
    mu_stop(&mu_cl);
    tu_scratch_fini();
}
