/*
 * sink.c — delivery of the outbox through a sink kind (see sink_int.h): the transaction
 * state machine, recovery of a sink's fence, and draining batches oldest first, each
 * atomically, acknowledging each in the checkpoint.
 *
 * Acknowledgements are committed without fsync: losing one in an OS crash only means
 * the batch is delivered again, which the sink's fence (Kafka's progress record) or
 * its idempotence (files rewritten under the same name with the same bytes) absorbs.
 */
#define _GNU_SOURCE
#include "sink_int.h"
#include "../core/util_int.h"

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
    [LK__TXN_BEGUN] = BIT(PRODUCED) | BIT(READY) /* abort */ | BIT(FATAL),
    [LK__TXN_PRODUCED] = BIT(COMMITTED) | BIT(READY) /* abort */ | BIT(FATAL),
    /* BEGUN: the next batch before this one's acknowledgement (a delivery thread
     * delivers several; the batch loop acknowledges the last of them afterwards) */
    [LK__TXN_COMMITTED] = BIT(READY) /* acknowledged */ | BIT(BEGUN) | BIT(FATAL),
    [LK__TXN_FATAL] = 0,
};

lk_err_t lk__sink_transition(lk_sink_t *s, lk__txn_state_t to, char *errstr,
                             size_t errstr_size) {
    if (!(allowed[s->state] & (1u << to)))
        return lk__err(s->state == LK__TXN_FATAL ? LK_ERR_FATAL : LK_ERR_STATE, errstr,
                       errstr_size, "sink '%s': transaction state %s cannot go to %s%s%s",
                       s->name, lk__txn_state_name(s->state), lk__txn_state_name(to),
                       s->state == LK__TXN_FATAL ? ": " : "", s->fatal_msg);
    lk__log(LK_LOG_DEBUG, "sink '%s' batch %llu: %s -> %s", s->name,
            (unsigned long long)s->batch, lk__txn_state_name(s->state), lk__txn_state_name(to));
    s->state = to;
    return LK_OK;
}

lk_sink_t *lk__sink_new(const lk__sink_ops_t *ops, const char *name, const char *target,
                        const char *format, const char *app_id) {
    lk_sink_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->ops = ops;
    s->name = strdup(name);
    s->target = strdup(target ? target : "");
    s->format = strdup(format ? format : "");
    s->app_id = strdup(app_id);
    if (!s->name || !s->target || !s->format || !s->app_id) {
        lk__sink_destroy(s);
        return NULL;
    }
    return s;
}

void lk__sink_destroy(lk_sink_t *s) {
    if (!s)
        return;
    if (s->ops && s->ops->close)
        s->ops->close(s);
    free(s->name);
    free(s->target);
    free(s->format);
    free(s->app_id);
    free(s);
}

/* Acknowledge: the outbox of batches <= batch goes, the fence records batch. */
static lk_err_t acknowledge(lk_sink_t *s, lk_store_t *store, uint64_t batch, char *errstr,
                            size_t errstr_size) {
    lk_store_txn_t *t;
    lk_err_t e = lk__store_txn_begin(store, 1, &t, errstr, errstr_size);
    if (e)
        return e;
    if ((e = lk__store_outbox_ack(t, s->name, batch, errstr, errstr_size)) ||
        (e = lk__store_fence_put(t, s->name, batch, errstr, errstr_size))) {
        lk__store_txn_abort(t);
        return e;
    }
    return lk__store_txn_commit_unsynced(t, errstr, errstr_size);
}

/* Fail the delivery in progress: undo it and return to READY, or stay FATAL. */
static lk_err_t fail_delivery(lk_sink_t *s, lk_err_t e, const char *errstr) {
    if (s->state == LK__TXN_BEGUN || s->state == LK__TXN_PRODUCED)
        s->ops->abort(s);
    if (e == LK_ERR_FENCED || e == LK_ERR_FATAL) {
        lk__fmt(s->fatal_msg, sizeof s->fatal_msg, "%s", errstr ? errstr : "");
        lk__sink_transition(s, LK__TXN_FATAL, NULL, 0);
        s->recovered = 0;
    } else if (s->state != LK__TXN_READY && s->state != LK__TXN_FATAL) {
        s->state = LK__TXN_READY; /* aborted: allowed from BEGUN/PRODUCED */
        s->recovered = 0;         /* reconnect and re-read the fence before retrying */
    }
    return e;
}

