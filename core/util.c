/*
 * util.c — internal helpers (util_int.h): error formatting, clocks, array growth, durable
 * writes and directories, the library's one sleep (lk__nap_ms), and logging. The durable
 * write follows Redis' rdbSave: temp file, fsync, rename, fsync dir; a created directory
 * is made durable the same way, by an fsync of its parent. The log threshold is a
 * context's, bound per thread (DESIGN.md, Threads); the process default serves threads
 * working for no context.
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
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int lk__log_default_level = LK_LOG_INFO;

/* The context's log.level bound to this thread (0: none). Thread-local rather than a
 * parameter of lk__log: every module logs, and which context it works for is known only
 * at the entry points (DESIGN.md, Threads). */
static _Thread_local int log_bound;

int lk__log_bind(int level) {
    int prev = log_bound;
    log_bound = level;
    return prev;
}

void lk__log_unbind(int prev) {
    log_bound = prev;
}

int lk__log_threshold(void) {
    return log_bound ? log_bound : lk__log_default_level;
}

void lk__vfmt(char *buf, size_t size, const char *fmt, va_list ap) {
    if (buf && size > 0)
        vsnprintf(buf, size, fmt, ap);
}

void lk__fmt(char *buf, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    lk__vfmt(buf, size, fmt, ap);
    va_end(ap);
}

