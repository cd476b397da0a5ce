/* The transfer engine: one request and its answer on a libcurl easy
 * handle, and the blocking multi loop that moves transfers on. No Lua
 * here: libcurl's callbacks only record into a dp_transfer, and the Lua
 * side reads it once libcurl has returned (docs/transport.md). The fuzz
 * targets link this file alone. */
#ifndef DP_TRANSFER_H
#define DP_TRANSFER_H

#include <curl/curl.h>

#include "part.h"
#include "token.h"

#if LIBCURL_VERSION_NUM < 0x075000
#error "dataportability needs libcurl 7.80 or later (CURLOPT_PREREQFUNCTION)"
#endif

/* The limits of both transports (docs/transport.md), exported to Lua as
 * core.limits so that the cosocket transport does not copy them. */
#define DP_BODY_MAX (1024 * 1024)   /* larger answers are cut: too_large */
#define DP_CONTENT_TYPE_MAX 128     /* bytes kept of Content-Type, NUL included */
#define DP_RETRY_AFTER_MAX 64       /* bytes kept of Retry-After, NUL included */
#define DP_HEADER_LINES_MAX 200     /* an answer with more is not an API answer */
#define DP_CONCURRENCY_MAX 1000     /* the largest batch */
#define DP_STREAM_CHUNK (1024 * 1024) /* a stream's buffer pauses the transfer past this */

#define DP_AUTH_PREFIX "Authorization: Bearer "

/* Whether the server may have seen a request that got no answer. */
typedef enum {
    DP_SENT_NO,    /* it never left */
    DP_SENT_YES,   /* it left; the answer was lost or cut */
    DP_SENT_STALE  /* it left on a reused connection that closed without a byte back */
} dp_sent;

typedef struct dp_transfer {
    CURL *curl;
    void *owner;                /* what the transfer belongs to: CURLINFO_PRIVATE is t */
    /* the answer */
    long status;
    char *body;                 /* the body; of a download, only a non-2xx one */
    size_t body_len, body_cap;
    int too_large;
    int headers_done;           /* the blank line ending the headers was seen */
    int header_lines;
    int sends;                  /* times libcurl was about to send the request: 0 or 1 */
    int resend_refused;         /* libcurl's silent second send was refused */
    char content_type[DP_CONTENT_TYPE_MAX];
    char retry_after[DP_RETRY_AFTER_MAX];
    char errbuf[CURL_ERROR_SIZE];
    /* downloads: a 2xx body is appended to the part file sink (NULL for
     * API calls), which held `offset` bytes */
    dp_part *sink;
    curl_off_t offset, written;
    int sink_failed;
    /* downloads to a stream (sink NULL): the 2xx body is buffered in body,
     * taken from there between steps; the transfer pauses while it is full */
    int stream, paused, restarted;
    char md5[64];               /* from x-goog-hash, base64 */
    char content_range[96];
    char etag[128];
    /* Per-request header nodes, linked in front of the fixed list: they
     * live here, not on a C stack, because an asynchronous request
     * outlives the call that started it. */
    struct curl_slist type_node, auth_node;
    char *auth;                 /* made to fit the token; wiped after each request */
    size_t auth_len, auth_cap;
} dp_transfer;

/* Points t->curl's callbacks, their data and its error buffer at t. */
CURLcode dp_transfer_bind(dp_transfer *t, void *owner);
/* Clears t's answer before a new request. */
void dp_transfer_reset(dp_transfer *t);
/* Links the Authorization node (and the Content-Type node when type is
 * not NULL) in front of `headers`, which is not NULL; returns the new
 * head, or NULL when out of memory. The token was checked. */
struct curl_slist *dp_transfer_headers(dp_transfer *t, struct curl_slist *headers, char *type,
                                       const char *token, size_t token_len);
/* A stream's buffered bytes (*chunk valid until the next step), emptied. */
size_t dp_transfer_take(dp_transfer *t, const char **chunk);
/* Unpauses a stream whose buffer was full, once taken. */
void dp_transfer_resume(dp_transfer *t);
/* Wipes the token and the body; frees nothing. */
void dp_transfer_wipe(dp_transfer *t);
/* Wipes the token; frees nothing. */
void dp_transfer_wipe_token(dp_transfer *t);
/* Frees the handle and the buffers, wiped. */
void dp_transfer_free(dp_transfer *t);

/* The outcome of t's request that ended with rc: DP_OK with t->status,
 * or the error kind ("timeout", "network", ...), its message (pointing
 * into t or static) and whether the server may have seen the request. */
#define DP_OK NULL
const char *dp_transfer_result(dp_transfer *t, CURLcode rc, const char **message, dp_sent *sent);

/* If the header line (len bytes, from libcurl) is header `name`, writes
 * its value to out: printable bytes only, trimmed, cut to cap - 1. */
void dp_keep_header(const char *line, size_t len, const char *name, char *out, size_t cap);

/* One turn of a blocking loop over m: waits (when `wait`) up to 1 s for
 * activity, then lets libcurl move every transfer on. */
CURLMcode dp_engine_step(CURLM *m, int wait, int *running);
/* The next transfer of m that ended, taken out of m, with its result in
 * *rc; NULL when none has. */
dp_transfer *dp_engine_done(CURLM *m, CURLcode *rc);

#endif
