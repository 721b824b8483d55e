/*
 * conf.c — lockstep configuration: a value per property of the LK__PROPS table,
 * validated on set, plus kafka.* properties passed through to (and validated by)
 * librdkafka (scope column: lk__conf_set_scoped), and the log set-up each librdkafka
 * client gets from log.level (DESIGN.md, Threads). Also the generated reference; the
 * .properties loader is conf_file.c. DESIGN.md, Layout (core/).
 */
#define _GNU_SOURCE
#include "conf_int.h"
#include "util_int.h"

#include <ctype.h>
#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *name;
    lk__prop_scope_t scope;
    lk__prop_type_t type;
    const char *def;
    int64_t min, max;
    const char *values;
    int flags; /* LK__PF_* */
    const char *doc;
} lk__prop_t;

static const lk__prop_t props[LK__P_COUNT] = {
#define LK__PROP_ROW(id, name, scope, type, def, min, max, values, flags, doc)              \
    {name, scope, type, def, min, max, values, flags, doc},
    LK__PROPS(LK__PROP_ROW)
#undef LK__PROP_ROW
};

struct lk_conf {
    char *val[LK__P_COUNT]; /* NULL: default */
    int64_t ival[LK__P_COUNT];
    char **kkeys, **kvals; /* kafka.* without the prefix, in the order set */
    size_t kcount, kcap;
    char **pkeys, **pvals; /* plugin.* with the prefix: the plugin's own settings */
    size_t pcount, pcap;
    rd_kafka_conf_t *kscratch; /* validates kafka.* values */
};

static const char *type_name(lk__prop_type_t t) {
    switch (t) {
    case LK__PT_STR: return "string";
    case LK__PT_IDENT: return "identifier";
    case LK__PT_INT: return "integer";
    case LK__PT_BYTES: return "bytes";
    case LK__PT_BOOL: return "boolean";
    case LK__PT_ENUM: return "enum";
    }
    return "?";
}

int lk__parse_bytes(const char *s, int64_t *out) {
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || errno || v < 0)
        return -1;
    int shift = 0;
    switch (toupper((unsigned char)*end)) {
    case '\0': break;
    case 'K': shift = 10; end++; break;
    case 'M': shift = 20; end++; break;
    case 'G': shift = 30; end++; break;
    case 'T': shift = 40; end++; break;
    default: return -1;
    }
    if (shift && (*end == 'i' || *end == 'I'))
        end++;
    if (shift && (*end == 'b' || *end == 'B'))
        end++;
    if (*end)
        return -1;
    if (shift && v > (INT64_MAX >> shift))
        return -1;
    *out = (int64_t)v << shift;
    return 0;
}

static int parse_int(const char *s, int64_t *out) {
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno)
        return -1;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, int64_t *out) {
    if (!strcasecmp(s, "true") || !strcmp(s, "1") || !strcasecmp(s, "yes")) {
        *out = 1;
        return 0;
    }
    if (!strcasecmp(s, "false") || !strcmp(s, "0") || !strcasecmp(s, "no")) {
        *out = 0;
        return 0;
    }
    return -1;
}

static int enum_index(const char *values, const char *s) {
    size_t n = strlen(s);
    int i = 0;
    for (const char *p = values; p; i++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && !strncmp(p, s, n))
            return i;
        p = bar ? bar + 1 : NULL;
    }
    return -1;
}

