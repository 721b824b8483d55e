/*
 * repartition_copy.c — the pipeline of the repartition tests (tests/mock/
 * test_repartition.c on the mock, the kafka tier's group-repartition in
 * tests/kafka/scenarios.py on a real broker), a plugin so that `lockstep run` runs it in
 * real processes:
 * input.topics -> map "tag" (the record as it is) -> lk_repartition "by-key" -> Kafka sink
 * "to-kafka" (output.topic). Stateless on both sides of the repartition, so that it runs
 * scaled out before the changelog exists (DESIGN.md, Scale-out: stage 2), and every
 * input record must reach the output exactly once through both stages.
 */
#include "lockstep.h"

void lk_plugin_define(lk_pipeline_t *p, const lk_conf_t *conf);

static void tag(lk_batch_t *b, const lk_record_t *in, void *opaque) {
    (void)opaque;
    lk_emit(b, in->key, in->key_len, in->value, in->value_len);
}

void lk_plugin_define(lk_pipeline_t *p, const lk_conf_t *conf) {
    lk_stream_t *in = lk_kafka_stream(p, lk_conf_get(conf, "input.topics"));
    lk_stream_t *moved = lk_repartition(lk_map(in, "tag", tag, NULL), "by-key");
    lk_to_kafka(moved, "to-kafka", lk_conf_get(conf, "output.topic"));
}
