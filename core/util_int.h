/*
 * util_int.h — small internal helpers shared by every module: bounded error
 * formatting, monotonic and wall clocks, the growth of hand-written arrays, durable file
 * writes (temp, fsync, rename, fsync dir) and directories (mkdir -p, fsync parent), the
 * library's one sleep, and logging to stderr. Each exists once: modules call these
 * rather than keep their own copy.
 */
#ifndef LK_UTIL_INT_H
#define LK_UTIL_INT_H

#include "lockstep.h"

#include <stdarg.h>
#include <stdint.h>
#include <stddef.h>

#if defined(__GNUC__)
#define LK__PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define LK__PRINTF(fmt, args)
#endif

/** Format into errstr (if non-NULL and errstr_size > 0) and return err. */
lk_err_t lk__err(lk_err_t err, char *errstr, size_t errstr_size, const char *fmt, ...)
    LK__PRINTF(4, 5);

/** snprintf that never overflows and tolerates a NULL/zero-sized buffer. */
void lk__fmt(char *buf, size_t size, const char *fmt, ...) LK__PRINTF(3, 4);

/** lk__fmt with a va_list: the one formatter behind lk__err, lk__fmt and the failure
 * recorders (lk__ctx_fail, lk__batch_failf, lk_pipeline_fail, lk__store_corrupt). */
void lk__vfmt(char *buf, size_t size, const char *fmt, va_list ap) LK__PRINTF(3, 0);

/** Milliseconds on the monotonic clock. */
int64_t lk__mono_ms(void);
/** Nanoseconds on the monotonic clock. */
int64_t lk__mono_ns(void);
/** Milliseconds since the Unix epoch. */
int64_t lk__wall_ms(void);

/** Big-endian integers in keys (their byte order is their sort order in LMDB). */
static inline void lk__put_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}
static inline void lk__put_be64(unsigned char *p, uint64_t v) {
    lk__put_be32(p, (uint32_t)(v >> 32));
    lk__put_be32(p + 4, (uint32_t)v);
}
static inline uint32_t lk__get_be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t lk__get_be64(const unsigned char *p) {
    return (uint64_t)lk__get_be32(p) << 32 | lk__get_be32(p + 4);
}

/** strdup that returns NULL for NULL. */
char *lk__strdup(const char *s);

/**
 * Room for at least need elements of size bytes in the growable array v of *cap
 * elements (v NULL and *cap 0 for a new one): returns v itself when it has the room, else
 * the array reallocated to the larger of need, twice *cap and min_cap elements, with *cap
 * updated. NULL when out of memory or when need elements of size bytes overflow size_t;
 * v is then still valid (the caller frees it) and *cap unchanged; also NULL for need or
 * size 0.
 * The one growth helper for hand-written arrays.
 */
void *lk__vec_reserve(void *v, size_t *cap, size_t need, size_t size, size_t min_cap);

/**
 * Durably replace path with data: write path.tmp, fsync it, rename over path, fsync
 * the directory. A crash leaves either the old or the new content, never a mix.
 */
lk_err_t lk__write_file_durable(const char *path, const void *data, size_t len,
                                char *errstr, size_t errstr_size);

/** fsync the directory holding path (or path itself if it is a directory). The one
 * directory fsync: every other caller goes through it (fault point "fsync-dir"). */
int lk__fsync_dir(const char *dir);

/**
 * mkdir -p with mode 0700, making each directory it creates durable in its parent
 * (lk__fsync_dir of the parent); trailing slashes are ignored.
 * @returns 0, or -1 with errno (ENOTDIR when a component exists and is not a directory,
 *          ENOMEM, or mkdir's, stat's or fsync's error).
 */
int lk__mkdir_p(const char *path);

/**
 * Sleep ms milliseconds of the monotonic clock in steps of at most 50 ms, returning
 * early once wake(o) is true (asked before each step); wake NULL: the whole time. A
 * signal cuts only the current step short. The one sleep of the library.
 */
void lk__nap_ms(int64_t ms, int (*wake)(const void *o), const void *o);

/** Flags of lk__dir_check_private(). */
#define LK__DIR_ALLOW_SHARED 1 /* accept another owner, or write access for the group */
#define LK__DIR_NOFOLLOW 2     /* path itself must not be a symbolic link */

/**
 * Check that a directory lockstep writes into (checkpoint.dir, an output directory, a
 * partition directory) is private: a directory (after following symbolic links unless
 * LK__DIR_NOFOLLOW), owned by the effective user, and writable by nobody else. Someone
 * who can write there can plant symbolic links at names lockstep is about to create
 * (lock files, temporary files) and so make it overwrite files elsewhere, or replace
 * its output. With LK__DIR_ALLOW_SHARED (property dir.allow.shared) another owner and
 * group write access are accepted, for shared-group setups; write access for everyone
 * is refused whatever the flags (a sticky bit, as on /tmp, does not stop others from
 * creating the names lockstep is about to use).
 * @returns LK_OK; LK_ERR_IO when the path cannot be examined (with the OS error);
 *          LK_ERR_CONF_INVALID naming the path, its owner or mode, and what to do.
 */
lk_err_t lk__dir_check_private(const char *path, int flags, char *errstr,
                               size_t errstr_size);

/** Log levels, as syslog. */
enum { LK_LOG_ERR = 3, LK_LOG_WARNING = 4, LK_LOG_NOTICE = 5, LK_LOG_INFO = 6, LK_LOG_DEBUG = 7 };

/*
 * The log threshold (messages less severe than it are dropped) belongs to a context:
 * its log.level. A thread running on a context's behalf binds it (lk__log_bind) for the
 * time it does so: every public entry point taking a context, the delivery thread, the
 * metrics server's requests. librdkafka's clients carry it as their own log_level
 * (lk__conf_kafka_log). Code that runs for no context (the CLI before a context exists,
 * tests of a single module) sees the process default.
 */

