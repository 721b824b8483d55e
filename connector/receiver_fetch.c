/*
 * receiver_fetch.c — fetching exactly the planned ranges (see receiver_int.h): the
 * assignment, the seeks, a queue per partition, and records held for the next batch
 * (receiver.c's opening comment says how cursors, held records and eof_at work together).
 * DESIGN.md, The batch protocol (items 1 and 3) and A batch's life (planned → fetched).
 */
#define _GNU_SOURCE
#include "receiver_priv.h"
#include "../core/conf_int.h"
#include "../core/util_int.h"

#include <stdlib.h>
#include <string.h>

static rd_kafka_topic_partition_list_t *plist(size_t n) {
    return rd_kafka_topic_partition_list_new((int)(n ? n : 1));
}

static void mark_done(lk__recv_part_t *p) {
    p->done = 1;
}

/* Each partition is read from its own queue, and only while its range needs records, so
 * librdkafka's read-ahead (queued.max.messages.kbytes per partition) bounds what waits
 * in memory and no partition is ever paused (librdkafka 2.0.2 notices a resume only at
 * its next I/O wakeup, up to a second later). */
static lk_err_t open_queue(lk__receiver_t *r, lk__recv_part_t *p, char *errstr,
                           size_t errstr_size) {
    if (p->queue)
        return LK_OK;
    p->queue = rd_kafka_queue_get_partition(r->rk, p->topic, p->partition);
    if (!p->queue)
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "no queue for %s[%d]", p->topic,
                       (int)p->partition);
    rd_kafka_queue_forward(p->queue, NULL); /* its messages stay on its own queue */
    return LK_OK;
}

/* Append m to the range of its partition, or hold it for the next batch (a record past
 * the range, after a gap of compacted records or transaction markers). -1: out of
 * memory with m inside the range (the batch must fail: committing it would skip m). */
static int take(lk__fetch_t *f, lk__recv_part_t *p, rd_kafka_message_t *m) {
    lk__range_msgs_t *rm = &f->ranges[p->range];
    if (m->offset < rm->range.from) { /* stale: from before a seek */
        rd_kafka_message_destroy(m);
        return 0;
    }
    if (p->done || m->offset >= rm->range.until) {
        if (m->offset >= rm->range.until)
            mark_done(p);
        if (lk__recv_hold(p, m)) { /* losing a held message only costs a seek next batch */
            rd_kafka_message_destroy(m);
            p->cursor = -1;
        }
        return 0;
    }
    rd_kafka_message_t **n = lk__vec_reserve(rm->msgs, &rm->cap, rm->n + 1, sizeof *n, 256);
    if (!n) {
        rd_kafka_message_destroy(m);
        return -1;
    }
    rm->msgs = n;
    rm->msgs[rm->n++] = m;
    f->records++;
    f->bytes += m->len + m->key_len;
    if (m->offset + 1 >= rm->range.until)
        mark_done(p);
    return 0;
}

/* The batch is full (max.bytes.per.batch) and m, received for p, waits for the next one:
 * if m lies inside p's range, the range ends before it, now. Later events must not find
 * the range open: an end-of-partition event would otherwise complete it with m only held,
 * the cursor would move past m and the next batch would drop it as stale (a loss found
 * in review). Every visible record before m was received already (one queue per
 * partition, in offset order), so ending the range at m is exact. */
static void end_range_at(lk__fetch_t *f, lk__recv_part_t *p, const rd_kafka_message_t *m) {
    lk__range_msgs_t *rm = &f->ranges[p->range];
    if (m->offset >= rm->range.from && m->offset < rm->range.until) {
        rm->range.until = m->offset;
        mark_done(p);
    }
}

