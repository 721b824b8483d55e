/*
 * inspect.c — `lockstep checkpoint inspect`: describes a checkpoint (identity, topology,
 * offsets, last batch, outbox depth per sink, fences, accumulators, state sizes, config).
 * One JSON document is collected from a read transaction, then written either as JSON
 * or as aligned text, so both outputs always say the same thing.
 */
#define _GNU_SOURCE
#include "store_int.h"
#include "../core/util_int.h"

#include <inttypes.h>
#include <jansson.h>
#include <string.h>
#include <time.h>

static void iso_time(int64_t ms, char *buf, size_t size) {
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    char base[32];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    lk__fmt(buf, size, "%s.%03dZ", base, (int)(ms % 1000));
}

static int add_offset(const char *topic, int32_t partition, int64_t offset, void *o) {
    json_array_append_new(o, json_pack("{s:s, s:i, s:I}", "topic", topic, "partition",
                                       (int)partition, "offset", (json_int_t)offset));
    return 0;
}

static int add_outbox(const lk__outbox_stat_t *st, void *o) {
    json_array_append_new(
        o, json_pack("{s:s, s:I, s:I, s:I, s:I, s:I}", "sink", st->sink, "batches",
                     (json_int_t)st->batches, "records", (json_int_t)st->records, "bytes",
                     (json_int_t)st->bytes, "first_batch", (json_int_t)st->first_batch,
                     "last_batch", (json_int_t)st->last_batch));
    return 0;
}

static int add_fence(const char *sink, uint64_t batch, int64_t wall_ms, void *o) {
    char when[40];
    iso_time(wall_ms, when, sizeof when);
    json_array_append_new(o, json_pack("{s:s, s:I, s:s}", "sink", sink, "batch",
                                       (json_int_t)batch, "recorded", when));
    return 0;
}

static int add_acc(const char *name, int64_t value, void *o) {
    json_object_set_new(o, name, json_integer((json_int_t)value));
    return 0;
}

static int add_state(const lk__state_stat_t *st, void *o) {
    json_array_append_new(o, json_pack("{s:s, s:I, s:I}", "uid", st->uid, "entries",
                                       (json_int_t)st->entries, "bytes",
                                       (json_int_t)st->bytes));
    return 0;
}

static int add_config(const char *k, const char *v, void *o) {
    json_object_set_new(o, k, json_string(v));
    return 0;
}

static json_t *collect(lk__store_t *s, lk__store_txn_t *t, lk_err_t *err) {
    char when[40];
    json_t *doc = json_object();
    json_object_set_new(doc, "checkpoint", json_string(lk__store_dir(s)));
    json_object_set_new(doc, "app_id", json_string(lk__store_app_id(s)));
    json_object_set_new(doc, "format", json_integer(lk__store_format(s)));
    /* "" (no id yet) only for a format-1 checkpoint read before its first run with this
     * build: shown as null, not as an id */
    const char *id = lk__store_checkpoint_id(s);
    json_object_set_new(doc, "checkpoint_id", id[0] ? json_string(id) : json_null());
    iso_time(lk__store_created_ms(s), when, sizeof when);
    json_object_set_new(doc, "created", json_string(when));
    json_object_set_new(doc, "map_size", json_integer((json_int_t)lk__store_map_size(s)));

    lk__batch_rec_t b;
    lk_err_t e = lk__store_batch_last(t, &b);
    if (e == LK_OK) {
        json_t *ranges = json_array();
        for (size_t i = 0; i < b.nranges; i++)
            json_array_append_new(
                ranges, json_pack("{s:s, s:i, s:I, s:I}", "topic", b.ranges[i].topic,
                                  "partition", (int)b.ranges[i].partition, "from",
                                  (json_int_t)b.ranges[i].from, "until",
                                  (json_int_t)b.ranges[i].until));
        char bt[40], ct[40];
        iso_time(b.batch_time_ms, bt, sizeof bt);
        iso_time(b.commit_wall_ms, ct, sizeof ct);
        json_object_set_new(doc, "last_batch",
                            json_pack("{s:I, s:s, s:s, s:I, s:I, s:o}", "id",
                                      (json_int_t)b.id, "batch_time", bt, "committed", ct,
                                      "records_in", (json_int_t)b.records_in, "records_out",
                                      (json_int_t)b.records_out, "ranges", ranges));
    } else if (e == LK_ERR_NOT_FOUND) {
        json_object_set_new(doc, "last_batch", json_null());
    } else {
        *err = e;
    }
    json_object_set_new(doc, "batches_kept", json_integer((json_int_t)lk__store_batch_count(t)));

    lk__topo_op_t *ops;
    size_t nops;
    json_t *topo = json_array();
    if ((e = lk__store_topology_get(t, &ops, &nops)))
        *err = e;
    for (size_t i = 0; !e && i < nops; i++)
        json_array_append_new(topo, json_pack("{s:s, s:s, s:i, s:s}", "uid", ops[i].uid, "kind",
                                              ops[i].kind, "schema_version",
                                              (int)ops[i].schema_version, "params",
                                              ops[i].params));
    json_object_set_new(doc, "topology", topo);

    json_t *offsets = json_array(), *outbox = json_array(), *fences = json_array(),
           *acc = json_object(), *state = json_array(), *config = json_object();
    if ((e = lk__store_offsets_foreach(t, add_offset, offsets)) ||
        (e = lk__store_outbox_stats(t, add_outbox, outbox)) ||
        (e = lk__store_fences_foreach(t, add_fence, fences)) ||
        (e = lk__store_acc_foreach(t, add_acc, acc)) ||
        (e = lk__store_state_stats(t, add_state, state)) ||
        (e = lk__store_config_foreach(t, add_config, config)))
        *err = e;
    json_object_set_new(doc, "offsets", offsets);
    json_object_set_new(doc, "outbox", outbox);
    json_object_set_new(doc, "fences", fences);
    json_object_set_new(doc, "accumulators", acc);
    json_object_set_new(doc, "state", state);
    json_object_set_new(doc, "config", config);
    return doc;
}

