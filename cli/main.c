/*
 * main.c — the `lockstep` command: dispatches subcommands and prints their help.
 * Subcommands arrive with the issues that build them; each has --help.
 */
#define _GNU_SOURCE
#include "lockstep.h"
#include "../core/util_int.h"
#include "cli_int.h"
#include "../connector/metrics_int.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *fp) {
    fprintf(fp,
            "lockstep %s — exactly-once Kafka stream processor\n"
            "\n"
            "Usage:\n"
            "  lockstep run [-c FILE]... [-X key=value]...  run a pipeline exactly-once\n"
            "  lockstep demo                              word count on an embedded Kafka\n"
            "  lockstep mock-broker [--topic T:N]...      run an embedded Kafka\n"
            "  lockstep checkpoint inspect DIR [--json]   describe a checkpoint\n"
            "  lockstep checkpoint export DIR [--operator UID] [--output FILE]\n"
            "                                             keyed state as JSON lines\n"
            "  lockstep checkpoint reset-offsets DIR --app-id ID --topic T\n"
            "      [--partition P]... (--to N | --delete) [--yes]\n"
            "                                             move input offsets (stopped app)\n"
            "  lockstep config [--markdown]               list configuration properties\n"
            "  lockstep metrics --markdown                the metrics reference (README)\n"
            "  lockstep --version | --help\n"
            "\n"
            "Run 'lockstep COMMAND --help' for a command's options.\n",
            lk_version_str());
}

static int cmd_config(int argc, char **argv) {
    if (lk__cli_has_help(argc, argv)) {
        puts("Usage: lockstep config [--markdown]\n\nList every configuration property "
             "with its scope, type, default, range and meaning. Scope 'library': read and "
             "checked by liblockstep (lk_conf_set); 'CLI': read only by this command, which "
             "checks it (the library stores it as given).");
        return 0;
    }
    int md = argc > 0 && !strcmp(argv[0], "--markdown");
    if (argc > (md ? 1 : 0)) {
        fprintf(stderr, "lockstep config: unknown argument %s\n", argv[md ? 1 : 0]);
        return 2;
    }
    lk_conf_print_reference(stdout, md);
    return 0;
}

static int cmd_metrics(int argc, char **argv) {
    if (lk__cli_has_help(argc, argv) || argc != 1 || strcmp(argv[0], "--markdown")) {
        fputs("Usage: lockstep metrics --markdown\n\nThe Prometheus metrics lockstep serves at "
              "/metrics (metrics.listen), as the README's Markdown table.\n",
              lk__cli_has_help(argc, argv) ? stdout : stderr);
        return lk__cli_has_help(argc, argv) ? 0 : 2;
    }
    lk__metrics_markdown(stdout);
    return 0;
}

int main(int argc, char **argv) {
    /* A file size limit (ulimit -f) must fail writes with EFBIG, reported and retried
     * like a full disk, not kill the process. */
    signal(SIGXFSZ, SIG_IGN);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        printf("\nConfiguration properties (.properties files, or -X key=value). Scope "
               "'library': read and\nchecked by liblockstep; 'CLI': read only by this command "
               "(lockstep run), which checks it.\n");
        lk_conf_print_reference(stdout, 0);
        return 0;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
        printf("lockstep %s\n", lk_version_str());
        return 0;
    }
    /* each command gets the arguments after its name */
    static const struct {
        const char *name;
        int (*run)(int argc, char **argv);
    } commands[] = {
        {"run", lk__cli_run},   {"mock-broker", lk__cli_mock_broker},
        {"demo", lk__cli_demo}, {"checkpoint", lk__cli_checkpoint},
        {"config", cmd_config}, {"metrics", cmd_metrics},
    };
    for (size_t i = 0; i < LK_ARRAY_SIZE(commands); i++)
        if (!strcmp(cmd, commands[i].name))
            return commands[i].run(argc - 2, argv + 2);
    fprintf(stderr, "lockstep: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
