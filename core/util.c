/*
 * util.c — internal helpers: error formatting, clocks, durable writes and logging.
 * The durable write follows Redis' rdbSave: temp file, fsync, rename, fsync dir.
 */
#define _GNU_SOURCE
#include "util_int.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <libgen.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int lk__log_level = LK_LOG_INFO;

void lk__fmt(char *buf, size_t size, const char *fmt, ...) {
    if (!buf || size == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
}

lk_err_t lk__err(lk_err_t err, char *errstr, size_t errstr_size, const char *fmt, ...) {
    if (errstr && errstr_size > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(errstr, errstr_size, fmt, ap);
        va_end(ap);
    }
    return err;
}

int64_t lk__mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t lk__mono_ms(void) {
    return lk__mono_ns() / 1000000;
}

int64_t lk__wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *lk__strdup(const char *s) {
    return s ? strdup(s) : NULL;
}

int lk__fsync_dir(const char *path) {
    char *copy = strdup(path);
    if (!copy)
        return -1;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) /* path is a file: sync its directory */
        fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

lk_err_t lk__dir_check_private(const char *path, int flags, char *errstr,
                               size_t errstr_size) {
    struct stat st;
    int rc = flags & LK__DIR_NOFOLLOW ? lstat(path, &st) : stat(path, &st);
    if (rc != 0)
        return lk__err(LK_ERR_IO, errstr, errstr_size, "cannot examine %s: %s", path,
                       strerror(errno));
    if (S_ISLNK(st.st_mode))
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "%s is a symbolic link where lockstep expects the directory it "
                       "created; refusing to follow it (remove it)", path);
    if (!S_ISDIR(st.st_mode))
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size, "%s is not a directory",
                       path);
    uid_t me = geteuid();
    const char *fix = "make it private to this user (chown, chmod go-w) or choose another "
                      "directory";
    if (st.st_mode & S_IWOTH) /* even sticky (/tmp): others could still plant names */
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "%s is writable by every user (mode %04o): anyone could plant links "
                       "or files in it; %s",
                       path, (unsigned)(st.st_mode & 07777), fix);
    if (flags & LK__DIR_ALLOW_SHARED)
        return LK_OK;
    if (st.st_uid != me)
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "%s is owned by uid %u, not by this user (uid %u); %s, or set "
                       "dir.allow.shared=true for a shared-group setup",
                       path, (unsigned)st.st_uid, (unsigned)me, fix);
    if (st.st_mode & S_IWGRP)
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "%s is writable by its group (mode %04o); %s, or set "
                       "dir.allow.shared=true for a shared-group setup",
                       path, (unsigned)(st.st_mode & 07777), fix);
    return LK_OK;
}

lk_err_t lk__write_file_durable(const char *path, const void *data, size_t len,
                                char *errstr, size_t errstr_size) {
    char tmp[4096];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "path too long: %s", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return lk__err(LK_ERR_IO, errstr, errstr_size, "cannot create %s: %s", tmp,
                       strerror(errno));
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return lk__err(LK_ERR_IO, errstr, errstr_size, "cannot write %s: %s", tmp,
                           strerror(e));
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return lk__err(LK_ERR_IO, errstr, errstr_size, "cannot fsync %s: %s", tmp,
                       strerror(e));
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return lk__err(LK_ERR_IO, errstr, errstr_size, "cannot rename %s to %s: %s", tmp,
                       path, strerror(e));
    }
    if (lk__fsync_dir(path) != 0)
        return lk__err(LK_ERR_IO, errstr, errstr_size, "cannot fsync directory of %s: %s",
                       path, strerror(errno));
    return LK_OK;
}

void lk__log(int level, const char *fmt, ...) {
    static const char *names[] = {"EMERG", "ALERT", "CRIT", "ERROR",
                                  "WARN",  "NOTICE", "INFO", "DEBUG"};
    if (level > lk__log_level)
        return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ %s lockstep: %s\n", when, ts.tv_nsec / 1000000,
            names[level < 0 ? 0 : level > 7 ? 7 : level], msg);
}

#ifndef LK_NO_FAULTPOINTS
static char fault_want[128];
static long fault_want_hit;
static atomic_long fault_hits;

static void fault_init(void) {
    const char *e = getenv("LOCKSTEP_FAULTPOINT");
    if (e) {
        lk__fmt(fault_want, sizeof fault_want, "%s", e);
        char *at = strchr(fault_want, '@');
        fault_want_hit = at ? strtol(at + 1, NULL, 10) : 1;
        if (at)
            *at = '\0';
    }
}

/* Called from the batch loop and from the delivery thread. */
void lk__faultpoint(const char *name) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, fault_init);
    const char *want = fault_want;
    if (!want[0] || strcmp(want, name))
        return;
    long hits = atomic_fetch_add(&fault_hits, 1) + 1;
    if (hits < fault_want_hit)
        return;
    lk__log(LK_LOG_NOTICE, "fault point %s (hit %ld): SIGKILL", name, hits);
    raise(SIGKILL);
}
#endif
