/*
 * kafka_changelog.c — the Kafka sink's restore of keyed state at a task's handoff
 * (docs/DESIGN.md, "Scale-out", the changelog). In group.mode=consumer every write of a
 * stateful operator's state.<uid> database is captured by the store into the outbox of a
 * changelog member of the task's Kafka sink (state/store_state.c), and delivered in the
 * batch's Kafka transaction to partition p of <app.id>.<uid>.changelog (compacted), each
 * record carrying the provenance header with its batch. When the task's checkpoint moves
 * to another checkpoint's last progress record (the handoff, kafka_progress.c), its state
 * is brought to that record's batch here, inside the handoff's checkpoint transaction:
 *
 *   - full: the local state may hold batches Kafka never received (it committed batches
 *     it did not deliver), or the checkpoint is new: its state.<uid> is cleared and the
 *     changelog partition read (read_committed) from its start to its stable end;
 *   - tail: the local state is exactly at its last delivered batch B (no batch committed
 *     since): read from the changelog position recorded with B's fence (0 when unknown)
 *     and apply only the records of batches after B.
 *
 * Every record is an absolute write (a value, or a delete), so applying a suffix of the
 * partition in order over a state that already holds some of it ends in the same state:
 * a position recorded too early only costs reading more. A partition that no longer holds
 * what the plan must read is refused (check_range: LK_ERR_DATA_LOSS, the handoff's
 * transaction aborted): a log start past 0 (records deleted: a compacted topic never
 * moves it) for a full restore or past a tail's position, a tail's position past the end
 * (the topic recreated). A broker shows read_committed
 * readers only committed records, one attempt per batch; the mock cluster also shows
 * aborted attempts (docs/DESIGN.md, "The mock cluster's limits"): a batch met in a second
 * attempt starts the operator's restore again in full, reading twice, and applies only
 * the last attempt of each batch (the delivered one comes last). The plan of one member's
 * restore, the filter of one record and the attempts table are pure functions
 * (lk__changelog_plan, lk__changelog_applies, lk__changelog_attempts_*) for the unit tests.
 */
#define _GNU_SOURCE
#include "kafka_priv.h"
#include "provenance_int.h"
#include "../core/util_int.h"

#include <stdlib.h>
#include <string.h>

void lk__changelog_plan(uint64_t committed, int fence_found, uint64_t fence_batch,
                        int64_t fence_offset, int64_t fence_age_ms, lk__changelog_plan_t *out) {
    /* tail only when the state is exactly the last delivered batch's: a batch committed
     * after it (undelivered, or its acknowledgement lost) may have changed state that
     * Kafka never received; and only from a recent delivery: deletes older than the
     * topic's delete.retention.ms may be gone from the log */
    int tail = fence_found && committed > 0 && fence_batch == committed &&
               fence_age_ms <= LK__CHANGELOG_TAIL_MAX_AGE_MS;
    out->full = !tail;
    out->after = tail ? fence_batch : 0;
    out->start = tail && fence_offset > 0 ? fence_offset : 0;
}

int lk__changelog_applies(const lk__prov_t *p, const char *app, const char *member,
                          uint64_t after, uint64_t upto) {
    if (p->old_format || p->app_len != strlen(app) || memcmp(p->app, app, p->app_len) ||
        p->sink_len != strlen(member) || memcmp(p->sink, member, p->sink_len))
        return 0; /* not this changelog's writer */
    /* after: state already holds it; past upto: not part of the history handed over (an
     * aborted attempt that a read_committed reader of the mock cluster still sees) */
    return p->batch > after && p->batch <= upto;
}

/* ---- the attempts of each batch (the mock cluster's visible aborted records) ---- */

