/*
 * pipeline_priv.h — what the pipeline's own files (pipeline.c: definitions;
 * pipeline_batch.c: batch execution) share beyond pipeline_int.h. Nothing outside
 * connector/pipeline*.c includes it: the rest of the engine uses pipeline_int.h.
 * DESIGN.md, Layout.
 */
#ifndef LK_PIPELINE_PRIV_H
#define LK_PIPELINE_PRIV_H

#include "pipeline_int.h"

/** Free a per-key table's memory (a stage's, when its pipeline is destroyed). */
void lk__kv_free(lk__kv_t *kv);
/** Free a stage (pipeline.c; pipeline_repartition.c frees the stages a cut leaves out). */
void lk__stage_free(lk_stream_t *s);

#endif
