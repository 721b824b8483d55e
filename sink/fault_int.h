/*
 * fault_int.h — error injection for the librdkafka calls of the Kafka sink (test builds
 * only; see lk__fault_word in core/util_int.h). An injected error is made with
 * rd_kafka_error_new, which the public API cannot mark retriable, abortable or fatal:
 * the sink classes it as unclassified, i.e. fatal. Retriable broker errors are tested
 * with the mock cluster's request errors instead (tests/chaos/chaos.py broker_faults).
 */
#ifndef LK_SINK_FAULT_INT_H
#define LK_SINK_FAULT_INT_H

#include "../core/util_int.h"

#include <librdkafka/rdkafka.h>

#ifdef LK_NO_FAULTPOINTS
#define LK__FAULT_KAFKA(name, call) (call)
#define LK__FAULT_KAFKA_RESP(name, call) (call)
#else
/** NULL to run the call, else the injected error (owned by the caller). */
rd_kafka_error_t *lk__fault_kafka_error(const char *name);
/** 0 (RD_KAFKA_RESP_ERR_NO_ERROR) to run the call, else the injected error code. */
rd_kafka_resp_err_t lk__fault_kafka_resp(const char *name);
/* GNU "a ?: b": a is evaluated once */
#define LK__FAULT_KAFKA(name, call) (lk__fault_kafka_error(name) ?: (call))
#define LK__FAULT_KAFKA_RESP(name, call) (lk__fault_kafka_resp(name) ?: (call))
#endif

#endif
