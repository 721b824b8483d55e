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
lk_store_t *tu_open(const char *dir, const char *app);
/** Run a shell command, capture stdout into a malloc'ed string; returns exit status. */
int tu_run(const char *cmd, char **out);

#endif
