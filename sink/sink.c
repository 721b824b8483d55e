/*
 * sink.c — delivery of the outbox through a sink kind (see sink_int.h): the transaction
 * state machine, recovery of a sink's fence, and draining batches oldest first, each
 * atomically, acknowledging each in the checkpoint (docs/DESIGN.md, "A batch's life":
 * durable -> delivered -> acknowledged, and "Recovery" 2).
 *
 * The sink's state changes only in lk__sink_transition, against one table; a transition
 * the table does not allow is a bug (an assert in debug builds, a sticky FATAL naming
 * both states in release builds), never an error a caller handles and goes on from.
 *
 * Acknowledgements are committed without fsync: losing one in an OS crash only means
 * the batch is delivered again, which the sink's fence (Kafka's progress record) or
 * its idempotence (files rewritten under the same name with the same bytes) absorbs.
 */
#define _GNU_SOURCE
#include "sink_int.h"
#include "../core/util_int.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

const char *lk__txn_state_name(lk__txn_state_t s) {
    switch (s) {
#define LK__TXN_NAME(n)                                                                    \
    case LK__TXN_##n:                                                                      \
        return #n;
        LK__TXN_STATES(LK__TXN_NAME)
#undef LK__TXN_NAME
    }
    return "?";
}

/* allowed[from] is the set of states reachable from `from` (bit per state) */
#define BIT(s) (1u << LK__TXN_##s)
static const unsigned allowed[] = {
    [LK__TXN_READY] = BIT(BEGUN) | BIT(FATAL),
    [LK__TXN_BEGUN] = BIT(PRODUCED) | BIT(ABORTING) | BIT(FATAL),
    [LK__TXN_PRODUCED] = BIT(COMMITTED) | BIT(COMMITTING) | BIT(ABORTING) | BIT(FATAL),
    /* BEGUN: the next batch before this one's acknowledgement (a delivery thread
     * delivers several; the batch loop acknowledges the last of them afterwards) */
    [LK__TXN_COMMITTED] = BIT(READY) /* acknowledged */ | BIT(BEGUN) | BIT(FATAL),
    [LK__TXN_FATAL] = 0,
    /* resumed: committed after all, or the commit failed and must be aborted */
    [LK__TXN_COMMITTING] = BIT(COMMITTED) | BIT(ABORTING) | BIT(FATAL),
    /* the abort finished: the batch waits in the outbox to be delivered again */
    [LK__TXN_ABORTING] = BIT(READY) | BIT(FATAL),
};

int lk__sink_transition_allowed(lk__txn_state_t from, lk__txn_state_t to) {
    return (unsigned)from < LK_ARRAY_SIZE(allowed) && (unsigned)to < 32 &&
           (allowed[from] & (1u << to)) != 0;
}

static void go_fatal(lk__sink_t *s, const char *msg);

/* Leaving FATAL is refused as the sticky state's answer to any later work. Any other
 * transition the table does not allow is a bug in sink.c: debug builds stop at the
 * assert; release builds make the sink FATAL (sticky, its message naming both states)
 * rather than go on from a state the protocol does not know, which could deliver a
 * batch twice or acknowledge one never committed. */
lk_err_t lk__sink_transition(lk__sink_t *s, lk__txn_state_t to, char *errstr,
                             size_t errstr_size) {
    if (s->state == LK__TXN_FATAL)
        return lk__err(LK_ERR_FATAL, errstr, errstr_size,
                       "sink '%s': transaction state FATAL cannot go to %s: %s", s->name,
                       lk__txn_state_name(to), s->fatal_msg);
    if (!lk__sink_transition_allowed(s->state, to)) {
        char msg[sizeof s->fatal_msg];
        lk__fmt(msg, sizeof msg, "sink '%s' batch %llu: invalid transaction state transition "
                "%s -> %s (a bug in lockstep: the sink stops)", s->name,
                (unsigned long long)s->batch, lk__txn_state_name(s->state),
                lk__txn_state_name(to));
        lk__log(LK_LOG_ERR, "%s", msg);
        assert(!"invalid sink transaction state transition");
        go_fatal(s, msg);
        return lk__err(LK_ERR_STATE, errstr, errstr_size, "%s", msg);
    }
    lk__log(LK_LOG_DEBUG, "sink '%s' batch %llu: %s -> %s", s->name,
            (unsigned long long)s->batch, lk__txn_state_name(s->state), lk__txn_state_name(to));
    s->state = to;
    return LK_OK;
}

