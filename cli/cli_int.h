/*
 * cli_int.h — what the `lockstep` command's files share: one entry point per
 * subcommand (argv without the command words) and small argument helpers.
 */
#ifndef LK_CLI_INT_H
#define LK_CLI_INT_H

#include "lockstep.h"

/** Non-zero if argv holds --help or -h. */
int lk__cli_has_help(int argc, char **argv);

/** `lockstep checkpoint inspect|export|reset-offsets ...` */
int lk__cli_checkpoint(int argc, char **argv);

#endif