/* Validate value for prop; on success *ival holds the numeric value (enum index). */
static lk_conf_res_t check_value(const lk__prop_t *p, const char *value, int64_t *ival,
                                 char *errstr, size_t errstr_size) {
    size_t len = strlen(value);
    /* a secret's value never reaches a message: it would end up in logs and terminals */
    const char *shown = p->flags & LK__PF_SECRET ? "(secret, not shown)" : value;
    *ival = 0;
    switch (p->type) {
    case LK__PT_IDENT:
        for (const char *c = value; *c; c++)
            if (!isalnum((unsigned char)*c) && *c != '.' && *c != '_' && *c != '-') {
                lk__fmt(errstr, errstr_size,
                        "%s: invalid character '%c' in \"%s\" (allowed: letters, digits, "
                        "'.', '_', '-')",
                        p->name, *c, shown);
                return LK_CONF_INVALID;
            }
        /* fallthrough */
    case LK__PT_STR:
        if ((int64_t)len < p->min || (int64_t)len > p->max) {
            lk__fmt(errstr, errstr_size, "%s: length %zu out of range (%lld..%lld characters)",
                    p->name, len, (long long)p->min, (long long)p->max);
            return LK_CONF_INVALID;
        }
        return LK_CONF_OK;
    case LK__PT_INT:
    case LK__PT_BYTES:
        if ((p->type == LK__PT_INT ? parse_int(value, ival) : lk__parse_bytes(value, ival))) {
            lk__fmt(errstr, errstr_size, "%s: \"%s\" is not %s", p->name, shown,
                    p->type == LK__PT_INT ? "an integer"
                                          : "a size (a number with optional K, M, G or T)");
            return LK_CONF_INVALID;
        }
        if (*ival < p->min || *ival > p->max) {
            lk__fmt(errstr, errstr_size, "%s: %s out of range (%lld..%lld)", p->name, shown,
                    (long long)p->min, (long long)p->max);
            return LK_CONF_INVALID;
        }
        return LK_CONF_OK;
    case LK__PT_BOOL:
        if (parse_bool(value, ival)) {
            lk__fmt(errstr, errstr_size, "%s: \"%s\" is not a boolean (true or false)",
                    p->name, shown);
            return LK_CONF_INVALID;
        }
        return LK_CONF_OK;
    case LK__PT_ENUM: {
        int i = enum_index(p->values, value);
        if (i < 0) {
            lk__fmt(errstr, errstr_size, "%s: \"%s\" is not one of %s", p->name, shown,
                    p->values);
            return LK_CONF_INVALID;
        }
        *ival = i;
        return LK_CONF_OK;
    }
    }
    return LK_CONF_INVALID;
}

/* The typed value of a property's default (0 when it has none). */
static int64_t default_int(int i) {
    int64_t v = 0;
    if (props[i].def[0])
        check_value(&props[i], props[i].def, &v, NULL, 0);
    return v;
}

lk_conf_t *lk_conf_new(void) {
    lk_conf_t *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    for (int i = 0; i < LK__P_COUNT; i++) {
        char e[256];
        if (props[i].def[0] && check_value(&props[i], props[i].def, &c->ival[i], e, sizeof e))
            abort(); /* a bad default in the table is a programming error */
    }
    return c;
}

void lk_conf_destroy(lk_conf_t *c) {
    if (!c)
        return;
    for (int i = 0; i < LK__P_COUNT; i++)
        free(c->val[i]);
    for (size_t i = 0; i < c->kcount; i++) {
        free(c->kkeys[i]);
        free(c->kvals[i]);
    }
    free(c->kkeys);
    free(c->kvals);
    for (size_t i = 0; i < c->pcount; i++) {
        free(c->pkeys[i]);
        free(c->pvals[i]);
    }
    free(c->pkeys);
    free(c->pvals);
    if (c->kscratch)
        rd_kafka_conf_destroy(c->kscratch);
    free(c);
}

/* Set key in an ordered key/value list (kafka.* or plugin.*). */
static int list_put(char ***keys, char ***vals, size_t *count, size_t *cap, const char *key,
                    const char *value) {
    for (size_t i = 0; i < *count; i++)
        if (!strcmp((*keys)[i], key)) {
            char *v = strdup(value);
            if (!v)
                return -1;
            free((*vals)[i]);
            (*vals)[i] = v;
            return 0;
        }
    if (*count == *cap) {
        size_t n = *cap ? *cap * 2 : 8;
        char **k = realloc(*keys, n * sizeof *k);
        if (!k)
            return -1;
        *keys = k;
        char **v = realloc(*vals, n * sizeof *v);
        if (!v)
            return -1;
        *vals = v;
        *cap = n;
    }
    (*keys)[*count] = strdup(key);
    (*vals)[*count] = strdup(value);
    if (!(*keys)[*count] || !(*vals)[*count]) {
        free((*keys)[*count]);
        free((*vals)[*count]);
        return -1;
    }
    (*count)++;
    return 0;
}