/* The oldest batch >= from in the sink's outbox; LK_ERR_NOT_FOUND when none. */
static lk_err_t pending_from(lk_sink_t *s, lk_store_t *store, uint64_t from, uint64_t *batch,
                             char *errstr, size_t errstr_size) {
    lk_store_txn_t *t;
    lk_err_t e = lk__store_txn_begin(store, 0, &t, errstr, errstr_size);
    if (e)
        return e;
    e = lk__store_outbox_batch_from(t, s->name, from, batch);
    lk__store_txn_abort(t);
    if (e && e != LK_ERR_NOT_FOUND)
        return lk__err(e, errstr, errstr_size, "sink '%s': reading the outbox: %s", s->name,
                       lk_err_str(e));
    return e;
}

lk_err_t lk__sink_recover(lk_sink_t *s, lk_store_t *store, char *errstr, size_t errstr_size) {
    if (s->state == LK__TXN_FATAL)
        return lk__err(LK_ERR_FATAL, errstr, errstr_size, "sink '%s' stopped: %s", s->name,
                       s->fatal_msg);
    if (s->recovered)
        return LK_OK;
    uint64_t fence = 0;
    char why[768] = "";
    lk__phase(LK__PH_RECOVERING);
    lk_err_t e = s->ops->recover(s, &fence, why, sizeof why);
    if (e) {
        if (e == LK_ERR_FENCED || e == LK_ERR_FATAL) {
            lk__fmt(s->fatal_msg, sizeof s->fatal_msg, "%s", why);
            s->state = LK__TXN_FATAL;
        }
        return lk__err(e, errstr, errstr_size, "sink '%s' (%s %s): %s", s->name, s->ops->kind,
                       s->target, why);
    }
    /* batches the external system already holds leave the outbox */
    uint64_t first = 0;
    e = pending_from(s, store, 0, &first, errstr, errstr_size);
    if (e && e != LK_ERR_NOT_FOUND)
        return e;
    if (fence && !e && first <= fence) {
        lk__log(LK_LOG_INFO, "sink '%s': batches up to %llu were already delivered; "
                "dropping them from the outbox", s->name, (unsigned long long)fence);
        if ((e = acknowledge(s, store, fence, errstr, errstr_size)))
            return e;
    }
    s->recovered = 1;
    return LK_OK;
}

static void new_attempt(lk_sink_t *s) {
    uint64_t r;
    if (getrandom(&r, sizeof r, 0) != sizeof r)
        r = (uint64_t)lk__mono_ns() ^ ((uint64_t)getpid() << 32);
    snprintf(s->attempt, sizeof s->attempt, "%016llx", (unsigned long long)r);
}

typedef struct {
    lk_sink_t *s;
    lk_err_t err;
    char *errstr;
    size_t errstr_size;
} write_ctx_t;

static int write_one(const lk_out_record_t *r, void *o) {
    write_ctx_t *w = o;
    w->err = w->s->ops->write(w->s, r, w->errstr, w->errstr_size);
    return w->err != LK_OK;
}