/**
 * The process default threshold, for threads with no context's level bound; default
 * LK_LOG_INFO. Only single-threaded setup writes it (the CLI from log.level, tests and
 * benches); a context never does.
 */
extern int lk__log_default_level;

/**
 * Bind level (LK_LOG_ERR .. LK_LOG_DEBUG) as the calling thread's threshold.
 * @returns the previous binding, for lk__log_unbind(); bindings nest (a progress
 *          callback may call into another context).
 * @locality any thread
 */
int lk__log_bind(int level);

/** Restore the binding lk__log_bind() returned (0: none, the process default again). */
void lk__log_unbind(int prev);

/** The calling thread's threshold: the bound level, else the process default. */
int lk__log_threshold(void);

/** Log one line to stderr, "%timestamp LEVEL lockstep: message", unless level is less
 * severe than lk__log_threshold(). */
void lk__log(int level, const char *fmt, ...) LK__PRINTF(2, 3);

/** The same line whatever the threshold: for a caller that filtered already
 * (librdkafka's log callback: the client's log_level did). */
void lk__log_write(int level, const char *fmt, ...) LK__PRINTF(2, 3);

/**
 * Fault points and error injection for crash tests (test builds only).
 *
 * LOCKSTEP_FAULTPOINT holds comma-separated specs:
 *   - "NAME[@N]": the process kills itself with SIGKILL at the N-th hit (default the
 *     first) of the named point NAME (lk__faultpoint) or instrumented operation NAME;
 *   - "NAME=ERROR[@N][*]": the N-th call (with '*', every call from the N-th on) of the
 *     instrumented operation NAME fails with ERROR instead of running. ERROR is an errno
 *     name (EIO, ENOSPC, ...) or a number; for the librdkafka operations a librdkafka
 *     error name (sink/fault_int.h).
 * The instrumented operations are listed in the README (testing section). Hit counts are
 * per process and shared by all threads. Compiled in unless LK_NO_FAULTPOINTS is defined
 * (CMake option LK_FAULTPOINTS=OFF); then every macro here is the bare call, zero cost.
 *
 * LK__FAULT_SYS(name, call): for calls that return -1 and set errno (fsync, rename,
 * write): -1 with errno = ERROR when the fault fires, else call.
 * LK__FAULT_RC(name, cleanup, call): for calls that return an error code (LMDB): the
 * code when the fault fires, after evaluating cleanup (e.g. mdb_txn_abort(txn), which is
 * what a failed mdb_txn_commit leaves), else call.
 *
 * The phase report: with LOCKSTEP_PHASE_FILE set, lk__phase(LK__PH_x) records in that
 * file (128 bytes, mapped shared) what the calling thread is doing: byte 0 for the batch
 * loop, byte 1 for the delivery thread (the one that called lk__phase_thread(1)), as a
 * LK__PH_ code; bytes 16..39 and 40..63 the same as words; bytes 64..79 and 80..95 the
 * delivery attempt (the attempt of the "lockstep" provenance header) each last began (lk__phase_attempt). Unset:
 * nothing is written.
 */
enum {
    LK__PH_NONE, LK__PH_STARTING, LK__PH_PLANNING, LK__PH_FETCHING, LK__PH_PROCESSING,
    LK__PH_COMMITTING, LK__PH_DELIVERING, LK__PH_DELIVERING_COMMIT, LK__PH_ACKNOWLEDGING,
    LK__PH_IDLE, LK__PH_RECOVERING, LK__PH_STOPPING, LK__PH_AWAITING_DELIVERY
};
#ifdef LK_NO_FAULTPOINTS
#define lk__faultpoint(name) ((void)0)
#define lk__faultpoint_armed(name) 0
#define lk__fault_reset() ((void)0)
#define lk__phase(phase) ((void)0)
#define lk__phase_thread(slot) ((void)0)
#define lk__phase_attempt(attempt) ((void)0)
#define LK__FAULT_SYS(name, call) (call)
#define LK__FAULT_RC(name, cleanup, call) (call)
#else
/** Kill here if a kill spec names this point and hit. */
void lk__faultpoint(const char *name);
/** 1 if a spec names this point (no hit is counted): for work a point needs first. */
int lk__faultpoint_armed(const char *name);
/** Parse LOCKSTEP_FAULTPOINT again and reset every hit count (tests). */
void lk__fault_reset(void);
/** Count a hit of name: NULL to run the operation, else the ERROR word to fail with. */
const char *lk__fault_word(const char *name);
/** Count a hit of name: 0 to run the operation, else the errno value to fail with. */
int lk__fault_rc(const char *name);
/** Count a hit of name: 0 to run the operation, else 1 with errno set to fail with. */
int lk__fault_sys(const char *name);
/** Record the calling thread's phase (LK__PH_x) in LOCKSTEP_PHASE_FILE, if set. */
void lk__phase(int phase);
/** Record the delivery attempt the calling thread begins (16 characters at most). */
void lk__phase_attempt(const char *attempt);
/** Make the calling thread report its phase in slot (0: batch loop, 1: delivery). */
void lk__phase_thread(int slot);
#define LK__FAULT_SYS(name, call) (lk__fault_sys(name) ? -1 : (call))
#define LK__FAULT_RC(name, cleanup, call)                                                 \
    (lk__fault_rc(name) ? ((void)(cleanup), lk__fault_rc_last()) : (call))
/** The errno value of the last fault that fired on this thread. */
int lk__fault_rc_last(void);
#endif

#define LK_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
