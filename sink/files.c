/*
 * files.c — the file sink (kind "files", exactly-once): one file per (output partition,
 * batch), <dir>/<partition>/<app.id>-<batch:020>.<ext>, ext "jsonl" or "txt".
 *
 * A delivery streams each partition's records into "<final>.tmp" next to its final name;
 * commit flushes and fsyncs every temporary file, renames each into place and fsyncs
 * every partition directory and the top directory. The final name is the fence, and the
 * content is a pure function of the batch's outbox records (no clocks, no attempt ids),
 * so a batch delivered again after a crash rewrites the same names with the same bytes:
 * recover() therefore reports fence 0 and the checkpoint's outbox acknowledgement is
 * what stops redelivery. Each file appears atomically; a batch spanning several
 * partitions appears file by file, and after a crash between renames the rest appears
 * when the batch is delivered again at restart.
 *
 * Partitioning: the output partition is the record's partition field when >= 0, else 0.
 * Files are never partitioned by hashing the key.
 *
 * Formats:
 *   jsonl  one compact JSON object per line, fields in this order:
 *          {"key":K,"value":V,"timestamp":MS}
 *          K and V are JSON strings when the bytes are valid UTF-8, null when absent (no
 *          key; tombstone); bytes that are not valid UTF-8 are written as "key_base64" /
 *          "value_base64" (standard alphabet, padded) in place of "key" / "value".
 *          Headers are not written.
 *   lines  the value bytes followed by '\n'; tombstones are skipped (a partition holding
 *          only tombstones gets no file); a value containing '\n' is written as-is and so
 *          reads back as several lines.
 *
 * recover() creates the directory (mkdir -p) and removes temporary files a crash left
 * behind: "<app.id>-*.tmp" in every partition directory (other applications' files are
 * left alone). open() ignores its configuration (conf may be NULL).
 */
#define _GNU_SOURCE
#include "sink_int.h"
#include "../core/json_int.h"
#include "../core/util_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    int32_t partition;
    char *final; /* <dir>/<p>/<app>-<batch>.<ext> */
    char *tmp;   /* final + ".tmp" */
    FILE *fp;    /* open until commit closes it */
    int renamed;
} part_t;

typedef struct {
    int jsonl;
    part_t *parts; /* sorted by partition */
    size_t nparts, cap;
} files_t;

static char *path_fmt(const char *fmt, ...) LK__PRINTF(1, 2);
static char *path_fmt(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *p = NULL;
    if (vasprintf(&p, fmt, ap) < 0)
        p = NULL;
    va_end(ap);
    return p;
}

static const char *ext_of(const files_t *f) { return f->jsonl ? "jsonl" : "txt"; }

/* fsync the directory that holds path (path is itself a directory). */
static int fsync_parent(const char *path) {
    char *copy = strdup(path);
    if (!copy)
        return -1;
    char *slash = strrchr(copy, '/');
    const char *parent = !slash ? "." : slash == copy ? "/" : (*slash = '\0', copy);
    int fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = fd < 0 ? -1 : LK__FAULT_SYS("fsync-dir", fsync(fd));
    if (fd >= 0)
        close(fd);
    free(copy);
    return rc;
}

/* mkdir -p, making each directory it creates durable in its parent. */
static int mkdir_p(const char *path) {
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
        if (mkdir(p, 0755) == 0)
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

/* ---- per-partition files ---- */

static void part_discard(part_t *pt) {
    if (pt->fp)
        fclose(pt->fp);
    if (pt->tmp && !pt->renamed)
        unlink(pt->tmp);
    free(pt->final);
    free(pt->tmp);
    memset(pt, 0, sizeof *pt);
}

static void discard_all(files_t *f) {
    for (size_t i = 0; i < f->nparts; i++)
        part_discard(&f->parts[i]);
    f->nparts = 0;
}

/* The open part of partition p, creating its directory and temporary file. */
static lk_err_t part_get(lk_sink_t *s, files_t *f, int32_t p, part_t **out, char *errstr,
                         size_t errstr_size) {
    size_t lo = 0, hi = f->nparts;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (f->parts[mid].partition < p)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < f->nparts && f->parts[lo].partition == p) {
        *out = &f->parts[lo];
        return LK_OK;
    }
    if (f->nparts == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        part_t *np = realloc(f->parts, cap * sizeof *np);
        if (!np)
            return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        f->parts = np;
        f->cap = cap;
    }
    part_t pt = {.partition = p};
    char *pdir = path_fmt("%s/%d", s->target, (int)p);
    pt.final = path_fmt("%s/%d/%s-%020llu.%s", s->target, (int)p, s->app_id,
                        (unsigned long long)s->batch, ext_of(f));
    pt.tmp = pt.final ? path_fmt("%s.tmp", pt.final) : NULL;
    if (!pdir || !pt.final || !pt.tmp) {
        free(pdir);
        part_discard(&pt);
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    }
    lk_err_t e = LK_OK;
    if (mkdir(pdir, 0755) != 0 && errno != EEXIST) {
        e = lk__err(LK_ERR_IO, errstr, errstr_size, "partition %d: cannot create directory %s: %s",
                    (int)p, pdir, strerror(errno));
    } else {
        int fd = open(pt.tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || !(pt.fp = fdopen(fd, "w"))) {
            int err = errno;
            if (fd >= 0) {
                close(fd);
                unlink(pt.tmp);
            }
            e = lk__err(err == ENOMEM ? LK_ERR_NOMEM : LK_ERR_IO, errstr, errstr_size,
                        "partition %d: cannot create %s: %s", (int)p, pt.tmp, strerror(err));
        }
    }
    free(pdir);
    if (e) {
        pt.renamed = 1; /* nothing of ours to unlink */
        part_discard(&pt);
        return e;
    }
    memmove(&f->parts[lo + 1], &f->parts[lo], (f->nparts - lo) * sizeof *f->parts);
    f->parts[lo] = pt;
    f->nparts++;
    *out = &f->parts[lo];
    return LK_OK;
}

