#define _POSIX_C_SOURCE 200809L /* fileno, ftruncate */
/* Downloads of archive files to disk: streamed, so memory stays flat for
 * any size, resumable with Range, never with an Authorization header. The
 * handle is a duplicate of the client's, so it shares the CA, proxy,
 * timeouts and user agent, but it sends none of the API's headers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "dp.h"

#define ERROR_BODY_MAX (64 * 1024) /* an error answer is kept, not written */
#define PROGRESS_STEP (1024 * 1024)

typedef struct {
    dp_client *c;
    lua_State *L;
    FILE *fp;
    curl_off_t offset;    /* bytes already in the file when the call began */
    curl_off_t written;   /* bytes written by this call */
    int started;          /* the first body byte has been seen */
    int failed_io;
    long status;
    char error_body[512]; /* the start of a non-2xx body, for the message */
    size_t error_len, error_total;
    char md5[64];         /* from x-goog-hash, base64 */
    char content_range[96];
    int progress;         /* stack index of the progress function, or 0 */
    curl_off_t reported;
    char *callback_error; /* a progress function's error, raised later */
} dp_download;

static size_t on_data(char *data, size_t size, size_t nmemb, void *ud)
{
    dp_download *d = ud;
    size_t n = size * nmemb;

    if (!d->started) {
        d->started = 1;
        if (curl_easy_getinfo(d->c->download, CURLINFO_RESPONSE_CODE, &d->status) != CURLE_OK)
            return 0;
        /* The server ignored the Range: start the file again. */
        if (d->status == 200 && d->offset > 0) {
            if (fflush(d->fp) != 0 || ftruncate(fileno(d->fp), 0) != 0) {
                d->failed_io = 1;
                return 0;
            }
            d->offset = 0;
        }
    }
    if (d->status < 200 || d->status >= 300) {
        size_t keep = sizeof d->error_body - 1 - d->error_len;
        if (keep > n)
            keep = n;
        memcpy(d->error_body + d->error_len, data, keep);
        d->error_len += keep;
        d->error_total += n;
        return d->error_total <= ERROR_BODY_MAX ? n : 0;
    }
    if (fwrite(data, 1, n, d->fp) != n) {
        d->failed_io = 1;
        return 0;
    }
    d->written += (curl_off_t)n;
    return n;
}

static size_t on_head(char *line, size_t size, size_t nmemb, void *ud)
{
    dp_download *d = ud;
    size_t n = size * nmemb;
    char hash[256] = "";
    const char *md5;

    dp_keep_header(line, n, "content-range", d->content_range, sizeof d->content_range);
    dp_keep_header(line, n, "x-goog-hash", hash, sizeof hash);
    md5 = strstr(hash, "md5=");
    if (md5 != NULL) {
        size_t k = strcspn(md5 + 4, ",");
        if (k < sizeof d->md5) {
            memcpy(d->md5, md5 + 4, k);
            d->md5[k] = '\0';
        }
    }
    return n;
}

/* Calls the progress function every PROGRESS_STEP bytes. Its errors are
 * kept and raised once libcurl has returned. */
static int on_progress(void *ud, curl_off_t total, curl_off_t now, curl_off_t ut, curl_off_t un)
{
    dp_download *d = ud;
    curl_off_t done = d->offset + now;

    (void)ut;
    (void)un;
    if (d->progress == 0 || now - d->reported < PROGRESS_STEP || d->status / 100 != 2)
        return 0;
    d->reported = now;
    lua_pushvalue(d->L, d->progress);
    lua_pushnumber(d->L, (lua_Number)done);
    if (total > 0)
        lua_pushnumber(d->L, (lua_Number)(d->offset + total));
    else
        lua_pushnil(d->L);
    if (lua_pcall(d->L, 2, 0, 0) != 0) {
        const char *msg = lua_tostring(d->L, -1);
        d->callback_error = strdup(msg ? msg : "error in the progress function");
        lua_pop(d->L, 1);
        return 1; /* aborts the transfer */
    }
    return 0;
}

