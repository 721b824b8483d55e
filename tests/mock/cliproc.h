/*
 * cliproc.h — the fixture of the tests that run the lockstep binary as child processes
 * (test_cli_run.c, test_metrics.c, the group tests): a `lockstep mock-broker` process,
 * the runs under test, a producer feeding the broker, and a scratch directory (tu_dir,
 * testutil.h) for their files. One copy here; each file adds only what is its own.
 * DESIGN.md, Testing.
 */
#ifndef LK_CLIPROC_H
#define LK_CLIPROC_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

/** The child processes (0: none) and the broker's bootstrap.servers, once started. */
extern pid_t cp_broker_pid, cp_run_pid;
extern char cp_bootstraps[600];
/** The producer of cp_produce(), made at its first call (NULL before). */
extern rd_kafka_t *cp_producer;

/** A suite's .init: a fresh scratch directory. */
void cp_init(void);
/** A suite's .fini: kills the run, flushes and closes the producer, stops the broker
 *  (SIGTERM, so it exits cleanly) and removes the scratch directory. */
void cp_fini(void);

/** The lockstep binary (LK_CLI, set by ctest); asserts it is set. */
const char *cp_cli(void);
/** "tu_dir/name", in one of 8 rotating static buffers. */
const char *cp_path(const char *name);
/** printf into one of 16 rotating static buffers (for -X key=value arguments). */
const char *cp_fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
/** The file's contents (malloc'ed; "" when it cannot be read). */
char *cp_slurp(const char *file);
/** SIGKILL and reap *pid if running; *pid becomes 0. */
void cp_stop(pid_t *pid);
/** Wait (bounded) for *pid to exit: its exit status, or 128 + signal; fails the test
 *  (after killing it) when it is still running after `seconds`. */
int cp_wait_exit(pid_t *pid, int seconds);

/** Fork and exec argv (NULL-ended; argv[0] a path), its stdout to /dev/null and its
 *  stderr appended to tu_dir/<name>.err: the child's pid. */
pid_t cp_spawn(const char *const *argv, const char *name);
/** `lockstep run -X s...` with every setting of common (n of them) and of kv (NULL-ended,
 *  may be NULL), through cp_spawn: the group tests' processes. */
pid_t cp_spawn_run(const char *name, const char *const *common, size_t n,
                   const char *const *kv);
/** What the child spawned as name wrote to its stderr (malloc'ed; "" when nothing). */
char *cp_err_of(const char *name);
/** Read partitions [p0, p0 + np) of topic from their start to their end with *reader
 *  (made for group at the first call), calling cb on each record; asserts each end is
 *  reached. */
void cp_read_all(rd_kafka_t **reader, const char *group, const char *topic, int p0, int np,
                 void (*cb)(rd_kafka_message_t *m, void *o), void *o);

/** SIGTERM *pid (spawned as name) and require a clean exit within 60 s: status 0, no
 *  sanitizer report in its stderr. */
void cp_stop_gracefully(pid_t *pid, const char *name);
/** The group tests' .fini: SIGKILL the n processes, close *reader if made, cp_fini(). */
void cp_fini_group(pid_t *procs, int n, rd_kafka_t **reader);

/** The committed attempts of a task group's batches as the mock shows them (it shows
 *  aborted records too: the last progress record of a batch names its committed attempt;
 *  DESIGN.md, The mock cluster's limits). */
typedef struct {
    int32_t partition; /* of the progress topic: the task */
    uint64_t batch;
    char attempt[17];
} cp_attempt_t;
typedef struct {
    const char *task_prefix; /* the progress records' "task" is <prefix><partition> */
    cp_attempt_t *a;
    size_t n, cap;
} cp_attempts_t;
/** A cp_read_all callback (o: cp_attempts_t) over a progress topic: asserts each record is
 *  its partition's task's, and keeps the last attempt of each (partition, batch). */
void cp_on_progress_record(rd_kafka_message_t *m, void *o);
/** The task (progress partition) whose committed attempt (batch, attempt) is; -1: none. */
int cp_committed_by(const cp_attempts_t *as, uint64_t batch, const char *attempt);

/** Start `lockstep mock-broker --topic T...` (topics: "name:partitions", NULL-ended) and
 *  read its bootstrap.servers into cp_bootstraps. Its stdin stays open for
 *  cp_broker_command(). */
void cp_broker_start(const char *const *topics);
/** Send a fault command line to the mock-broker (see `lockstep mock-broker --help`). */
void cp_broker_command(const char *cmd);
/** Produce a record (key may be NULL; ts 0: now) to the broker; cp_flush() sends it. */
void cp_produce(const char *topic, int partition, const char *key, const char *value,
                int64_t ts);
/** Wait until everything produced is acknowledged; asserts success. */
void cp_flush(void);

#endif