/* v's member k as a string, as an integer. */
static const char *str_of(json_t *v, const char *k) {
    return json_string_value(json_object_get(v, k));
}
static json_int_t int_of(json_t *v, const char *k) {
    return json_integer_value(json_object_get(v, k));
}

/* Print the heading of d's section name, "<name> (<count> <what>)", and return it. */
static json_t *section(FILE *fp, json_t *d, const char *name, const char *what) {
    json_t *a = json_object_get(d, name);
    size_t n = json_is_object(a) ? json_object_size(a) : json_array_size(a);
    fprintf(fp, "\n%s (%zu%s%s)\n", name, n, *what ? " " : "", what);
    return a;
}

#define JINT JSON_INTEGER_FORMAT

static void print_text(FILE *fp, json_t *d) {
    json_t *v, *a;
    size_t i;
    const char *key;
    fprintf(fp, "checkpoint    %s\n", str_of(d, "checkpoint"));
    fprintf(fp, "app.id        %s\n", str_of(d, "app_id"));
    fprintf(fp, "format        %" JINT "\n", int_of(d, "format"));
    const char *id = str_of(d, "checkpoint_id");
    fprintf(fp, "checkpoint id %s\n", id ? id : "none yet (format 1; given one at the next run)");
    fprintf(fp, "created       %s\n", str_of(d, "created"));
    fprintf(fp, "map size      %" JINT " bytes\n", int_of(d, "map_size"));
    json_t *b = json_object_get(d, "last_batch");
    if (json_is_object(b)) {
        fprintf(fp, "last batch    %" JINT " (batch time %s, committed %s, %" JINT " records in, "
                "%" JINT " out)\n", int_of(b, "id"), str_of(b, "batch_time"),
                str_of(b, "committed"), int_of(b, "records_in"), int_of(b, "records_out"));
        json_array_foreach(json_object_get(b, "ranges"), i, v)
            fprintf(fp, "                %s[%d] [%" JINT ", %" JINT ")\n", str_of(v, "topic"),
                    (int)int_of(v, "partition"), int_of(v, "from"), int_of(v, "until"));
    } else {
        fprintf(fp, "last batch    none\n");
    }
    fprintf(fp, "batches kept  %" JINT "\n", int_of(d, "batches_kept"));

    a = section(fp, d, "topology", "operators");
    json_array_foreach(a, i, v)
        fprintf(fp, "  %-24s %-22s schema v%d  %s\n", str_of(v, "uid"), str_of(v, "kind"),
                (int)int_of(v, "schema_version"), str_of(v, "params"));
    a = section(fp, d, "offsets", "partitions");
    json_array_foreach(a, i, v)
        fprintf(fp, "  %s[%d]  %" JINT "\n", str_of(v, "topic"), (int)int_of(v, "partition"),
                int_of(v, "offset"));
    a = section(fp, d, "outbox", "sinks with pending output");
    json_array_foreach(a, i, v)
        fprintf(fp, "  %-24s %" JINT " batches (%" JINT "..%" JINT "), %" JINT " records, %" JINT
                " bytes\n", str_of(v, "sink"), int_of(v, "batches"), int_of(v, "first_batch"),
                int_of(v, "last_batch"), int_of(v, "records"), int_of(v, "bytes"));
    a = section(fp, d, "fences", "sinks");
    json_array_foreach(a, i, v)
        fprintf(fp, "  %-24s delivered through batch %" JINT " (recorded %s)\n",
                str_of(v, "sink"), int_of(v, "batch"), str_of(v, "recorded"));
    a = section(fp, d, "accumulators", "");
    json_object_foreach(a, key, v)
        fprintf(fp, "  %-24s %" JINT "\n", key, json_integer_value(v));
    a = section(fp, d, "state", "operators");
    json_array_foreach(a, i, v)
        fprintf(fp, "  %-24s %" JINT " entries, %" JINT " bytes\n", str_of(v, "uid"),
                int_of(v, "entries"), int_of(v, "bytes"));
    fprintf(fp, "\nconfig (as last run; secrets redacted)\n");
    a = json_object_get(d, "config");
    json_object_foreach(a, key, v)
        fprintf(fp, "  %s=%s\n", key, json_string_value(v));
}

#undef JINT

lk_err_t lk__store_inspect(lk__store_t *s, FILE *fp, int json, char *errstr,
                           size_t errstr_size) {
    lk__store_txn_t *t;
    lk_err_t err = lk__store_txn_begin(s, 0, &t, errstr, errstr_size);
    if (err)
        return err;
    err = LK_OK;
    json_t *doc = collect(s, t, &err);
    char why[512];
    lk__fmt(why, sizeof why, "%s", lk__store_txn_errstr(t));
    lk__store_txn_abort(t);
    if (err) {
        json_decref(doc);
        if (why[0]) /* the store named the record */
            return lk__err(err, errstr, errstr_size, "%s", why);
        return lk__err(err, errstr, errstr_size, "checkpoint %s: cannot read: %s",
                       lk__store_dir(s), lk_err_str(err));
    }
    if (json) {
        json_dumpf(doc, fp, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        fputc('\n', fp);
    } else {
        print_text(fp, doc);
    }
    json_decref(doc);
    return LK_OK;
}