lk__sink_t *lk__sink_new(const lk__sink_ops_t *ops, const char *name, const char *target,
                        const char *format, const char *app_id) {
    lk__sink_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->ops = ops;
    s->task = -1;
    s->name = strdup(name);
    s->target = strdup(target ? target : "");
    s->format = strdup(format ? format : "");
    s->app_id = strdup(app_id);
    if (!s->name || !s->target || !s->format || !s->app_id ||
        lk__sink_add_member(s, name, target ? target : "")) {
        lk__sink_destroy(s);
        return NULL;
    }
    return s;
}

/* "a,b" from a and b; NULL if out of memory */
static char *joined(const char *a, const char *b) {
    size_t n = strlen(a) + strlen(b) + 2;
    char *j = malloc(n);
    if (j)
        snprintf(j, n, "%s,%s", a, b);
    return j;
}

lk_err_t lk__sink_add_member(lk__sink_t *s, const char *uid, const char *target) {
    lk__sink_member_t *m = realloc(s->members, (s->nmembers + 1) * sizeof *m);
    if (!m)
        return LK_ERR_NOMEM;
    s->members = m;
    m = &s->members[s->nmembers];
    *m = (lk__sink_member_t){strdup(uid), strdup(target), 0};
    m->attempt_next = m->delivered_next = -1;
    if (!m->uid || !m->target) {
        free(m->uid);
        free(m->target);
        return LK_ERR_NOMEM;
    }
    s->nmembers++;
    if (s->nmembers > 1) {
        char *n = joined(s->name, uid), *t = joined(s->target, target);
        if (!n || !t) {
            free(n);
            free(t);
            return LK_ERR_NOMEM;
        }
        free(s->name);
        free(s->target);
        s->name = n;
        s->target = t;
    }
    return LK_OK;
}

lk_err_t lk__sink_add_changelog(lk__sink_t *s, const char *uid, const char *topic,
                                const char *state_uid) {
    char *of = strdup(state_uid);
    if (!of || lk__sink_add_member(s, uid, topic)) {
        free(of);
        return LK_ERR_NOMEM;
    }
    s->members[s->nmembers - 1].changelog_of = of;
    return LK_OK;
}

lk_err_t lk__sink_changelog_state(lk__sink_t *s, const char *state_uid, const char *kind,
                                  int32_t schema, const char *window) {
    for (size_t i = 0; i < s->nmembers; i++) {
        lk__sink_member_t *m = &s->members[i];
        if (!m->changelog_of || strcmp(m->changelog_of, state_uid))
            continue;
        char *k = strdup(kind), *w = window ? strdup(window) : NULL;
        if (!k || (window && !w)) {
            free(k);
            free(w);
            return LK_ERR_NOMEM;
        }
        free(m->state_kind);
        free(m->state_window);
        m->state_kind = k;
        m->state_window = w;
        m->state_schema = schema;
        return LK_OK;
    }
    return LK_ERR_NOT_FOUND;
}

/* A member's fence, with the changelog position of a changelog member (the start of a
 * later tail restore, DESIGN.md Scale-out). */
