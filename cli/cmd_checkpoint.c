/*
 * cmd_checkpoint.c — `lockstep checkpoint ...`: work on a checkpoint directory without
 * running the application: inspect and export (read-only, safe while it runs) and
 * reset-offsets (refused while it runs).
 *
 * Exit status: 0 success (also a dry run), 1 an error ("lockstep: MESSAGE (LK_ERR_...)"
 * on stderr), 2 a usage error (the message and the usage on stderr).
 */
#define _GNU_SOURCE
#include "cli_int.h"
#include "../core/json_int.h"
#include "../core/util_int.h"
#include "../state/store_int.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- shared helpers ---- */

/* A usage error: the message and the usage on stderr; returns 2. */
static int usage_err(const char *cmd, const char *help, const char *fmt, ...)
    LK__PRINTF(3, 4);
static int usage_err(const char *cmd, const char *help, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "lockstep checkpoint %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n%s", help);
    return 2;
}

/* An error: "lockstep: MESSAGE (LK_ERR_NAME)" on stderr; returns 1. */
static int fail(lk_err_t e, const char *msg) {
    fprintf(stderr, "lockstep: %s (%s)\n", msg, lk_err_name(e));
    return 1;
}

/*
 * Option with a value: "--name VALUE" or "--name=VALUE" at argv[*i]. Returns 1 with *val
 * set (and *i advanced past the value), -1 when the value is missing (empty, absent, or
 * the next argument is another option), 0 when argv[*i] is not this option.
 */
static int opt_value(int argc, char **argv, int *i, const char *name, const char **val) {
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n))
        return 0;
    if (a[n] == '=') {
        *val = a + n + 1;
        return **val ? 1 : -1;
    }
    if (a[n])
        return 0;
    if (*i + 1 >= argc || !argv[*i + 1][0] || !strncmp(argv[*i + 1], "--", 2))
        return -1;
    *val = argv[++*i];
    return 1;
}

/*
 * A string option given at most once: 0 when argv[*i] is not `name`; 1 when its value
 * went to *slot; -1 after a usage error ("NAME needs WHAT", "NAME given twice" plus
 * twice_hint), whose exit status is then in *rc.
 */
static int opt_once(int argc, char **argv, int *i, const char *name, const char *what,
                    const char *twice_hint, const char **slot, const char *cmd,
                    const char *help, int *rc) {
    const char *v;
    int r = opt_value(argc, argv, i, name, &v);
    if (!r)
        return 0;
    if (r < 0)
        *rc = usage_err(cmd, help, "%s needs %s", name, what);
    else if (*slot)
        *rc = usage_err(cmd, help, "%s given twice%s", name, twice_hint);
    else
        *slot = v;
    return r < 0 || *rc ? -1 : 1;
}

