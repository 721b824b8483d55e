/*
 * conf.c — lockstep configuration: a value per property of the LK__PROPS table,
 * validated on set, plus kafka.* properties passed through to (and validated by)
 * librdkafka. Also the .properties file loader and the generated reference.
 */
#define _GNU_SOURCE
#include "conf_int.h"
#include "util_int.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* ---- .properties files ---- */

/*
 * Caps on what a .properties file may hold. Real files are a few kilobytes; the largest
 * legitimate values are PEM certificates and keys (kafka.ssl.ca.pem), tens of kilobytes.
 * Reading stops at the cap, so `-c /dev/zero` or a runaway generator fails at once with
 * a clear message instead of growing memory without bound.
 */
#define CONF_FILE_MAX ((size_t)8 << 20)
#define CONF_LINE_MAX ((size_t)1 << 20)

static void put_utf8(char **o, unsigned cp) {
    char *p = *o;
    if (cp < 0x80) {
        *p++ = (char)cp;
    } else if (cp < 0x800) {
        *p++ = (char)(0xC0 | (cp >> 6));
        *p++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *p++ = (char)(0xE0 | (cp >> 12));
        *p++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *p++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *p++ = (char)(0xF0 | (cp >> 18));
        *p++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *p++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *p++ = (char)(0x80 | (cp & 0x3F));
    }
    *o = p;
}

/* The 4 hex digits of a \uXXXX escape at s (s points at the 'u'); -1 if malformed. */
static long hex4(const char *s, const char *e) {
    if (e - s < 5)
        return -1;
    long cp = 0;
    for (int k = 1; k <= 4; k++) {
        int c = (unsigned char)s[k];
        if (!isxdigit(c))
            return -1;
        cp = cp * 16 + (isdigit(c) ? c - '0' : tolower(c) - 'a' + 10);
    }
    return cp;
}

/*
 * Unescape [s, e) into out (at least e - s + 1 bytes: no escape grows). Returns NULL,
 * or why the text cannot be a value: a malformed \u escape, \u0000 (a C string would
 * silently end there), or a UTF-16 surrogate that is not part of a pair (Java writes
 * characters beyond the BMP as a pair, which becomes one 4-byte UTF-8 character).
 */
static const char *unescape(const char *s, const char *e, char *out) {
    char *o = out;
    while (s < e) {
        if (*s != '\\' || s + 1 >= e) {
            *o++ = *s++;
            continue;
        }
        s++;
        switch (*s) {
        case 't': *o++ = '\t'; s++; break;
        case 'n': *o++ = '\n'; s++; break;
        case 'r': *o++ = '\r'; s++; break;
        case 'f': *o++ = '\f'; s++; break;
        case 'u': {
            long cp = hex4(s, e);
            if (cp < 0)
                return "bad escape sequence (\\u takes 4 hex digits)";
            if (cp == 0)
                return "\\u0000 (a NUL character) is not allowed in a key or value";
            s += 5;
            if (cp >= 0xDC00 && cp <= 0xDFFF)
                return "bad escape sequence (a UTF-16 low surrogate without its high half)";
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                long lo = e - s >= 2 && s[0] == '\\' ? hex4(s + 1, e) : -1;
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return "bad escape sequence (a UTF-16 high surrogate without its low half)";
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                s += 6;
            }
            put_utf8(&o, (unsigned)cp);
            break;
        }
        default: *o++ = *s++; break;
        }
    }
    *o = '\0';
    return NULL;
}

/* The whole file, capped at CONF_FILE_MAX, refusing NUL bytes; NUL-terminated. */
static lk_conf_res_t read_capped(const char *path, char **out, size_t *outlen, char *errstr,
                                 size_t errstr_size) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        lk__fmt(errstr, errstr_size, "%s: cannot open: %s", path, strerror(errno));
        return LK_CONF_INVALID;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        close(fd);
        lk__fmt(errstr, errstr_size, "%s: is a directory, not a .properties file", path);
        return LK_CONF_INVALID;
    }
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size > CONF_FILE_MAX) {
        close(fd);
        lk__fmt(errstr, errstr_size, "%s: %lld bytes is larger than the %zu MiB a "
                "configuration file may hold", path, (long long)st.st_size, CONF_FILE_MAX >> 20);
        return LK_CONF_INVALID;
    }
    size_t len = 0, cap = 0, lines = 1;
    char *buf = NULL;
    for (;;) {
        if (cap - len < 65536 + 1) {
            size_t ncap = cap ? cap * 2 : 65536 + 1;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                close(fd);
                lk__fmt(errstr, errstr_size, "%s: out of memory reading it", path);
                return LK_CONF_INVALID;
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + len, 65536);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            close(fd);
            lk__fmt(errstr, errstr_size, "%s: read error: %s", path, strerror(e));
            return LK_CONF_INVALID;
        }
        if (r == 0)
            break;
        const char *nul = memchr(buf + len, '\0', (size_t)r);
        for (const char *p = buf + len, *end = nul ? nul : buf + len + r; p < end; p++)
            lines += *p == '\n';
        if (nul) {
            free(buf);
            close(fd);
            lk__fmt(errstr, errstr_size, "%s:%zu: contains a NUL byte: not a text "
                    ".properties file", path, lines);
            return LK_CONF_INVALID;
        }
        len += (size_t)r;
        if (len > CONF_FILE_MAX) {
            free(buf);
            close(fd);
            lk__fmt(errstr, errstr_size, "%s: larger than the %zu MiB a configuration file "
                    "may hold", path, CONF_FILE_MAX >> 20);
            return LK_CONF_INVALID;
        }
    }
    close(fd);
    buf[len] = '\0';
    *out = buf;
    *outlen = len;
    return LK_CONF_OK;
}

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\f'; }

