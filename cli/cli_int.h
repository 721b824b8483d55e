/*
 * cli_int.h — what the `lockstep` command's files share: small argument helpers
 * (cli_util.c), one entry point per subcommand (argv without the command words), and the
 * built-in pipelines (builtin.c). DESIGN.md, Layout.
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

/** The built-in word count's operators (shared with bench/engine.c). */
/** Longest word the word count keeps: the checkpoint's key limit (511 bytes). A record
 * holding a longer word is malformed (counted, dead-lettered), never truncated: two
 * words that differ only past a cut would otherwise be counted as one. */
#define LK__WC_WORD_MAX 511
/** The next word of [*pp, end) into word, *pp moved past it; returns the word's whole
 * length, 0 when no word is left. A return above LK__WC_WORD_MAX means the word was too
 * long: word then holds only its first LK__WC_WORD_MAX bytes and must not be used. The
 * word count's tokenizer. */
size_t lk__wc_next_word(const unsigned char **pp, const unsigned char *end,
                        char word[LK__WC_WORD_MAX]);
void lk__wc_split_words(lk_batch_t *b, const lk_record_t *in, void *opaque);
void lk__wc_add_count(lk_batch_t *b, const lk_bytes_t *key, const lk_bytes_t *vals, size_t n,
                      const lk_bytes_t *state, lk_bytes_t *next, void *opaque);
void lk__wc_format_count(lk_batch_t *b, const lk_record_t *in, void *opaque);

/** The pipeline `lockstep run` runs: built-in (pipeline=) or a plugin (pipeline.plugin=). */
typedef struct lk__cli_define {
    void *builtin; /* built-in pipeline settings */
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
