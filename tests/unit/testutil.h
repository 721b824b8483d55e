/*
 * testutil.h — helpers shared by the unit tests: scratch directories that are removed
 * afterwards, file digests to prove "nothing was modified", and running the CLI.
 */
#ifndef LK_TESTUTIL_H
#define LK_TESTUTIL_H

#include "lockstep.h"
#include "state/store_int.h"

#include <stddef.h>
#include <stdint.h>

/** Create a fresh directory under $TMPDIR (or /tmp); the path is static storage. */
const char *tu_tmpdir(char *buf, size_t size);
/** rm -rf path. */
void tu_rmrf(const char *path);
/** FNV-1a digest of a file's bytes (0 if unreadable). */
uint64_t tu_file_digest(const char *path);
/** Digest of a directory: names, sizes and contents of its regular files, excluding
 * LMDB's and lockstep's lock files. */
uint64_t tu_dir_digest(const char *dir);
/** Open a store for app in dir with default options; asserts success. */
lk__store_t *tu_open(const char *dir, const char *app);
/** Run a shell command, capture stdout into a malloc'ed string; returns exit status. */
int tu_run(const char *cmd, char **out);

/** Open with explicit options (map size 0 and history 0 mean the defaults); returns the
 * result of lk__store_open, *out is set on success. */
lk_err_t tu_open_opts(lk__store_t **out, const char *dir, const char *app, size_t map_size,
                      uint64_t batch_history, char *err, size_t err_size);
/** Begin a transaction; asserts success. */
lk__store_txn_t *tu_begin(lk__store_t *s, int write);
/** Commit a transaction; asserts success. */
void tu_commit(lk__store_txn_t *t);
/** "dir/name" into buf; returns buf. */
const char *tu_path(char *buf, size_t size, const char *dir, const char *name);
/** Create or replace a file with the given bytes; asserts success. */
void tu_write_file(const char *path, const void *data, size_t len);
/** Number of directory entries other than "." and ".." (-1 if it cannot be read). */
int tu_dir_entries(const char *dir);
/** Non-zero if the file at path contains the byte string needle. */
int tu_file_contains(const char *path, const void *needle, size_t len);
/** The whole file, malloc'ed and NUL-terminated (*len, if len, its size without the NUL);
 *  NULL if it cannot be opened. */
char *tu_slurp(const char *path, size_t *len);
/** Fill buf with deterministic pseudo-random bytes from seed. */
void tu_fill(void *buf, size_t len, uint64_t seed);

/* ---- fixtures shared by the test files (one copy here, not one per file) ---- */

/** The running test's scratch directory, set by tu_scratch_init(). */
extern const char *tu_dir;
/** A suite's .init: a fresh scratch directory per test (Criterion runs each test in its
 *  own process, so the globals are the test's own). */
void tu_scratch_init(void);
/** A suite's .fini: removes tu_dir. */
void tu_scratch_fini(void);

/** The error text of the calls CHECK()ed: pass ES as their (errstr, errstr_size). */
extern char tu_err[1024];
#define ES tu_err, sizeof tu_err
/** Assert that expr, an lk_err_t call given ES, returns LK_OK; shows tu_err if not.
 *  (Expands to Criterion's cr_assert_eq: the file includes criterion.h.) */
#define CHECK(expr)                                                                      \
    do {                                                                                 \
        tu_err[0] = '\0';                                                                \
        lk_err_t e_ = (expr);                                                            \
        cr_assert_eq(e_, LK_OK, "%s: %s (%s)", #expr, tu_err, lk_err_name(e_));          \
    } while (0)

#endif
