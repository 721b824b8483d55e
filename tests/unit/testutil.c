/*
 * testutil.c — implementation of the unit-test helpers in testutil.h.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

char *tu_slurp(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    char *buf = NULL;
    size_t n = 0;
    FILE *m = open_memstream(&buf, &n);
    cr_assert_not_null(m, "open_memstream");
    char chunk[4096];
    size_t k;
    while ((k = fread(chunk, 1, sizeof chunk, fp)) > 0)
        fwrite(chunk, 1, k, m);
    fclose(fp);
    fclose(m);
    if (len)
        *len = n;
    return buf;
}

const char *tu_dir;
char tu_err[1024];
static char scratch[4096];

void tu_scratch_init(void) {
    tu_dir = tu_tmpdir(scratch, sizeof scratch);
}

void tu_scratch_fini(void) {
    if (tu_dir)
        tu_rmrf(tu_dir);
}

const char *tu_tmpdir(char *buf, size_t size) {
    const char *base = getenv("TMPDIR");
    snprintf(buf, size, "%s/lktest.XXXXXX", base && *base ? base : "/tmp");
    cr_assert_not_null(mkdtemp(buf), "mkdtemp");
    return buf;
}

void tu_rmrf(const char *path) {
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            tu_rmrf(p);
        }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) {
        h ^= c[i];
        h *= 1099511628211ULL;
    }
    return h;
}

uint64_t tu_file_digest(const char *path) {
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return 0;
    uint64_t h = 1469598103934665603ULL;
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, fp)) > 0)
        h = fnv(h, buf, n);
    fclose(fp);
    return h;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

uint64_t tu_dir_digest(const char *dir) {
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    char *names[256];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strcmp(e->d_name, "LOCK") &&
            strcmp(e->d_name, "lock.mdb"))
            names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        uint64_t fd = tu_file_digest(p);
        h = fnv(h, names[i], strlen(names[i]));
        h = fnv(h, &fd, sizeof fd);
        free(names[i]);
    }
    return h;
}

lk__store_t *tu_open(const char *dir, const char *app) {
    lk__store_opts_t o = {.dir = dir, .app_id = app, .map_size = 1 << 20};
    lk__store_t *s = NULL;
    char err[512] = "";
    lk_err_t e = lk__store_open(&s, &o, err, sizeof err);
    cr_assert_eq(e, LK_OK, "open %s: %s (%s)", dir, err, lk_err_name(e));
    return s;
}

int tu_run(const char *cmd, char **out) {
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p, "popen %s", cmd);
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 2)
            buf = realloc(buf, cap *= 2);
    }
    buf[len] = 0;
    int st = pclose(p);
    if (out)
        *out = buf;
    else
        free(buf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

lk_err_t tu_open_opts(lk__store_t **out, const char *dir, const char *app, size_t map_size,
                      uint64_t batch_history, char *err, size_t err_size) {
    lk__store_opts_t o = {.dir = dir, .app_id = app, .map_size = map_size,
                         .batch_history = batch_history};
    if (err && err_size)
        err[0] = '\0';
    return lk__store_open(out, &o, err, err_size);
}

lk__store_txn_t *tu_begin(lk__store_t *s, int write) {
    lk__store_txn_t *t = NULL;
    char err[512] = "";
    lk_err_t e = lk__store_txn_begin(s, write, &t, err, sizeof err);
    cr_assert_eq(e, LK_OK, "txn_begin(write=%d): %s (%s)", write, err, lk_err_name(e));
    return t;
}

void tu_commit(lk__store_txn_t *t) {
    char err[512] = "";
    lk_err_t e = lk__store_txn_commit(t, err, sizeof err);
    cr_assert_eq(e, LK_OK, "txn_commit: %s (%s)", err, lk_err_name(e));
}

const char *tu_path(char *buf, size_t size, const char *dir, const char *name) {
    snprintf(buf, size, "%s/%s", dir, name);
    return buf;
}

void tu_write_file(const char *path, const void *data, size_t len) {
    FILE *fp = fopen(path, "wb");
    cr_assert_not_null(fp, "fopen %s", path);
    cr_assert_eq(fwrite(data, 1, len, fp), len, "write %s", path);
    cr_assert_eq(fclose(fp), 0, "close %s", path);
}

int tu_dir_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

int tu_file_contains(const char *path, const void *needle, size_t len) {
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return 0;
    size_t cap = 1 << 16, n = 0, r;
    char *buf = malloc(cap);
    while (buf && (r = fread(buf + n, 1, cap - n, fp)) > 0) {
        n += r;
        if (n == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb)
                free(buf);
            buf = nb;
        }
    }
    fclose(fp);
    int found = buf && memmem(buf, n, needle, len) != NULL;
    free(buf);
    return found;
}

void tu_fill(void *buf, size_t len, uint64_t seed) {
    unsigned char *p = buf;
    uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (unsigned char)(x >> 24);
    }
}