/* Make the consumer deliver every planned partition from its range start. */
static lk_err_t position(lk__receiver_t *r, lk__fetch_t *f, int cap_bytes, char *errstr,
                         size_t errstr_size) {
    for (size_t i = 0; i < r->nparts; i++)
        r->parts[i].range = -1;
    for (size_t i = 0; i < f->nranges; i++) {
        lk__recv_part_t *p =
            lk__recv_find_part(r, f->ranges[i].range.topic, f->ranges[i].range.partition);
        p->range = (long)i;
        p->done = 0;
    }
    rd_kafka_resp_err_t ke;
    if (!r->assigned) {
        /* (re)assign everything, each partition at its range start */
        rd_kafka_topic_partition_list_t *l = plist(r->nparts);
        for (size_t i = 0; i < r->nparts; i++) {
            lk__recv_part_t *p = &r->parts[i];
            lk__recv_drop_held(p);
            p->eof_at = -1;
            if (p->range < 0) {
                p->cursor = -1;
                continue;
            }
            rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset =
                f->ranges[p->range].range.from;
            p->cursor = f->ranges[p->range].range.from;
        }
        /* Every queue is opened and un-forwarded BEFORE assign: assign starts fetching
         * and forwards a partition's queue to the consumer queue unless the application
         * already took it over, and a record landing there would be missed. */
        for (size_t i = 0; i < r->nparts; i++) {
            lk_err_t e = r->parts[i].range >= 0
                             ? open_queue(r, &r->parts[i], errstr, errstr_size)
                             : LK_OK;
            if (e) {
                rd_kafka_topic_partition_list_destroy(l);
                return e;
            }
        }
        ke = rd_kafka_assign(r->rk, l);
        rd_kafka_topic_partition_list_destroy(l);
        if (ke)
            return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "cannot assign partitions: %s",
                           rd_kafka_err2str(ke));
        r->assigned = 1;
    } else {
        rd_kafka_topic_partition_list_t *l = plist(f->nranges);
        for (size_t i = 0; i < f->nranges; i++) {
            lk__recv_part_t *p =
                lk__recv_find_part(r, f->ranges[i].range.topic, f->ranges[i].range.partition);
            if (p->cursor == f->ranges[i].range.from)
                continue;
            lk__recv_drop_held(p);
            rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset =
                f->ranges[i].range.from;
            p->cursor = f->ranges[i].range.from;
            p->eof_at = -1;
        }
        if (l->cnt) {
            rd_kafka_error_t *e = rd_kafka_seek_partitions(r->rk, l, LK__KAFKA_TIMEOUT_MS);
            int bad = 0;
            for (int i = 0; i < l->cnt; i++)
                bad |= l->elems[i].err != 0;
            rd_kafka_topic_partition_list_destroy(l);
            if (e || bad) {
                char msg[256];
                lk__fmt(msg, sizeof msg, "%s", e ? rd_kafka_error_string(e) : "partition error");
                if (e)
                    rd_kafka_error_destroy(e);
                r->assigned = 0;
                lk__receiver_invalidate(r);
                return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "cannot seek: %s", msg);
            }
        } else {
            rd_kafka_topic_partition_list_destroy(l);
        }
    }
    /* Held messages first; then fetch whatever is still missing. */
    for (size_t i = 0; i < f->nranges; i++) {
        lk__recv_part_t *p =
            lk__recv_find_part(r, f->ranges[i].range.topic, f->ranges[i].range.partition);
        rd_kafka_message_t **held = p->held;
        size_t nheld = p->nheld;
        p->held = NULL;
        p->nheld = p->capheld = 0;
        if (f->ranges[i].range.from >= f->ranges[i].range.until)
            p->done = 1;
        int oom = 0;
        for (size_t j = 0; j < nheld; j++)
            if (oom) {
                rd_kafka_message_destroy(held[j]);
            } else if (cap_bytes && f->bytes >= (uint64_t)r->max_bytes) {
                /* the batch is already full: these wait for the next one */
                end_range_at(f, p, held[j]);
                if (lk__recv_hold(p, held[j])) {
                    rd_kafka_message_destroy(held[j]);
                    p->cursor = -1;
                }
            } else {
                oom = take(f, p, held[j]) != 0;
            }
        free(held);
        /* everything visible below eof_at was received already: what the range holds
         * was held for it, the rest of it is invisible (see the file comment) */
        if (!oom && p->eof_at >= f->ranges[i].range.until)
            p->done = 1;
        if (oom) {
            lk__receiver_invalidate(r);
            return lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory fetching");
        }
    }
    return LK_OK;
}