static lk_err_t put_fence(lk__sink_t *s, size_t i, lk__store_txn_t *t, uint64_t batch,
                          char *errstr, size_t errstr_size) {
    const lk__sink_member_t *m = &s->members[i];
    return m->changelog_of
               ? lk__store_fence_put_offset(t, m->uid, batch, m->delivered_next, errstr,
                                            errstr_size)
               : lk__store_fence_put(t, m->uid, batch, errstr, errstr_size);
}

void lk__sink_restore_committed(lk__sink_t *s) {
    /* published once the handoff's transaction committed: a failed one restored nothing */
    if (!s->restore.done)
        return;
    atomic_fetch_add(s->restore.full ? &s->restore_applied_full : &s->restore_applied_tail,
                     s->restore.applied);
    atomic_store(&s->restore_us, (unsigned long long)(s->restore.seconds * 1e6));
}

void lk__sink_destroy(lk__sink_t *s) {
    if (!s)
        return;
    if (s->ops && s->ops->close)
        s->ops->close(s);
    for (size_t i = 0; i < s->nmembers; i++) {
        free(s->members[i].uid);
        free(s->members[i].target);
        free(s->members[i].changelog_of);
        free(s->members[i].state_kind);
        free(s->members[i].state_window);
    }
    free(s->members);
    lk__sink_clear_handoff(s);
    free(s->name);
    free(s->target);
    free(s->format);
    free(s->app_id);
    free(s);
}

void lk__sink_clear_handoff(lk__sink_t *s) {
    for (size_t i = 0; i < s->nhandoff; i++)
        free((char *)s->handoff_ranges[i].topic);
    free(s->handoff_ranges);
    s->handoff_ranges = NULL;
    s->nhandoff = 0;
    s->handoff = 0;
}

/* Acknowledge member i: its outbox of batches <= batch goes, its fence records batch. */
static lk_err_t acknowledge_member(lk__sink_t *s, size_t i, lk__store_t *store, uint64_t batch,
                                   char *errstr, size_t errstr_size) {
    lk__store_txn_t *t;
    lk_err_t e = lk__store_txn_begin(store, 1, &t, errstr, errstr_size);
    if (e)
        return e;
    if ((e = lk__store_outbox_ack(t, s->members[i].uid, batch, errstr, errstr_size)) ||
        (e = put_fence(s, i, t, batch, errstr, errstr_size))) {
        lk__store_txn_abort(t);
        return e;
    }
    return lk__store_txn_commit_unsynced(t, errstr, errstr_size);
}

/* Acknowledge: every member's outbox of batches <= batch goes, its fence records batch
 * (one checkpoint transaction: the members were delivered in one Kafka transaction). */
static lk_err_t acknowledge(lk__sink_t *s, lk__store_t *store, uint64_t batch, char *errstr,
                            size_t errstr_size) {
    lk__store_txn_t *t;
    lk_err_t e = lk__store_txn_begin(store, 1, &t, errstr, errstr_size);
    if (e)
        return e;
    for (size_t i = 0; i < s->nmembers; i++)
        if ((e = lk__store_outbox_ack(t, s->members[i].uid, batch, errstr, errstr_size)) ||
            (e = put_fence(s, i, t, batch, errstr, errstr_size))) {
            lk__store_txn_abort(t);
            return e;
        }
    return lk__store_txn_commit_unsynced(t, errstr, errstr_size);
}

/* Go FATAL with msg (sticky); best effort to undo an open delivery first: the error is
 * already final, so the undo's own result cannot change anything. */
static void go_fatal(lk__sink_t *s, const char *msg) {
    /* an abort still open is tried once more; one that just failed for good is not */
    if (s->state != LK__TXN_READY && s->state != LK__TXN_COMMITTED &&
        s->state != LK__TXN_FATAL && s->state != LK__TXN_ABORTING) {
        char ignored[256];
        (void)s->ops->abort(s, ignored, sizeof ignored);
    }
    lk__fmt(s->fatal_msg, sizeof s->fatal_msg, "%s", msg ? msg : "");
    if (s->state != LK__TXN_FATAL)
        (void)lk__sink_transition(s, LK__TXN_FATAL, NULL, 0); /* allowed from every state */
    s->recovered = 0;
}

