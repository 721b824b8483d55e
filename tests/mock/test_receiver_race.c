/*
 * test_receiver_race.c — the receiver must own every partition's queue before Kafka
 * starts fetching. A delay inside rd_kafka_queue_get_partition (linked with
 * -Wl,--wrap) stands in for the thread being descheduled there; records fetched in
 * that window once reached the consumer queue and were dropped while the range still
 * completed, skipping them (found by review). Each range must hold every record.
 */
#define _GNU_SOURCE
#include "connector/receiver_int.h"
#include "mockutil.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int delay_ms;
rd_kafka_queue_t *__real_rd_kafka_queue_get_partition(rd_kafka_t *rk, const char *topic,
                                                       int32_t partition);
rd_kafka_queue_t *__wrap_rd_kafka_queue_get_partition(rd_kafka_t *rk, const char *topic,
                                                       int32_t partition);
rd_kafka_queue_t *__wrap_rd_kafka_queue_get_partition(rd_kafka_t *rk, const char *topic,
                                                       int32_t partition) {
    if (delay_ms)
        usleep((useconds_t)delay_ms * 1000);
    return __real_rd_kafka_queue_get_partition(rk, topic, partition);
}

static mu_cluster_t cl;
static void setup(void) {
    mu_start(&cl, 1);
}
static void teardown(void) {
    mu_stop(&cl);
}
TestSuite(receiver_race, .init = setup, .fini = teardown, .timeout = 120);

static lk_err_t from_zero(const char *topic, int32_t partition, int64_t *off,
                          lk__fingerprint_t *fp, int *has_fp, void *o, char *errstr,
                          size_t errstr_size) {
    (void)topic;
    (void)partition;
    (void)o;
    (void)fp;
    (void)errstr;
    (void)errstr_size;
    *off = 0;
    *has_fp = 0;
    return LK_OK;
}

static void produce(const char *topic, int n) {
    char v[16];
    for (int i = 0; i < n; i++) {
        snprintf(v, sizeof v, "v%d", i);
        mu_produce(&cl, topic, 0, NULL, v);
    }
    mu_flush(&cl);
}

/* Plan from offset 0 and fetch; every range must hold all of its offsets. */
static void fetch_all(lk__receiver_t *r) {
    char err[512];
    lk__fetch_t f;
    cr_assert_eq(lk__receiver_plan(r, from_zero, NULL, &f, err, sizeof err), LK_OK, "%s", err);
    cr_assert_eq(lk__receiver_fetch(r, &f, 1, NULL, NULL, err, sizeof err), LK_OK, "%s", err);
    for (size_t i = 0; i < f.nranges; i++) {
        lk__range_msgs_t *rm = &f.ranges[i];
        cr_assert_eq((int64_t)rm->n, rm->range.until - rm->range.from,
                     "%s[%d] [%lld, %lld): %zu records: some were skipped", rm->range.topic,
                     (int)rm->range.partition, (long long)rm->range.from,
                     (long long)rm->range.until, rm->n);
        for (size_t j = 0; j < rm->n; j++)
            cr_assert_eq(rm->msgs[j]->offset, rm->range.from + (int64_t)j);
    }
    lk__fetch_clear(&f);
}

Test(receiver_race, slow_queue_setup_loses_nothing) {
    mu_topic(&cl, "in", 1);
    mu_topic(&cl, "late", 1);
    produce("in", 100);
    lk_conf_t *conf = mu_conf(&cl, "race", "/nonexistent-unused");
    const char *topics[] = {"in"};
    lk__receiver_t *r;
    char err[512];
    delay_ms = 1500; /* longer than the first fetch takes */
    cr_assert_eq(lk__receiver_new(&r, conf, topics, 1, err, sizeof err), LK_OK, "%s", err);
    fetch_all(r); /* cold start */
    lk__receiver_destroy(r);

    /* a warm fetcher meeting a partition it has not read yet: the first batch is a
     * recorded plan over "in" only, the next plan adds "late" (re-assignment) */
    const char *both[] = {"in", "late"};
    delay_ms = 0;
    cr_assert_eq(lk__receiver_new(&r, conf, both, 2, err, sizeof err), LK_OK, "%s", err);
    lk__range_t only_in = {"in", 0, 0, 100};
    lk__fetch_t f;
    cr_assert_eq(lk__receiver_use_plan(r, &only_in, 1, from_zero, NULL, &f, err, sizeof err), LK_OK, "%s", err);
    cr_assert_eq(lk__receiver_fetch(r, &f, 1, NULL, NULL, err, sizeof err), LK_OK, "%s", err);
    cr_assert_eq(f.ranges[0].n, 100);
    lk__fetch_clear(&f);
    produce("late", 50);
    delay_ms = 300;
    fetch_all(r);
    lk__receiver_destroy(r);
    lk_conf_destroy(conf);
}
