/*
 * files.c — the file sink (kind "files", exactly-once): one file per (output partition,
 * batch), <dir>/<partition>/<app.id>+<sink uid>+<checkpoint id>-<batch:020>.<ext>, ext
 * "jsonl" or "txt". The name says which application, which sink of it and which
 * checkpoint wrote the file: two sinks of one application never write the same names
 * (and two file sinks on one directory are refused when the pipeline is defined), and a
 * new checkpoint under the same app.id never touches the files of an earlier one.
 *
 * A delivery streams each partition's records into "<final>.tmp" next to its final name
 * (created O_EXCL|O_NOFOLLOW, mode 0600); commit flushes and fsyncs every temporary file,
 * moves each into place without replacing anything (renameat2 RENAME_NOREPLACE, or
 * link()+unlink() where the file system lacks it) and fsyncs every partition directory
 * and the top directory. The content is a pure function of the batch's outbox records
 * (no clocks, no attempt ids), so a batch delivered again after a crash finds its own
 * final name already there with the same bytes: that partition counts as delivered. A
 * final name holding different bytes is never overwritten: the sink stops (LK_ERR_FATAL)
 * naming the file. A batch that an earlier version (whose names were
 * <app.id>-<batch:020>.<ext>) delivered but did not acknowledge before the upgrade is
 * found under that name with the same bytes and not written again. recover() reports
 * fence 0: the checkpoint's outbox acknowledgement
 * is what stops redelivery, and only names carrying this checkpoint's id are ever
 * considered this sink's output. Each file appears atomically; a batch spanning several
 * partitions appears file by file, and after a crash between renames the rest appears
 * when the batch is delivered again at restart.
 *
 * Directories: the top directory must be private to this user (owner, not writable by
 * group or others) unless dir.allow.shared=true (see lk__dir_check_private); directories
 * lockstep creates are 0700, and a partition directory that is a symbolic link or not
 * private is refused.
 *
 * Partitioning: the output partition is the record's partition field when >= 0, else 0.
 * Files are never partitioned by hashing the key.
 *
 * Formats:
 *   jsonl  one compact JSON object per line, fields in this order:
 *          {"key":K,"value":V,"timestamp":MS}, then, only for a record with Kafka
 *          headers (copy, dead letters), "headers":[{"name":N,"value":V},...] in order.
 *          K, V and N are JSON strings when the bytes are valid UTF-8, null when absent
 *          (no key; tombstone; a header without value); bytes that are not valid UTF-8
 *          are written as "key_base64" / "value_base64" / "name_base64" (standard
 *          alphabet, padded) in place of "key" / "value" / "name".
 *   lines  one line per record: the value bytes followed by '\n', with '\\' written as
 *          "\\\\", '\n' as "\\n" and '\r' as "\\r", so every record is exactly one line
 *          (unescape those three to get the bytes back); keys, timestamps and headers
 *          are not written; tombstones are skipped (a partition holding only tombstones
 *          gets no file).
 *
 * recover() checks and creates the directory (mkdir -p, 0700) and removes the temporary
 * files a crash left behind: exactly "<app.id>+<sink uid>+<checkpoint id>-<batch:020>.
 * <ext>.tmp" in every partition directory (other applications', other sinks' and other
 * checkpoints' files are left alone). open() reads dir.allow.shared from conf (NULL:
 * false).
 */
#define _GNU_SOURCE
#include "sink_int.h"
#include "../core/conf_int.h"
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
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    int32_t partition;
    char *final; /* <dir>/<p>/<app>+<uid>+<checkpoint>-<batch>.<ext> */
    char *legacy; /* <dir>/<p>/<app>-<batch>.<ext>: the name before checkpoint ids */
    char *tmp;   /* final + ".tmp" */
    FILE *fp;    /* open until commit closes it */
    int renamed;
} file_part_t;