static lk_err_t write_failed(const part_t *pt, int err, char *errstr, size_t errstr_size) {
    return lk__err(err == ENOMEM ? LK_ERR_NOMEM : LK_ERR_IO, errstr, errstr_size,
                   "partition %d: cannot write %s: %s", (int)pt->partition, pt->tmp,
                   strerror(err ? err : EIO));
}

/* ---- operations ---- */

static lk_err_t files_open(lk_sink_t *s, const lk_conf_t *conf, char *errstr,
                           size_t errstr_size) {
    (void)conf;
    int jsonl = !strcmp(s->format, "jsonl");
    if (!jsonl && strcmp(s->format, "lines"))
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size,
                       "sink '%s': file format '%s' is not jsonl or lines", s->name, s->format);
    if (!s->target[0])
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "sink '%s': no directory given",
                       s->name);
    files_t *f = calloc(1, sizeof *f);
    if (!f)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    f->jsonl = jsonl;
    s->impl = f;
    return LK_OK;
}

/* Remove <app>-*.tmp from one partition directory. */
static lk_err_t sweep_dir(lk_sink_t *s, const char *pdir, char *errstr, size_t errstr_size) {
    DIR *d = opendir(pdir);
    if (!d)
        return lk__err(LK_ERR_IO, errstr, errstr_size, "cannot read directory %s: %s", pdir,
                       strerror(errno));
    size_t alen = strlen(s->app_id);
    lk_err_t e = LK_OK;
    int removed = 0;
    struct dirent *ent;
    while (!e && (ent = readdir(d))) {
        size_t n = strlen(ent->d_name);
        if (n <= alen + 5 || strncmp(ent->d_name, s->app_id, alen) ||
            ent->d_name[alen] != '-' || strcmp(ent->d_name + n - 4, ".tmp"))
            continue;
        char *p = path_fmt("%s/%s", pdir, ent->d_name);
        if (!p)
            e = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        else if (unlink(p) != 0 && errno != ENOENT)
            e = lk__err(LK_ERR_IO, errstr, errstr_size, "cannot remove %s: %s", p,
                        strerror(errno));
        else {
            lk__log(LK_LOG_INFO, "sink '%s': removed %s, left by an interrupted delivery",
                    s->name, p);
            removed = 1;
        }
        free(p);
    }
    closedir(d);
    if (!e && removed && lk__fsync_dir(pdir) != 0)
        e = lk__err(LK_ERR_IO, errstr, errstr_size, "cannot fsync directory %s: %s", pdir,
                    strerror(errno));
    return e;
}

static int is_partition_name(const char *n) {
    if (!*n || strlen(n) > 10)
        return 0;
    for (; *n; n++)
        if (*n < '0' || *n > '9')
            return 0;
    return 1;
}

static lk_err_t files_recover(lk_sink_t *s, uint64_t *fence, char *errstr,
                              size_t errstr_size) {
    *fence = 0; /* the outbox acknowledgement is the fence: redelivery rewrites the same bytes */
    if (mkdir_p(s->target) != 0)
        return lk__err(LK_ERR_IO, errstr, errstr_size, "cannot create directory %s: %s",
                       s->target, strerror(errno));
    DIR *d = opendir(s->target);
    if (!d)
        return lk__err(LK_ERR_IO, errstr, errstr_size, "cannot read directory %s: %s",
                       s->target, strerror(errno));
    lk_err_t e = LK_OK;
    struct dirent *ent;
    while (!e && (ent = readdir(d))) {
        if (!is_partition_name(ent->d_name))
            continue;
        char *pdir = path_fmt("%s/%s", s->target, ent->d_name);
        struct stat st;
        if (!pdir)
            e = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        else if (stat(pdir, &st) == 0 && S_ISDIR(st.st_mode))
            e = sweep_dir(s, pdir, errstr, errstr_size);
        free(pdir);
    }
    closedir(d);
    return e;
}