/* Abort the delivery in progress (state ABORTING): READY once the abort finished; a
 * retriable failure leaves it ABORTING, to be called again by the next recover. */
static lk_err_t settle_abort(lk__sink_t *s, char *errstr, size_t errstr_size) {
    char why[768] = "";
    s->settle_tries++;
    lk_err_t e = s->ops->abort(s, why, sizeof why);
    if (!e) {
        if (s->settle_tries > 1)
            lk__log(LK_LOG_NOTICE, "sink '%s' batch %llu: the abort finished after %u tries; "
                    "the batch is delivered again", s->name, (unsigned long long)s->batch,
                    s->settle_tries);
        s->settle_tries = 0;
        return lk__sink_transition(s, LK__TXN_READY, errstr, errstr_size);
    }
    lk__err(e, errstr, errstr_size, "sink '%s' (%s %s) batch %llu: abort not finished "
            "(try %u): %s", s->name, s->ops->kind, s->target, (unsigned long long)s->batch,
            s->settle_tries, why);
    if (e == LK_ERR_FENCED || e == LK_ERR_FATAL)
        go_fatal(s, errstr);
    return e;
}

/* Fail the delivery in progress: a commit still running goes to COMMITTING, anything
 * else is aborted (ABORTING, READY once the abort finished); fenced or fatal errors
 * make the sink FATAL. The sink re-reads nothing before the retry: recover() first
 * settles what is unfinished. Returns e (errstr says what failed), or the abort's error
 * when the abort fails for good (errstr then names the abort first). */
static lk_err_t fail_delivery(lk__sink_t *s, lk_err_t e, char *errstr, size_t errstr_size) {
    if (e == LK_ERR_FENCED || e == LK_ERR_FATAL || e == LK_ERR_CORRUPT) { /* never heals */
        go_fatal(s, errstr);
        return e;
    }
    s->recovered = 0;
    s->settle_tries = 0;
    if (e == LK_ERR_TIMED_OUT && s->state == LK__TXN_PRODUCED) {
        (void)lk__sink_transition(s, LK__TXN_COMMITTING, NULL, 0); /* allowed: PRODUCED */
        return e;
    }
    if (s->state == LK__TXN_BEGUN || s->state == LK__TXN_PRODUCED) {
        (void)lk__sink_transition(s, LK__TXN_ABORTING, NULL, 0); /* allowed: both */
        atomic_fetch_add(&s->txn_aborted, 1); /* lockstep_transactions_total */
        char why[1024];
        lk_err_t ae = settle_abort(s, why, sizeof why);
        if (ae == LK_ERR_FENCED || ae == LK_ERR_FATAL) {
            /* the abort's error is the one that stops the sink: it leads the message,
             * the delivery error that caused the abort follows */
            char cause[1024];
            lk__fmt(cause, sizeof cause, "%s", errstr ? errstr : "");
            lk__fmt(errstr, errstr_size, "%s (aborting after: %s)", why, cause);
            lk__fmt(s->fatal_msg, sizeof s->fatal_msg, "%s", errstr); /* what later calls say */
            return ae;
        }
        if (ae)
            lk__log(LK_LOG_WARNING, "%s", why);
    }
    return e;
}

/* Finish what a failed delivery left unfinished: resume a commit (acknowledging its
 * batch if it committed after all), call an abort again. LK_OK: the sink is READY. */
