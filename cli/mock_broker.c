/*
 * mock_broker.c — `lockstep mock-broker`: librdkafka's mock cluster (real Kafka protocol
 * on loopback) as a standalone process, for tests and local development. Prints its
 * bootstrap address, then runs until SIGTERM/SIGINT. All data lives in memory.
 */
#define _GNU_SOURCE
#include "cli_int.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "Usage: lockstep mock-broker [--brokers N] [--topic NAME:PARTITIONS]...\n"
    "\n"
    "Start an in-memory Kafka cluster (librdkafka's mock cluster: real protocol on\n"
    "127.0.0.1), print 'bootstrap.servers=HOST:PORT,...' on stdout, and run until\n"
    "SIGTERM or SIGINT. Limits: transactions are not isolated (aborted records are\n"
    "visible), partitions cannot be added, about 5 MiB are kept per partition.\n"
    "\n"
    "  --brokers N               number of brokers (1..9, default 1)\n"
    "  --topic NAME:PARTITIONS   create a topic (may repeat); unknown topics are\n"
    "                            created on first use with 4 partitions\n";

int lk__cli_mock_broker(int argc, char **argv) {
    if (lk__cli_has_help(argc, argv)) {
        fputs(usage, stdout);
        return 0;
    }
    int brokers = 1;
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--brokers") && i + 1 < argc) {
            char *end;
            long n = strtol(argv[++i], &end, 10);
            if (*end || n < 1 || n > 9) {
                fprintf(stderr, "lockstep mock-broker: --brokers takes 1..9, not '%s'\n", argv[i]);
                return 2;
            }
            brokers = (int)n;
        } else if (!strcmp(argv[i], "--topic") && i + 1 < argc) {
            i++; /* checked below, once the cluster exists */
        } else {
            fprintf(stderr, "lockstep mock-broker: unexpected argument '%s'\n\n%s", argv[i], usage);
            return 2;
        }
    /* block the signals before librdkafka starts threads, then wait for them */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    char err[512];
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    rd_kafka_conf_set(c, "log_level", "3", err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "lockstep mock-broker: %s\n", err);
        return 1;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
    if (!mc) {
        fprintf(stderr, "lockstep mock-broker: cannot start the mock cluster\n");
        rd_kafka_destroy(rk);
        return 1;
    }
    int rc = 0;
    for (int i = 0; i < argc && !rc; i++) {
        if (strcmp(argv[i], "--topic"))
            continue;
        const char *spec = argv[++i];
        const char *colon = strrchr(spec, ':');
        char *end = NULL;
        long parts = colon ? strtol(colon + 1, &end, 10) : 0;
        if (!colon || colon == spec || *end || parts < 1 || parts > 10000) {
            fprintf(stderr, "lockstep mock-broker: --topic takes NAME:PARTITIONS, not '%s'\n", spec);
            rc = 2;
            break;
        }
        char *name = strndup(spec, (size_t)(colon - spec));
        rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mc, name, (int)parts, 1);
        if (e) {
            fprintf(stderr, "lockstep mock-broker: topic %s: %s\n", name, rd_kafka_err2str(e));
            rc = 1;
        }
        free(name);
    }
    if (!rc) {
        printf("bootstrap.servers=%s\n", rd_kafka_mock_cluster_bootstraps(mc));
        fflush(stdout);
        int sig;
        sigwait(&set, &sig);
    }
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return rc;
}