/* The URL must be https; http only to a loopback host, and only when the
 * API endpoint is loopback too (the emulator): a hostile API server must
 * not make the client fetch local services. */
static const char *check_url(const char *url, int loopback_endpoint, int *https)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *user = NULL;
    const char *problem = NULL;

    if (u == NULL)
        return "out of memory";
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
        problem = "is not a URL";
    else if (curl_url_get(u, CURLUPART_USER, &user, 0) != CURLUE_NO_USER)
        problem = "carries credentials";
    else if (!(*https = strcmp(scheme, "https") == 0) &&
             !(strcmp(scheme, "http") == 0 && loopback_endpoint && dp_is_loopback(host)))
        problem = "is not https://";
    curl_free(scheme);
    curl_free(host);
    curl_free(user);
    curl_url_cleanup(u);
    return problem;
}

static CURLcode prepare(dp_client *c, dp_download *d, const char *url, int https, char *range)
{
    CURLcode rc = CURLE_OK;

    if (c->download == NULL) {
        c->download = curl_easy_duphandle(c->req.curl);
        if (c->download == NULL)
            return CURLE_OUT_OF_MEMORY;
        /* None of the API's headers, no overall time limit (files may be
         * large), but a stalled transfer ends: under 1 byte/s for 60 s. */
        rc = curl_easy_setopt(c->download, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(c->download, CURLOPT_SHARE, dp_share_handle(c->share));
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(c->download, CURLOPT_TIMEOUT_MS, 0L);
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(c->download, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)0);
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(c->download, CURLOPT_LOW_SPEED_LIMIT, 1L);
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(c->download, CURLOPT_LOW_SPEED_TIME, 60L);
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(c->download, CURLOPT_ERRORBUFFER, c->req.errbuf);
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(c->download, CURLOPT_WRITEFUNCTION, on_data);
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(c->download, CURLOPT_HEADERFUNCTION, on_head);
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(c->download, CURLOPT_XFERINFOFUNCTION, on_progress);
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(c->download, CURLOPT_NOPROGRESS, 0L);
        if (rc == CURLE_OK)
            rc = curl_easy_setopt(c->download, CURLOPT_HTTPGET, 1L);
    }
#if LIBCURL_VERSION_NUM >= 0x075500 /* 7.85.0 */
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->download, CURLOPT_PROTOCOLS_STR, https ? "https" : "http");
#else
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->download, CURLOPT_PROTOCOLS, https ? CURLPROTO_HTTPS : CURLPROTO_HTTP);
#endif
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->download, CURLOPT_URL, url);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->download, CURLOPT_RANGE, d->offset > 0 ? range : (char *)NULL);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->download, CURLOPT_WRITEDATA, (void *)d);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->download, CURLOPT_HEADERDATA, (void *)d);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->download, CURLOPT_XFERINFODATA, (void *)d);
    return rc;
}

/* The size the whole file will have: Content-Range's total, else the
 * offset plus Content-Length; -1 when the server did not say. */
static curl_off_t expected_total(dp_client *c, dp_download *d)
{
    const char *slash = strchr(d->content_range, '/');
    curl_off_t length = -1;

    if (slash != NULL && slash[1] >= '0' && slash[1] <= '9')
        return (curl_off_t)strtoll(slash + 1, NULL, 10);
    if (curl_easy_getinfo(c->download, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length) != CURLE_OK || length < 0)
        return -1;
    return d->offset + length;
}