/* Handle an event (not a message) from a partition or the consumer: 0 to go on. */
static lk_err_t on_event(lk__receiver_t *r, lk__fetch_t *f, rd_kafka_message_t *m,
                         char *errstr, size_t errstr_size) {
    const char *topic = m->rkt ? rd_kafka_topic_name(m->rkt) : NULL;
    lk__recv_part_t *p = topic ? lk__recv_find_part(r, topic, m->partition) : NULL;
    rd_kafka_resp_err_t ke = m->err;
    if (ke == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        if (p)
            p->eof_at = m->offset;
        if (p && p->range >= 0 && !p->done && m->offset >= f->ranges[p->range].range.until)
            mark_done(p);
        return LK_OK;
    }
    if (ke == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET || ke == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE) {
        lk__receiver_invalidate(r);
        return lk__err(LK_ERR_DATA_LOSS, errstr, errstr_size,
                       "%s[%d]: offsets to read no longer exist: %s", topic ? topic : "?",
                       (int)(p ? p->partition : -1), rd_kafka_message_errstr(m));
    }
    char fatal[512];
    if (rd_kafka_fatal_error(r->rk, fatal, sizeof fatal)) {
        lk__receiver_invalidate(r);
        return lk__err(LK_ERR_FATAL, errstr, errstr_size, "consumer fatal error: %s", fatal);
    }
    int64_t now = lk__mono_ms();
    if (now - r->last_err_log_ms > 5000) {
        lk__log(LK_LOG_WARNING, "consumer: %s (retrying until fetch.timeout.ms)",
                rd_kafka_message_errstr(m));
        r->last_err_log_ms = now;
    }
    return LK_OK;
}