lk_err_t lk__err(lk_err_t err, char *errstr, size_t errstr_size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    lk__vfmt(errstr, errstr_size, fmt, ap);
    va_end(ap);
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

/* Doubling keeps appends amortized O(1); the checks keep a huge need from wrapping
 * around to a small allocation that the caller would then write past. */
void *lk__vec_reserve(void *v, size_t *cap, size_t need, size_t size, size_t min_cap) {
    if (!size || !need)
        return NULL;
    if (need <= *cap && v)
        return v;
    size_t ncap = *cap > SIZE_MAX / 2 ? SIZE_MAX : *cap * 2;
    if (ncap < min_cap)
        ncap = min_cap;
    if (ncap < need)
        ncap = need;
    if (ncap > SIZE_MAX / size) { /* doubling overflows: the least that fits */
        ncap = need;
        if (ncap > SIZE_MAX / size)
            return NULL;
    }
    void *n = realloc(v, ncap * size);
    if (!n)
        return NULL;
    *cap = ncap;
    return n;
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
    int rc = LK__FAULT_SYS("fsync-dir", fsync(fd));
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

/* fsync the directory holding the entry path names: path is cut at its last slash for
 * the call and restored. */
static int fsync_parent(char *path) {
    char *slash = strrchr(path, '/');
    if (!slash)
        return lk__fsync_dir(".");
    if (slash == path)
        return lk__fsync_dir("/");
    *slash = '\0';
    int rc = lk__fsync_dir(path);
    *slash = '/';
    return rc;
}

int lk__mkdir_p(const char *path) {
    char *p = strdup(path);
    if (!p)
        return -1;
    size_t len = strlen(p);
    while (len > 1 && p[len - 1] == '/')
        p[--len] = '\0';
    int rc = 0;
    for (char *c = p + 1;; c++) {
        if (*c != '/' && *c != '\0')
            continue;
        char save = *c;
        *c = '\0';
        struct stat st;
        if (mkdir(p, 0700) == 0)
            rc = fsync_parent(p);
        else if (errno != EEXIST || stat(p, &st) != 0)
            rc = -1;
        else if (!S_ISDIR(st.st_mode)) {
            errno = ENOTDIR;
            rc = -1;
        }
        *c = save;
        if (rc || !save)
            break;
    }
    int err = errno;
    free(p);
    errno = err;
    return rc;
}

void lk__nap_ms(int64_t ms, int (*wake)(const void *o), const void *o) {
    int64_t end = lk__mono_ms() + ms;
    for (int64_t left = ms; left > 0 && !(wake && wake(o)); left = end - lk__mono_ms()) {
        struct timespec ts = {0, (left > 50 ? 50 : left) * 1000000L};
        nanosleep(&ts, NULL);
    }
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
        ssize_t w = LK__FAULT_SYS("write", write(fd, p, left));
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
    if (LK__FAULT_SYS("fsync", fsync(fd)) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return lk__err(LK_ERR_IO, errstr, errstr_size, "cannot fsync %s: %s", tmp,
                       strerror(e));
    }
    close(fd);
    if (LK__FAULT_SYS("rename", rename(tmp, path)) != 0) {
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

static void log_line(int level, const char *fmt, va_list ap) LK__PRINTF(2, 0);
static void log_line(int level, const char *fmt, va_list ap) {
    static const char *names[] = {"EMERG", "ALERT", "CRIT", "ERROR",
                                  "WARN",  "NOTICE", "INFO", "DEBUG"};
    char msg[2048];
    lk__vfmt(msg, sizeof msg, fmt, ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ %s lockstep: %s\n", when, ts.tv_nsec / 1000000,
            names[level < 0 ? 0 : level > 7 ? 7 : level], msg);
}

void lk__log(int level, const char *fmt, ...) {
    if (level > lk__log_threshold())
        return;
    va_list ap;
    va_start(ap, fmt);
    log_line(level, fmt, ap);
    va_end(ap);
}

void lk__log_write(int level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_line(level, fmt, ap);
    va_end(ap);
}

#ifndef LK_NO_FAULTPOINTS
/*
 * Fault points and error injection for the crash tests, after SQLite's fault-injecting
 * VFS: LOCKSTEP_FAULTPOINT holds comma-separated specs, each
 *     NAME[@N]               SIGKILL at the N-th hit of NAME (default 1)
 *     NAME=ERROR[@N][*]      the N-th call of the instrumented operation NAME (with '*':
 *                            every call from the N-th on) fails with ERROR instead of
 *                            running; ERROR is an errno name (EIO, ENOSPC, ...), a number,
 *                            or for the librdkafka points a librdkafka error name
 * Parsed at the first hit, again in a child after fork (at its first hit: a test sets the
 * variable in the child), and by lk__fault_reset() (tests change it in process).
 */
typedef struct {
    char name[64];
    char word[48]; /* ERROR as given; empty: a kill spec */
    int code;      /* ERROR as an errno value or number; 0: not one */
    long nth;
    int every;
    atomic_long hits;
} fault_spec_t;

static fault_spec_t fault_specs[16];
static atomic_int fault_nspecs;
static atomic_int fault_parsed;
static pthread_mutex_t fault_mu = PTHREAD_MUTEX_INITIALIZER;

/* errno name -> value, from glibc's own table (strerrorname_np), or a plain number. */
static int fault_decode(const char *word) {
    char *end;
    long v = strtol(word, &end, 10);
    if (*word && !*end)
        return (int)v;
    for (int e = 1; e < 256; e++) {
        const char *n = strerrorname_np(e);
        if (n && !strcmp(n, word))
            return e;
    }
    return 0;
}

static void fault_parse(void) {
    int n = 0;
    const char *env = getenv("LOCKSTEP_FAULTPOINT");
    char buf[1024];
    lk__fmt(buf, sizeof buf, "%s", env ? env : "");
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok && n < (int)LK_ARRAY_SIZE(fault_specs);
         tok = strtok_r(NULL, ",", &save)) {
        fault_spec_t *f = &fault_specs[n];
        memset(f->name, 0, sizeof f->name);
        memset(f->word, 0, sizeof f->word);
        f->code = 0;
        f->nth = 1;
        f->every = 0;
        atomic_store(&f->hits, 0);
        size_t len = strlen(tok);
        if (len && tok[len - 1] == '*') {
            f->every = 1;
            tok[--len] = '\0';
        }
        char *at = strchr(tok, '@');
        if (at) {
            char *end;
            *at = '\0';
            f->nth = strtol(at + 1, &end, 10);
            if (*end || f->nth < 1) {
                lk__log(LK_LOG_ERR, "LOCKSTEP_FAULTPOINT: '%s' in '%s' is not a hit number "
                        "(NAME[=ERROR][@N][*], N >= 1); spec ignored", at + 1, env);
                continue;
            }
        }
        char *eq = strchr(tok, '=');
        if (eq) {
            *eq = '\0';
            lk__fmt(f->word, sizeof f->word, "%s", eq + 1);
            f->code = fault_decode(f->word);
            if (!f->word[0]) {
                lk__log(LK_LOG_ERR, "LOCKSTEP_FAULTPOINT: '%s' names no error after '='; "
                        "spec ignored", tok);
                continue;
            }
        }
        lk__fmt(f->name, sizeof f->name, "%s", tok);
        if (f->name[0])
            n++;
    }
    atomic_store(&fault_nspecs, n);
}

static void fault_after_fork(void) {
    pthread_mutex_init(&fault_mu, NULL);
    atomic_store(&fault_parsed, 0);
}

static void fault_ensure(int again) {
    if (!again && atomic_load_explicit(&fault_parsed, memory_order_acquire))
        return;
    static int registered;
    pthread_mutex_lock(&fault_mu);
    if (!registered)
        registered = pthread_atfork(NULL, NULL, fault_after_fork) == 0;
    if (again || !atomic_load(&fault_parsed)) {
        fault_parse();
        atomic_store_explicit(&fault_parsed, 1, memory_order_release);
    }
    pthread_mutex_unlock(&fault_mu);
}

void lk__fault_reset(void) {
    fault_ensure(1);
}

/* The spec of name that fires now (counting this hit), or NULL. A kill spec does not
 * return: kills and errors share the point names, so "fsync@3" kills at the third fsync. */
static fault_spec_t *fault_hit(const char *name) {
    fault_ensure(0);
    int n = atomic_load(&fault_nspecs);
    fault_spec_t *fired = NULL;
    for (int i = 0; i < n; i++) {
        fault_spec_t *f = &fault_specs[i];
        if (strcmp(f->name, name))
            continue;
        long hits = atomic_fetch_add(&f->hits, 1) + 1;
        if (hits != f->nth && !(f->every && hits > f->nth))
            continue;
        if (!f->word[0]) {
            lk__log(LK_LOG_NOTICE, "fault point %s (hit %ld): SIGKILL", name, hits);
            raise(SIGKILL);
        }
        if (!fired) {
            lk__log(LK_LOG_WARNING, "fault point %s (hit %ld): failing with %s", name, hits,
                    f->word);
            fired = f;
        }
    }
    return fired;
}

int lk__faultpoint_armed(const char *name) {
    fault_ensure(0);
    int n = atomic_load(&fault_nspecs);
    for (int i = 0; i < n; i++)
        if (!strcmp(fault_specs[i].name, name))
            return 1;
    return 0;
}

/* Called from the batch loop and from the delivery thread. */
void lk__faultpoint(const char *name) {
    (void)fault_hit(name);
}

const char *lk__fault_word(const char *name) {
    fault_spec_t *f = fault_hit(name);
    return f ? f->word : NULL;
}

static _Thread_local int fault_last;

int lk__fault_rc_last(void) {
    return fault_last;
}

int lk__fault_rc(const char *name) {
    fault_spec_t *f = fault_hit(name);
    if (!f)
        return 0;
    if (!f->code)
        lk__log(LK_LOG_WARNING, "fault point %s: '%s' is not an errno name or number; "
                "failing with EIO", name, f->word);
    return fault_last = f->code ? f->code : EIO;
}

int lk__fault_sys(const char *name) {
    int e = lk__fault_rc(name);
    if (e)
        errno = e;
    return e != 0;
}

/*
 * The phase report (LOCKSTEP_PHASE_FILE): a 128-byte file mapped shared; byte 0 holds
 * the batch loop's phase, byte 1 the delivery thread's, bytes 16..63 the same as words
 * for a human with cat, bytes 64..79 and 80..95 the delivery attempt each is sending. A
 * store into the page cache per change, no system call; the page outlives a SIGKILL, so
 * the runner reads where the process died after killing it.
 */
static unsigned char *phase_map;
static pthread_once_t phase_once = PTHREAD_ONCE_INIT;
static _Thread_local int phase_slot;
static const char *const phase_words[] = {
    "none", "starting", "planning", "fetching", "processing", "committing",
    "delivering", "delivering-commit", "acknowledging", "idle", "recovering", "stopping",
    "awaiting-delivery"};

static void phase_init(void) {
    const char *path = getenv("LOCKSTEP_PHASE_FILE");
    if (!path || !*path)
        return;
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0 || ftruncate(fd, 128) != 0) {
        lk__log(LK_LOG_WARNING, "LOCKSTEP_PHASE_FILE %s: %s; no phase report", path,
                strerror(errno));
        if (fd >= 0)
            close(fd);
        return;
    }
    void *m = mmap(NULL, 128, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        lk__log(LK_LOG_WARNING, "LOCKSTEP_PHASE_FILE %s: mmap: %s; no phase report", path,
                strerror(errno));
        return;
    }
    phase_map = m;
}

void lk__phase(int phase) {
    pthread_once(&phase_once, phase_init);
    if (!phase_map || phase < 0 || phase >= (int)LK_ARRAY_SIZE(phase_words))
        return;
    unsigned char *word = phase_map + 16 + 24 * phase_slot;
    memset(word, ' ', 23);
    memcpy(word, phase_words[phase], strlen(phase_words[phase]));
    word[23] = '\n';
    __atomic_store_n(&phase_map[phase_slot], (unsigned char)phase, __ATOMIC_RELAXED);
}

void lk__phase_attempt(const char *attempt) {
    pthread_once(&phase_once, phase_init);
    if (!phase_map)
        return;
    unsigned char *a = phase_map + 64 + 16 * phase_slot;
    memset(a, 0, 16);
    memcpy(a, attempt, strnlen(attempt, 16));
}

void lk__phase_thread(int slot) {
    phase_slot = slot ? 1 : 0;
}
#endif
