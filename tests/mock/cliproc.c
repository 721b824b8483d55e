/*
 * cliproc.c — the fixture of the tests that run the lockstep binary as child processes
 * (see cliproc.h). DESIGN.md, Testing.
 */
#define _GNU_SOURCE
#include "cliproc.h"
#include "mockutil.h"
#include "../unit/testutil.h"

#include <criterion/criterion.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

pid_t cp_broker_pid, cp_run_pid;
char cp_bootstraps[600];
rd_kafka_t *cp_producer;
static FILE *broker_in;  /* the mock-broker's stdin: fault commands */
static FILE *broker_out; /* its stdout, kept open: its "ok" answers must not hit EPIPE */

void cp_init(void) {
    tu_scratch_init();
}

void cp_fini(void) {
    cp_stop(&cp_run_pid);
    if (cp_producer) {
        rd_kafka_flush(cp_producer, 5000);
        rd_kafka_destroy(cp_producer);
        cp_producer = NULL;
    }
    if (broker_in) {
        fclose(broker_in);
        broker_in = NULL;
    }
    if (broker_out) {
        fclose(broker_out);
        broker_out = NULL;
    }
    if (cp_broker_pid > 0) {
        kill(cp_broker_pid, SIGTERM);
        waitpid(cp_broker_pid, NULL, 0);
        cp_broker_pid = 0;
    }
    tu_scratch_fini();
}

const char *cp_cli(void) {
    const char *p = getenv("LK_CLI");
    cr_assert_not_null(p, "LK_CLI is not set (run through ctest)");
    return p;
}

const char *cp_path(const char *name) {
    static char bufs[8][512];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", tu_dir, name);
    return b;
}

const char *cp_fmt(const char *f, ...) {
    static char bufs[16][700];
    static int next;
    char *b = bufs[next++ % 16];
    va_list ap;
    va_start(ap, f);
    vsnprintf(b, sizeof bufs[0], f, ap);
    va_end(ap);
    return b;
}

char *cp_slurp(const char *file) {
    char *s = tu_slurp(file, NULL);
    return s ? s : strdup("");
}

void cp_stop(pid_t *pid) {
    if (*pid > 0) {
        kill(*pid, SIGKILL);
        waitpid(*pid, NULL, 0);
        *pid = 0;
    }
}