/* The sorted position of batch in a (or where it goes). */
static size_t attempts_find(const lk__changelog_attempts_t *a, uint64_t batch) {
    size_t lo = 0, hi = a->n;
    if (hi && a->v[hi - 1].batch < batch) /* batches come mostly in order: append */
        return hi;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (a->v[mid].batch < batch)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int lk__changelog_attempts_see(lk__changelog_attempts_t *a, uint64_t batch,
                               const char *attempt) {
    size_t i = attempts_find(a, batch);
    if (i < a->n && a->v[i].batch == batch) {
        int other = strcmp(a->v[i].attempt, attempt) != 0;
        lk__fmt(a->v[i].attempt, sizeof a->v[i].attempt, "%s", attempt); /* the last wins */
        return other;
    }
    lk__changelog_attempt_t *v = lk__vec_reserve(a->v, &a->cap, a->n + 1, sizeof *v, 64);
    if (!v)
        return -1;
    a->v = v;
    memmove(&v[i + 1], &v[i], (a->n - i) * sizeof *v);
    v[i].batch = batch;
    lk__fmt(v[i].attempt, sizeof v[i].attempt, "%s", attempt);
    a->n++;
    return 0;
}

int lk__changelog_attempts_last(const lk__changelog_attempts_t *a, uint64_t batch,
                                const char *attempt) {
    size_t i = attempts_find(a, batch);
    return i < a->n && a->v[i].batch == batch && !strcmp(a->v[i].attempt, attempt);
}

void lk__changelog_attempts_free(lk__changelog_attempts_t *a) {
    free(a->v);
    *a = (lk__changelog_attempts_t){0};
}

/* How replay treats the records it keeps. */
typedef enum {
    APPLY_CHECKED, /* apply, stopping at a batch seen with a second attempt (*conflict) */
    COLLECT,       /* apply nothing: note each batch's last attempt */
    APPLY_LAST     /* apply only each batch's last attempt (as COLLECT noted) */
} replay_mode_t;

/* Read changelog partition [start, end) of member m with the reader and treat what
 * lk__changelog_applies keeps as mode says; *read and *applied count. */
static lk_err_t replay(lk__sink_t *s, const lk__sink_member_t *m, lk__store_txn_t *t,
                       lk__state_db_t db, int64_t start, int64_t end, uint64_t after,
                       replay_mode_t mode, lk__changelog_attempts_t *attempts, int *conflict,
                       uint64_t *read, uint64_t *applied, char *errstr, size_t errstr_size) {
    lk__kafka_sink_t *k = s->impl;
    *read = *applied = 0;
    *conflict = 0;
    if (start >= end)
        return LK_OK;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, m->target, s->task)->offset = start;
    rd_kafka_resp_err_t ke = rd_kafka_assign(k->reader, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (ke)
        return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "reading %s[%d]: %s", m->target,
                       s->task, rd_kafka_err2str(ke));
    lk_err_t e = LK_OK;
    /* the budget applies to each wait for a message, not to the whole read: a large
     * changelog takes as long as it takes, a silent broker does not */
    int64_t deadline = lk__mono_ms() + lk__kafka_budget(k);
    for (int done = 0; !done && !e;) {
        if (lk__mono_ms() > deadline || lk__kafka_abandoned(s)) {
            e = lk__err(LK_ERR_KAFKA, errstr, errstr_size,
                        "reading %s[%d]: timed out at offset %lld of %lld", m->target,
                        s->task, (long long)(start + (int64_t)*read), (long long)end);
            break;
        }
        rd_kafka_message_t *msg = rd_kafka_consumer_poll(k->reader, 100);
        if (!msg)
            continue;
        deadline = lk__mono_ms() + lk__kafka_budget(k);
        if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            done = msg->offset >= end;
        } else if (msg->err) {
            e = lk__err(LK_ERR_KAFKA, errstr, errstr_size, "reading %s[%d] at offset %lld: %s",
                        m->target, s->task, (long long)msg->offset,
                        rd_kafka_message_errstr(msg));
        } else if (msg->offset < end) {
            (*read)++;
            rd_kafka_headers_t *h = NULL;
            lk__prov_t p;
            if (rd_kafka_message_headers(msg, &h) != RD_KAFKA_RESP_ERR_NO_ERROR)
                h = NULL;
            int keep = lk__prov_get(h, &p) &&
                       lk__changelog_applies(&p, s->app_id, m->uid, after, s->handoff_batch);
            if (keep && mode != APPLY_LAST) {
                int seen = lk__changelog_attempts_see(attempts, p.batch, p.attempt);
                if (seen < 0)
                    e = lk__err(LK_ERR_NOMEM, errstr, errstr_size, "out of memory");
                else if (seen && mode == APPLY_CHECKED)
                    *conflict = done = 1; /* the caller starts again, in full */
                keep = mode == APPLY_CHECKED && !e && !*conflict;
            } else if (keep) {
                keep = lk__changelog_attempts_last(attempts, p.batch, p.attempt);
            }
            if (keep) {
                if (!msg->key || !msg->key_len)
                    e = lk__err(LK_ERR_CORRUPT, errstr, errstr_size,
                                "%s[%d] offset %lld: a changelog record without a key",
                                m->target, s->task, (long long)msg->offset);
                else
                    e = lk__store_state_apply(t, db, msg->key, msg->key_len, msg->payload,
                                              msg->payload ? msg->len : 0, errstr, errstr_size);
                if (!e)
                    (*applied)++;
            }
            done |= msg->offset + 1 >= end;
        } else {
            done = 1;
        }
        rd_kafka_message_destroy(msg);
    }
    (void)rd_kafka_assign(k->reader, NULL); /* unassigning a local assignment */
    return e;
}