/* A copy of b in one allocation (ranges and topic names included); free() frees it. */
static lk_batch_rec_t *batch_rec_copy(const lk_batch_rec_t *b) {
    size_t size = sizeof *b + b->nranges * sizeof *b->ranges;
    for (size_t i = 0; i < b->nranges; i++)
        size += strlen(b->ranges[i].topic) + 1;
    lk_batch_rec_t *c = malloc(size);
    if (!c)
        return NULL;
    *c = *b;
    c->ranges = (lk_range_t *)(c + 1);
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
static lk_err_t deliver_unacked(lk_sink_t *s, lk_store_t *store, uint64_t batch,
                                char *errstr, size_t errstr_size) {
    char why[768] = "";
    lk_store_txn_t *t;
    lk_err_t e = lk__store_txn_begin(store, 0, &t, why, sizeof why);
    if (e)
        return lk__err(e, errstr, errstr_size, "sink '%s' batch %llu: %s", s->name,
                       (unsigned long long)batch, why);
    s->batch = batch;
    new_attempt(s);
    lk__phase_attempt(s->attempt);
    lk__phase(LK__PH_DELIVERING);
    lk__faultpoint("before-sink-produce");
    if (!(e = lk__sink_transition(s, LK__TXN_BEGUN, why, sizeof why)) &&
        !(e = s->ops->begin(s, batch, why, sizeof why))) {
        write_ctx_t w = {s, LK_OK, why, sizeof why};
        lk_err_t fe = lk__store_outbox_foreach(t, s->name, batch, write_one, &w);
        e = w.err ? w.err
            : fe  ? lk__err(fe, why, sizeof why, "reading the outbox: %s", lk_err_str(fe))
                  : LK_OK;
    }
    if (!e)
        e = lk__sink_transition(s, LK__TXN_PRODUCED, why, sizeof why);
    lk_batch_rec_t rec, *recp = NULL;
    if (!e && lk__store_batch_get(t, batch, &rec) == LK_OK && !(recp = batch_rec_copy(&rec)))
        e = lk__err(LK_ERR_NOMEM, why, sizeof why, "out of memory");
    /* the records are in the producer's hands now (copied): end the read transaction
     * before the commit, which may wait on Kafka for long, so as not to hold back the
     * checkpoint's page reuse or a map growth */
    lk__store_txn_abort(t);
    if (!e) {
        lk__phase(LK__PH_DELIVERING_COMMIT);
        lk__faultpoint("after-sink-produce");
        e = s->ops->commit(s, recp, why, sizeof why);
    }
    free(recp);
    if (!e)
        e = lk__sink_transition(s, LK__TXN_COMMITTED, why, sizeof why);
    if (e) {
        lk__err(e, errstr, errstr_size, "sink '%s' (%s %s) batch %llu: %s", s->name,
                s->ops->kind, s->target, (unsigned long long)batch, why);
        return fail_delivery(s, e, errstr);
    }
    lk__faultpoint("after-sink-commit");
    return LK_OK;
}

lk_err_t lk__sink_acknowledge(lk_sink_t *s, lk_store_t *store, uint64_t batch, char *errstr,
                              size_t errstr_size) {
    char why[768] = "";
    lk__phase(LK__PH_ACKNOWLEDGING);
    lk_err_t e = acknowledge(s, store, batch, why, sizeof why);
    if (e) {
        /* delivered but not acknowledged: the fence makes the retry harmless, provided
         * the sink recovers (learns its fence) before the retry. Without that the next
         * drain would deliver the batch a second time. */
        if (s->state != LK__TXN_FATAL) {
            s->state = LK__TXN_READY;
            s->recovered = 0;
        }
        return lk__err(e, errstr, errstr_size, "sink '%s' batch %llu: acknowledging: %s",
                       s->name, (unsigned long long)batch, why);
    }
    /* a later batch's failure may have left the sink READY (aborted) or FATAL already */
    return s->state == LK__TXN_COMMITTED ? lk__sink_transition(s, LK__TXN_READY, errstr, errstr_size)
                                         : LK_OK;
}

lk_err_t lk__sink_deliver_upto(lk_sink_t *s, lk_store_t *store, uint64_t upto, uint64_t *last,
                               char *errstr, size_t errstr_size) {
    *last = 0;
    uint64_t from = 0;
    for (;;) {
        uint64_t b;
        lk_err_t e = pending_from(s, store, from, &b, errstr, errstr_size);
        if (e == LK_ERR_NOT_FOUND || (e == LK_OK && b > upto))
            return LK_OK;
        if (e)
            return e;
        if ((e = deliver_unacked(s, store, b, errstr, errstr_size)))
            return e;
        *last = b;
        from = b + 1;
    }
}

/* Deliver one batch atomically and acknowledge it. */
static lk_err_t deliver(lk_sink_t *s, lk_store_t *store, uint64_t batch, char *errstr,
                        size_t errstr_size) {
    lk_err_t e = deliver_unacked(s, store, batch, errstr, errstr_size);
    return e ? e : lk__sink_acknowledge(s, store, batch, errstr, errstr_size);
}

lk_err_t lk__sink_first_pending(lk_sink_t *s, lk_store_t *store, uint64_t *batch,
                                char *errstr, size_t errstr_size) {
    return pending_from(s, store, 0, batch, errstr, errstr_size);
}

lk_err_t lk__sink_drain(lk_sink_t *s, lk_store_t *store, uint64_t upto, size_t *delivered,
                        char *errstr, size_t errstr_size) {
    *delivered = 0;
    lk_err_t e = lk__sink_recover(s, store, errstr, errstr_size);
    if (e)
        return e;
    for (;;) {
        uint64_t first;
        e = lk__sink_first_pending(s, store, &first, errstr, errstr_size);
        if (e == LK_ERR_NOT_FOUND || (e == LK_OK && first > upto))
            return LK_OK;
        if (e)
            return e;
        if ((e = deliver(s, store, first, errstr, errstr_size)))
            return e;
        (*delivered)++;
    }
}
