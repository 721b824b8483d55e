/*
 * test_provenance.c — the provenance header's format and parser (sink/provenance.c,
 * docs/DESIGN.md "Sinks"): every field read back exactly, the sink uid whole as the last
 * field whatever it holds, malformed values refused, the first header taken, and records
 * of older versions (four headers) still read.
 */
#include "sink/provenance_int.h"

#include <criterion/criterion.h>
#include <string.h>

#define ATT "0123456789abcdef"

static void assert_prov(const lk__prov_t *p, uint64_t batch, const char *attempt,
                        const char *app, const char *sink) {
    cr_assert_eq(p->batch, batch);
    cr_assert_str_eq(p->attempt, attempt);
    cr_assert(p->app_len == strlen(app) && !memcmp(p->app, app, p->app_len), "app '%.*s'",
              (int)p->app_len, p->app);
    cr_assert(p->sink_len == strlen(sink) && !memcmp(p->sink, sink, p->sink_len),
              "sink '%.*s'", (int)p->sink_len, p->sink);
}

Test(provenance, format_is_exact_and_parses_back) {
    char buf[128];
    size_t n = lk__prov_format(buf, sizeof buf, 42, ATT, "wc_1.a-b", "to-kafka");
    cr_assert_str_eq(buf, "v1 42 " ATT " wc_1.a-b to-kafka");
    cr_assert_eq(n, strlen(buf));
    lk__prov_t p;
    cr_assert(lk__prov_parse(buf, n, &p));
    assert_prov(&p, 42, ATT, "wc_1.a-b", "to-kafka");
    cr_assert_eq(p.old_format, 0);
    /* the largest batch id */
    n = lk__prov_format(buf, sizeof buf, UINT64_MAX, ATT, "a", "s");
    cr_assert(lk__prov_parse(buf, n, &p));
    cr_assert_eq(p.batch, UINT64_MAX);
}

Test(provenance, format_says_the_length_it_needs) {
    char small[8];
    size_t n = lk__prov_format(small, sizeof small, 7, ATT, "app", "sink");
    cr_assert_eq(n, strlen("v1 7 " ATT " app sink"));
    cr_assert_eq(lk__prov_format(NULL, 0, 7, ATT, "app", "sink"), n);
}

Test(provenance, the_sink_uid_is_the_whole_rest_and_may_be_empty) {
    static const char *const uids[] = {"a b  c", " lead", "trail ", "v1 9 " ATT " x y",
                                       "\xc3\xbc:\n,;", ""};
    for (size_t i = 0; i < sizeof uids / sizeof *uids; i++) {
        char buf[128];
        size_t n = lk__prov_format(buf, sizeof buf, 3, ATT, "app", uids[i]);
        lk__prov_t p;
        cr_assert(lk__prov_parse(buf, n, &p), "uid '%s'", uids[i]);
        assert_prov(&p, 3, ATT, "app", uids[i]);
    }
}

Test(provenance, malformed_values_are_refused) {
    static const char *const bad[] = {
        "",                                  /* empty */
        "v1",                                /* no fields */
        "v2 1 " ATT " app sink",             /* another version */
        "V1 1 " ATT " app sink",             /* the tag is case-sensitive */
        "v1 1 " ATT " app",                  /* no space before the sink */
        "v1  " ATT " app sink",              /* empty batch */
        "v1 -1 " ATT " app sink",            /* signed batch */
        "v1 1x " ATT " app sink",            /* not decimal */
        "v1 18446744073709551616 " ATT " a s", /* over 2^64-1 */
        "v1 1 0123456789ABCDEF app sink",    /* upper-case hex */
        "v1 1 0123456789abcde app sink",     /* 15 digits */
        "v1 1 0123456789abcdef0 app sink",   /* 17 digits */
        "v1 1 0123456789abcdeg app sink",    /* not hex */
        "v1 1 " ATT "  sink",                /* empty app */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        lk__prov_t p;
        cr_assert(!lk__prov_parse(bad[i], strlen(bad[i]), &p), "accepted '%s'", bad[i]);
    }
    lk__prov_t p;
    cr_assert(!lk__prov_parse(NULL, 0, &p));
}

/* A value is not NUL-terminated in a record: the parser keeps to its length. */
Test(provenance, parse_keeps_to_the_length) {
    const char *v = "v1 5 " ATT " app sink-and-more";
    lk__prov_t p;
    cr_assert(lk__prov_parse(v, strlen(v) - 9, &p));
    assert_prov(&p, 5, ATT, "app", "sink");
    cr_assert(!lk__prov_parse(v, 10, &p));
}

static rd_kafka_headers_t *headers(const char *const (*kv)[2], size_t n) {
    rd_kafka_headers_t *h = rd_kafka_headers_new(n);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(rd_kafka_header_add(h, kv[i][0], -1, kv[i][1], -1), 0);
    return h;
}

Test(provenance, the_first_lockstep_header_is_the_sinks) {
    const char *const kv[][2] = {{"lockstep", "v1 8 " ATT " app sink"},
                                 {"user", "x"},
                                 {"lockstep", "v1 1 fedcba9876543210 upstream s"}};
    rd_kafka_headers_t *h = headers(kv, 3);
    lk__prov_t p;
    cr_assert(lk__prov_get(h, &p));
    assert_prov(&p, 8, ATT, "app", "sink");
    rd_kafka_headers_destroy(h);
}

/* An output topic written across an upgrade holds records of older versions too. */
Test(provenance, the_four_headers_of_older_versions_are_read) {
    const char *const kv[][2] = {{"lockstep.app", "wc"},
                                 {"lockstep.sink", "to-kafka"},
                                 {"lockstep.batch", "17"},
                                 {"lockstep.attempt", ATT},
                                 {"user", "x"}};
    rd_kafka_headers_t *h = headers(kv, 5);
    lk__prov_t p;
    cr_assert(lk__prov_get(h, &p));
    assert_prov(&p, 17, ATT, "wc", "to-kafka");
    cr_assert_eq(p.old_format, 1);
    rd_kafka_headers_destroy(h);
    /* an older progress record named no sink */
    const char *const prog[][2] = {{"lockstep.app", "wc"},
                                   {"lockstep.sink", ""},
                                   {"lockstep.batch", "3"},
                                   {"lockstep.attempt", ATT}};
    h = headers(prog, 4);
    cr_assert(lk__prov_get(h, &p));
    assert_prov(&p, 3, ATT, "wc", "");
    rd_kafka_headers_destroy(h);
}

Test(provenance, no_or_incomplete_or_malformed_provenance_is_none) {
    lk__prov_t p;
    cr_assert(!lk__prov_get(NULL, &p));
    const char *const user[][2] = {{"user", "x"}};
    rd_kafka_headers_t *h = headers(user, 1);
    cr_assert(!lk__prov_get(h, &p));
    rd_kafka_headers_destroy(h);
    const char *const three[][2] = {{"lockstep.app", "wc"},
                                    {"lockstep.batch", "17"},
                                    {"lockstep.attempt", ATT}};
    h = headers(three, 3);
    cr_assert(!lk__prov_get(h, &p), "the old format without lockstep.sink");
    rd_kafka_headers_destroy(h);
    /* a malformed new header is not replaced by old headers beside it */
    const char *const both[][2] = {{"lockstep", "v1 x " ATT " app sink"},
                                   {"lockstep.app", "wc"},
                                   {"lockstep.sink", "s"},
                                   {"lockstep.batch", "17"},
                                   {"lockstep.attempt", ATT}};
    h = headers(both, 5);
    cr_assert(!lk__prov_get(h, &p));
    rd_kafka_headers_destroy(h);
}
