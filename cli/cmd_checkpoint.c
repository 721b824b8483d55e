/*
 * cmd_checkpoint.c — `lockstep checkpoint ...`: look into a checkpoint directory without
 * running the application (inspect; export and reset-offsets arrive here too).
 */
#define _GNU_SOURCE
#include "cli_int.h"
#include "../core/util_int.h"
#include "../state/store_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    lk_store_opts_t o = {.dir = dir, .readonly = 1};
    lk_store_t *s;
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

int lk__cli_checkpoint(int argc, char **argv) {
    static const char help[] =
        "Usage: lockstep checkpoint SUBCOMMAND DIR ...\n"
        "\n"
        "  inspect DIR [--json]   describe a checkpoint\n";
    if (argc < 1) {
        fprintf(stderr, "%s", help);
        return 2;
    }
    if (!strcmp(argv[0], "inspect"))
        return cmd_checkpoint_inspect(argc - 1, argv + 1);
    if (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
        fputs(help, stdout);
        return 0;
    }
    fprintf(stderr, "lockstep checkpoint: unknown subcommand '%s'\n%s", argv[0], help);
    return 2;
}

