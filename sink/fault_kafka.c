/*
 * fault_kafka.c — error injection for the librdkafka calls (sink/fault_int.h): the ERROR
 * of a LOCKSTEP_FAULTPOINT spec is looked up among librdkafka's own error names
 * (rd_kafka_get_err_descs: "_TIMED_OUT", "COORDINATOR_NOT_AVAILABLE", with or without the
 * RD_KAFKA_RESP_ERR_ prefix); an unknown name fails with _FAIL and says so.
 */
#include "fault_int.h"

#include <string.h>

#ifndef LK_NO_FAULTPOINTS
static rd_kafka_resp_err_t decode(const char *point, const char *word) {
    if (!strncmp(word, "RD_KAFKA_RESP_ERR_", 18))
        word += 18;
    const struct rd_kafka_err_desc *d;
    size_t n;
    rd_kafka_get_err_descs(&d, &n);
    for (size_t i = 0; i < n; i++)
        if (d[i].name && !strcmp(d[i].name, word))
            return d[i].code;
    lk__log(LK_LOG_WARNING, "fault point %s: '%s' is not a librdkafka error name; failing "
            "with _FAIL", point, word);
    return RD_KAFKA_RESP_ERR__FAIL;
}

rd_kafka_error_t *lk__fault_kafka_error(const char *name) {
    const char *w = lk__fault_word(name);
    if (!w)
        return NULL;
    rd_kafka_resp_err_t code = decode(name, w);
    return rd_kafka_error_new(code, "%s (injected at fault point %s)", rd_kafka_err2str(code),
                              name);
}

rd_kafka_resp_err_t lk__fault_kafka_resp(const char *name) {
    const char *w = lk__fault_word(name);
    return w ? decode(name, w) : RD_KAFKA_RESP_ERR_NO_ERROR;
}
#endif
