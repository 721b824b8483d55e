/*
 * metrics_http.c — the HTTP endpoints of the metrics (metrics_int.h), served by
 * libmicrohttpd (Debian's libmicrohttpd-dev) on its own thread with signals blocked
 * there: GET /metrics (text 0.0.4, or OpenMetrics 1.0 when the Accept header asks for
 * it), GET /healthz, GET /progress; and the listening socket, bound by lockstep itself so
 * that a taken port stops the start with the OS's reason. DESIGN.md, Observability.
 */
#define _GNU_SOURCE
#include "metrics_priv.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
                             char *body, size_t len) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result respond(lk__metrics_t *m, struct MHD_Connection *c, const char *url,
                               const char *method, size_t *upload_data_size);

/* libmicrohttpd's request callback, on its thread: the context's log level is bound
 * while it answers (reading the checkpoint may log). */
static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version,
                              const char *upload_data, size_t *upload_data_size,
                              void **con_cls) {
    (void)version;
    (void)upload_data;
    (void)con_cls;
    lk__metrics_t *m = cls;
    int prev = lk__log_bind(m->log_level);
    enum MHD_Result r = respond(m, c, url, method, upload_data_size);
    lk__log_unbind(prev);
    return r;
}

static enum MHD_Result respond(lk__metrics_t *m, struct MHD_Connection *c, const char *url,
                               const char *method, size_t *upload_data_size) {
    if (*upload_data_size) /* a request body is not read: refused below */
        *upload_data_size = 0;
    char *body = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&body, &len);
    if (!fp)
        return MHD_NO;
    unsigned status = MHD_HTTP_OK;
    const char *type = "text/plain; charset=utf-8";
    if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
        status = MHD_HTTP_METHOD_NOT_ALLOWED;
        fputs("only GET and HEAD are served\n", fp);
    } else if (!strcmp(url, "/metrics")) {
        const char *accept = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Accept");
        int om = accept && strstr(accept, "application/openmetrics-text");
        char err[512];
        if (lk__metrics_write(m, fp, om, err, sizeof err)) {
            fclose(fp);
            free(body);
            body = NULL;
            fp = open_memstream(&body, &len);
            if (!fp)
                return MHD_NO;
            status = MHD_HTTP_INTERNAL_SERVER_ERROR;
            fprintf(fp, "%s\n", err);
        } else {
            type = om ? "application/openmetrics-text; version=1.0.0; charset=utf-8"
                      : "text/plain; version=0.0.4; charset=utf-8";
        }
    } else if (!strcmp(url, "/healthz")) {
        char why[700];
        status = lk__metrics_health(m, why, sizeof why) ? MHD_HTTP_OK
                                                         : MHD_HTTP_SERVICE_UNAVAILABLE;
        fprintf(fp, "%s\n", why);
    } else if (!strcmp(url, "/progress")) {
        type = "application/json";
        lk__metrics_progress_json(m, fp);
    } else {
        status = MHD_HTTP_NOT_FOUND;
        fputs("not found: lockstep serves /metrics, /healthz and /progress\n", fp);
    }
    if (fclose(fp)) {
        free(body);
        return MHD_NO;
    }
    return reply(c, status, type, body, len);
}

/* Bind metrics.listen (HOST:PORT, [IPv6]:PORT) ourselves, so that a taken port is
 * refused with the OS's reason rather than libmicrohttpd's NULL. */
static lk_err_t bind_listen(const char *listen_at, int *fd_out, char *errstr,
                            size_t errstr_size) {
    char host[256];
    const char *colon = strrchr(listen_at, ':');
    const char *port = colon ? colon + 1 : NULL;
    size_t hl = colon ? (size_t)(colon - listen_at) : 0;
    if (hl >= 2 && listen_at[0] == '[' && listen_at[hl - 1] == ']') {
        listen_at++;
        hl -= 2;
    }
    char *end = NULL;
    long pn = port && *port ? strtol(port, &end, 10) : -1;
    if (!colon || hl == 0 || hl >= sizeof host || !end || *end || pn < 0 || pn > 65535)
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "metrics.listen='%s': expected HOST:PORT, e.g. 127.0.0.1:9464 "
                       "([::1]:9464 for IPv6)",
                       listen_at);
    memcpy(host, listen_at, hl);
    host[hl] = 0;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai)
        return lk__err(LK_ERR_CONF_INVALID, errstr, errstr_size,
                       "metrics.listen: cannot resolve host '%s': %s", host, gai_strerror(gai));
    int fd = -1, err = 0;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) || listen(fd, 32)) {
            err = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        return lk__err(LK_ERR_IO, errstr, errstr_size,
                       "metrics.listen=%s:%s: cannot listen: %s%s", host, port, strerror(err),
                       err == EADDRINUSE ? " (another process uses the port: stop it or "
                                           "choose another port in metrics.listen)"
                                         : "");
    *fd_out = fd;
    return LK_OK;
}

lk_err_t lk__metrics_listen(lk__metrics_t *m, const char *listen_at, char *errstr,
                            size_t errstr_size) {
    int fd = -1;
    lk_err_t e = bind_listen(listen_at, &fd, errstr, errstr_size);
    if (e)
        return e;
    /* the server thread leaves SIGTERM/SIGINT to the batch loop */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    m->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, handle, m,
                                 MHD_OPTION_LISTEN_SOCKET, fd,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)16,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                                 MHD_OPTION_END);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!m->daemon) {
        close(fd);
        return lk__err(LK_ERR_IO, errstr, errstr_size,
                       "metrics.listen=%s: libmicrohttpd could not start its server",
                       listen_at);
    }
    lk__log(LK_LOG_INFO, "metrics: serving /metrics, /healthz and /progress on %s",
            listen_at);
    return LK_OK;
}
