/*
 * mockutil.h — tests against librdkafka's mock cluster (real Kafka protocol on
 * loopback): start a cluster with topics, produce known input, and build a lockstep
 * configuration pointing at it.
 */
#ifndef LK_MOCKUTIL_H
#define LK_MOCKUTIL_H

#include "lockstep.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

typedef struct mu_cluster {
    rd_kafka_t *rk; /* owns the mock cluster */
    rd_kafka_mock_cluster_t *mc;
    const char *bootstraps;
    rd_kafka_t *producer;
} mu_cluster_t;

/** Start a mock cluster with `brokers` brokers. */
void mu_start(mu_cluster_t *c, int brokers);
void mu_stop(mu_cluster_t *c);
/** The running test's one-broker cluster, started by mu_fixture_init(). */
extern mu_cluster_t mu_cl;
/** A suite's .init: mu_cl with one broker, and a scratch directory (tu_dir, testutil.h). */
void mu_fixture_init(void);
/** A suite's .fini: stops mu_cl and removes tu_dir. */
void mu_fixture_fini(void);
/** Create a topic with n partitions. */
void mu_topic(mu_cluster_t *c, const char *topic, int partitions);
/** Produce one record to an explicit partition (key may be NULL); flushed by mu_flush. */
void mu_produce(mu_cluster_t *c, const char *topic, int partition, const char *key,
                const char *value);
void mu_flush(mu_cluster_t *c);
/** A configuration for app.id / dir on this cluster (batch.interval.ms=0). */
lk_conf_t *mu_conf(mu_cluster_t *c, const char *app, const char *dir);
/** A consumer for checking output: read_committed, end-of-partition events, no offset
 * commits, short fetch waits; group (never joined) names it. Asserts on failure. */
rd_kafka_t *mu_reader(const char *bootstraps, const char *group);
/** Set a property, asserting success. */
void mu_set(lk_conf_t *conf, const char *key, const char *value);

#endif