static lk_err_t files_begin(lk_sink_t *s, uint64_t batch, char *errstr, size_t errstr_size) {
    (void)batch; /* s->batch is set */
    (void)errstr, (void)errstr_size;
    discard_all(s->impl);
    return LK_OK;
}

static lk_err_t files_write(lk_sink_t *s, const lk_out_record_t *r, char *errstr,
                            size_t errstr_size) {
    files_t *f = s->impl;
    if (!f->jsonl && !r->value)
        return LK_OK; /* lines: tombstones are skipped */
    part_t *pt = NULL;
    lk_err_t e = part_get(s, f, r->partition >= 0 ? r->partition : 0, &pt, errstr,
                          errstr_size);
    if (e)
        return e;
    if (!f->jsonl) {
        if ((r->value_len && fwrite(r->value, 1, r->value_len, pt->fp) != r->value_len) ||
            putc('\n', pt->fp) == EOF)
            return write_failed(pt, errno, errstr, errstr_size);
        return LK_OK;
    }
    json_t *obj = json_object();
    int bad = !obj || lk__json_set_bytes(obj, "key", r->key, r->key_len, 0) ||
              lk__json_set_bytes(obj, "value", r->value, r->value_len, 0) ||
              json_object_set_new(obj, "timestamp", json_integer(r->timestamp_ms));
    if (bad) {
        json_decref(obj);
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    }
    errno = 0;
    int rc = json_dumpf(obj, pt->fp, JSON_COMPACT | JSON_PRESERVE_ORDER);
    int err = errno;
    json_decref(obj);
    if (rc != 0 || putc('\n', pt->fp) == EOF)
        return write_failed(pt, rc != 0 ? err : errno, errstr, errstr_size);
    return LK_OK;
}

static lk_err_t files_commit(lk_sink_t *s, const lk_batch_rec_t *b, char *errstr,
                             size_t errstr_size) {
    (void)b;
    files_t *f = s->impl;
    for (size_t i = 0; i < f->nparts; i++) {
        part_t *pt = &f->parts[i];
        errno = 0;
        if (LK__FAULT_SYS("write", fflush(pt->fp)) != 0 || ferror(pt->fp))
            return write_failed(pt, errno, errstr, errstr_size);
        if (LK__FAULT_SYS("fsync", fsync(fileno(pt->fp))) != 0)
            return lk__err(LK_ERR_IO, errstr, errstr_size, "partition %d: cannot fsync %s: %s",
                           (int)pt->partition, pt->tmp, strerror(errno));
        FILE *fp = pt->fp;
        pt->fp = NULL;
        if (fclose(fp) != 0)
            return write_failed(pt, errno, errstr, errstr_size);
    }
    lk__faultpoint("during-file-rename");
    for (size_t i = 0; i < f->nparts; i++) {
        part_t *pt = &f->parts[i];
        if (LK__FAULT_SYS("rename", rename(pt->tmp, pt->final)) != 0)
            return lk__err(LK_ERR_IO, errstr, errstr_size,
                           "partition %d: cannot rename %s to %s: %s", (int)pt->partition,
                           pt->tmp, pt->final, strerror(errno));
        pt->renamed = 1;
    }
    for (size_t i = 0; i < f->nparts; i++) {
        part_t *pt = &f->parts[i];
        if (lk__fsync_dir(pt->final) != 0) /* the directory holding it */
            return lk__err(LK_ERR_IO, errstr, errstr_size,
                           "partition %d: cannot fsync the directory of %s: %s",
                           (int)pt->partition, pt->final, strerror(errno));
    }
    /* Always, not only when a partition directory was created in this delivery: an
     * earlier, interrupted delivery may have created it without making it durable. */
    if (f->nparts && lk__fsync_dir(s->target) != 0)
        return lk__err(LK_ERR_IO, errstr, errstr_size, "cannot fsync directory %s: %s",
                       s->target, strerror(errno));
    discard_all(f);
    return LK_OK;
}

static void files_abort(lk_sink_t *s) {
    if (s->impl)
        discard_all(s->impl);
}

static void files_close(lk_sink_t *s) {
    files_t *f = s->impl;
    if (!f)
        return;
    discard_all(f);
    free(f->parts);
    free(f);
    s->impl = NULL;
}

const lk__sink_ops_t lk__sink_files_ops = {
    .kind = "files",
    .exactly_once = 1,
    .open = files_open,
    .recover = files_recover,
    .begin = files_begin,
    .write = files_write,
    .commit = files_commit,
    .abort = files_abort,
    .close = files_close,
};
