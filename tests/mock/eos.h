/*
 * eos.h — an independent exactly-once checker for a Kafka sink's output: reads the
 * output topic and <app>.progress with its own read_committed consumer and checks that
 * every batch appears exactly once.
 *
 * The mock cluster does not hide aborted transactions, so records of an aborted
 * delivery attempt are visible there. Every record names its batch and attempt (the
 * provenance header, sink/provenance_int.h) and every progress record names the attempt
 * it committed: the checker counts a batch's records only from its committed attempt
 * (the last progress record of the batch). On a real broker, records of other attempts
 * must not be visible at all (eos_report_t.foreign == 0). It asserts that each record's
 * provenance names the app and sink asked for, and that each progress record's header
 * names its own batch and attempt.
 */
#ifndef LK_EOS_H
#define LK_EOS_H

#include <stddef.h>
#include <stdint.h>

#define EOS_MAX_KEYS 64
#define EOS_MAX_BATCHES 4096

typedef struct {
    uint64_t batches;      /* distinct batches with a progress record */
    uint64_t progress_records; /* progress records of the sink, of every attempt: more
                                  than batches means a batch was committed twice, or (on
                                  the mock only) an aborted attempt's record is visible */
    uint64_t first, last;  /* their range */
    uint64_t gaps;         /* batch ids missing in [first, last] */
    uint64_t records;      /* records of committed attempts */
    uint64_t foreign;      /* records of attempts no progress record committed */
    uint64_t dup_keys;     /* a key twice within one batch's committed attempt */
    uint64_t no_provenance;
    size_t nkeys;
    char keys[EOS_MAX_KEYS][64];
    int64_t last_value[EOS_MAX_KEYS]; /* int64 value of the key's latest batch */
} eos_report_t;

/** Read everything and fill the report; asserts (Criterion) on client errors. */
void eos_read(const char *bootstraps, const char *app, const char *sink, const char *topic,
              eos_report_t *r);
/** The latest value of key, or -1 if absent. */
int64_t eos_value(const eos_report_t *r, const char *key);

#endif
