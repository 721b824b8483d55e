/*
 * builtin_conf.c — the CLI glue of `lockstep run`'s pipeline: which one the configuration
 * asks for, a built-in one (pipeline=, defined in builtin.c) or a plugin
 * (pipeline.plugin=, loaded with dlopen). For a built-in pipeline it reads the
 * properties into the plain options struct of builtin.h and checks them, so that a bad
 * combination is a configuration error naming the properties (exit 2) rather than a
 * failed definition (exit 1). Unlike builtin.c, which uses only lockstep.h, it may use the
 * configuration's internals. DESIGN.md, Layout.
 */
#define _GNU_SOURCE
#include "builtin.h"
#include "cli_int.h"
#include "../core/conf_int.h"
#include "../core/util_int.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

/* The built-in pipeline's properties into o (strings borrowed from conf). */
static void builtin_opts_read(const lk_conf_t *conf, lk__builtin_opts_t *o) {
    o->kind = (lk__builtin_kind_t)lk__conf_int(conf, LK__P_PIPELINE);
    o->name = lk__conf_str(conf, LK__P_PIPELINE);
    o->input_topics = lk__conf_str(conf, LK__P_INPUT_TOPICS);
    o->key_field = lk__conf_str(conf, LK__P_KEY_FIELD);
    o->value_field = lk__conf_str(conf, LK__P_VALUE_FIELD);
    o->tolerance_none = lk__conf_int(conf, LK__P_ERRORS_TOLERANCE) == 1;
    o->deadletter = lk__conf_str(conf, LK__P_ERRORS_DEADLETTER);
    o->window_size = lk__conf_int(conf, LK__P_WINDOW_SIZE_MS);
    o->window_slide = lk__conf_int(conf, LK__P_WINDOW_SLIDE_MS);
    o->window_gap = lk__conf_int(conf, LK__P_WINDOW_GAP_MS);
    o->window_grace = lk__conf_int(conf, LK__P_WINDOW_GRACE_MS);
    o->window_idle = lk__conf_int(conf, LK__P_WINDOW_IDLE_MS);
    o->emit_on_update = lk__conf_int(conf, LK__P_WINDOW_EMIT) == 1;
    o->event_time = lk__conf_int(conf, LK__P_WINDOW_TIME) == 1;
    o->output_topic = lk__conf_str(conf, LK__P_OUTPUT_TOPIC);
    o->output_dir = lk__conf_str(conf, LK__P_OUTPUT_DIR);
    o->output_format = lk__conf_str(conf, LK__P_OUTPUT_FORMAT);
    o->keep_partition = lk__conf_int(conf, LK__P_OUTPUT_PARTITION) == 1;
    /* scaled out, a task holds the keys of its partition only: the records of a key go
     * to one task first. (One process holds every key: nothing to move, and the
     * topology of checkpoints made before stays as it was.) */
    o->repartition = lk__conf_int(conf, LK__P_GROUP_MODE) == 1;
    lk__builtin_opts_init(o);
}

lk_err_t lk__cli_define(const lk_conf_t *conf, lk__cli_define_t *def, char *errstr,
                        size_t errstr_size) {
    memset(def, 0, sizeof *def);
    const char *plugin = lk__conf_str(conf, LK__P_PIPELINE_PLUGIN);
    const char *name = lk__conf_str(conf, LK__P_PIPELINE);
    if (plugin[0] && name[0])
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "set pipeline or pipeline.plugin, not both");
    if (plugin[0]) {
        def->dl = dlopen(plugin, RTLD_NOW | RTLD_LOCAL);
        if (!def->dl)
            return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                           "pipeline.plugin: cannot load %s: %s", plugin, dlerror());
        void *sym = dlsym(def->dl, LK_PLUGIN_DEFINE_SYMBOL);
        if (!sym) {
            lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                    "pipeline.plugin: %s exports no %s (see lockstep.h)", plugin,
                    LK_PLUGIN_DEFINE_SYMBOL);
            dlclose(def->dl);
            def->dl = NULL;
            return LK_ERR_CONF_INVALID;
        }
        /* object-to-function pointer conversion, as dlsym requires */
        memcpy(&def->plugin, &sym, sizeof sym);
        def->conf = conf;
        return LK_OK;
    }
    if (!name[0])
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "no pipeline: set pipeline=wordcount|count-by-key|sum-by-key|copy or "
                       "pipeline.plugin=./libmine.so");
    lk__builtin_opts_t *d = calloc(1, sizeof *d);
    if (!d)
        return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
    builtin_opts_read(conf, d);
    if (!d->window_size && d->window_slide) {
        free(d);
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "window.slide.ms is set but window.size.ms is not");
    }
    const char *werr = NULL;
    if (d->window_gap && d->window_size)
        werr = "set window.size.ms (fixed windows) or window.gap.ms (sessions), not both";
    else if (d->window_gap && !d->event_time)
        werr = "window.gap.ms (session windows) needs window.time=event";
    if (werr) {
        free(d);
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size, "%s", werr);
    }
    if (d->windowed && d->kind == LK__BUILTIN_COPY) {
        free(d);
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "window.size.ms / window.gap.ms apply to pipeline=wordcount, "
                       "count-by-key and sum-by-key, not copy");
    }
    if ((d->kind == LK__BUILTIN_COUNT_BY_KEY || d->kind == LK__BUILTIN_SUM_BY_KEY) &&
        !d->key_field[0]) {
        free(d);
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "key.field is required by pipeline=%s", name);
    }
    if (d->kind == LK__BUILTIN_SUM_BY_KEY && !d->value_field[0]) {
        free(d);
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "value.field is required by pipeline=sum-by-key");
    }
    /* Checked here too, not only when the pipeline is defined: a failed definition
     * makes `run` exit 1 (could not start), but these are configuration errors (2). */
    if (!d->input_topics[0]) {
        free(d);
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "input.topics is required by pipeline=%s", name);
    }
    if (!d->output_topic[0] && !d->output_dir[0]) {
        free(d);
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "no output: set output.topic and/or output.dir (pipeline=%s)", name);
    }
    def->builtin = d;
    return LK_OK;
}

static void define_plugin(lk_pipeline_t *p, void *opaque) {
    lk__cli_define_t *def = opaque;
    def->plugin(p, def->conf);
}

lk_define_fn *lk__cli_define_fn(lk__cli_define_t *def, void **opaque) {
    if (def->plugin) {
        *opaque = def;
        return define_plugin;
    }
    *opaque = def->builtin;
    return lk__builtin_define;
}

void lk__cli_define_free(lk__cli_define_t *def) {
    free(def->builtin);
    if (def->dl)
        dlclose(def->dl);
    memset(def, 0, sizeof *def);
}
