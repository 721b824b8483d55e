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

lk_store_t *tu_open(const char *dir, const char *app) {
    lk_store_opts_t o = {.dir = dir, .app_id = app, .map_size = 1 << 20};
    lk_store_t *s = NULL;
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