static int kafka_put(lk_conf_t *c, const char *key, const char *value) {
    return list_put(&c->kkeys, &c->kvals, &c->kcount, &c->kcap, key, value);
}

static int plugin_put(lk_conf_t *c, const char *key, const char *value) {
    return list_put(&c->pkeys, &c->pvals, &c->pcount, &c->pcap, key, value);
}

lk_conf_t *lk_conf_dup(const lk_conf_t *src) {
    lk_conf_t *c = lk_conf_new();
    if (!c)
        return NULL;
    for (int i = 0; i < LK__P_COUNT; i++) {
        c->ival[i] = src->ival[i];
        if (src->val[i] && !(c->val[i] = strdup(src->val[i])))
            goto fail;
    }
    for (size_t i = 0; i < src->kcount; i++)
        if (kafka_put(c, src->kkeys[i], src->kvals[i]))
            goto fail;
    for (size_t i = 0; i < src->pcount; i++)
        if (plugin_put(c, src->pkeys[i], src->pvals[i]))
            goto fail;
    return c;
fail:
    lk_conf_destroy(c);
    return NULL;
}

static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return 1000;
    size_t row[65];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t prev = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t cur = row[j];
            size_t sub = prev + (a[i - 1] != b[j - 1]);
            size_t del = row[j] + 1, ins = row[j - 1] + 1;
            row[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
            prev = cur;
        }
    }
    return row[lb];
}

static int find_prop(const char *key) {
    for (int i = 0; i < LK__P_COUNT; i++)
        if (!strcmp(props[i].name, key))
            return i;
    return -1;
}

lk_conf_res_t lk_conf_set(lk_conf_t *c, const char *key, const char *value, char *errstr,
                          size_t errstr_size) {
    return lk__conf_set_scoped(c, key, value, LK__S_LIB, errstr, errstr_size);
}

lk_conf_res_t lk__conf_set_scoped(lk_conf_t *c, const char *key, const char *value,
                                  unsigned scopes, char *errstr, size_t errstr_size) {
    if (!c || !key || !value) {
        lk__fmt(errstr, errstr_size, "lk_conf_set: NULL argument");
        return LK_CONF_INVALID;
    }
    if (!strncmp(key, "kafka.", 6)) {
        const char *kkey = key + 6;
        if (!c->kscratch && !(c->kscratch = rd_kafka_conf_new())) {
            lk__fmt(errstr, errstr_size, "out of memory");
            return LK_CONF_INVALID;
        }
        char kerr[512] = "";
        rd_kafka_conf_res_t r = rd_kafka_conf_set(c->kscratch, kkey, value, kerr, sizeof kerr);
        if (r == RD_KAFKA_CONF_UNKNOWN) {
            lk__fmt(errstr, errstr_size, "%s: unknown librdkafka property \"%s\": %s", key,
                    kkey, kerr);
            return LK_CONF_UNKNOWN;
        }
        if (r != RD_KAFKA_CONF_OK) {
            /* librdkafka's reason may quote the value: for a secret it is left out */
            if (lk__conf_is_secret(key) && value[0] && strstr(kerr, value))
                lk__fmt(errstr, errstr_size, "%s: librdkafka refused the value (not shown: "
                        "the property holds a secret)", key);
            else
                lk__fmt(errstr, errstr_size, "%s: %s", key, kerr);
            return LK_CONF_INVALID;
        }
        if (kafka_put(c, kkey, value)) {
            lk__fmt(errstr, errstr_size, "out of memory");
            return LK_CONF_INVALID;
        }
        return LK_CONF_OK;
    }
    if (!strncmp(key, "plugin.", 7) && key[7]) {
        if (plugin_put(c, key, value)) {
            lk__fmt(errstr, errstr_size, "out of memory");
            return LK_CONF_INVALID;
        }
        return LK_CONF_OK;
    }
    int i = find_prop(key);
    if (i < 0) {
        int best = -1;
        size_t bestd = (size_t)-1;
        for (int j = 0; j < LK__P_COUNT; j++) {
            size_t d = edit_distance(key, props[j].name);
            if (d < bestd) {
                bestd = d;
                best = j;
            }
        }
        size_t keylen = strlen(key);
        if (best >= 0 && bestd <= 3 + keylen / 6)
            lk__fmt(errstr, errstr_size,
                    "unknown property \"%s\" (did you mean \"%s\"?); see lockstep --help", key,
                    props[best].name);
        else
            lk__fmt(errstr, errstr_size,
                    "unknown property \"%s\"; librdkafka properties take the prefix "
                    "\"kafka.\"; see lockstep --help",
                    key);
        return LK_CONF_UNKNOWN;
    }
    int64_t iv;
    if (props[i].scope & scopes) {
        lk_conf_res_t r = check_value(&props[i], value, &iv, errstr, errstr_size);
        if (r != LK_CONF_OK)
            return r;
    } else if (check_value(&props[i], value, &iv, NULL, 0) != LK_CONF_OK) {
        /* not the caller's to judge: kept as given, its typed value the default's (the
         * one reader, the CLI, checks the text when it sets the key itself) */
        iv = default_int(i);
    }
    char *copy = strdup(value);
    if (!copy) {
        lk__fmt(errstr, errstr_size, "out of memory");
        return LK_CONF_INVALID;
    }
    free(c->val[i]);
    c->val[i] = copy;
    c->ival[i] = iv;
    return LK_CONF_OK;
}

