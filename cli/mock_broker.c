/*
 * mock_broker.c — `lockstep mock-broker`: librdkafka's mock cluster (real Kafka protocol
 * on loopback) as a standalone process, for tests and local development. Prints its
 * bootstrap address, then runs until SIGTERM/SIGINT. All data lives in memory.
 * Commands on stdin inject broker faults (for tests and chaos runs):
 *   down [ID]                   take broker ID (default: all) down
 *   up [ID]                     bring it back
 *   error APIKEY ERRCODE COUNT  fail the next COUNT requests of APIKEY with ERRCODE
 *   clear                       forget injected errors
 * Each command is answered "ok" or "error: ..." on stdout.
 */
#define _GNU_SOURCE
#include "cli_int.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* librdkafka 2.0.2's mock broker leaves Nagle's algorithm on for the connections it accepts;
 * a real Kafka broker turns it off (socket.tcp.no.delay). With it on, a small response
 * written while an earlier one is still unacknowledged waits for the client's delayed ACK,
 * 40 ms on Linux: every transaction commit paid it (the last produce before EndTxn is
 * small), for lockstep and for any other client alike. Defining accept() here interposes
 * on librdkafka's call (the executable's symbols come first in the dynamic lookup), so every
 * mock connection in this binary, `lockstep mock-broker` and `lockstep demo`, gets
 * TCP_NODELAY like a real broker's. Nothing else in lockstep accepts connections. */
int accept(int fd, struct sockaddr *addr, socklen_t *addrlen) {
    int s = accept4(fd, addr, addrlen, 0);
    if (s >= 0) {
        int one = 1;
        (void)setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails harmlessly on non-TCP sockets */
    }
    return s;
}

/* Run one stdin command against the cluster. */
static void command(rd_kafka_mock_cluster_t *mc, int brokers, char *line) {
    char verb[16] = "";
    long a = -1, b = 0, c = 0;
    int n = sscanf(line, "%15s %ld %ld %ld", verb, &a, &b, &c);
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (n >= 1 && (!strcmp(verb, "down") || !strcmp(verb, "up"))) {
        for (int id = 1; id <= brokers; id++)
            if (n < 2 || id == a) {
                e = verb[0] == 'd' ? rd_kafka_mock_broker_set_down(mc, id)
                                   : rd_kafka_mock_broker_set_up(mc, id);
                if (e)
                    break;
            }
    } else if (n == 4 && !strcmp(verb, "error") && a >= 0 && c > 0) {
        for (long i = 0; i < c; i++)
            rd_kafka_mock_push_request_errors(mc, (int16_t)a, 1, (rd_kafka_resp_err_t)b);
    } else if (n >= 1 && !strcmp(verb, "clear")) {
        for (int16_t api = 0; api <= 70; api++)
            rd_kafka_mock_clear_request_errors(mc, api);
    } else if (n >= 1) {
        printf("error: unknown command '%s' (down [ID], up [ID], error APIKEY ERRCODE COUNT, "
               "clear)\n", verb);
        fflush(stdout);
        return;
    } else {
        return;
    }
    printf(e ? "error: %s\n" : "ok\n", rd_kafka_err2str(e));
    fflush(stdout);
}

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
    "                            created on first use with 4 partitions\n"
    "\n"
    "Commands on stdin inject faults: 'down [ID]', 'up [ID]' (broker ID, default all),\n"
    "'error APIKEY ERRCODE COUNT' (fail the next COUNT requests of a Kafka API, e.g.\n"
    "'error 26 15 3': EndTxn with COORDINATOR_NOT_AVAILABLE), 'clear'.\n";

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
        /* until a signal; stdin commands meanwhile (EOF on stdin just ends them) */
        int stdin_open = 1;
        char line[256];
        size_t len = 0;
        for (;;) {
            struct timespec tick = {0, 50 * 1000000L};
            if (sigtimedwait(&set, NULL, &tick) > 0)
                break;
            struct pollfd pfd = {STDIN_FILENO, POLLIN, 0};
            while (stdin_open && poll(&pfd, 1, 0) > 0) {
                ssize_t r = read(STDIN_FILENO, line + len, 1);
                if (r <= 0) {
                    stdin_open = 0;
                    break;
                }
                if (line[len] == '\n' || len == sizeof line - 2) {
                    line[len] = 0;
                    command(mc, brokers, line);
                    len = 0;
                } else {
                    len++;
                }
            }
        }
    }
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return rc;
}