static lk_err_t settle(lk__sink_t *s, lk__store_t *store, char *errstr, size_t errstr_size) {
    if (s->state == LK__TXN_COMMITTING) {
        char why[768] = "";
        s->settle_tries++;
        lk_err_t e = s->ops->resume_commit ? s->ops->resume_commit(s, why, sizeof why)
                                           : LK_ERR_KAFKA;
        if (e == LK_OK) {
            lk__log(LK_LOG_NOTICE, "sink '%s': the unfinished commit of batch %llu completed",
                    s->name, (unsigned long long)s->batch);
            s->settle_tries = 0;
            if ((e = lk__sink_transition(s, LK__TXN_COMMITTED, errstr, errstr_size)))
                return e;
            return lk__sink_acknowledge(s, store, s->batch, errstr, errstr_size);
        }
        lk__err(e, errstr, errstr_size, "sink '%s' (%s %s) batch %llu: resuming the commit "
                "(try %u): %s", s->name, s->ops->kind, s->target, (unsigned long long)s->batch,
                s->settle_tries, why);
        if (e == LK_ERR_FENCED || e == LK_ERR_FATAL) {
            go_fatal(s, errstr);
            return e;
        }
        if (e == LK_ERR_TIMED_OUT)
            return e;
        lk__log(LK_LOG_WARNING, "%s; aborting it", errstr);
        s->settle_tries = 0;
        if ((e = lk__sink_transition(s, LK__TXN_ABORTING, errstr, errstr_size)))
            return e;
    }
    if (s->state == LK__TXN_ABORTING)
        return settle_abort(s, errstr, errstr_size);
    return LK_OK;
}

/* The oldest batch >= from in the outboxes of members [lo, hi); LK_ERR_NOT_FOUND when
 * none. */
static lk_err_t oldest_pending(lk__sink_t *s, lk__store_t *store, size_t lo, size_t hi,
                               uint64_t from, uint64_t *batch, char *errstr,
                               size_t errstr_size) {
    lk__store_txn_t *t;
    lk_err_t e = lk__store_txn_begin(store, 0, &t, errstr, errstr_size);
    if (e)
        return e;
    lk_err_t r = LK_ERR_NOT_FOUND;
    for (size_t i = lo; i < hi; i++) {
        uint64_t b;
        e = lk__store_outbox_batch_from(t, s->members[i].uid, from, &b);
        if (e == LK_ERR_NOT_FOUND)
            continue;
        if (e) {
            r = lk__err(e, errstr, errstr_size, "sink '%s': reading the outbox: %s",
                        s->members[i].uid, lk_err_str(e));
            break;
        }
        if (r == LK_ERR_NOT_FOUND || b < *batch)
            *batch = b;
        r = LK_OK;
    }
    lk__store_txn_abort(t);
    return r;
}

/* The oldest batch >= from in any member's outbox; LK_ERR_NOT_FOUND when none. */
static lk_err_t pending_from(lk__sink_t *s, lk__store_t *store, uint64_t from, uint64_t *batch,
                             char *errstr, size_t errstr_size) {
    return oldest_pending(s, store, 0, s->nmembers, from, batch, errstr, errstr_size);
}

typedef struct {
    lk__sink_t *s;
    lk__store_t *store;
} restore_arg_t;

/* The handoff's restore, in the handoff's checkpoint transaction (lk__store_task_handoff). */
static lk_err_t restore_in_handoff(lk__store_txn_t *t, void *o, char *errstr,
                                   size_t errstr_size) {
    restore_arg_t *a = o;
    return a->s->ops->restore(a->s, a->store, t, errstr, errstr_size);
}