/* Whether changelog partition [lo, end) of member m holds what a restore must read from
 * start (full: all of it; a tail: from the position recorded with batch `after`, its
 * fence; `known`: recorded). A gap is refused (LK_ERR_DATA_LOSS; the caller returns it,
 * so the handoff's transaction is aborted and nothing is modified): applied over a gap,
 * the state would silently miss keys, or stay at an older batch, and be delivered on.
 * On a compacted topic Kafka never moves the log start (the cleaner keeps the segments'
 * base offsets), so lo > 0 means records were deleted. */
static lk_err_t check_range(const lk__sink_t *s, const lk__sink_member_t *m, int full,
                            uint64_t after, int known, int64_t start, int64_t lo, int64_t end,
                            char *errstr, size_t errstr_size) {
    char why[640];
    const char *deleted = "deleted (the retention of a topic with cleanup.policy=delete, or "
                          "DeleteRecords; compaction never moves the log start)";
    if (full && lo > 0)
        lk__fmt(why, sizeof why, "a full restore reads it from offset 0, but its log starts "
                "at offset %lld: records 0..%lld were %s, and keys whose last value was among "
                "them would be lost", (long long)lo, (long long)lo - 1, deleted);
    else if (!full && !known && lo > 0)
        lk__fmt(why, sizeof why, "this checkpoint's state is at batch %llu, whose changelog "
                "position was not recorded (an older version delivered it), so the tail "
                "reads from offset 0, but its log starts at offset %lld: records 0..%lld were "
                "%s", (unsigned long long)after, (long long)lo, (long long)lo - 1, deleted);
    else if (!full && start < lo)
        lk__fmt(why, sizeof why, "this checkpoint's state is at batch %llu, delivered up to "
                "offset %lld, but the log starts at offset %lld: records %lld..%lld (changes "
                "after batch %llu) were %s", (unsigned long long)after, (long long)start,
                (long long)lo, (long long)start, (long long)lo - 1, (unsigned long long)after,
                deleted);
    else if (!full && start > end)
        lk__fmt(why, sizeof why, "this checkpoint's state is at batch %llu, delivered up to "
                "offset %lld, past the partition's end %lld: the topic was deleted and "
                "recreated (or truncated) since, so the changes after batch %llu are not in "
                "it and the state would stay at batch %llu", (unsigned long long)after,
                (long long)start, (long long)end, (unsigned long long)after,
                (unsigned long long)after);
    else
        return LK_OK;
    return lk__err(LK_ERR_DATA_LOSS, errstr, errstr_size,
                   "cannot restore the state of operator '%s' from its changelog "
                   "%s[%d] (log start %lld, end %lld): %s. The state cannot be restored "
                   "exactly from this changelog; nothing was modified. Run the task where "
                   "its checkpoint is current (the process that ran it last, its "
                   "checkpoint.dir intact), or reset the application (a new app.id, or a "
                   "new uid for the operator, whose state then starts empty); keep the "
                   "changelog topics at cleanup.policy=compact",
                   m->changelog_of, m->target, s->task, (long long)lo, (long long)end,
                   why);
}

