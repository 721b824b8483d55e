/*
 * cli_util.c — the helpers the `lockstep` command's files share: --help detection and
 * the -c FILE / -X key=value options (which check the CLI-scope properties the library
 * leaves alone, core/conf_int.h). Kept apart so that main.c and the command files
 * depend on it and never on each other (main.c dispatches; a command calls no other
 * command's file). DESIGN.md, Layout.
 */
#define _GNU_SOURCE
#include "cli_int.h"
#include "../core/conf_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int lk__cli_has_help(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return 1;
    return 0;
}

int lk__cli_conf_args(lk_conf_t *conf, int argc, char **argv, const char *usage, char **rest,
                      int *nrest) {
    char err[1024];
    *nrest = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-c") || !strcmp(a, "-X")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "lockstep: %s needs an argument\n\n%s", a, usage);
                return 2;
            }
            const char *v = argv[++i];
            if (a[1] == 'c') {
                if (lk__conf_load_file_scoped(conf, v, LK__S_LIB | LK__S_CLI, err,
                                              sizeof err) != LK_CONF_OK) {
                    fprintf(stderr, "lockstep: %s\n", err);
                    return 2;
                }
            } else {
                const char *eq = strchr(v, '=');
                /* the argument is never echoed whole: it may hold a password */
                if (!eq) {
                    fprintf(stderr, "lockstep: -X takes key=value; argument %d has no '=' "
                                    "(not shown: it may hold a secret)\n", i + 1);
                    return 2;
                }
                if (eq == v) {
                    fprintf(stderr, "lockstep: -X takes key=value; argument %d has no key "
                                    "before '='\n", i + 1);
                    return 2;
                }
                char *key = strndup(v, (size_t)(eq - v));
                /* the command reads the CLI-scope keys too: it checks them here */
                lk_conf_res_t r =
                    lk__conf_set_scoped(conf, key, eq + 1, LK__S_LIB | LK__S_CLI, err, sizeof err);
                free(key);
                if (r != LK_CONF_OK) {
                    /* only the key: lk_conf_set's reason never quotes a secret's value */
                    fprintf(stderr, "lockstep: -X %.*s: %s\n", (int)(eq - v), v, err);
                    return 2;
                }
            }
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "lockstep: unknown option %s\n\n%s", a, usage);
            return 2;
        } else {
            rest[(*nrest)++] = argv[i];
        }
    }
    return 0;
}
