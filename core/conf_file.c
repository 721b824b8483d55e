/*
 * conf_file.c — the Java-style .properties loader (lk_conf_load_file): escapes, line
 * continuations and the caps that make a bad file fail at once; each property goes
 * through lk__conf_set_scoped() in conf.c. DESIGN.md, Layout (core/) and README,
 * Configuration.
 */
#define _GNU_SOURCE
#include "conf_int.h"
#include "util_int.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
        char *nb = lk__vec_reserve(buf, &cap, len + 65536 + 1, 1, 65536 + 1);
        if (!nb) {
            lk__fmt(errstr, errstr_size, "%s: out of memory reading it", path);
            goto fail;
        }
        buf = nb;
        ssize_t r = read(fd, buf + len, 65536);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            lk__fmt(errstr, errstr_size, "%s: read error: %s", path, strerror(errno));
            goto fail;
        }
        if (r == 0)
            break;
        const char *nul = memchr(buf + len, '\0', (size_t)r);
        for (const char *p = buf + len, *end = nul ? nul : buf + len + r; p < end; p++)
            lines += *p == '\n';
        if (nul) {
            lk__fmt(errstr, errstr_size, "%s:%zu: contains a NUL byte: not a text "
                    ".properties file", path, lines);
            goto fail;
        }
        len += (size_t)r;
        if (len > CONF_FILE_MAX) {
            lk__fmt(errstr, errstr_size, "%s: larger than the %zu MiB a configuration file "
                    "may hold", path, CONF_FILE_MAX >> 20);
            goto fail;
        }
    }
    close(fd);
    buf[len] = '\0';
    *out = buf;
    *outlen = len;
    return LK_CONF_OK;
fail:
    free(buf);
    close(fd);
    return LK_CONF_INVALID;
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
