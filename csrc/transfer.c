#define _POSIX_C_SOURCE 200809L /* strncasecmp */
/* The transfer engine (transfer.h): libcurl's callbacks record the answer
 * into a dp_transfer, and never call into Lua. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "transfer.h"

/* ---- libcurl's callbacks ---- */

#define DOWNLOAD(t) ((t)->sink != NULL || (t)->stream)

/* Appends n bytes to the body buffer; 0 when out of memory. */
static size_t append(dp_transfer *t, const char *data, size_t n, size_t max)
{
    if (t->body_len + n > t->body_cap) {
        size_t cap = t->body_cap ? t->body_cap : 1024;
        char *p;
        while (cap < t->body_len + n)
            cap *= 2;
        if (cap > max)
            cap = max;
        p = realloc(t->body, cap);
        if (p == NULL)
            return 0;
        t->body = p;
        t->body_cap = cap;
    }
    memcpy(t->body + t->body_len, data, n);
    t->body_len += n;
    return n;
}

/* Keeps n more body bytes in memory, at most DP_BODY_MAX in all. */
static size_t keep_body(dp_transfer *t, const char *data, size_t n)
{
    if (n > DP_BODY_MAX - t->body_len) {
        t->too_large = 1;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    return append(t, data, n, DP_BODY_MAX);
}

/* A download's 2xx body goes to its file, or for a stream to the body
 * buffer, which the Lua side empties between steps (dp_transfer_take);
 * anything else is an answer. */
static size_t on_body(char *data, size_t size, size_t nmemb, void *ud)
{
    dp_transfer *t = ud;
    size_t n = size * nmemb;

    if (t->sink == NULL && !t->stream)
        return keep_body(t, data, n);
    if (t->status == 0) {
        if (curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &t->status) != CURLE_OK)
            return 0;
        /* The server ignored the Range: the file starts again; a stream
         * cannot take back what it gave. */
        if (t->status == 200 && t->offset > 0 && t->stream) {
            t->restarted = 1;
            return 0;
        }
        if (t->status == 200 && t->offset > 0) {
            if (!dp_part_truncate(t->sink)) {
                t->sink_failed = 1;
                return 0;
            }
            t->offset = 0;
        }
    }
    if (t->status / 100 != 2)
        return keep_body(t, data, n);
    if (t->stream) {
        if (t->body_len >= DP_STREAM_CHUNK) {
            t->paused = 1;
            return CURL_WRITEFUNC_PAUSE; /* offered again once unpaused */
        }
        if (append(t, data, n, (size_t)-1) != n)
            return 0;
        t->written += (curl_off_t)n;
        return n;
    }
    if (!dp_part_write(t->sink, data, n)) {
        t->sink_failed = 1;
        return 0;
    }
    t->written += (curl_off_t)n;
    return n;
}

void dp_keep_header(const char *line, size_t len, const char *name, char *out, size_t cap)
{
    size_t name_len = strlen(name), i, n = 0;

    if (len <= name_len || strncasecmp(line, name, name_len) != 0 || line[name_len] != ':')
        return;
    for (i = name_len + 1; i < len && line[i] == ' '; i++)
        ;
    for (; i < len && n + 1 < cap && line[i] >= 0x20 && line[i] <= 0x7e; i++)
        out[n++] = line[i];
    while (n > 0 && out[n - 1] == ' ')
        n--;
    out[n] = '\0';
}

/* x-goog-hash: crc32c=...,md5=... -> the md5 value. */
static void keep_md5(dp_transfer *t, const char *line, size_t n)
{
    char hash[256] = "";
    const char *md5;
    size_t k;

    dp_keep_header(line, n, "x-goog-hash", hash, sizeof hash);
    md5 = strstr(hash, "md5=");
    if (md5 == NULL)
        return;
    k = strcspn(md5 + 4, ",");
    if (k < sizeof t->md5) {
        memcpy(t->md5, md5 + 4, k);
        t->md5[k] = '\0';
    }
}