lk_err_t lk__kafka_restore(lk__sink_t *s, lk__store_t *store, lk__store_txn_t *t, char *errstr,
                           size_t errstr_size) {
    lk__kafka_sink_t *k = s->impl;
    int64_t t0 = lk__mono_ns();
    lk__restore_report_t rep = {.done = 1};
    for (size_t i = 0; i < s->nmembers; i++) {
        const lk__sink_member_t *m = &s->members[i];
        if (!m->changelog_of)
            continue;
        lk__state_db_t db;
        if (lk__store_state_find(store, m->changelog_of, &db))
            return lk__err(LK_ERR_STATE, errstr, errstr_size,
                           "changelog %s: operator '%s' has no open state", m->target,
                           m->changelog_of);
        uint64_t fb = 0;
        int64_t fo = -1, fwall = 0;
        lk_err_t e = lk__store_fence_get_offset(t, m->uid, &fb, &fo, &fwall);
        if (e && e != LK_ERR_NOT_FOUND)
            return lk__err(e, errstr, errstr_size, "the fence of %s: %s", m->uid,
                           lk__store_txn_errstr(t));
        lk__changelog_plan_t plan;
        lk__changelog_plan(lk__store_committed_batch(store), !e, fb, fo, lk__wall_ms() - fwall,
                           &plan);
        uint64_t cleared = 0;
        if (plan.full && (e = lk__store_state_clear(t, db, &cleared, errstr, errstr_size)))
            return e;
        /* the previous owner's transaction was aborted by init_transactions; another one
         * still open there (a foreign writer) would hide records behind the stable end */
        lk__kafka_offsets_io_t io;
        lk__kafka_real_offsets_io(k, &io);
        int64_t end = 0, lo = 0, hi = 0;
        if ((e = lk__kafka_wait_stable(&io, m->target, s->task, lk__kafka_budget(k), &end,
                                       errstr, errstr_size)))
            return e;
        rd_kafka_resp_err_t ke = rd_kafka_query_watermark_offsets(
            k->reader, m->target, s->task, &lo, &hi, lk__kafka_budget(k));
        if (ke)
            return lk__err(LK_ERR_KAFKA, errstr, errstr_size, "offsets of %s[%d]: %s",
                           m->target, s->task, rd_kafka_err2str(ke));
        if ((e = check_range(s, m, plan.full, plan.after, fo >= 0, plan.start, lo, end,
                             errstr, errstr_size)))
            return e;
        int64_t start = plan.start;
        uint64_t read, applied;
        int64_t m0 = lk__mono_ns();
        lk__changelog_attempts_t attempts = {0};
        int conflict;
        e = replay(s, m, t, db, start, end, plan.after, APPLY_CHECKED, &attempts, &conflict,
                   &read, &applied, errstr, errstr_size);
        if (!e && conflict) {
            /* one batch in two attempts: records of an aborted one are visible (the mock
             * cluster; a broker hides them from read_committed). Only the last attempt
             * of each batch is the delivered one: start again in full, noting first
             * which attempt that is */
            lk__log(LK_LOG_NOTICE, "task %d: %s[%d] holds a batch in two attempts (aborted "
                    "records visible): restoring operator '%s' in full, each batch from its "
                    "last attempt", s->task, m->target, s->task, m->changelog_of);
            uint64_t more = 0, ignored;
            lk__changelog_attempts_free(&attempts);
            plan = (lk__changelog_plan_t){.full = 1};
            start = 0;
            /* a tail over a log that starts later: in full, those records are needed */
            if ((e = check_range(s, m, 1, 0, 1, start, lo, end, errstr, errstr_size))) {
                lk__changelog_attempts_free(&attempts);
                return e;
            }
            if (!(e = lk__store_state_clear(t, db, &more, errstr, errstr_size)))
                e = replay(s, m, t, db, start, end, 0, COLLECT, &attempts, &conflict, &read,
                           &ignored, errstr, errstr_size);
            if (!e)
                e = replay(s, m, t, db, start, end, 0, APPLY_LAST, &attempts, &conflict,
                           &read, &applied, errstr, errstr_size);
            cleared += more;
        }
        lk__changelog_attempts_free(&attempts);
        if (e)
            return e;
        lk__log(LK_LOG_NOTICE,
                "task %d: restored operator '%s' from %s[%d] (%s after batch %llu, offsets "
                "%lld..%lld): %llu changelog records read, %llu applied%s in %.3f s",
                s->task, m->changelog_of, m->target, s->task, plan.full ? "full" : "tail",
                (unsigned long long)plan.after, (long long)start, (long long)end,
                (unsigned long long)read, (unsigned long long)applied,
                plan.full ? "; local state cleared first" : "",
                (double)(lk__mono_ns() - m0) / 1e9);
        rep.full |= plan.full;
        rep.read += read;
        rep.applied += applied;
        rep.cleared += cleared;
    }
    rep.seconds = (double)(lk__mono_ns() - t0) / 1e9;
    s->restore = rep;
    return LK_OK;
}