lk_err_t lk__receiver_fetch(lk__receiver_t *r, lk__fetch_t *f, int cap_bytes,
                            int (*abandon)(void *opaque), void *opaque, char *errstr,
                            size_t errstr_size) {
    lk_err_t err = position(r, f, cap_bytes, errstr, errstr_size);
    if (err)
        return err;
    int64_t deadline = lk__mono_ms() + r->fetch_timeout_ms;
    rd_kafka_message_t *msgs[1024];
    for (;;) {
        size_t pending = 0;
        lk__recv_part_t *wait_on = NULL;
        /* max.bytes.per.batch reached, possibly already by held records: then nothing
         * more may be taken from a queue, or a partition whose held records were put
         * off would skip past them */
        int full = cap_bytes && f->bytes >= (uint64_t)r->max_bytes;
        for (size_t i = 0; i < f->nranges && !err; i++) {
            lk__range_msgs_t *rm = &f->ranges[i];
            lk__recv_part_t *p = lk__recv_find_part(r, rm->range.topic, rm->range.partition);
            if (p->done)
                continue;
            if (full) {
                pending++;
                continue;
            }
            /* ask for no more than the range still needs: without gaps, nothing past it */
            int64_t last = rm->n ? rm->msgs[rm->n - 1]->offset + 1 : rm->range.from;
            int64_t want = rm->range.until - last;
            if (want > (int64_t)LK_ARRAY_SIZE(msgs))
                want = LK_ARRAY_SIZE(msgs);
            if (want < 1)
                want = 1;
            ssize_t n = rd_kafka_consume_batch_queue(p->queue, 0, msgs, (size_t)want);
            for (ssize_t j = 0; j < n; j++) {
                if (err || msgs[j]->err) {
                    if (!err)
                        err = on_event(r, f, msgs[j], errstr, errstr_size);
                    rd_kafka_message_destroy(msgs[j]);
                } else if (full) {
                    /* past the byte cap: the range ends before it, the next batch
                     * starts with it */
                    end_range_at(f, p, msgs[j]);
                    if (lk__recv_hold(p, msgs[j])) {
                        rd_kafka_message_destroy(msgs[j]);
                        p->cursor = -1;
                    }
                } else if (take(f, p, msgs[j])) {
                    lk__receiver_invalidate(r);
                    err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory fetching");
                } else if (cap_bytes && f->bytes >= (uint64_t)r->max_bytes) {
                    full = 1;
                }
            }
            if (!p->done) {
                pending++;
                if (!wait_on)
                    wait_on = p;
            }
        }
        if (err)
            return err;
        /* consumer-wide events (broker errors) arrive on the consumer queue */
        rd_kafka_message_t *ev;
        while ((ev = rd_kafka_consumer_poll(r->rk, 0))) {
            if (!ev->err) {
                /* every assigned partition has its own queue: a record here means one
                 * did not, and skipping it could lose input. Fail the batch instead. */
                char where[300];
                lk__fmt(where, sizeof where, "%s[%d] offset %lld",
                        ev->rkt ? rd_kafka_topic_name(ev->rkt) : "?", (int)ev->partition,
                        (long long)ev->offset);
                rd_kafka_message_destroy(ev);
                r->assigned = 0;
                lk__receiver_invalidate(r);
                return lk__err(LK_ERR_KAFKA, errstr, errstr_size,
                               "a record of %s arrived outside its partition queue; the "
                               "batch is planned again",
                               where);
            }
            err = on_event(r, f, ev, errstr, errstr_size);
            rd_kafka_message_destroy(ev);
            if (err)
                return err;
        }
        if (!pending)
            break;
        if (full || (cap_bytes && f->bytes >= (uint64_t)r->max_bytes)) {
            /* batch full: end every unfinished range where fetching stopped */
            for (size_t i = 0; i < f->nranges; i++) {
                lk__range_msgs_t *rm = &f->ranges[i];
                lk__recv_part_t *p = lk__recv_find_part(r, rm->range.topic, rm->range.partition);
                if (p->done)
                    continue;
                rm->range.until = rm->n ? rm->msgs[rm->n - 1]->offset + 1 : rm->range.from;
                mark_done(p);
            }
            break;
        }
        int abandoned = abandon && abandon(opaque);
        if (abandoned || lk__mono_ms() > deadline) {
            lk__receiver_invalidate(r);
            return lk__err(LK_ERR_TIMED_OUT, errstr, errstr_size,
                           abandoned ? "fetch abandoned (stop requested)"
                                     : "fetch timed out after %lld ms with %zu of %zu "
                                       "partitions incomplete (fetch.timeout.ms)",
                           (long long)r->fetch_timeout_ms, pending, f->nranges);
        }
        /* nothing ready: wait briefly on one partition that still needs records */
        ssize_t n = rd_kafka_consume_batch_queue(wait_on->queue, 10, msgs, 1);
        for (ssize_t j = 0; j < n && !err; j++) {
            if (msgs[j]->err) {
                err = on_event(r, f, msgs[j], errstr, errstr_size);
                rd_kafka_message_destroy(msgs[j]);
            } else if (take(f, wait_on, msgs[j])) {
                lk__receiver_invalidate(r);
                err = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory fetching");
            }
        }
        if (err)
            return err;
    }
    for (size_t i = 0; i < f->nranges; i++) {
        lk__range_msgs_t *rm = &f->ranges[i];
        lk__recv_part_t *p = lk__recv_find_part(r, rm->range.topic, rm->range.partition);
        if (p->cursor >= 0)
            p->cursor = rm->range.until;
        if (rm->n) { /* the last record read, checked at the next start */
            rm->fp = lk__recv_fingerprint_of(rm->msgs[rm->n - 1]);
            rm->has_fp = 1;
        }
    }
    return LK_OK;
}

int64_t lk__receiver_fetched_high(lk__receiver_t *r, const char *topic, int32_t partition) {
    int64_t low, high;
    if (!r || rd_kafka_get_watermark_offsets(r->rk, topic, partition, &low, &high) ||
        high < 0)
        return -1;
    return high;
}
