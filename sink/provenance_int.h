/*
 * provenance_int.h — the provenance of a record the Kafka sink produces: which
 * application, sink, batch and delivery attempt wrote it (docs/DESIGN.md, "Sinks",
 * provenance). Written by sink/kafka.c; read back by the CLI demo and the tests'
 * independent readers, so the format is defined, formatted and parsed here only.
 *
 * One header, LK__PROV_HEADER ("lockstep"), whose value is
 *
 *     v1 <batch> <attempt> <app.id> <sink uid>
 *
 * single spaces between the fields: the batch in decimal, the attempt as the 16
 * lower-case hex digits of its nonce, then app.id (letters, digits, '.', '_', '-': never a
 * space, core/conf.c) and last the sink's uid, the whole rest of the value (empty on a
 * progress record). A sink uid holds no space, tab or '/' today but any other character
 * (UTF-8, ':', ',', control characters; connector/pipeline.c): taken as the rest of the
 * value it stays unambiguous even if uids ever admit spaces, so readers split at the
 * first four spaces only. One header
 * instead of four because librdkafka allocates and copies each header of each record
 * separately: four of them cost about half of a record's delivery (issue 18).
 *
 * Records written before this format carry four headers instead (lockstep.app,
 * lockstep.sink, lockstep.batch, lockstep.attempt); an output topic written across an
 * upgrade holds both, and lk__prov_get() reads both.
 */
#ifndef LK_PROVENANCE_INT_H
#define LK_PROVENANCE_INT_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

#define LK__PROV_HEADER "lockstep"

/* A record's provenance. app and sink point into the record's headers (valid while the
 * message lives) and are not NUL-terminated. */
typedef struct {
    uint64_t batch;
    char attempt[17]; /* NUL-terminated */
    const char *app, *sink;
    size_t app_len, sink_len;
    int old_format; /* read from the four headers of versions before v1 */
} lk__prov_t;

/* Format the value of the provenance header into buf (snprintf's contract: returns the
 * length of the whole value, without the NUL, even if it did not fit; buf may be NULL
 * when size is 0). attempt: the 16 hex digits; app_id and uid: NUL-terminated, NULL
 * read as empty. */
size_t lk__prov_format(char *buf, size_t size, uint64_t batch, const char *attempt,
                       const char *app_id, const char *uid);

/* Parse a provenance header's value (v, n bytes). Returns 1 and fills *p when it is a
 * well-formed v1 value; 0 otherwise (another version, a field missing or malformed),
 * leaving *p unspecified. */
int lk__prov_parse(const void *v, size_t n, lk__prov_t *p);

/* The provenance of a record from its headers (h may be NULL): the first header named
 * LK__PROV_HEADER (the sink's own; a header of the same name that a pipeline copied from
 * its input comes after it), or else the four headers of an older version. Returns 1 and
 * fills *p; 0 if the record has none or it is malformed. */
int lk__prov_get(const rd_kafka_headers_t *h, lk__prov_t *p);

#endif
