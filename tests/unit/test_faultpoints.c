/*
 * test_faultpoints.c — the fault point machinery itself (core/util.c): the spec grammar
 * of LOCKSTEP_FAULTPOINT (NAME[@N] kills, NAME=ERROR[@N][*] fails, several specs
 * comma-separated), what each instrumented step of lk__write_file_durable reports when
 * it fails (the operation, the file and the OS message; the old content stays), and the
 * phase report of LOCKSTEP_PHASE_FILE as a runner reads it after a SIGKILL.
 */
#define _GNU_SOURCE
#include "core/util_int.h"
#include "testutil.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char dir[256];

static void setup(void) {
    tu_tmpdir(dir, sizeof dir);
}
static void teardown(void) {
    unsetenv("LOCKSTEP_FAULTPOINT");
    lk__fault_reset();
    tu_rmrf(dir);
}
TestSuite(faultpoints, .init = setup, .fini = teardown);

static void arm(const char *spec) {
    cr_assert_eq(setenv("LOCKSTEP_FAULTPOINT", spec, 1), 0);
    lk__fault_reset();
}

Test(faultpoints, nth_call_fails_once) {
    arm("fsync=EIO@2");
    cr_assert_eq(lk__fault_rc("fsync"), 0);
    cr_assert_eq(lk__fault_rc("fsync"), EIO);
    cr_assert_eq(lk__fault_rc("fsync"), 0);
    cr_assert_eq(lk__fault_rc("fsync"), 0);
}

Test(faultpoints, star_fails_every_call_from_the_nth) {
    arm("write=ENOSPC@3*");
    cr_assert_eq(lk__fault_rc("write"), 0);
    cr_assert_eq(lk__fault_rc("write"), 0);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(lk__fault_rc("write"), ENOSPC);
}

Test(faultpoints, several_specs_numbers_and_other_names) {
    arm("rename=EXDEV,mdb_txn_commit=28@2,init_transactions=_TIMED_OUT");
    cr_assert_eq(lk__fault_rc("fsync"), 0, "a point no spec names runs");
    cr_assert_eq(lk__fault_rc("rename"), EXDEV);
    cr_assert_eq(lk__fault_rc("mdb_txn_commit"), 0);
    cr_assert_eq(lk__fault_rc("mdb_txn_commit"), 28);
    cr_assert_str_eq(lk__fault_word("init_transactions"), "_TIMED_OUT");
    cr_assert_null(lk__fault_word("init_transactions"));
}

Test(faultpoints, sys_macro_sets_errno_and_skips_the_call) {
    arm("fsync=EROFS");
    int called = 0;
    errno = 0;
    int rc = LK__FAULT_SYS("fsync", (called = 1, 0));
    cr_assert_eq(rc, -1);
    cr_assert_eq(errno, EROFS);
    cr_assert_eq(called, 0, "the operation must not run when the fault fires");
    rc = LK__FAULT_SYS("fsync", (called = 1, 0));
    cr_assert_eq(rc, 0);
    cr_assert_eq(called, 1);
}

Test(faultpoints, rc_macro_runs_the_cleanup_instead) {
    arm("mdb_txn_commit=EIO");
    int cleaned = 0, called = 0;
    int rc = LK__FAULT_RC("mdb_txn_commit", cleaned = 1, (called = 1, 0));
    cr_assert_eq(rc, EIO);
    cr_assert_eq(cleaned, 1);
    cr_assert_eq(called, 0);
}

Test(faultpoints, bad_hit_number_is_ignored_not_a_crash) {
    arm("fsync=EIO@zero,rename=EIO@0,write=EIO");
    cr_assert_eq(lk__fault_rc("fsync"), 0);
    cr_assert_eq(lk__fault_rc("rename"), 0);
    cr_assert_eq(lk__fault_rc("write"), EIO, "the valid spec after bad ones still works");
}

/* The kill form: NAME@N kills at the N-th hit, not before; kills also work on the names
 * of instrumented operations. */
static int child_hits_until_death(const char *spec, const char *name, int max) {
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        arm(spec);
        for (int i = 1; i <= max; i++) {
            (void)lk__fault_rc(name);
            char c = (char)i;
            if (write(fds[1], &c, 1) != 1)
                _exit(3);
        }
        _exit(0);
    }
    close(fds[1]);
    int survived = 0;
    char c;
    while (read(fds[0], &c, 1) == 1)
        survived = c;
    close(fds[0]);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "no SIGKILL (status %d)", st);
    return survived;
}

