/*
 * util_int.h — small internal helpers shared by every module: bounded error
 * formatting, monotonic and wall clocks, durable file writes (temp, fsync, rename,
 * fsync dir), and logging to stderr.
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
 * Durably replace path with data: write path.tmp, fsync it, rename over path, fsync
 * the directory. A crash leaves either the old or the new content, never a mix.
 */
lk_err_t lk__write_file_durable(const char *path, const void *data, size_t len,
                                char *errstr, size_t errstr_size);

/** fsync the directory holding path (or path itself if it is a directory). */
int lk__fsync_dir(const char *dir);

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

/** Current log threshold (messages above it are dropped); default LK_LOG_INFO. */
extern int lk__log_level;

/** Log one line to stderr: "%timestamp LEVEL lockstep: message". */
void lk__log(int level, const char *fmt, ...) LK__PRINTF(2, 3);

/**
 * Fault points for crash tests: when LOCKSTEP_FAULTPOINT names this point ("name", or
 * "name@N" for its N-th hit), the process kills itself with SIGKILL right there.
 * Compiled in unless LK_NO_FAULTPOINTS is defined (CMake option LK_FAULTPOINTS=OFF).
 */
#ifdef LK_NO_FAULTPOINTS
#define lk__faultpoint(name) ((void)0)
#else
void lk__faultpoint(const char *name);
#endif

#define LK_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