typedef struct {
    int jsonl;
    int dir_flags; /* LK__DIR_ALLOW_SHARED from dir.allow.shared */
    file_part_t *parts; /* sorted by partition */
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

/* ---- per-partition files ---- */

static void part_discard(file_part_t *pt) {
    if (pt->fp)
        fclose(pt->fp);
    if (pt->tmp && !pt->renamed)
        unlink(pt->tmp);
    free(pt->final);
    free(pt->tmp);
    free(pt->legacy);
    memset(pt, 0, sizeof *pt);
}

static void discard_all(files_t *f) {
    for (size_t i = 0; i < f->nparts; i++)
        part_discard(&f->parts[i]);
    f->nparts = 0;
}

/* The open part of partition p, creating its directory and temporary file. */
static lk_err_t part_get(lk__sink_t *s, files_t *f, int32_t p, file_part_t **out, char *errstr,
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
    file_part_t *np = lk__vec_reserve(f->parts, &f->cap, f->nparts + 1, sizeof *np, 8);
    if (!np)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    f->parts = np;
    file_part_t pt = {.partition = p};
    char *pdir = path_fmt("%s/%d", s->target, (int)p);
    pt.final = path_fmt("%s/%d/%s+%s+%s-%020llu.%s", s->target, (int)p, s->app_id, s->name,
                        s->checkpoint_id, (unsigned long long)s->batch, ext_of(f));
    pt.tmp = pt.final ? path_fmt("%s.tmp", pt.final) : NULL;
    pt.legacy = path_fmt("%s/%d/%s-%020llu.%s", s->target, (int)p, s->app_id,
                         (unsigned long long)s->batch, ext_of(f));
    if (!pdir || !pt.final || !pt.tmp || !pt.legacy) {
        free(pdir);
        part_discard(&pt);
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    }
    lk_err_t e = LK_OK;
    char why[600];
    if (mkdir(pdir, 0700) != 0 && errno != EEXIST) {
        e = lk__err(LK_ERR_IO, errstr, errstr_size, "partition %d: cannot create directory %s: %s",
                    (int)p, pdir, strerror(errno));
    } else if ((e = lk__dir_check_private(pdir, f->dir_flags | LK__DIR_NOFOLLOW, why,
                                          sizeof why))) {
        lk__err(e == LK_ERR_IO ? e : (e = LK_ERR_FATAL), errstr, errstr_size, "partition %d: %s",
                (int)p, why);
    } else {
        /* O_EXCL|O_NOFOLLOW: never write through a link or into a file someone else made.
         * The name is this sink's, checkpoint's and batch's own: one already there is the
         * remains of an earlier attempt of this very delivery, and is replaced. */
        int fd = -1;
        for (int tries = 0; fd < 0 && tries < 2; tries++) {
            fd = open(pt.tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
            if (fd < 0 && (errno != EEXIST || tries || unlink(pt.tmp) != 0))
                break;
        }
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

static lk_err_t write_failed(const file_part_t *pt, int err, char *errstr, size_t errstr_size) {
    return lk__err(err == ENOMEM ? LK_ERR_NOMEM : LK_ERR_IO, errstr, errstr_size,
                   "partition %d: cannot write %s: %s", (int)pt->partition, pt->tmp,
                   strerror(err ? err : EIO));
}

/* ---- operations ---- */

static lk_err_t files_open(lk__sink_t *s, const lk_conf_t *conf, char *errstr,
                           size_t errstr_size) {
    int jsonl = !strcmp(s->format, "jsonl");
    if (!jsonl && strcmp(s->format, "lines"))
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size,
                       "sink '%s': file format '%s' is not jsonl or lines", s->name, s->format);
    if (!s->target[0])
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size, "sink '%s': no directory given",
                       s->name);
    /* the file name must fit NAME_MAX (255): "<app>+<uid>+<32 hex>-<20 digits>.jsonl.tmp" */
    size_t name_len = strlen(s->app_id) + strlen(s->name) + 2 + LK_CHECKPOINT_ID_LEN + 1 + 20 +
                      sizeof ".jsonl.tmp" - 1;
    if (name_len > 255)
        return lk__err(LK_ERR_INVALID_ARG, errstr, errstr_size,
                       "sink '%s': app.id and sink uid are too long for file names (%zu + %zu "
                       "characters; at most %d together)",
                       s->name, strlen(s->app_id), strlen(s->name),
                       255 - (int)(name_len - strlen(s->app_id) - strlen(s->name)));
    files_t *f = calloc(1, sizeof *f);
    if (!f)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    f->jsonl = jsonl;
    f->dir_flags = conf && lk__conf_bool(conf, LK__P_DIR_ALLOW_SHARED) ? LK__DIR_ALLOW_SHARED : 0;
    s->impl = f;
    return LK_OK;
}

/* Non-zero if name is exactly "<prefix>-<20 digits>.<jsonl|txt>.tmp": a temporary file of
 * this application's sink in this checkpoint, and nothing else (app "a" must not take
 * app "a-b"'s files, sink "x" not sink "x+y"'s). */
static int is_own_tmp(const char *name, const char *prefix, size_t plen) {
    if (strncmp(name, prefix, plen) || name[plen] != '-')
        return 0;
    const char *d = name + plen + 1;
    for (int i = 0; i < 20; i++)
        if (d[i] < '0' || d[i] > '9')
            return 0;
    return !strcmp(d + 20, ".jsonl.tmp") || !strcmp(d + 20, ".txt.tmp");
}

/* Remove this sink's temporary files (see is_own_tmp) from one partition directory. */
static lk_err_t sweep_dir(lk__sink_t *s, const char *pdir, char *errstr, size_t errstr_size) {
    DIR *d = opendir(pdir);
    if (!d)
        return lk__err(LK_ERR_IO, errstr, errstr_size, "cannot read directory %s: %s", pdir,
                       strerror(errno));
    char *prefix = path_fmt("%s+%s+%s", s->app_id, s->name, s->checkpoint_id);
    if (!prefix) {
        closedir(d);
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    }
    size_t plen = strlen(prefix);
    lk_err_t e = LK_OK;
    int removed = 0;
    struct dirent *ent;
    while (!e && (ent = readdir(d))) {
        if (!is_own_tmp(ent->d_name, prefix, plen))
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
    free(prefix);
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

static lk_err_t files_recover(lk__sink_t *s, uint64_t *fence, char *errstr,
                              size_t errstr_size) {
    *fence = 0; /* the outbox acknowledgement is the fence: redelivery finds the same bytes */
    files_t *f = s->impl;
    if (!s->checkpoint_id[0])
        return lk__err(LK_ERR_FATAL, errstr, errstr_size,
                       "the checkpoint has no id (format 1 opened read-only?): file names "
                       "need it");
    if (lk__mkdir_p(s->target) != 0)
        return lk__err(LK_ERR_IO, errstr, errstr_size, "cannot create directory %s: %s",
                       s->target, strerror(errno));
    lk_err_t ce = lk__dir_check_private(s->target, f->dir_flags, errstr, errstr_size);
    if (ce)
        return ce == LK_ERR_IO ? ce : LK_ERR_FATAL;
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
        else if (lstat(pdir, &st) == 0 && S_ISDIR(st.st_mode))
            e = sweep_dir(s, pdir, errstr, errstr_size);
        free(pdir);
    }
    closedir(d);
    return e;
}

static lk_err_t files_begin(lk__sink_t *s, uint64_t batch, char *errstr, size_t errstr_size) {
    (void)batch; /* s->batch is set */
    (void)errstr, (void)errstr_size;
    discard_all(s->impl);
    return LK_OK;
}

static lk_err_t files_write(lk__sink_t *s, const lk__out_record_t *r, char *errstr,
                            size_t errstr_size) {
    files_t *f = s->impl;
    if (!f->jsonl && !r->value)
        return LK_OK; /* lines: tombstones are skipped */
    file_part_t *pt = NULL;
    lk_err_t e = part_get(s, f, r->partition >= 0 ? r->partition : 0, &pt, errstr,
                          errstr_size);
    if (e)
        return e;
    if (!f->jsonl) {
        /* one record, one line: a newline inside a value must not make two records */
        const unsigned char *v = r->value, *end = v + r->value_len, *run = v;
        int bad = 0;
        for (; v < end && !bad; v++) {
            const char *esc = *v == '\\' ? "\\\\" : *v == '\n' ? "\\n" : *v == '\r' ? "\\r" : NULL;
            if (!esc)
                continue;
            bad = (v > run && fwrite(run, 1, (size_t)(v - run), pt->fp) != (size_t)(v - run)) ||
                  fputs(esc, pt->fp) == EOF;
            run = v + 1;
        }
        if (bad || (end > run && fwrite(run, 1, (size_t)(end - run), pt->fp) != (size_t)(end - run)) ||
            putc('\n', pt->fp) == EOF)
            return write_failed(pt, errno, errstr, errstr_size);
        return LK_OK;
    }
    json_t *obj = json_object();
    int bad = !obj || lk__json_set_bytes(obj, "key", r->key, r->key_len, 0) ||
              lk__json_set_bytes(obj, "value", r->value, r->value_len, 0) ||
              json_object_set_new(obj, "timestamp", json_integer(r->timestamp_ms));
    if (!bad && r->nheaders) { /* only when there are some: other files stay as they were */
        json_t *hs = json_array();
        bad = !hs || json_object_set_new(obj, "headers", hs);
        for (size_t i = 0; !bad && i < r->nheaders; i++) {
            json_t *h = json_object();
            bad = !h || json_array_append_new(hs, h) ||
                  lk__json_set_bytes(h, "name", r->headers[i].name,
                                     strlen(r->headers[i].name), 0) ||
                  lk__json_set_bytes(h, "value", r->headers[i].value,
                                     r->headers[i].value_len, 0);
        }
    }
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

/* 1 if the two files hold the same bytes, 0 if not, -1 (errno) if one cannot be read. */
static int same_bytes(const char *a, const char *b) {
    int fa = open(a, O_RDONLY | O_NOFOLLOW | O_CLOEXEC), fb = -1;
    if (fa < 0 || (fb = open(b, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)) < 0) {
        int e = errno;
        if (fa >= 0)
            close(fa);
        errno = e;
        return -1;
    }
    static _Thread_local char ba[65536], bb[65536];
    int same = -1;
    for (;;) {
        ssize_t na = read(fa, ba, sizeof ba), nb = 0;
        while (na > 0 && nb < na) { /* read b to the same length */
            ssize_t r = read(fb, bb + nb, (size_t)(na - nb));
            if (r <= 0)
                break;
            nb += r;
        }
        if (na < 0 || nb < 0)
            break;
        if (na != nb || memcmp(ba, bb, (size_t)na)) {
            same = 0;
            break;
        }
        if (na == 0) {
            same = read(fb, bb, 1) == 0;
            break;
        }
    }
    int e = errno;
    close(fa);
    close(fb);
    errno = e;
    return same;
}

/* Remove pt's temporary file: its bytes are in place under another name. */
static lk_err_t drop_tmp(const file_part_t *pt, char *errstr, size_t errstr_size) {
    if (unlink(pt->tmp) != 0)
        return lk__err(LK_ERR_IO, errstr, errstr_size, "partition %d: cannot remove %s: %s",
                       (int)pt->partition, pt->tmp, strerror(errno));
    return LK_OK;
}

/* Move pt's temporary file to its final name without ever replacing a file there. A
 * final name that exists already holds this very batch of this sink and checkpoint (the
 * name says so) from a delivery interrupted before its acknowledgement: with the same
 * bytes it counts as delivered; with other bytes it is left alone and the sink stops. */
static lk_err_t place(file_part_t *pt, char *errstr, size_t errstr_size) {
    /* Upgraded from a version that named files <app>-<batch>.<ext>: a batch it delivered
     * but did not acknowledge before the upgrade is already there under that name, with
     * the same bytes (the content does not depend on the version): not written twice. */
    struct stat lst;
    if (lstat(pt->legacy, &lst) == 0 && S_ISREG(lst.st_mode) &&
        same_bytes(pt->tmp, pt->legacy) == 1) {
        lk__log(LK_LOG_INFO, "partition %d: %s was already delivered (before the upgrade)",
                (int)pt->partition, pt->legacy);
        return drop_tmp(pt, errstr, errstr_size);
    }
    int rc = LK__FAULT_SYS("rename",
                           renameat2(AT_FDCWD, pt->tmp, AT_FDCWD, pt->final, RENAME_NOREPLACE));
    if (rc != 0 && (errno == EINVAL || errno == ENOSYS)) {
        /* a file system without RENAME_NOREPLACE: link() never replaces either */
        rc = link(pt->tmp, pt->final);
        if (rc == 0)
            return drop_tmp(pt, errstr, errstr_size);
    }
    if (rc == 0)
        return LK_OK;
    if (errno != EEXIST)
        return lk__err(LK_ERR_IO, errstr, errstr_size, "partition %d: cannot rename %s to %s: %s",
                       (int)pt->partition, pt->tmp, pt->final, strerror(errno));
    int same = same_bytes(pt->tmp, pt->final);
    if (same < 0)
        return lk__err(LK_ERR_IO, errstr, errstr_size,
                       "partition %d: %s exists and cannot be compared: %s", (int)pt->partition,
                       pt->final, strerror(errno));
    if (!same)
        return lk__err(LK_ERR_FATAL, errstr, errstr_size,
                       "partition %d: %s exists with other content than this batch's output; "
                       "refusing to overwrite it (was it edited, or copied from elsewhere?)",
                       (int)pt->partition, pt->final);
    lk__log(LK_LOG_INFO, "partition %d: %s was already delivered (same bytes)",
            (int)pt->partition, pt->final);
    return drop_tmp(pt, errstr, errstr_size);
}

static lk_err_t files_commit(lk__sink_t *s, const lk__batch_rec_t *b, char *errstr,
                             size_t errstr_size) {
    (void)b;
    files_t *f = s->impl;
    for (size_t i = 0; i < f->nparts; i++) {
        file_part_t *pt = &f->parts[i];
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
        file_part_t *pt = &f->parts[i];
        lk_err_t e = place(pt, errstr, errstr_size);
        if (e)
            return e;
        pt->renamed = 1;
    }
    for (size_t i = 0; i < f->nparts; i++) {
        file_part_t *pt = &f->parts[i];
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

static lk_err_t files_abort(lk__sink_t *s, char *errstr, size_t errstr_size) {
    (void)errstr, (void)errstr_size;
    if (s->impl)
        discard_all(s->impl);
    return LK_OK;
}

static void files_close(lk__sink_t *s) {
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