lk_err_t lk__sink_recover(lk__sink_t *s, lk__store_t *store, char *errstr, size_t errstr_size) {
    if (s->state == LK__TXN_FATAL)
        return lk__err(LK_ERR_FATAL, errstr, errstr_size, "sink '%s' stopped: %s", s->name,
                       s->fatal_msg);
    if (s->recovered)
        return LK_OK;
    lk_err_t e = settle(s, store, errstr, errstr_size);
    if (e)
        return e;
    uint64_t fence = 0;
    char why[768] = "";
    /* the owner sets the id before recover; a sink recovered on its own (tests) takes it
     * from the store */
    if (!s->checkpoint_id[0])
        lk__fmt(s->checkpoint_id, sizeof s->checkpoint_id, "%s", lk__store_checkpoint_id(store));
    lk__phase(LK__PH_RECOVERING);
    e = s->ops->recover(s, &fence, why, sizeof why);
    if (e) {
        lk__err(e, errstr, errstr_size, "sink '%s' (%s %s): %s", s->name, s->ops->kind,
                s->target, why);
        /* a refusal (a handoff of state of another definition, a progress topic without
         * the task's partition) does not heal by retrying */
        if (e == LK_ERR_FENCED || e == LK_ERR_FATAL || e == LK_ERR_TOPOLOGY)
            go_fatal(s, errstr);
        return e;
    }
    if (s->handoff) {
        /* scale-out: another process ran the task since this checkpoint last delivered.
         * Its checkpoint moves to that process's last committed input offsets, and what it
         * committed beyond its own delivered output is dropped (that input was processed
         * again there), in one transaction, before the next plan: the owner plans only
         * once the sink is recovered (DESIGN.md, Scale-out) */
        uint64_t from, to;
        restore_arg_t ra = {s, store};
        s->restore = (lk__restore_report_t){0};
        e = lk__store_task_handoff(store, s->handoff_ranges, s->nhandoff,
                                   s->ops->restore ? restore_in_handoff : NULL, &ra, &from, &to,
                                   errstr, errstr_size);
        if (e)
            return e;
        const char *of = s->stage[0] ? " of stage " : ""; /* after lk_repartition <stage> */
        lk__log(LK_LOG_NOTICE, "task %d%s%s: continuing after batch %llu of checkpoint %s "
                "(another process ran the task)%s", s->task, of, s->stage,
                (unsigned long long)s->handoff_batch,
                s->handoff_checkpoint, from ? "; this checkpoint's undelivered batches "
                "were dropped" : "");
        if (s->restore.done) {
            lk__sink_restore_committed(s);
            lk__log(LK_LOG_NOTICE, "task %d: state restored from the changelog (%s): %llu "
                    "records read, %llu applied, in %.3f s", s->task,
                    s->restore.full ? "full" : "tail", (unsigned long long)s->restore.read,
                    (unsigned long long)s->restore.applied, s->restore.seconds);
        }
        if (from)
            lk__log(LK_LOG_NOTICE, "task %d%s%s: dropped undelivered batches %llu..%llu of "
                    "this checkpoint", s->task, of, s->stage, (unsigned long long)from,
                    (unsigned long long)to);
        lk__sink_clear_handoff(s);
    }
    /* batches the external system already holds leave the outbox, per member: a
     * member may know more than the sink (the progress of an older version) */
    for (size_t i = 0; i < s->nmembers; i++) {
        uint64_t f = s->members[i].fence > fence ? s->members[i].fence : fence, first = 0;
        if (!f)
            continue;
        e = oldest_pending(s, store, i, i + 1, 0, &first, errstr, errstr_size);
        if (e == LK_ERR_NOT_FOUND || (!e && first > f))
            continue;
        if (e)
            return e;
        lk__log(LK_LOG_INFO, "sink '%s': batches up to %llu were already delivered; "
                "dropping them from the outbox", s->members[i].uid, (unsigned long long)f);
        if ((e = acknowledge_member(s, i, store, f, errstr, errstr_size)))
            return e;
    }
    s->recovered = 1;
    return LK_OK;
}

static void new_attempt(lk__sink_t *s) {
    uint64_t r;
    if (getrandom(&r, sizeof r, 0) != sizeof r)
        r = (uint64_t)lk__mono_ns() ^ ((uint64_t)getpid() << 32);
    snprintf(s->attempt, sizeof s->attempt, "%016llx", (unsigned long long)r);
}

typedef struct {
    lk__sink_t *s;
    lk_err_t err;
    char *errstr;
    size_t errstr_size;
} write_ctx_t;

