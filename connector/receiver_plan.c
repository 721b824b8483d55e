/*
 * receiver_plan.c — planning a batch (see receiver_int.h): discover partitions, read
 * watermarks, cap each range, and check a partition's log against the checkpoint (its
 * start, its end and the fingerprint of the last record read) before anything is read.
 * DESIGN.md, The batch protocol (item 1), A batch's life (→ planned) and Recovery (the
 * fingerprint check).
 */
#define _GNU_SOURCE
#include "receiver_priv.h"
#include "../core/conf_int.h"
#include "../core/util_int.h"

#include <stdlib.h>
#include <string.h>

static void fp_text(char *buf, size_t size, const lk__fingerprint_t *fp) {
    lk__fmt(buf, size, "offset %lld, timestamp %lld, hash %016llx", (long long)fp->offset,
            (long long)fp->timestamp, (unsigned long long)fp->hash);
}

/*
 * Read the record at fp->offset of partition p (topic index ti) back with the planner's
 * simple consumer and compare it with fp. The same record: LK_OK. Another one, or none
 * where the log start (retention) cannot explain it: data loss — the topic was recreated
 * (or its log rewritten), so which of its records were read cannot be told.
 */
static lk_err_t verify_fingerprint(lk__receiver_t *r, size_t ti, lk__recv_part_t *p, int64_t low,
                                   int64_t from, const lk__fingerprint_t *fp, lk__fetch_t *f,
                                   char *errstr, size_t errstr_size) {
    const char *topic = r->topics[ti];
    int pid = (int)p->partition;
    if (fp->offset < low) /* deleted by retention: nothing left to compare with */
        return LK_OK;
    rd_kafka_topic_t *rkt = r->prkts[ti];
    if (rd_kafka_consume_start(rkt, p->partition, fp->offset) == -1)
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size,
                       "%s[%d]: cannot read back offset %lld to check it: %s", topic, pid,
                       (long long)fp->offset, rd_kafka_err2str(rd_kafka_last_error()));
    int64_t deadline = lk__mono_ms() + r->fetch_timeout_ms;
    rd_kafka_message_t *m = NULL;
    int missing = 0, timed_out = 0;
    while (!m && !missing) {
        if (lk__mono_ms() > deadline) {
            timed_out = 1;
            break;
        }
        rd_kafka_message_t *x = rd_kafka_consume(rkt, p->partition, 100);
        if (!x)
            continue;
        if (x->err == RD_KAFKA_RESP_ERR__PARTITION_EOF ||
            x->err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE ||
            x->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET)
            missing = 1;
        else if (!x->err && x->offset >= fp->offset)
            m = x; /* other errors are transient: retried until the deadline */
        if (x != m)
            rd_kafka_message_destroy(x);
    }
    rd_kafka_consume_stop(rkt, p->partition);
    if (timed_out)
        return lk__err(LK_ERR_TIMED_OUT, errstr, errstr_size,
                       "%s[%d]: could not read back offset %lld (the last record read) to "
                       "check it within fetch.timeout.ms",
                       topic, pid, (long long)fp->offset);
    lk__fingerprint_t got = {-1, -1, 0};
    if (m) {
        got = lk__recv_fingerprint_of(m);
        rd_kafka_message_destroy(m);
    }
    if (got.offset == fp->offset && got.timestamp == fp->timestamp && got.hash == fp->hash)
        return LK_OK;
    char want[128], found[160];
    fp_text(want, sizeof want, fp);
    if (got.offset == fp->offset) {
        char g[128];
        fp_text(g, sizeof g, &got);
        lk__fmt(found, sizeof found, "another record is there (%s)", g);
    } else if (got.offset > fp->offset) {
        lk__fmt(found, sizeof found, "no record is there (the next one is at offset %lld)",
                (long long)got.offset);
    } else {
        lk__fmt(found, sizeof found, "no record is there");
    }
    uint64_t unread = (uint64_t)(from - low);
    if (!r->skip_loss)
        return lk__err(LK_ERR_DATA_LOSS, errstr, errstr_size,
                       "%s[%d]: the last record read (%s) is not in the log any more: %s. The "
                       "topic was deleted and recreated, or its log rewritten, and its %llu "
                       "records before the checkpointed offset %lld were never read; set "
                       "on.data.loss=skip to continue at offset %lld with them counted as "
                       "skipped, or reset this partition's offset explicitly",
                       topic, pid, want, found, (unsigned long long)unread, (long long)from,
                       (long long)from);
    lk__log(LK_LOG_WARNING,
            "%s[%d]: the last record read (%s) is not in the log any more: %s; "
            "on.data.loss=skip: continuing at offset %lld, %llu records counted as skipped",
            topic, pid, want, found, (long long)from, (unsigned long long)unread);
    f->data_loss_skipped += unread;
    return LK_OK;
}