int cp_wait_exit(pid_t *pid, int seconds) {
    for (int i = 0; i < seconds * 100; i++) {
        int st;
        if (waitpid(*pid, &st, WNOHANG) == *pid) {
            *pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        usleep(10000);
    }
    cp_stop(pid);
    cr_assert_fail("process did not exit within %d s", seconds);
    return -1;
}

void cp_broker_start(const char *const *topics) {
    int out[2], in[2];
    cr_assert_eq(pipe(out), 0);
    cr_assert_eq(pipe(in), 0);
    const char *argv[32] = {cp_cli(), "mock-broker"};
    int n = 2;
    for (int i = 0; topics[i]; i++) {
        argv[n++] = "--topic";
        argv[n++] = topics[i];
    }
    argv[n] = NULL;
    cp_broker_pid = fork();
    cr_assert_neq(cp_broker_pid, -1);
    if (cp_broker_pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(out[0]);
        close(out[1]);
        close(in[0]);
        close(in[1]);
        execv(argv[0], (char **)argv);
        _exit(127);
    }
    close(out[1]);
    close(in[0]);
    broker_in = fdopen(in[1], "w");
    FILE *fp = broker_out = fdopen(out[0], "r");
    char line[600] = "";
    cr_assert_not_null(fgets(line, sizeof line, fp), "mock-broker printed nothing");
    cr_assert(!strncmp(line, "bootstrap.servers=", 18), "mock-broker printed: %s", line);
    line[strcspn(line, "\n")] = 0;
    snprintf(cp_bootstraps, sizeof cp_bootstraps, "%s", line + 18);
}

void cp_broker_command(const char *cmd) {
    cr_assert_gt(fprintf(broker_in, "%s\n", cmd), 0);
    fflush(broker_in);
}

void cp_produce(const char *topic, int partition, const char *key, const char *value,
                int64_t ts) {
    if (!cp_producer) {
        char err[512];
        rd_kafka_conf_t *c = rd_kafka_conf_new();
        rd_kafka_conf_set(c, "bootstrap.servers", cp_bootstraps, err, sizeof err);
        rd_kafka_conf_set(c, "linger.ms", "0", err, sizeof err);
        rd_kafka_conf_set(c, "log_level", "3", err, sizeof err);
        cp_producer = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
        cr_assert_not_null(cp_producer, "%s", err);
    }
    rd_kafka_resp_err_t e = rd_kafka_producev(
        cp_producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
        RD_KAFKA_V_KEY(key, key ? strlen(key) : 0),
        RD_KAFKA_V_VALUE((void *)value, strlen(value)), RD_KAFKA_V_TIMESTAMP(ts),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    cr_assert_eq(e, 0, "produce: %s", rd_kafka_err2str(e));
}

void cp_flush(void) {
    cr_assert_eq(rd_kafka_flush(cp_producer, 30000), 0, "flush");
}

pid_t cp_spawn(const char *const *argv, const char *name) {
    char errf[700];
    snprintf(errf, sizeof errf, "%s.err", cp_path(name));
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        int o = open("/dev/null", O_WRONLY);
        int e = open(errf, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(o, 1);
        dup2(e, 2);
        execv(argv[0], (char **)argv);
        _exit(127);
    }
    return pid;
}

pid_t cp_spawn_run(const char *name, const char *const *common, size_t n,
                   const char *const *kv) {
    const char *argv[100] = {cp_cli(), "run"};
    size_t a = 2;
    for (size_t i = 0; i < n; i++) {
        cr_assert_lt(a + 3, sizeof argv / sizeof *argv, "too many settings");
        argv[a++] = "-X";
        argv[a++] = common[i];
    }
    for (size_t i = 0; kv && kv[i]; i++) {
        cr_assert_lt(a + 3, sizeof argv / sizeof *argv, "too many settings");
        argv[a++] = "-X";
        argv[a++] = kv[i];
    }
    argv[a] = NULL;
    return cp_spawn(argv, name);
}

char *cp_err_of(const char *name) {
    char errf[700];
    snprintf(errf, sizeof errf, "%s.err", cp_path(name));
    return cp_slurp(errf);
}

void cp_read_all(rd_kafka_t **reader, const char *group, const char *topic, int p0, int np,
                 void (*cb)(rd_kafka_message_t *m, void *o), void *o) {
    if (!*reader)
        *reader = mu_reader(cp_bootstraps, group);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(np);
    int pending = 0;
    for (int p = p0; p < p0 + np; p++) {
        int64_t lo, hi;
        cr_assert_eq(rd_kafka_query_watermark_offsets(*reader, topic, p, &lo, &hi, 5000), 0);
        if (hi > lo) {
            rd_kafka_topic_partition_list_add(l, topic, p)->offset = lo;
            pending++;
        }
    }
    cr_assert_eq(rd_kafka_assign(*reader, l), 0);
    rd_kafka_topic_partition_list_destroy(l);
    for (int polls = 0; pending > 0 && polls < 3000; polls++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(*reader, 10);
        if (!m)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
            pending--;
        else if (!m->err)
            cb(m, o);
        rd_kafka_message_destroy(m);
    }
    cr_assert_eq(pending, 0, "could not read %s to its end", topic);
    rd_kafka_assign(*reader, NULL);
}

void cp_on_progress_record(rd_kafka_message_t *m, void *o) {
    cp_attempts_t *as = o;
    json_error_t je;
    json_t *d = json_loadb(m->payload, m->len, 0, &je);
    cr_assert(d, "progress record: %s", je.text);
    json_t *b = json_object_get(d, "batch"), *a = json_object_get(d, "attempt"),
           *t = json_object_get(d, "task");
    char want[128];
    snprintf(want, sizeof want, "%s%d", as->task_prefix, (int)m->partition);
    cr_assert(json_is_string(t) && !strcmp(json_string_value(t), want),
              "progress partition %d holds a record of task %s, not %s", (int)m->partition,
              json_is_string(t) ? json_string_value(t) : "?", want);
    cp_attempt_t *hit = NULL;
    for (size_t i = 0; i < as->n; i++)
        if (as->a[i].partition == m->partition &&
            as->a[i].batch == (uint64_t)json_integer_value(b))
            hit = &as->a[i];
    if (!hit) {
        if (as->n == as->cap) {
            as->cap = as->cap ? as->cap * 2 : 64;
            as->a = realloc(as->a, as->cap * sizeof *as->a);
            cr_assert_not_null(as->a);
        }
        hit = &as->a[as->n++];
    }
    hit->partition = m->partition;
    hit->batch = (uint64_t)json_integer_value(b);
    snprintf(hit->attempt, sizeof hit->attempt, "%s", json_string_value(a));
    json_decref(d);
}

int cp_committed_by(const cp_attempts_t *as, uint64_t batch, const char *attempt) {
    for (size_t i = 0; i < as->n; i++)
        if (as->a[i].batch == batch && !strcmp(as->a[i].attempt, attempt))
            return as->a[i].partition;
    return -1;
}

void cp_stop_gracefully(pid_t *pid, const char *name) {
    kill(*pid, SIGTERM);
    int rc = cp_wait_exit(pid, 60);
    char *err = cp_err_of(name);
    cr_assert_eq(rc, 0, "%s: exit status %d after SIGTERM: %s", name, rc, err);
    cr_assert(!strstr(err, "Sanitizer") && !strstr(err, "runtime error"), "%s", err);
    free(err);
}

void cp_fini_group(pid_t *procs, int n, rd_kafka_t **reader) {
    for (int i = 0; i < n; i++)
        cp_stop(&procs[i]);
    if (*reader) {
        rd_kafka_consumer_close(*reader);
        rd_kafka_destroy(*reader);
        *reader = NULL;
    }
    cp_fini();
}
