#define _POSIX_C_SOURCE 200809L /* O_CLOEXEC */
/* client:download: archive files streamed to disk, so memory stays flat
 * for any size, resumable with Range, never with an Authorization header.
 * The handle is a copy of the client's, so it shares the CA, proxy,
 * timeouts and user agent, but it sends none of the API's headers. The
 * progress function runs between the engine's steps, never inside
 * libcurl. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dp.h"
#include "endpoint.h"

#define PROGRESS_STEP (1024 * 1024)

/* The download handle, made on first use. */
static CURLcode make_handle(dp_client *c)
{
    CURLcode rc;

    c->dl.curl = curl_easy_duphandle(c->req.curl);
    if (c->dl.curl == NULL)
        return CURLE_OUT_OF_MEMORY;
    rc = dp_transfer_bind(&c->dl, c);
    /* None of the API's headers, no overall time limit (files may be
     * large), but a stalled transfer ends: under 1 byte/s for 60 s. */
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_SHARE, dp_share_handle(c->share));
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_TIMEOUT_MS, 0L);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)0);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_LOW_SPEED_TIME, 60L);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_CUSTOMREQUEST, (char *)NULL);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_HTTPGET, 1L);
    return rc;
}

static CURLcode prepare(dp_client *c, const char *url, int https, curl_off_t offset)
{
    char range[48];
    CURLcode rc = c->dl.curl == NULL ? make_handle(c) : CURLE_OK;

    snprintf(range, sizeof range, "%lld-", (long long)offset);
#if LIBCURL_VERSION_NUM >= 0x075500 /* 7.85.0 */
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_PROTOCOLS_STR, https ? "https" : "http");
#else
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_PROTOCOLS, https ? CURLPROTO_HTTPS : CURLPROTO_HTTP);
#endif
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_URL, url);
    if (rc == CURLE_OK) /* libcurl copies it */
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_RANGE, offset > 0 ? range : (char *)NULL);
    return rc;
}

/* The size the whole file will have: Content-Range's total, else the
 * offset plus Content-Length; -1 when the server did not say. */
static curl_off_t expected_total(const dp_transfer *t)
{
    const char *slash = strchr(t->content_range, '/');
    curl_off_t length = -1;

    if (slash != NULL && slash[1] >= '0' && slash[1] <= '9')
        return (curl_off_t)strtoll(slash + 1, NULL, 10);
    if (curl_easy_getinfo(t->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length) != CURLE_OK || length < 0)
        return -1;
    return t->offset + length;
}

typedef struct {
    int fn;             /* stack index of the progress function, or 0 */
    curl_off_t reported;
} dp_progress;

/* Between the engine's steps: progress(done, total) once per MiB. */
static int report(lua_State *L, dp_transfer *t, void *ud)
{
    dp_progress *p = ud;
    curl_off_t total;

    if (p->fn == 0 || t->status / 100 != 2 || t->written - p->reported < PROGRESS_STEP)
        return DP_GO_ON;
    p->reported = t->written;
    total = expected_total(t);
    lua_pushvalue(L, p->fn);
    lua_pushnumber(L, (lua_Number)(t->offset + t->written));
    if (total >= 0)
        lua_pushnumber(L, (lua_Number)total);
    else
        lua_pushnil(L);
    return lua_pcall(L, 2, 0, 0) == 0 ? DP_GO_ON : DP_RAISED;
}

static void set_integer(lua_State *L, const char *name, lua_Integer v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, name);
}

static void set_string(lua_State *L, const char *name, const char *s, size_t len)
{
    lua_pushlstring(L, s, len);
    lua_setfield(L, -2, name);
}

/* The result table of docs/transport.md; kind NULL when t answered. */
static int push_result(lua_State *L, const dp_transfer *t, const char *kind, const char *message)
{
    int ok = kind == NULL && t->status / 100 == 2;
    curl_off_t total = ok ? expected_total(t) : -1;

    lua_createtable(L, 0, 6);
    if (kind != NULL) {
        set_string(L, "kind", kind, strlen(kind));
        set_string(L, "message", message, strlen(message));
    } else {
        set_integer(L, "status", t->status);
    }
    set_integer(L, "written", (lua_Integer)t->written);
    set_integer(L, "size", (lua_Integer)(t->offset + t->written));
    if (total >= 0)
        set_integer(L, "total", (lua_Integer)total);
    /* The hash is of the whole object: only a whole answer carries it. */
    if (t->status == 200 && t->md5[0] != '\0')
        set_string(L, "md5", t->md5, strlen(t->md5));
    if (kind == NULL && !ok && t->body_len > 0)
        set_string(L, "error_body", t->body, t->body_len);
    return 1;
}

/* client:download(url, path [, progress]) -> result (docs/transport.md)
 *   Appends to `path` from its current size with a Range request (a new
 *   file starts at 0). progress(done, total) runs every MiB. */
int dp_client_download(lua_State *L)
{
    dp_client *c = dp_check_client(L, 1);
    const char *url = luaL_checkstring(L, 2);
    const char *path = luaL_checkstring(L, 3);
    dp_progress progress = {0, 0};
    const char *problem, *kind, *message = NULL;
    int https = 0, fd, status;
    pid_t pid;
    dp_sent sent;
    off_t at;
    CURLcode rc;

    if (!lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TFUNCTION);
        progress.fn = 4;
    }
    lua_settop(L, 4);
    dp_transfer_reset(&c->dl);
    if (!dp_client_ready(L, c))
        return push_result(L, &c->dl, "closed", "client is closed");
    /* The URL comes from the server: a bad one is an answer, not a bug. */
    if ((problem = dp_check_download_url(url, c->loopback, &https)) != NULL) {
        lua_pushfstring(L, "the server listed a download URL that %s", problem);
        return push_result(L, &c->dl, "http", lua_tostring(L, -1));
    }
    fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0)
        return push_result(L, &c->dl, "io", "cannot open the file for writing");
    at = lseek(fd, 0, SEEK_END);
    if (at < 0 || (rc = prepare(c, url, https, (curl_off_t)at)) != CURLE_OK) {
        (void)close(fd);
        return push_result(L, &c->dl, at < 0 ? "io" : "network",
                           at < 0 ? "cannot tell the file's size" : curl_easy_strerror(rc));
    }
    c->dl.sink = fd;
    c->dl.offset = (curl_off_t)at;
    c->busy = 1;
    pid = c->pid;
    status = dp_client_run(L, c, &c->dl, report, &progress, &rc);
    c->dl.sink = -1;
    if (close(fd) != 0)
        c->dl.sink_failed = 1;
    dp_client_unbusy(L, c, pid); /* raises in a child forked by progress */
    if (status == DP_RAISED)
        return lua_error(L); /* progress's error, as it was */
    if (status == DP_STOPPED)
        return push_result(L, &c->dl, "closed", "client is closed");
    kind = dp_transfer_result(&c->dl, rc, &message, &sent);
    if (kind == DP_OK && c->dl.sink_failed) { /* close(2) failed */
        kind = "io";
        message = "writing the file failed";
    }
    push_result(L, &c->dl, kind, message);
    dp_transfer_wipe(&c->dl);
    return 1;
}