/* Checks of a partition's log before a batch reads [from, ...) of it, for a fresh plan
 * and a replayed one alike: the fingerprint of the last record read is compared at the
 * first plan, and again whenever the log start or end moved backwards (a recreated
 * topic) or the topic was missing in between. The fast path costs two comparisons. */
static lk_err_t check_log(lk__receiver_t *r, size_t ti, lk__recv_part_t *p, int64_t low,
                          int64_t high, int64_t from, const lk__fingerprint_t *fp, int has_fp,
                          lk__fetch_t *f, char *errstr, size_t errstr_size) {
    if (p->seen_high >= 0 && (low < p->seen_low || high < p->seen_high)) {
        if (p->checked)
            lk__log(LK_LOG_NOTICE,
                    "%s[%d]: the log moved backwards (was %lld..%lld, now %lld..%lld): "
                    "checking the last record read",
                    p->topic, (int)p->partition, (long long)p->seen_low,
                    (long long)p->seen_high, (long long)low, (long long)high);
        p->checked = 0;
    }
    p->seen_low = low;
    p->seen_high = high;
    if (p->checked)
        return LK_OK;
    lk_err_t e = has_fp ? verify_fingerprint(r, ti, p, low, from, fp, f, errstr, errstr_size)
                        : LK_OK;
    if (!e)
        p->checked = 1;
    return e;
}

static size_t topic_index(lk__receiver_t *r, const char *own) {
    for (size_t i = 0; i < r->ntopics; i++)
        if (r->topics[i] == own)
            return i;
    return 0;
}

static lk_err_t add_range(lk__fetch_t *f, const char *topic, int32_t partition, int64_t from,
                          int64_t until, int64_t high, size_t *cap) {
    lk__range_msgs_t *n = lk__vec_reserve(f->ranges, cap, f->nranges + 1, sizeof *n, 16);
    if (!n)
        return LK_ERR_NOMEM;
    f->ranges = n;
    lk__range_msgs_t *rm = &f->ranges[f->nranges++];
    memset(rm, 0, sizeof *rm);
    rm->range = (lk__range_t){topic, partition, from, until};
    rm->high = high;
    return LK_OK;
}

/*
 * The low and high watermarks of partitions pids[0..n) of topic, in two ListOffsets
 * requests (earliest, then latest) for all of them instead of one watermark query per
 * partition: at short batch intervals the plan's round trips are part of every batch's
 * fixed cost. The planner reads read_committed, so "latest" is the last stable offset,
 * as rd_kafka_query_watermark_offsets answers it (both send the same ListOffsets
 * request with the consumer's isolation level).
 */
static lk_err_t topic_watermarks(lk__receiver_t *r, const char *topic, int n,
                                 const int32_t *pids, int64_t *low, int64_t *high, char *errstr,
                                 size_t errstr_size) {
    lk_err_t err = LK_OK;
    for (int which = 0; which < 2 && !err; which++) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(n);
        for (int i = 0; i < n; i++)
            rd_kafka_topic_partition_list_add(l, topic, pids[i])->offset =
                which ? RD_KAFKA_OFFSET_END : RD_KAFKA_OFFSET_BEGINNING;
        rd_kafka_resp_err_t ke = rd_kafka_offsets_for_times(r->planner, l, LK__KAFKA_TIMEOUT_MS);
        for (int i = 0; i < n && !err; i++) {
            const rd_kafka_topic_partition_t *e = &l->elems[i];
            rd_kafka_resp_err_t pe = ke ? ke : e->err;
            if (pe || e->offset < 0 || e->partition != pids[i])
                err = lk__err(LK_ERR_KAFKA, errstr, errstr_size,
                              "cannot read offsets of %s[%d]: %s", topic, (int)pids[i],
                              pe ? rd_kafka_err2str(pe) : "no offset in the answer");
            else
                (which ? high : low)[i] = e->offset;
        }
        rd_kafka_topic_partition_list_destroy(l);
    }
    return err;
}