const char *lk_conf_get(const lk_conf_t *c, const char *key) {
    if (!c || !key)
        return NULL;
    if (!strncmp(key, "kafka.", 6)) {
        for (size_t i = 0; i < c->kcount; i++)
            if (!strcmp(c->kkeys[i], key + 6))
                return c->kvals[i];
        return NULL;
    }
    if (!strncmp(key, "plugin.", 7)) {
        for (size_t i = 0; i < c->pcount; i++)
            if (!strcmp(c->pkeys[i], key))
                return c->pvals[i];
        return NULL;
    }
    int i = find_prop(key);
    return i < 0 ? NULL : lk__conf_str(c, (lk__prop_id_t)i);
}

const char *lk__conf_str(const lk_conf_t *c, lk__prop_id_t id) {
    return c->val[id] ? c->val[id] : props[id].def;
}

int64_t lk__conf_int(const lk_conf_t *c, lk__prop_id_t id) {
    return c->ival[id];
}

int lk__conf_bool(const lk_conf_t *c, lk__prop_id_t id) {
    return c->ival[id] != 0;
}

int lk__conf_log_level(const lk_conf_t *c) {
    /* the order of log.level's values in the table */
    static const int levels[] = {LK_LOG_ERR, LK_LOG_WARNING, LK_LOG_NOTICE, LK_LOG_INFO,
                                 LK_LOG_DEBUG};
    return levels[lk__conf_int(c, LK__P_LOG_LEVEL)];
}

/* librdkafka's log callback, on its threads: the client's log_level filtered already.
 * librdkafka's documentation forbids calling its API here; rd_kafka_name only reads the
 * name set at creation, which its own stderr logger prints too. */
static void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    lk__log_write(level, "librdkafka %s %s: %s", rk ? rd_kafka_name(rk) : "-", fac, buf);
}

void lk__conf_kafka_log(rd_kafka_conf_t *kc, const lk_conf_t *c) {
    if (c && !lk_conf_get(c, "kafka.log_level")) { /* NULL: librdkafka's own default */
        char lv[8], kerr[256];
        lk__fmt(lv, sizeof lv, "%d", lk__conf_log_level(c));
        /* in librdkafka's range (0..7) always: cannot fail */
        rd_kafka_conf_set(kc, "log_level", lv, kerr, sizeof kerr);
    }
    rd_kafka_conf_set_log_cb(kc, kafka_log_cb);
}