static size_t on_header(char *line, size_t size, size_t nmemb, void *ud)
{
    dp_transfer *t = ud;
    size_t n = size * nmemb;

    if (n >= 5 && strncmp(line, "HTTP/", 5) == 0) { /* a new answer (after 100 Continue) */
        t->content_type[0] = t->retry_after[0] = t->content_range[0] = t->md5[0] = t->etag[0] = '\0';
        t->headers_done = 0;
        t->header_lines = 0;
    }
    if (++t->header_lines > DP_HEADER_LINES_MAX)
        return 0; /* aborts the transfer */
    if ((n == 2 && line[0] == '\r' && line[1] == '\n') || (n == 1 && line[0] == '\n')) {
        t->headers_done = 1;
    } else if (line[0] == 'c' || line[0] == 'C') { /* the names kept, cheaply told apart */
        dp_keep_header(line, n, "content-type", t->content_type, sizeof t->content_type);
        if (DOWNLOAD(t))
            dp_keep_header(line, n, "content-range", t->content_range, sizeof t->content_range);
    } else if (line[0] == 'r' || line[0] == 'R') {
        dp_keep_header(line, n, "retry-after", t->retry_after, sizeof t->retry_after);
    } else if ((line[0] == 'x' || line[0] == 'X') && DOWNLOAD(t)) {
        keep_md5(t, line, n);
    } else if ((line[0] == 'e' || line[0] == 'E') && DOWNLOAD(t)) {
        dp_keep_header(line, n, "etag", t->etag, sizeof t->etag);
    }
    return n;
}

/* When a reused connection turns out dead with no answer, libcurl
 * silently sends the request again, on a new connection or another idle
 * one. That second send is refused, so that an attempt is one send at
 * most, and the Lua layer decides by the method's policy whether the
 * request may go out again (docs/transport.md): here, before a new
 * connection is even made for it, and in on_send, right before a send. */
static curl_socket_t on_open(void *ud, curlsocktype purpose, struct curl_sockaddr *a)
{
    dp_transfer *t = ud;
    int type = a->socktype;

    (void)purpose;
    if (t->sends > 0) {
        t->resend_refused = 1;
        return CURL_SOCKET_BAD;
    }
#ifdef SOCK_CLOEXEC
    type |= SOCK_CLOEXEC; /* a program the host starts gets none of them */
#endif
    return socket(a->family, type, a->protocol);
}

static int on_send(void *ud, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
    dp_transfer *t = ud;

    (void)primary_ip;
    (void)local_ip;
    (void)primary_port;
    (void)local_port;
    if (t->sends > 0) {
        t->resend_refused = 1;
        return CURL_PREREQFUNC_ABORT;
    }
    t->sends++;
    return CURL_PREREQFUNC_OK;
}

/* ---- the transfer ---- */

size_t dp_transfer_take(dp_transfer *t, const char **chunk)
{
    size_t n = t->body_len;

    if (!t->stream || t->status / 100 != 2)
        return 0; /* an error answer's body is no file data */
    *chunk = t->body;
    t->body_len = 0;
    return n;
}

void dp_transfer_resume(dp_transfer *t)
{
    if (t->paused) {
        t->paused = 0;
        /* may write the held chunk at once: on_body only records */
        (void)curl_easy_pause(t->curl, CURLPAUSE_CONT);
    }
}

CURLcode dp_transfer_bind(dp_transfer *t, void *owner)
{
    CURLcode rc = curl_easy_setopt(t->curl, CURLOPT_WRITEFUNCTION, on_body);

    t->owner = owner;
    t->sink = NULL;
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(t->curl, CURLOPT_WRITEDATA, (void *)t);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(t->curl, CURLOPT_HEADERFUNCTION, on_header);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(t->curl, CURLOPT_HEADERDATA, (void *)t);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(t->curl, CURLOPT_PREREQFUNCTION, on_send);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(t->curl, CURLOPT_PREREQDATA, (void *)t);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(t->curl, CURLOPT_OPENSOCKETFUNCTION, on_open);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(t->curl, CURLOPT_OPENSOCKETDATA, (void *)t);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(t->curl, CURLOPT_ERRORBUFFER, t->errbuf);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(t->curl, CURLOPT_PRIVATE, (void *)t);
    return rc;
}

void dp_transfer_reset(dp_transfer *t)
{
    t->status = 0;
    t->body_len = 0;
    t->too_large = t->headers_done = t->header_lines = t->sends = t->resend_refused = 0;
    t->sink_failed = t->restarted = t->paused = 0;
    t->written = 0;
    t->content_type[0] = t->retry_after[0] = t->errbuf[0] = '\0';
    t->md5[0] = t->content_range[0] = t->etag[0] = '\0';
}