lk_err_t lk__receiver_plan(lk__receiver_t *r, lk__offset_lookup_fn *lookup, void *opaque,
                           lk__fetch_t *f, char *errstr, size_t errstr_size) {
    memset(f, 0, sizeof *f);
    size_t cap = 0;
    lk_err_t err = LK_OK;
    for (size_t t = 0; t < r->ntopics && !err; t++) {
        const char *topic = r->topics[t];
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t ke =
            rd_kafka_metadata(r->planner, 0, r->prkts[t], &md, LK__KAFKA_TIMEOUT_MS);
        if (ke) {
            err = lk__err(LK_ERR_KAFKA, errstr, errstr_size,
                          "cannot read metadata of topic %s: %s", topic, rd_kafka_err2str(ke));
            break;
        }
        if (md->topic_cnt != 1 || md->topics[0].err || md->topics[0].partition_cnt == 0) {
            /* the topic is missing: if it comes back, it may be another topic of the
             * same name, so its partitions are checked again */
            for (size_t i = 0; i < r->nparts; i++)
                if (r->parts[i].topic == topic)
                    r->parts[i].checked = 0;
            rd_kafka_resp_err_t te = md->topic_cnt == 1 ? md->topics[0].err
                                                        : RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
            err = lk__err(LK_ERR_KAFKA, errstr, errstr_size, "input topic %s: %s", topic,
                          te ? rd_kafka_err2str(te) : "no partitions");
            rd_kafka_metadata_destroy(md);
            break;
        }
        /* A topic with offsets in the checkpoint is being read: partitions new to it
         * start at the earliest offset. auto.offset.reset decides only for new topics. */
        int known_topic = 0;
        for (int i = 0; i < md->topics[0].partition_cnt && !known_topic && !err; i++) {
            int64_t o;
            lk__fingerprint_t fp;
            int has_fp;
            lk_err_t le = lookup(topic, md->topics[0].partitions[i].id, &o, &fp, &has_fp,
                                 opaque, errstr, errstr_size);
            known_topic = le == LK_OK;
            if (le && le != LK_ERR_NOT_FOUND)
                err = le; /* corrupt is never "not found" */
        }
        int np = md->topics[0].partition_cnt;
        if (!err && r->task >= 0) {
            /* a task reads its partition of each topic, and only it */
            int has = 0;
            for (int i = 0; i < np; i++)
                has |= md->topics[0].partitions[i].id == r->task;
            if (!has)
                err = lk__err(LK_ERR_TOPOLOGY, errstr, errstr_size,
                              "input topic %s has no partition %d for task %d (%d "
                              "partitions): its partition count changed under the "
                              "application",
                              topic, r->task, r->task, np);
            np = 1;
        }
        int32_t *pids = err ? NULL : malloc((size_t)np * sizeof *pids);
        int64_t *lows = pids ? malloc((size_t)np * sizeof *lows) : NULL;
        int64_t *highs = lows ? malloc((size_t)np * sizeof *highs) : NULL;
        if (!err && !highs)
            err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
        for (int i = 0; !err && i < np; i++)
            pids[i] = r->task >= 0 ? r->task : md->topics[0].partitions[i].id;
        if (!err)
            err = topic_watermarks(r, topic, np, pids, lows, highs, errstr, errstr_size);
        for (int i = 0; i < np && !err; i++) {
            int32_t pid = pids[i];
            int64_t low = lows[i], high = highs[i], from;
            lk__fingerprint_t fp = {0, 0, 0};
            int has_fp = 0;
            lk_err_t le = lookup(topic, pid, &from, &fp, &has_fp, opaque, errstr, errstr_size);
            if (le && le != LK_ERR_NOT_FOUND) {
                err = le;
                break;
            }
            int found = le == LK_OK;
            if (!found) {
                f->new_partitions++;
                from = known_topic || !r->auto_latest ? low : high;
                if (known_topic)
                    lk__log(LK_LOG_NOTICE, "new partition %s[%d]: reading from offset %lld",
                            topic, pid, (long long)from);
            }
            if (from > high) {
                /* The log was truncated or the topic recreated: which of its records
                 * were processed cannot be told, so no policy may guess. */
                err = lk__err(LK_ERR_DATA_LOSS, errstr, errstr_size,
                              "%s[%d]: checkpointed offset %lld is beyond the log end %lld: "
                              "the topic was recreated or its log truncated, and which "
                              "records were already processed cannot be told; reset this "
                              "partition's offset explicitly",
                              topic, pid, (long long)from, (long long)high);
                break;
            }
            if (from < low) {
                const char *why = "below the log start";
                if (!r->skip_loss) {
                    err = lk__err(LK_ERR_DATA_LOSS, errstr, errstr_size,
                                  "%s[%d]: checkpointed offset %lld is %s (log %lld..%lld): "
                                  "%lld records were deleted before they were read; set "
                                  "on.data.loss=skip to continue at %lld",
                                  topic, pid, (long long)from, why, (long long)low,
                                  (long long)high,
                                  (long long)(low - from), (long long)low);
                    break;
                }
                uint64_t lost = (uint64_t)(low - from);
                lk__log(LK_LOG_WARNING,
                        "%s[%d]: checkpointed offset %lld is %s (log %lld..%lld); "
                        "on.data.loss=skip: continuing at %lld, %llu offsets skipped",
                        topic, pid, (long long)from, why, (long long)low, (long long)high,
                        (long long)low, (unsigned long long)lost);
                f->data_loss_skipped += lost;
                from = low;
            }
            int64_t until = high - from > r->max_records ? from + r->max_records : high;
            const char *own = lk__recv_own_topic(r, topic);
            lk__recv_part_t *p = lk__recv_find_part(r, own, pid);
            if (!p && !(p = lk__recv_add_part(r, own, pid))) {
                err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
                break;
            }
            if ((err = check_log(r, t, p, low, high, from, &fp, found && has_fp, f, errstr,
                                 errstr_size)))
                break;
            if (add_range(f, own, pid, from, until, high, &cap)) {
                err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
                break;
            }
            f->ranges[f->nranges - 1].fp = fp;
            f->ranges[f->nranges - 1].has_fp = found && has_fp;
        }
        free(pids);
        free(lows);
        free(highs);
        rd_kafka_metadata_destroy(md);
    }
    if (err)
        lk__fetch_clear(f);
    return err;
}