int lk__conf_kafka_apply(rd_kafka_conf_t *kc, const lk_conf_t *c, char *errstr,
                         size_t errstr_size) {
    char kerr[512];
    for (size_t i = 0, n = c ? lk__conf_kafka_count(c) : 0; i < n; i++) {
        const char *k, *v;
        lk__conf_kafka_get(c, i, &k, &v);
        if (rd_kafka_conf_set(kc, k, v, kerr, sizeof kerr) != RD_KAFKA_CONF_OK) {
            lk__fmt(errstr, errstr_size, "kafka.%s: %s", k, kerr);
            return -1;
        }
    }
    return 0;
}

size_t lk__conf_kafka_count(const lk_conf_t *c) {
    return c->kcount;
}

void lk__conf_kafka_get(const lk_conf_t *c, size_t i, const char **key, const char **value) {
    *key = c->kkeys[i];
    *value = c->kvals[i];
}

/* librdkafka's sensitive properties (the _RK_SENSITIVE flag in rdkafka_conf.c), plus
 * sasl.oauthbearer.client.secret (sensitive in later librdkafka versions) and
 * ssl.keystore.location, which lockstep always kept out of the checkpoint. One
 * deliberate difference: sasl.username stays visible (it identifies, it does not
 * authenticate, and operators need it to diagnose an authentication failure). */
static const char *const kafka_secrets[] = {
    "sasl.password",         "sasl.oauthbearer.config", "sasl.oauthbearer.client.secret",
    "ssl.key.location",      "ssl.key.password",        "ssl.key.pem",
    "ssl_key",               "ssl.ca.pem",              "ssl.keystore.password",
    "ssl.keystore.location",
};

/* A plugin's setting is secret when a part of its name says so: parts are separated by
 * '.', '_' or '-'; a part containing token, secret, passw or credential, or ending in
 * key (key, apikey, privatekey), makes the whole value secret. */
static int plugin_part_secret(const char *p, size_t n) {
    static const char *const marks[] = {"token", "secret", "passw", "credential"};
    char part[128];
    if (n >= sizeof part)
        n = sizeof part - 1;
    for (size_t i = 0; i < n; i++)
        part[i] = (char)tolower((unsigned char)p[i]);
    part[n] = '\0';
    for (size_t i = 0; i < LK_ARRAY_SIZE(marks); i++)
        if (strstr(part, marks[i]))
            return 1;
    return n >= 3 && !strcmp(part + n - 3, "key");
}

int lk__conf_is_secret(const char *key) {
    if (!key)
        return 0;
    if (!strncmp(key, "kafka.", 6)) {
        const char *k = key + 6;
        for (size_t i = 0; i < LK_ARRAY_SIZE(kafka_secrets); i++)
            if (!strcmp(k, kafka_secrets[i]))
                return 1;
        /* properties of newer librdkafka versions (e.g. sasl.oauthbearer.assertion.*) */
        return strstr(k, "password") || strstr(k, "secret") || strstr(k, "private.key") ||
               strstr(k, "jaas");
    }
    if (!strncmp(key, "plugin.", 7)) {
        for (const char *p = key + 7; *p;) {
            size_t n = strcspn(p, "._-");
            if (n && plugin_part_secret(p, n))
                return 1;
            p += n;
            if (*p)
                p++;
        }
        return 0;
    }
    int i = find_prop(key);
    return i >= 0 && (props[i].flags & LK__PF_SECRET);
}

lk_err_t lk_conf_validate(const lk_conf_t *c, char *errstr, size_t errstr_size) {
    for (int i = 0; i < LK__P_COUNT; i++)
        if ((props[i].flags & LK__PF_REQUIRED) && !lk__conf_str(c, (lk__prop_id_t)i)[0])
            return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                           "%s is required: %s", props[i].name, props[i].doc);
    return LK_OK;
}