Test(faultpoints, kill_form_kills_at_the_nth_hit) {
    cr_assert_eq(child_hits_until_death("fsync@3", "fsync", 10), 2);
    cr_assert_eq(child_hits_until_death("rename=EIO@1,rename@2", "rename", 10), 1);
}

static void write_old(const char *path) {
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("old", f);
    fclose(f);
}

static void assert_content(const char *path, const char *want) {
    char buf[64] = "";
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    cr_assert_str_eq(buf, want);
}

/* lk__write_file_durable under each fault: the error names the step, the file and the
 * OS message; before the rename the old content stays and no temp file is left. */
static void durable_write_fails(const char *spec, const char *says, const char *content) {
    char path[512], tmp[600], err[512] = "";
    snprintf(path, sizeof path, "%s/f", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    write_old(path);
    arm(spec);
    cr_assert_eq(lk__write_file_durable(path, "new", 3, err, sizeof err), LK_ERR_IO);
    cr_assert(strstr(err, says), "'%s' does not say '%s'", err, says);
    cr_assert(strstr(err, "/f"), "'%s' does not name the file", err);
    assert_content(path, content);
    cr_assert_neq(access(tmp, F_OK), 0, "temp file left behind");
    arm("");
    cr_assert_eq(lk__write_file_durable(path, "new", 3, err, sizeof err), LK_OK, "%s", err);
    assert_content(path, "new");
}

Test(faultpoints, durable_write_write_fails) {
    durable_write_fails("write=ENOSPC", "cannot write", "old");
    durable_write_fails("write=ENOSPC", "No space left on device", "old");
}
Test(faultpoints, durable_write_fsync_fails) {
    durable_write_fails("fsync=EIO", "cannot fsync", "old");
    durable_write_fails("fsync=EIO", "Input/output error", "old");
}
Test(faultpoints, durable_write_rename_fails) {
    durable_write_fails("rename=EACCES", "cannot rename", "old");
    durable_write_fails("rename=EACCES", "Permission denied", "old");
}
Test(faultpoints, durable_write_directory_fsync_fails) {
    /* renamed already: the new content is there, but not known durable: an error */
    durable_write_fails("fsync-dir=EIO", "cannot fsync directory", "new");
    durable_write_fails("fsync-dir=EIO", "Input/output error", "new");
}

/* The phase report outlives a SIGKILL: the runner reads where the process died. */
Test(faultpoints, phase_file_survives_sigkill) {
    char path[512];
    snprintf(path, sizeof path, "%s/phase", dir);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("LOCKSTEP_PHASE_FILE", path, 1);
        lk__phase(LK__PH_PROCESSING);
        lk__phase(LK__PH_COMMITTING);
        lk__phase_thread(1);
        lk__phase_attempt("0123456789abcdef");
        lk__phase(LK__PH_DELIVERING_COMMIT);
        raise(SIGKILL);
        _exit(0);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFSIGNALED(st));
    unsigned char buf[128];
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0);
    cr_assert_eq(read(fd, buf, sizeof buf), 128);
    close(fd);
    cr_assert_eq(buf[0], LK__PH_COMMITTING);
    cr_assert_eq(buf[1], LK__PH_DELIVERING_COMMIT);
    cr_assert_eq(memcmp(buf + 16, "committing ", 11), 0);
    cr_assert_eq(memcmp(buf + 40, "delivering-commit ", 18), 0);
    cr_assert_eq(memcmp(buf + 64, "\0\0\0\0", 4), 0, "the loop began no delivery");
    cr_assert_eq(memcmp(buf + 80, "0123456789abcdef", 16), 0);
}

/* No symlink is followed: a phase file that is a link is refused (no report). */
Test(faultpoints, phase_file_symlink_is_not_followed) {
    char path[512], target[512];
    snprintf(path, sizeof path, "%s/phase", dir);
    snprintf(target, sizeof target, "%s/target", dir);
    cr_assert_eq(symlink(target, path), 0);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("LOCKSTEP_PHASE_FILE", path, 1);
        lk__phase(LK__PH_PROCESSING);
        _exit(0);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    cr_assert_neq(access(target, F_OK), 0, "the link was followed");
}