static int write_one(const lk__out_record_t *r, void *o) {
    write_ctx_t *w = o;
    w->err = w->s->ops->write(w->s, r, w->errstr, w->errstr_size);
    if (!w->err)
        w->s->members[w->s->cur].records++;
    return w->err != LK_OK;
}

/* A copy of b in one allocation (ranges and topic names included); free() frees it. */
static lk__batch_rec_t *batch_rec_copy(const lk__batch_rec_t *b) {
    size_t size = sizeof *b + b->nranges * sizeof *b->ranges;
    for (size_t i = 0; i < b->nranges; i++)
        size += strlen(b->ranges[i].topic) + 1;
    lk__batch_rec_t *c = malloc(size);
    if (!c)
        return NULL;
    *c = *b;
    c->ranges = (lk__range_t *)(c + 1);
    char *names = (char *)(c->ranges + b->nranges);
    for (size_t i = 0; i < b->nranges; i++) {
        size_t n = strlen(b->ranges[i].topic) + 1;
        c->ranges[i] = b->ranges[i];
        c->ranges[i].topic = memcpy(names, b->ranges[i].topic, n);
        names += n;
    }
    return c;
}

/* Deliver one batch atomically, leaving it COMMITTED (not yet acknowledged) on success.
 * Touches the checkpoint only through a read transaction, so it may run on a delivery
 * thread while the batch loop writes the next batch. */
static lk_err_t deliver_unacked(lk__sink_t *s, lk__store_t *store, uint64_t batch,
                                char *errstr, size_t errstr_size) {
    char why[768] = "";
    lk__store_txn_t *t;
    lk_err_t e = lk__store_txn_begin(store, 0, &t, why, sizeof why);
    if (e)
        return lk__err(e, errstr, errstr_size, "sink '%s' batch %llu: %s", s->name,
                       (unsigned long long)batch, why);
    s->batch = batch;
    new_attempt(s);
    lk__phase_attempt(s->attempt);
    lk__phase(LK__PH_DELIVERING);
    /* the batch's record (its input ranges), for the commit and for errors naming the
     * input a record came from */
    lk__batch_rec_t rec, *recp = NULL;
    if (lk__store_batch_get(t, batch, &rec) == LK_OK && !(recp = batch_rec_copy(&rec)))
        e = lk__err(LK_ERR_NOMEM, why, sizeof why, "out of memory");
    s->batch_rec = recp;
    lk__faultpoint("before-sink-produce");
    if (!e && !(e = lk__sink_transition(s, LK__TXN_BEGUN, why, sizeof why)) &&
        !(e = s->ops->begin(s, batch, why, sizeof why))) {
        for (size_t i = 0; i < s->nmembers; i++)
            s->members[i].records = 0;
        for (s->cur = 0; !e && s->cur < s->nmembers; s->cur++) {
            write_ctx_t w = {s, LK_OK, why, sizeof why};
            lk_err_t fe =
                lk__store_outbox_foreach(t, s->members[s->cur].uid, batch, write_one, &w);
            e = w.err ? w.err
                : fe  ? lk__err(fe, why, sizeof why, "reading the outbox of '%s': %s",
                                s->members[s->cur].uid,
                                lk__store_txn_errstr(t)[0] ? lk__store_txn_errstr(t)
                                                           : lk_err_str(fe))
                      : LK_OK;
        }
        s->cur = 0;
    }
    if (!e)
        e = lk__sink_transition(s, LK__TXN_PRODUCED, why, sizeof why);
    /* the records are in the producer's hands now (copied): end the read transaction
     * before the commit, which may wait on Kafka for long, so as not to hold back the
     * checkpoint's page reuse or a map growth */
    lk__store_txn_abort(t);
    if (!e) {
        lk__phase(LK__PH_DELIVERING_COMMIT);
        lk__faultpoint("after-sink-produce");
        e = s->ops->commit(s, recp, why, sizeof why);
    }
    s->batch_rec = NULL;
    free(recp);
    if (!e)
        e = lk__sink_transition(s, LK__TXN_COMMITTED, why, sizeof why);
    if (e) {
        lk__err(e, errstr, errstr_size, "sink '%s' (%s %s) batch %llu: %s", s->name,
                s->ops->kind, s->target, (unsigned long long)batch, why);
        return fail_delivery(s, e, errstr, errstr_size);
    }
    atomic_fetch_add(&s->txn_committed, 1);
    lk__faultpoint("after-sink-commit");
    return LK_OK;
}

