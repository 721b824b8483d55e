/*
 * stdout_sink.c — the stdout sink (kind "stdout"), for demos and debugging: each record
 * is printed as "key<TAB>value\n" (a tombstone as "key<TAB>(deleted)\n"; no key prints
 * an empty key), the raw bytes as they are, and stdout is flushed at commit.
 *
 * At-least-once, documented: there is no fence (recover() reports 0), and nothing can
 * take back what was printed, so a batch interrupted by a crash or a failed flush is
 * printed again when it is delivered again. open() ignores its configuration (conf may
 * be NULL); headers are not printed.
 */
#define _GNU_SOURCE
#include "sink_int.h"
#include "../core/util_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static lk_err_t stdout_open(lk__sink_t *s, const lk_conf_t *conf, char *errstr,
                            size_t errstr_size) {
    (void)s, (void)conf, (void)errstr, (void)errstr_size;
    return LK_OK;
}

static lk_err_t stdout_recover(lk__sink_t *s, uint64_t *fence, char *errstr,
                               size_t errstr_size) {
    (void)s, (void)errstr, (void)errstr_size;
    *fence = 0;
    return LK_OK;
}

static lk_err_t stdout_begin(lk__sink_t *s, uint64_t batch, char *errstr,
                             size_t errstr_size) {
    (void)s, (void)batch, (void)errstr, (void)errstr_size;
    return LK_OK;
}

static lk_err_t stdout_write(lk__sink_t *s, const lk__out_record_t *r, char *errstr,
                             size_t errstr_size) {
    (void)s;
    errno = 0;
    flockfile(stdout); /* one line whole: the delivery thread writes beside the loop's */
    int bad = (r->key_len && fwrite(r->key, 1, r->key_len, stdout) != r->key_len) ||
              putchar_unlocked('\t') == EOF ||
              (r->value ? r->value_len &&
                              fwrite(r->value, 1, r->value_len, stdout) != r->value_len
                        : fputs("(deleted)", stdout) == EOF) ||
              putchar_unlocked('\n') == EOF;
    funlockfile(stdout);
    if (bad)
        return lk__err(LK_ERR_IO, errstr, errstr_size, "cannot write to stdout: %s",
                       strerror(errno ? errno : EIO));
    return LK_OK;
}

static lk_err_t stdout_commit(lk__sink_t *s, const lk__batch_rec_t *b, char *errstr,
                              size_t errstr_size) {
    (void)s, (void)b;
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout)) {
        int err = errno ? errno : EIO;
        clearerr(stdout); /* let a later delivery try again */
        return lk__err(LK_ERR_IO, errstr, errstr_size, "cannot write to stdout: %s",
                       strerror(err));
    }
    return LK_OK;
}

static lk_err_t stdout_abort(lk__sink_t *s, char *errstr, size_t errstr_size) {
    (void)s, (void)errstr, (void)errstr_size; /* what was printed stays: at-least-once */
    return LK_OK;
}

static void stdout_close(lk__sink_t *s) {
    (void)s;
    fflush(stdout);
}

const lk__sink_ops_t lk__sink_stdout_ops = {
    .kind = "stdout",
    .exactly_once = 0,
    .open = stdout_open,
    .recover = stdout_recover,
    .begin = stdout_begin,
    .write = stdout_write,
    .commit = stdout_commit,
    .abort = stdout_abort,
    .close = stdout_close,
};