void lk_conf_foreach(const lk_conf_t *c, int redact,
                     void (*cb)(const char *key, const char *value, void *opaque),
                     void *opaque) {
    for (int i = 0; i < LK__P_COUNT; i++) {
        const char *v = lk__conf_str(c, (lk__prop_id_t)i);
        if (!v[0])
            continue;
        cb(props[i].name, redact && lk__conf_is_secret(props[i].name) ? "[redacted]" : v,
           opaque);
    }
    for (size_t i = 0; i < c->kcount; i++) {
        char key[512];
        lk__fmt(key, sizeof key, "kafka.%s", c->kkeys[i]);
        cb(key, redact && lk__conf_is_secret(key) ? "[redacted]" : c->kvals[i], opaque);
    }
    for (size_t i = 0; i < c->pcount; i++)
        cb(c->pkeys[i], redact && lk__conf_is_secret(c->pkeys[i]) ? "[redacted]" : c->pvals[i],
           opaque);
}

/* Who reads the property: "library" (lk_conf_set checks it) or "CLI" (only the lockstep
 * command reads it and checks it; the library stores it as given). */
static const char *scope_name(lk__prop_scope_t s) {
    return s == LK__S_CLI ? "CLI" : "library";
}

static void range_text(const lk__prop_t *p, char *buf, size_t size) {
    switch (p->type) {
    case LK__PT_INT:
    case LK__PT_BYTES:
        lk__fmt(buf, size, "%lld .. %lld", (long long)p->min, (long long)p->max);
        break;
    case LK__PT_ENUM: lk__fmt(buf, size, "%s", p->values); break;
    case LK__PT_BOOL: lk__fmt(buf, size, "true|false"); break;
    default: lk__fmt(buf, size, "%s", ""); break;
    }
}

void lk_conf_print_reference(FILE *fp, int markdown) {
    if (markdown) {
        fprintf(fp, "| Property | Scope | Type | Default | Range / values | Description |\n");
        fprintf(fp, "|---|---|---|---|---|---|\n");
    }
    for (int i = 0; i < LK__P_COUNT; i++) {
        const lk__prop_t *p = &props[i];
        char range[128];
        range_text(p, range, sizeof range);
        const char *def = (p->flags & LK__PF_REQUIRED) ? "" : p->def;
        if (markdown) {
            fprintf(fp, "| `%s` | %s | %s | %s | %s | %s |\n", p->name, scope_name(p->scope),
                    type_name(p->type), (p->flags & LK__PF_REQUIRED) ? "*(required)*" : def,
                    range, p->doc);
        } else {
            fprintf(fp, "  %s (%s, %s%s%s%s)\n", p->name, scope_name(p->scope),
                    type_name(p->type), (p->flags & LK__PF_REQUIRED) ? ", required" : "",
                    def[0] ? ", default " : "", def);
            if (range[0])
                fprintf(fp, "      range: %s\n", range);
            /* wrap the doc at ~76 columns */
            const char *d = p->doc;
            while (*d) {
                size_t len = strlen(d);
                size_t cut = len;
                if (len > 72) {
                    cut = 72;
                    while (cut > 0 && d[cut] != ' ')
                        cut--;
                    if (cut == 0)
                        cut = 72;
                }
                fprintf(fp, "      %.*s\n", (int)cut, d);
                d += cut;
                while (*d == ' ')
                    d++;
            }
        }
    }
    if (markdown)
        fprintf(fp, "| `kafka.*` | library | | | | Passed to librdkafka without the prefix "
                    "(see librdkafka's CONFIGURATION.md), e.g. `kafka.bootstrap.servers`, "
                    "`kafka.security.protocol`, `kafka.sasl.password` (never stored in the "
                    "checkpoint). One default differs from librdkafka's: the sinks' "
                    "transactional producer retries after `retry.backoff.ms`=20 (librdkafka: "
                    "100), as the Java producer does after CONCURRENT_TRANSACTIONS; "
                    "`kafka.retry.backoff.ms` overrides it. |\n");
    else
        fprintf(fp, "  kafka.*\n      Passed to librdkafka without the prefix, e.g.\n"
                    "      kafka.bootstrap.servers=host:9092. Secrets are never stored.\n"
                    "      The sinks' producer retries after retry.backoff.ms=20 (librdkafka:\n"
                    "      100) unless kafka.retry.backoff.ms is given.\n");
}