int lk__sink_ready(const lk__sink_t *s) {
    return s->recovered && s->state == LK__TXN_READY;
}

lk_err_t lk__sink_acknowledge(lk__sink_t *s, lk__store_t *store, uint64_t batch, char *errstr,
                              size_t errstr_size) {
    char why[768] = "";
    lk__phase(LK__PH_ACKNOWLEDGING);
    lk_err_t e = acknowledge(s, store, batch, why, sizeof why);
    if (e) {
        /* delivered but not acknowledged: the fence makes the retry harmless, provided
         * the sink recovers (learns its fence) before the retry. Without that the next
         * drain would deliver the batch a second time. */
        if (s->state == LK__TXN_COMMITTED)
            (void)lk__sink_transition(s, LK__TXN_READY, NULL, 0); /* allowed */
        if (s->state != LK__TXN_FATAL)
            s->recovered = 0;
        return lk__err(e, errstr, errstr_size, "sink '%s' batch %llu: acknowledging: %s",
                       s->name, (unsigned long long)batch, why);
    }
    /* a later batch's failure may have left the sink READY (aborted) or FATAL already */
    return s->state == LK__TXN_COMMITTED ? lk__sink_transition(s, LK__TXN_READY, errstr, errstr_size)
                                         : LK_OK;
}

/* Deliver the outbox's batches <= upto in order, oldest first, each atomically, and with
 * ack acknowledge each (then it leaves the outbox); *last is the last delivered (0: none)
 * and *n counts them. */
static lk_err_t deliver_pending(lk__sink_t *s, lk__store_t *store, uint64_t upto, int ack,
                                uint64_t *last, size_t *n, char *errstr, size_t errstr_size) {
    *last = 0;
    *n = 0;
    for (uint64_t from = 0;;) {
        uint64_t b;
        lk_err_t e = pending_from(s, store, from, &b, errstr, errstr_size);
        if (e == LK_ERR_NOT_FOUND || (e == LK_OK && b > upto))
            return LK_OK;
        if (e || (e = deliver_unacked(s, store, b, errstr, errstr_size)) ||
            (ack && (e = lk__sink_acknowledge(s, store, b, errstr, errstr_size))))
            return e;
        *last = b;
        (*n)++;
        from = b + 1;
    }
}

lk_err_t lk__sink_deliver_upto(lk__sink_t *s, lk__store_t *store, uint64_t upto, uint64_t *last,
                               char *errstr, size_t errstr_size) {
    size_t n;
    return deliver_pending(s, store, upto, 0, last, &n, errstr, errstr_size);
}

lk_err_t lk__sink_first_pending(lk__sink_t *s, lk__store_t *store, uint64_t *batch,
                                char *errstr, size_t errstr_size) {
    return pending_from(s, store, 0, batch, errstr, errstr_size);
}

lk_err_t lk__sink_drain(lk__sink_t *s, lk__store_t *store, uint64_t upto, size_t *delivered,
                        char *errstr, size_t errstr_size) {
    *delivered = 0;
    uint64_t last;
    lk_err_t e = lk__sink_recover(s, store, errstr, errstr_size);
    return e ? e : deliver_pending(s, store, upto, 1, &last, delivered, errstr, errstr_size);
}