struct curl_slist *dp_transfer_headers(dp_transfer *t, struct curl_slist *headers, char *type,
                                       const char *token, size_t token_len)
{
    const size_t prefix = sizeof DP_AUTH_PREFIX - 1;

    if (type != NULL) {
        t->type_node.data = type;
        t->type_node.next = headers;
        headers = &t->type_node;
    }
    if (token != NULL) {
        size_t need = prefix + token_len + 1;
        if (need > t->auth_cap) { /* a new buffer: the old one is wiped, not moved by realloc */
            char *p = malloc(need);
            if (p == NULL)
                return NULL;
            dp_wipe(t->auth, t->auth_cap);
            free(t->auth);
            t->auth = p;
            t->auth_cap = need;
        }
        memcpy(t->auth, DP_AUTH_PREFIX, prefix);
        memcpy(t->auth + prefix, token, token_len);
        t->auth[prefix + token_len] = '\0';
        t->auth_len = prefix + token_len + 1;
        t->auth_node.data = t->auth;
        t->auth_node.next = headers;
        headers = &t->auth_node;
    }
    return headers;
}

void dp_transfer_wipe_token(dp_transfer *t)
{
    dp_wipe(t->auth, t->auth_len);
    t->auth_len = 0;
}

void dp_transfer_wipe(dp_transfer *t)
{
    dp_transfer_wipe_token(t);
    if (t->body != NULL)
        dp_wipe(t->body, t->body_len); /* token endpoints answer with secrets */
    t->body_len = 0;
}

void dp_transfer_free(dp_transfer *t)
{
    if (t->curl != NULL)
        curl_easy_cleanup(t->curl);
    t->curl = NULL;
    dp_wipe(t->auth, t->auth_cap);
    free(t->auth);
    t->auth = NULL;
    t->auth_len = t->auth_cap = 0;
    if (t->body != NULL)
        dp_wipe(t->body, t->body_cap);
    free(t->body);
    t->body = NULL;
    t->body_len = t->body_cap = 0;
}

static const char *kind_of(CURLcode rc)
{
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return "dns";
    case CURLE_COULDNT_CONNECT:
        return "connect";
    case CURLE_FILESIZE_EXCEEDED:
        return "too_large";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
        return "tls";
    default:
        return "network";
    }
}

const char *dp_transfer_result(dp_transfer *t, CURLcode rc, const char **message, dp_sent *sent)
{
    const char *kind;

    if (rc == CURLE_OK)
        rc = curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &t->status);
    *sent = t->sends == 0 ? DP_SENT_NO : DP_SENT_YES;
    if (rc == CURLE_OK && t->headers_done)
        return DP_OK;
    if (rc == CURLE_OK) {
        *message = "the connection closed before the headers ended";
        return "network";
    }
    if (t->resend_refused) {
        *sent = DP_SENT_STALE;
        *message = "the kept-alive connection closed without answering; the request may have "
                   "reached the server";
        return "network";
    }
    kind = kind_of(rc);
    if (t->too_large || strcmp(kind, "too_large") == 0) {
        *message = "response body is larger than 1 MiB";
        return "too_large";
    }
    if (t->sink_failed) {
        *message = "writing the file failed";
        return "io";
    }
    if (t->restarted) {
        *message = "the server ignored the Range request, and a sink cannot take back what it got";
        return "http";
    }
    if (t->header_lines > DP_HEADER_LINES_MAX) {
        *message = "too many response header lines";
        return "network";
    }
    *message = t->errbuf[0] != '\0' ? t->errbuf : curl_easy_strerror(rc);
    return kind;
}

/* ---- the blocking loop ---- */

CURLMcode dp_engine_step(CURLM *m, int wait, int *running)
{
    CURLMcode rc = wait ? curl_multi_poll(m, NULL, 0, 1000, NULL) : CURLM_OK;

    if (rc == CURLM_OK)
        rc = curl_multi_perform(m, running);
    return rc;
}

dp_transfer *dp_engine_done(CURLM *m, CURLcode *rc)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(m, &left)) != NULL) {
        dp_transfer *t = NULL;

        if (msg->msg != CURLMSG_DONE)
            continue;
        *rc = msg->data.result; /* msg is invalid after the removal */
        if (curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t) != CURLE_OK || t == NULL)
            continue; /* every handle of ours has one */
        (void)curl_multi_remove_handle(m, t->curl); /* cannot fail for a member */
        return t;
    }
    return NULL;
}