lk_err_t lk__receiver_use_plan(lk__receiver_t *r, const lk__range_t *ranges, size_t n,
                               lk__offset_lookup_fn *lookup, void *opaque, lk__fetch_t *f,
                               char *errstr, size_t errstr_size) {
    memset(f, 0, sizeof *f);
    size_t cap = 0;
    lk_err_t err = LK_OK;
    for (size_t i = 0; i < n && !err; i++) {
        const lk__range_t *rg = &ranges[i];
        const char *own = lk__recv_own_topic(r, rg->topic);
        if (!own) { /* the topic left the pipeline: the plan cannot be reused */
            err = lk__err(LK_ERR_NOT_FOUND, errstr, errstr_size,
                          "pending plan reads topic %s, no longer an input", rg->topic);
            break;
        }
        lk__recv_part_t *p = lk__recv_find_part(r, own, rg->partition);
        if (!p && !(p = lk__recv_add_part(r, own, rg->partition))) {
            err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
            break;
        }
        int64_t low, high;
        rd_kafka_resp_err_t ke = rd_kafka_query_watermark_offsets(
            r->planner, own, rg->partition, &low, &high, LK__KAFKA_TIMEOUT_MS);
        if (ke) {
            err = lk__err(LK_ERR_KAFKA, errstr, errstr_size, "cannot read offsets of %s[%d]: %s",
                          own, (int)rg->partition, rd_kafka_err2str(ke));
            break;
        }
        if (rg->until > high) {
            /* Like a checkpointed offset beyond the log end: the records the plan names
             * are not there, and fetching would wait for them forever. */
            err = lk__err(LK_ERR_DATA_LOSS, errstr, errstr_size,
                          "%s[%d]: the pending plan reads up to offset %lld, beyond the log "
                          "end %lld: the topic was recreated or its log truncated, and which "
                          "records were already processed cannot be told; reset this "
                          "partition's offset explicitly",
                          own, (int)rg->partition, (long long)rg->until, (long long)high);
            break;
        }
        lk__fingerprint_t fp = {0, 0, 0};
        int has_fp = 0;
        int64_t off;
        lk_err_t le = lookup ? lookup(own, rg->partition, &off, &fp, &has_fp, opaque, errstr,
                                      errstr_size)
                             : LK_ERR_NOT_FOUND;
        if (le && le != LK_ERR_NOT_FOUND) {
            err = le;
            break;
        }
        has_fp = le == LK_OK && has_fp && fp.offset < rg->from;
        if ((err = check_log(r, topic_index(r, own), p, low, high, rg->from, &fp, has_fp, f,
                             errstr, errstr_size)))
            break;
        if (add_range(f, own, rg->partition, rg->from, rg->until, high, &cap)) {
            err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
            break;
        }
        f->ranges[f->nranges - 1].fp = fp;
        f->ranges[f->nranges - 1].has_fp = has_fp;
    }
    if (err)
        lk__fetch_clear(f);
    return err;
}