/* One logical line (continuations joined): split, unescape, set. */
static lk_conf_res_t load_logical(lk_conf_t *c, const char *path, int line, char *logical,
                                  unsigned scopes, char *errstr, size_t errstr_size) {
    char *k = logical, *p = logical;
    while (*p && *p != '=' && *p != ':' && !is_blank(*p)) {
        if (*p == '\\' && p[1])
            p++;
        p++;
    }
    char *kend = p;
    while (is_blank(*p))
        p++;
    if (*p == '=' || *p == ':')
        p++;
    while (is_blank(*p))
        p++;
    size_t vlen = strlen(p);
    char *key = malloc((size_t)(kend - k) + 1), *val = malloc(vlen + 1);
    if (!key || !val) {
        free(key);
        free(val);
        lk__fmt(errstr, errstr_size, "%s:%d: out of memory", path, line);
        return LK_CONF_INVALID;
    }
    const char *why = unescape(k, kend, key);
    if (why || (why = unescape(p, p + vlen, val))) {
        lk__fmt(errstr, errstr_size, "%s:%d: %s", path, line, why);
        free(key);
        free(val);
        return LK_CONF_INVALID;
    }
    char e[1024];
    lk_conf_res_t res = lk__conf_set_scoped(c, key, val, scopes, e, sizeof e);
    if (res != LK_CONF_OK)
        lk__fmt(errstr, errstr_size, "%s:%d: %s", path, line, e);
    free(key);
    free(val);
    return res;
}

lk_conf_res_t lk_conf_load_file(lk_conf_t *c, const char *path, char *errstr,
                                size_t errstr_size) {
    return lk__conf_load_file_scoped(c, path, LK__S_LIB, errstr, errstr_size);
}

lk_conf_res_t lk__conf_load_file_scoped(lk_conf_t *c, const char *path, unsigned scopes,
                                        char *errstr, size_t errstr_size) {
    if (!c || !path) {
        lk__fmt(errstr, errstr_size, "lk_conf_load_file: NULL argument");
        return LK_CONF_INVALID;
    }
    char *text;
    size_t len;
    lk_conf_res_t res = read_capped(path, &text, &len, errstr, errstr_size);
    if (res != LK_CONF_OK)
        return res;
    char *logical = NULL;
    size_t llen = 0;
    int lineno = 0, startline = 0;
    for (char *line = text; res == LK_CONF_OK && line < text + len;) {
        char *nl = memchr(line, '\n', (size_t)(text + len - line));
        char *next = nl ? nl + 1 : text + len;
        size_t n = (size_t)((nl ? nl : text + len) - line);
        lineno++;
        while (n > 0 && line[n - 1] == '\r')
            n--;
        line[n] = '\0';
        const char *s = line;
        line = next;
        while (is_blank(*s))
            s++;
        if (!logical) {
            if (*s == '\0' || *s == '#' || *s == '!')
                continue;
            startline = lineno;
        }
        size_t sl = strlen(s);
        size_t bs = 0; /* trailing backslashes: an odd count continues the line */
        while (bs < sl && s[sl - 1 - bs] == '\\')
            bs++;
        int cont = bs % 2 == 1;
        if (cont)
            sl--;
        if (llen + sl > CONF_LINE_MAX) {
            lk__fmt(errstr, errstr_size, "%s:%d: line longer than the %zu KiB a property may "
                    "take", path, startline, CONF_LINE_MAX >> 10);
            res = LK_CONF_INVALID;
            break;
        }
        char *nlog = realloc(logical, llen + sl + 1);
        if (!nlog) {
            lk__fmt(errstr, errstr_size, "%s:%d: out of memory", path, startline);
            res = LK_CONF_INVALID;
            break;
        }
        logical = nlog;
        memcpy(logical + llen, s, sl);
        llen += sl;
        logical[llen] = '\0';
        if (cont)
            continue;
        res = load_logical(c, path, startline, logical, scopes, errstr, errstr_size);
        free(logical);
        logical = NULL;
        llen = 0;
    }
    /* A continuation into nothing: Java's Properties would keep the line without its
     * '\', but a file cut short (a truncated copy, a lost last line) looks exactly like
     * this, so it is refused rather than guessed at. */
    if (res == LK_CONF_OK && logical) {
        lk__fmt(errstr, errstr_size, "%s:%d: the last line ends with '\\' (a line "
                "continuation) but the file ends there: remove the '\\' or add the "
                "continued line", path, startline);
        res = LK_CONF_INVALID;
    }
    free(logical);
    free(text);
    return res;
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
                    "checkpoint). |\n");
    else
        fprintf(fp, "  kafka.*\n      Passed to librdkafka without the prefix, e.g.\n"
                    "      kafka.bootstrap.servers=host:9092. Secrets are never stored.\n");
}