/* info = {written=, size=, total=, md5=, error_body=} */
static void push_info(lua_State *L, dp_client *c, dp_download *d)
{
    int ok = d->status / 100 == 2;
    curl_off_t total = ok ? expected_total(c, d) : -1;

    lua_createtable(L, 0, 5);
    lua_pushinteger(L, (lua_Integer)d->written);
    lua_setfield(L, -2, "written");
    lua_pushinteger(L, (lua_Integer)(d->offset + (ok ? d->written : 0)));
    lua_setfield(L, -2, "size");
    if (total >= 0) {
        lua_pushinteger(L, (lua_Integer)total);
        lua_setfield(L, -2, "total");
    }
    /* The hash is of the whole object: only a whole answer carries it. */
    if (d->md5[0] != '\0' && d->status == 200) {
        lua_pushstring(L, d->md5);
        lua_setfield(L, -2, "md5");
    }
    if (d->error_len > 0) {
        lua_pushlstring(L, d->error_body, d->error_len);
        lua_setfield(L, -2, "error_body");
    }
}

/* client:download(url, path [, progress]) -> status, info
 *   Appends to `path` from its current size with a Range request (a new
 *   file starts at 0). info: written (bytes this call), size (of the file
 *   now), total (the whole file's size, when the server said), md5 (the
 *   server's x-goog-hash, base64, on a whole answer), error_body (the start
 *   of a non-2xx answer). progress(done, total) runs every MiB.
 *   -> nil, kind, message, info   (kind "io": a local file error) */
static int l_download(lua_State *L)
{
    dp_client *c = dp_check_client(L, 1);
    const char *url = luaL_checkstring(L, 2);
    const char *path = luaL_checkstring(L, 3);
    dp_download d;
    char range[48];
    const char *problem;
    int https = 0;
    CURLcode rc;
    off_t at;

    memset(&d, 0, sizeof d);
    d.c = c;
    d.L = L;
    if (!lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TFUNCTION);
        d.progress = 4;
    }
    if (c->req.curl == NULL)
        return dp_fail(L, "closed", "client is closed");
    if (c->multi != NULL) /* its handle is the one download copies */
        return luaL_error(L, "client is busy with an asynchronous request");
    /* The URL comes from the server: a bad one is an answer, not a bug. */
    if ((problem = check_url(url, c->loopback, &https)) != NULL) {
        lua_pushnil(L);
        lua_pushstring(L, "http");
        lua_pushfstring(L, "the server listed a download URL that %s", problem);
        return 3;
    }
    d.fp = fopen(path, "ab");
    if (d.fp == NULL)
        return dp_fail(L, "io", "cannot open the file for writing");
    at = fseeko(d.fp, 0, SEEK_END) == 0 ? ftello(d.fp) : -1;
    if (at < 0) {
        fclose(d.fp);
        return dp_fail(L, "io", "cannot tell the file's size");
    }
    d.offset = (curl_off_t)at;
    snprintf(range, sizeof range, "%lld-", (long long)at);
    c->req.errbuf[0] = '\0';
    rc = prepare(c, &d, url, https, range);
    if (rc == CURLE_OK)
        rc = curl_easy_perform(c->download);
    if (rc == CURLE_OK && !d.started)
        rc = curl_easy_getinfo(c->download, CURLINFO_RESPONSE_CODE, &d.status);
    if (fclose(d.fp) != 0)
        d.failed_io = 1;
    /* The handle must not keep pointers to this frame. */
    (void)curl_easy_setopt(c->download, CURLOPT_WRITEDATA, (void *)NULL);
    (void)curl_easy_setopt(c->download, CURLOPT_HEADERDATA, (void *)NULL);
    (void)curl_easy_setopt(c->download, CURLOPT_XFERINFODATA, (void *)NULL);

    if (d.callback_error != NULL) {
        lua_pushstring(L, d.callback_error);
        free(d.callback_error);
        return lua_error(L);
    }
    if (d.failed_io)
        return dp_fail(L, "io", "writing the file failed");
    if (rc != CURLE_OK) {
        dp_fail(L, dp_kind_of(rc, &c->req),
                c->req.errbuf[0] != '\0' ? c->req.errbuf : curl_easy_strerror(rc));
        push_info(L, c, &d);
        return 4;
    }
    lua_pushinteger(L, d.status);
    push_info(L, c, &d);
    return 2;
}

void dp_download_open(lua_State *L)
{
    dp_client_method(L, "download", l_download);
}
