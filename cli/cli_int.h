/*
 * cli_int.h — what the `lockstep` command's files share: small argument helpers
 * (cli_util.c), one entry point per subcommand (argv without the command words), and the
 * choice of the pipeline `run` runs (builtin_conf.c; the built-in pipelines themselves,
 * builtin.c, share only builtin.h). DESIGN.md, Layout.
 */
#ifndef LK_CLI_INT_H
#define LK_CLI_INT_H

#include "lockstep.h"

/* ---- shared helpers (cli_util.c): the command files depend on these, never on each
 * other or on main.c ---- */

/** Non-zero if argv holds --help or -h. */
int lk__cli_has_help(int argc, char **argv);

/**
 * Read -c FILE and -X key=value options (kcat style) into conf, in order; other
 * arguments are left for the caller (*rest, *nrest). Exit status on error (2), else 0.
 */
int lk__cli_conf_args(lk_conf_t *conf, int argc, char **argv, const char *usage, char **rest,
                      int *nrest);

/* ---- the commands, one file each; main.c dispatches to them ---- */

/** `lockstep checkpoint inspect|export|reset-offsets ...` */
int lk__cli_checkpoint(int argc, char **argv);
/** `lockstep run ...` */
int lk__cli_run(int argc, char **argv);
/** `lockstep mock-broker ...` */
int lk__cli_mock_broker(int argc, char **argv);
/** `lockstep demo ...` */
int lk__cli_demo(int argc, char **argv);

/** The pipeline `lockstep run` runs: built-in (pipeline=) or a plugin (pipeline.plugin=). */
typedef struct lk__cli_define {
    void *builtin; /* built-in pipeline settings (lk__builtin_opts_t, builtin.h) */
    void *dl;      /* the plugin's dlopen handle */
    lk_plugin_define_fn *plugin;
    const lk_conf_t *conf;
} lk__cli_define_t;

/** Choose and check the pipeline the configuration asks for. */
lk_err_t lk__cli_define(const lk_conf_t *conf, lk__cli_define_t *def, char *errstr,
                        size_t errstr_size);
/** The define callback and its opaque for lk_context_get_or_create(). */
lk_define_fn *lk__cli_define_fn(lk__cli_define_t *def, void **opaque);
void lk__cli_define_free(lk__cli_define_t *def);


#endif