/* Strict decimal integer in [min, max]; 0 on success. */
static int parse_i64(const char *s, int64_t min, int64_t max, int64_t *out) {
    if (!s || !*s || *s == ' ' || *s == '+')
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static void iso_time(int64_t ms, char *buf, size_t size) {
    int64_t sec = ms / 1000, frac = ms % 1000;
    if (frac < 0) {
        frac += 1000;
        sec--;
    }
    time_t t = (time_t)sec;
    struct tm tm;
    char base[64] = "?";
    if (gmtime_r(&t, &tm))
        strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    lk__fmt(buf, size, "%s.%03dZ", base, (int)frac);
}

/* A growable list of strings. */
typedef struct {
    char **v;
    size_t n, cap;
} strlist_t;

static int strlist_add(strlist_t *l, const char *s) {
    char **nv = lk__vec_reserve(l->v, &l->cap, l->n + 1, sizeof *nv, 16);
    if (!nv)
        return -1;
    l->v = nv;
    if (!(l->v[l->n] = strdup(s)))
        return -1;
    l->n++;
    return 0;
}

static void strlist_free(strlist_t *l) {
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int cmd_checkpoint_inspect(int argc, char **argv) {
    static const char help[] =
        "Usage: lockstep checkpoint inspect DIR [--json]\n"
        "\n"
        "Describe the checkpoint in DIR: app.id, format version, topology, offsets per\n"
        "partition, the last batch, outbox depth per sink, sink fences, accumulators,\n"
        "state entry counts and sizes, and the configuration of the last run.\n"
        "Read-only and safe while the application runs.\n"
        "\n"
        "  --json   machine-readable output\n";
    if (lk__cli_has_help(argc, argv)) {
        fputs(help, stdout);
        return 0;
    }
    const char *dir = NULL;
    int json = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (argv[i][0] == '-') {
            fprintf(stderr, "lockstep checkpoint inspect: unknown option %s\n%s", argv[i], help);
            return 2;
        } else if (!dir)
            dir = argv[i];
        else {
            fprintf(stderr, "lockstep checkpoint inspect: one DIR only\n%s", help);
            return 2;
        }
    }
    if (!dir) {
        fprintf(stderr, "lockstep checkpoint inspect: DIR is required\n%s", help);
        return 2;
    }
    lk__store_opts_t o = {.dir = dir, .readonly = 1};
    lk__store_t *s;
    char err[1024];
    lk_err_t e = lk__store_open(&s, &o, err, sizeof err);
    if (e) {
        fprintf(stderr, "lockstep: %s (%s)\n", err, lk_err_name(e));
        return 1;
    }
    e = lk__store_inspect(s, stdout, json, err, sizeof err);
    lk__store_close(s);
    if (e) {
        fprintf(stderr, "lockstep: %s (%s)\n", err, lk_err_name(e));
        return 1;
    }
    return 0;
}

/* ---- export ---- */

static const char export_help[] =
    "Usage: lockstep checkpoint export DIR [--operator UID] [--output FILE]\n"
    "\n"
    "Write the keyed state held in the checkpoint DIR as JSON lines, one line per\n"
    "entry, operators in uid order and each operator's keys in byte order:\n"
    "  {\"operator\":\"UID\",\"key\":\"K\",\"value\":\"V\","
    "\"updated\":\"2024-01-31T12:00:00.000Z\"}\n"
    "\n"
    "A key or value that is not text (valid UTF-8 without control characters other\n"
    "than tab, newline and carriage return) is written as \"key_base64\" or\n"
    "\"value_base64\" (standard alphabet, padded) in place of \"key\" or \"value\". The\n"
    "built-in operators keep 8-byte integers and doubles in host byte order: those\n"
    "values appear as value_base64 (the integer 3 on x86-64 is \"AwAAAAAAAAA=\");\n"
    "decoding them is left to the reader, nothing is guessed.\n"
    "\"updated\" is the batch time (UTC) of the batch that last changed the entry.\n"
    "\n"
    "Read-only and safe while the application runs: the export is one consistent\n"
    "snapshot (a single read transaction) as of the last committed batch.\n"
    "\n"
    "  --operator UID   export only the state of operator UID (an error, listing the\n"
    "                   operators with state, if the checkpoint has none for UID)\n"
    "  --output FILE    write FILE instead of stdout, durably: FILE.tmp is written,\n"
    "                   synced and renamed to FILE, so FILE is complete or untouched\n";


typedef struct {
    FILE *fp;
    const char *uid;
    uint64_t entries;
    int failed; /* 1: out of memory; 2: write error (errno in err) */
    int err;
} export_ctx_t;

static int export_entry(const void *key, size_t klen, const void *val, size_t vlen,
                        int64_t updated_ms, void *opaque) {
    export_ctx_t *x = opaque;
    char when[64];
    iso_time(updated_ms, when, sizeof when);
    json_t *o = json_object();
    if (!o || json_object_set_new(o, "operator", json_string(x->uid)) ||
        lk__json_set_bytes(o, "key", key, klen, 1) || lk__json_set_bytes(o, "value", val, vlen, 1) ||
        json_object_set_new(o, "updated", json_string(when))) {
        json_decref(o);
        x->failed = 1;
        return 1;
    }
    errno = 0;
    int bad = json_dumpf(o, x->fp, JSON_COMPACT | JSON_PRESERVE_ORDER) != 0 ||
              fputc('\n', x->fp) == EOF;
    json_decref(o);
    if (bad) {
        x->failed = 2;
        x->err = errno ? errno : EIO;
        return 1;
    }
    x->entries++;
    return 0;
}

static int collect_uid(const lk__state_stat_t *st, void *opaque) {
    return strlist_add(opaque, st->uid) ? 1 : 0;
}

/* Export the operators in uids from t to fp. */
static lk_err_t export_to(lk__store_txn_t *t, const strlist_t *uids, FILE *fp,
                          uint64_t *entries, char *err, size_t err_size) {
    export_ctx_t x = {.fp = fp};
    for (size_t i = 0; i < uids->n; i++) {
        x.uid = uids->v[i];
        lk_err_t e = lk__store_state_foreach_uid(t, x.uid, export_entry, &x);
        if (x.failed == 1)
            return lk__err(LK_ERR_NOMEM, err, err_size, "out of memory (or operator uid "
                           "'%s' is not UTF-8)", x.uid);
        if (x.failed == 2)
            return lk__err(LK_ERR_IO, err, err_size, "write error: %s", strerror(x.err));
        if (e) /* the store's message names the checkpoint and what is wrong */
            return lk__err(e, err, err_size, "reading the state of operator '%s': %s", x.uid,
                           lk__store_txn_errstr(t)[0] ? lk__store_txn_errstr(t)
                                                      : lk_err_str(e));
    }
    *entries = x.entries;
    return LK_OK;
}


/*
 * 1 (and err says why) if writing output would write into a checkpoint directory: the
 * exported one (e.g. --output DIR/data.mdb replaced the checkpoint's data by its own
 * export) or any other (a directory holding data.mdb). The output's directory is
 * resolved (symlinks, "..") and compared, since FILE.tmp is created there and renamed
 * over FILE.
 */
static int output_in_checkpoint(const char *dir, const char *output, char *err,
                                size_t err_size) {
    char *copy = strdup(output);
    if (!copy)
        return 0;
    char *parent_real = realpath(dirname(copy), NULL);
    free(copy);
    char *dir_real = realpath(dir, NULL);
    int bad = 0;
    if (parent_real && dir_real) {
        size_t n = strlen(dir_real);
        if (!strncmp(parent_real, dir_real, n) && (parent_real[n] == '/' || !parent_real[n])) {
            lk__fmt(err, err_size,
                    "--output %s is inside the checkpoint directory %s: writing there would "
                    "damage the checkpoint; write the export to another directory",
                    output, dir);
            bad = 1;
        }
    }
    if (!bad && parent_real) {
        char p[PATH_MAX + 16];
        struct stat st;
        lk__fmt(p, sizeof p, "%s/data.mdb", parent_real);
        if (stat(p, &st) == 0) {
            lk__fmt(err, err_size,
                    "--output %s is in %s, which holds a checkpoint (data.mdb): writing there "
                    "could damage it; write the export to another directory",
                    output, parent_real);
            bad = 1;
        }
    }
    free(parent_real);
    free(dir_real);
    return bad;
}

static int cmd_checkpoint_export(int argc, char **argv) {
    if (lk__cli_has_help(argc, argv)) {
        fputs(export_help, stdout);
        return 0;
    }
    const char *dir = NULL, *only = NULL, *output = NULL;
    for (int i = 0; i < argc; i++) {
        int r, rc = 0;
        if ((r = opt_once(argc, argv, &i, "--operator", "a UID", "", &only, "export",
                          export_help, &rc)) ||
            (r = opt_once(argc, argv, &i, "--output", "a FILE", "", &output, "export",
                          export_help, &rc))) {
            if (r < 0)
                return rc;
        } else if (argv[i][0] == '-') {
            return usage_err("export", export_help, "unknown option %s", argv[i]);
        } else if (!dir) {
            dir = argv[i];
        } else {
            return usage_err("export", export_help, "one DIR only (also got %s)", argv[i]);
        }
    }
    if (!dir)
        return usage_err("export", export_help, "DIR is required");

    char err[2048];
    if (output && output_in_checkpoint(dir, output, err, sizeof err))
        return fail(LK_ERR_INVALID_ARG, err);
    lk__store_opts_t o = {.dir = dir, .readonly = 1};
    lk__store_t *s = NULL;
    lk__store_txn_t *t = NULL;
    strlist_t uids = {0};
    FILE *fp = NULL;
    char *tmp = NULL;
    int rc = 1;
    lk_err_t e = lk__store_open(&s, &o, err, sizeof err);
    if (e)
        return fail(e, err);
    /* One read transaction for everything: a snapshot as of one commit. */
    if ((e = lk__store_txn_begin(s, 0, &t, err, sizeof err)))
        goto out;
    if ((e = lk__store_state_stats(t, collect_uid, &uids))) {
        lk__fmt(err, sizeof err, "checkpoint %s: cannot list the state databases: %s", dir,
                lk__store_txn_errstr(t)[0] ? lk__store_txn_errstr(t) : lk_err_str(e));
        goto out;
    }
    if (only) {
        size_t i = 0;
        while (i < uids.n && strcmp(uids.v[i], only))
            i++;
        if (i == uids.n) {
            char list[1024] = "";
            size_t len = 0;
            for (size_t j = 0; j < uids.n && len < sizeof list; j++)
                len += (size_t)snprintf(list + len, sizeof list - len, "%s%s",
                                        j ? ", " : "", uids.v[j]);
            e = LK_ERR_NOT_FOUND;
            lk__fmt(err, sizeof err, "checkpoint %s has no state for operator '%s'; %s%s",
                    dir, only, uids.n ? "operators with state: " : "no operator has state",
                    list);
            goto out;
        }
        strlist_free(&uids);
        if (strlist_add(&uids, only)) {
            e = lk__err(LK_ERR_NOMEM, err, sizeof err, "out of memory");
            goto out;
        }
    }
    if (output) {
        if (asprintf(&tmp, "%s.tmp", output) < 0) {
            tmp = NULL;
            e = lk__err(LK_ERR_NOMEM, err, sizeof err, "out of memory");
            goto out;
        }
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || !(fp = fdopen(fd, "w"))) {
            e = lk__err(LK_ERR_IO, err, sizeof err, "cannot create %s: %s", tmp,
                        strerror(errno));
            if (fd >= 0)
                close(fd);
            goto out;
        }
    }
    uint64_t entries = 0;
    if ((e = export_to(t, &uids, fp ? fp : stdout, &entries, err, sizeof err)))
        goto out;
    lk__store_txn_abort(t);
    t = NULL;
    if (fp) {
        int bad = fflush(fp) != 0 || fsync(fileno(fp)) != 0;
        int saved = errno;
        bad |= fclose(fp) != 0;
        fp = NULL;
        if (bad || rename(tmp, output) != 0) {
            e = lk__err(LK_ERR_IO, err, sizeof err, "cannot write %s: %s", tmp,
                        strerror(bad && saved ? saved : errno));
            goto out;
        }
        free(tmp);
        tmp = NULL; /* renamed: nothing to clean up */
        if (lk__fsync_dir(output) != 0) {
            e = lk__err(LK_ERR_IO, err, sizeof err, "cannot sync the directory of %s: %s",
                        output, strerror(errno));
            goto out;
        }
        printf("exported %" PRIu64 " entries of %zu operator%s to %s\n", entries, uids.n,
               uids.n == 1 ? "" : "s", output);
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        e = lk__err(LK_ERR_IO, err, sizeof err, "cannot write to stdout: %s",
                    strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (fp)
        fclose(fp);
    if (tmp)
        unlink(tmp);
    free(tmp);
    lk__store_txn_abort(t);
    lk__store_close(s);
    strlist_free(&uids);
    return rc ? fail(e, err) : 0;
}

/* ---- reset-offsets ---- */

static const char reset_help[] =
    "Usage: lockstep checkpoint reset-offsets DIR --app-id ID --topic T\n"
    "           [--partition P]... (--to N | --delete) [--yes]\n"
    "\n"
    "Change where the application whose checkpoint is DIR resumes reading topic T.\n"
    "The application must be stopped: the command takes the checkpoint's lock like\n"
    "the application does, and is refused (exit 1, naming the pid that holds it)\n"
    "while any process has the checkpoint open for writing.\n"
    "\n"
    "  --app-id ID     the checkpoint's app.id (required; refused if it differs)\n"
    "  --topic T       the input topic; it must have offsets in the checkpoint\n"
    "  --partition P   a partition of T with an offset in the checkpoint; repeat it\n"
    "                  for several; without it: every partition of T in the checkpoint\n"
    "  --to N          the next offset to read becomes N (N >= 0). N is not checked\n"
    "                  against the broker: beyond the log end the next start stops with\n"
    "                  LK_ERR_DATA_LOSS; below the log start on.data.loss decides\n"
    "  --delete        forget the offset: the next start treats the partition as new\n"
    "                  and reads it from its earliest offset (from auto.offset.reset's\n"
    "                  choice if no partition of T keeps an offset)\n"
    "  --yes           write; without it this is a dry run: every check is made and\n"
    "                  the changes are printed, but nothing is written\n"
    "\n"
    "Exactly one of --to and --delete. Each change is printed as \"T[P]: OLD -> NEW\".\n"
    "A pending batch plan (the ranges of a batch interrupted before its commit) would\n"
    "replay the old offsets, so it is dropped too; the next batch is planned afresh.\n"
    "All changes are written in one transaction, synced to disk before exit 0.\n"
    "Keyed state, the outbox and sink fences are not changed: moving back processes\n"
    "records again (their output is produced again), moving forward skips records.\n";

static int cmd_checkpoint_reset_offsets(int argc, char **argv) {
    if (lk__cli_has_help(argc, argv)) {
        fputs(reset_help, stdout);
        return 0;
    }
    const char *dir = NULL, *app = NULL, *topic = NULL;
    int32_t want[256];
    size_t nwant = 0;
    int64_t to = -1;
    int del = 0, yes = 0;
    for (int i = 0; i < argc; i++) {
        const char *v;
        int r, rc = 0;
        int64_t n;
        if ((r = opt_once(argc, argv, &i, "--app-id", "an ID", "", &app, "reset-offsets",
                          reset_help, &rc)) ||
            (r = opt_once(argc, argv, &i, "--topic", "a topic", " (one topic per run)",
                          &topic, "reset-offsets", reset_help, &rc))) {
            if (r < 0)
                return rc;
        } else if ((r = opt_value(argc, argv, &i, "--partition", &v))) {
            if (r < 0 || parse_i64(v, 0, INT32_MAX, &n))
                return usage_err("reset-offsets", reset_help,
                                 "--partition needs a partition number (0..%d)", INT32_MAX);
            size_t j = 0;
            while (j < nwant && want[j] != (int32_t)n)
                j++;
            if (j == nwant) {
                if (nwant == LK_ARRAY_SIZE(want))
                    return usage_err("reset-offsets", reset_help,
                                     "more than %zu --partition options; leave them out "
                                     "to change every partition",
                                     LK_ARRAY_SIZE(want));
                want[nwant++] = (int32_t)n;
            }
        } else if ((r = opt_value(argc, argv, &i, "--to", &v))) {
            if (r < 0 || parse_i64(v, 0, INT64_MAX, &n))
                return usage_err("reset-offsets", reset_help,
                                 "--to needs an offset (an integer >= 0)");
            if (to >= 0)
                return usage_err("reset-offsets", reset_help, "--to given twice");
            to = n;
        } else if (!strcmp(argv[i], "--delete")) {
            del = 1;
        } else if (!strcmp(argv[i], "--yes")) {
            yes = 1;
        } else if (argv[i][0] == '-') {
            return usage_err("reset-offsets", reset_help, "unknown option %s", argv[i]);
        } else if (!dir) {
            dir = argv[i];
        } else {
            return usage_err("reset-offsets", reset_help, "one DIR only (also got %s)",
                             argv[i]);
        }
    }
    if (!dir)
        return usage_err("reset-offsets", reset_help, "DIR is required");
    if (!app)
        return usage_err("reset-offsets", reset_help, "--app-id is required");
    if (!topic)
        return usage_err("reset-offsets", reset_help, "--topic is required");
    if ((to >= 0) == del)
        return usage_err("reset-offsets", reset_help,
                         "exactly one of --to N and --delete is required");

    char err[4096];
    lk__store_t *s = NULL;
    /* A read-only look first: a read-write open would create a checkpoint in a missing
     * or empty directory. */
    lk__store_opts_t ro = {.dir = dir, .readonly = 1};
    lk_err_t e = lk__store_open(&s, &ro, err, sizeof err);
    if (e)
        return fail(e, err);
    lk__store_close(s);
    s = NULL;
    /* Read-write: takes the LOCK (LK_ERR_LOCKED naming the holder while the application
     * runs) and checks app.id (LK_ERR_APP_MISMATCH). Nothing is written by the open of
     * an existing checkpoint without a configuration; a checkpoint of an older format is
     * migrated only when writing (--yes), so a dry run writes nothing at all. */
    lk__store_opts_t rw = {.dir = dir, .app_id = app, .no_migrate = !yes};
    if ((e = lk__store_open(&s, &rw, err, sizeof err)))
        return fail(e, err);
    /* the rules (which offsets, the pending plan dropped with them) are the store's */
    lk__offset_reset_t req = {topic, want, nwant, del ? -1 : to, yes};
    lk__offset_change_t *ch = NULL;
    size_t nch = 0;
    uint64_t plan = 0;
    e = lk__store_reset_offsets(s, &req, &ch, &nch, &plan, err, sizeof err);
    lk__store_close(s);
    if (e)
        return fail(e, err);
    printf("checkpoint %s (app.id %s)\n", dir, app);
    for (size_t k = 0; k < nch; k++) {
        if (del)
            printf("  %s[%d]: %" PRId64 " -> deleted (read as a new partition)\n", topic,
                   (int)ch[k].partition, ch[k].from);
        else
            printf("  %s[%d]: %" PRId64 " -> %" PRId64 "%s\n", topic, (int)ch[k].partition,
                   ch[k].from, to, to == ch[k].from ? " (unchanged)" : "");
    }
    free(ch);
    if (plan)
        printf("  pending plan of batch %" PRIu64 ": dropped (it holds the old offsets)\n",
               plan);
    if (yes)
        printf("written: %zu offset%s changed\n", nch, nch == 1 ? "" : "s");
    else
        printf("dry run, nothing written (add --yes to write)\n");
    if (fflush(stdout) != 0 || ferror(stdout)) {
        e = lk__err(LK_ERR_IO, err, sizeof err, "cannot write to stdout: %s",
                    strerror(errno));
        return fail(e, err);
    }
    return 0;
}

int lk__cli_checkpoint(int argc, char **argv) {
    static const char help[] =
        "Usage: lockstep checkpoint SUBCOMMAND DIR ...\n"
        "\n"
        "  inspect DIR [--json]                       describe a checkpoint\n"
        "  export DIR [--operator UID] [--output FILE]\n"
        "                                             keyed state as JSON lines\n"
        "  reset-offsets DIR --app-id ID --topic T [--partition P]... (--to N | --delete)\n"
        "                [--yes]                      change where reading resumes\n"
        "\n"
        "Run 'lockstep checkpoint SUBCOMMAND --help' for details.\n";
    if (argc < 1) {
        fprintf(stderr, "%s", help);
        return 2;
    }
    if (!strcmp(argv[0], "inspect"))
        return cmd_checkpoint_inspect(argc - 1, argv + 1);
    if (!strcmp(argv[0], "export"))
        return cmd_checkpoint_export(argc - 1, argv + 1);
    if (!strcmp(argv[0], "reset-offsets"))
        return cmd_checkpoint_reset_offsets(argc - 1, argv + 1);
    if (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
        fputs(help, stdout);
        return 0;
    }
    fprintf(stderr, "lockstep checkpoint: unknown subcommand '%s'\n%s", argv[0], help);
    return 2;
}

