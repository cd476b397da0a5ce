/* client:download: archive files streamed to disk, so memory stays flat
 * for any size, resumable with Range, never with an Authorization header.
 * The handle is a copy of the client's, so it shares the CA, proxy,
 * timeouts and user agent, but it sends none of the API's headers. The
 * progress function runs between the engine's steps, never inside
 * libcurl. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    /* None of the API's headers, no size limit: each call sets its time
     * limits (prepare). Not in the share: a download may run in a host's
     * multi (multi.c), whose connections close through that multi and
     * must not outlive it in the shared cache; and one connection to a
     * storage host for a whole file gains little from it. */
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)0);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_CUSTOMREQUEST, (char *)NULL);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_HTTPGET, 1L);
    return rc;
}

/* What one download call asks for (docs/transport.md). */
typedef struct {
    int resume;            /* append to the existing file */
    int stream;            /* no file: opts.sink takes the bytes */
    const char *etag;      /* if_range, held by the options table, or NULL */
    size_t etag_len;
    curl_off_t offset;     /* a stream's: the bytes its sink already has */
    long low_speed_limit;  /* bytes/s ... */
    long low_speed_time;   /* ... for this many seconds ends the transfer */
    long timeout_ms;       /* 0: none */
} dp_download_opts;

static lua_Number opt_number(lua_State *L, int idx, const char *name, lua_Number dflt, lua_Number min,
                             lua_Number max)
{
    lua_Number v = dflt;

    lua_getfield(L, idx, name);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "download option '%s' must be a number", name);
        v = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    if (!(v >= min && v <= max))
        luaL_error(L, "download option '%s' is out of range", name);
    return v;
}

/* Reads the options table at idx into o; stream: no path was given.
 * Bad options raise, before anything of the client is touched. */
static void read_opts(lua_State *L, int idx, int stream, dp_download_opts *o)
{
    size_t i;
    lua_Number timeout_ms;

    luaL_checktype(L, idx, LUA_TTABLE);
    lua_getfield(L, idx, "progress");
    if (!lua_isnil(L, -1))
        luaL_checktype(L, -1, LUA_TFUNCTION);
    lua_pop(L, 1);
    lua_getfield(L, idx, "sink");
    if (!lua_isnil(L, -1))
        luaL_checktype(L, -1, LUA_TFUNCTION);
    else if (stream)
        luaL_error(L, "download option 'sink' is needed without a path");
    lua_pop(L, 1);
    o->stream = stream;
    lua_getfield(L, idx, "resume");
    o->resume = lua_toboolean(L, -1);
    lua_pop(L, 1);
    o->offset = (curl_off_t)opt_number(L, idx, "offset", 0, 0, 1e15);
    o->low_speed_limit = (long)opt_number(L, idx, "low_speed_limit", 1, 1, 1e9);
    o->low_speed_time = (long)opt_number(L, idx, "low_speed_time", 60, 1, 86400);
    timeout_ms = opt_number(L, idx, "timeout", 0, 0, 1e7) * 1000;
    o->timeout_ms = (long)timeout_ms;
    if (o->timeout_ms < timeout_ms) /* rounded up: 0 would mean no limit at all */
        o->timeout_ms++;
    lua_getfield(L, idx, "if_range");
    o->etag = lua_isnil(L, -1) ? NULL : luaL_checklstring(L, -1, &o->etag_len);
    for (i = 0; o->etag != NULL && i < o->etag_len; i++)
        if ((unsigned char)o->etag[i] < 0x20 || (unsigned char)o->etag[i] > 0x7e)
            luaL_error(L, "download option 'if_range' must be printable ASCII");
    lua_pop(L, 1); /* the string stays referenced by the options table */
}

/* c's If-Range header from o (a copy: an asynchronous download outlives
 * the call); false when out of memory. */
static int keep_if_range(dp_client *c, const dp_download_opts *o)
{
    free(c->if_range);
    c->if_range = NULL;
    if (o->etag == NULL)
        return 1;
    if ((c->if_range = malloc(o->etag_len + sizeof "If-Range: ")) == NULL)
        return 0;
    memcpy(c->if_range, "If-Range: ", sizeof "If-Range: " - 1);
    memcpy(c->if_range + sizeof "If-Range: " - 1, o->etag, o->etag_len + 1);
    return 1;
}

static CURLcode prepare(dp_client *c, const char *url, int https, curl_off_t offset,
                        const dp_download_opts *o)
{
    char range[48];
    CURLcode rc = c->dl.curl == NULL ? make_handle(c) : CURLE_OK;

    snprintf(range, sizeof range, "%lld-", (long long)offset);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_LOW_SPEED_LIMIT, o->low_speed_limit);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_LOW_SPEED_TIME, o->low_speed_time);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_TIMEOUT_MS, o->timeout_ms);
    c->dl.type_node.data = c->if_range;
    c->dl.type_node.next = NULL;
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->dl.curl, CURLOPT_HTTPHEADER,
                              offset > 0 && c->if_range != NULL ? &c->dl.type_node : NULL);
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
    int sink;           /* a stream's: stack index of the sink function */
    curl_off_t reported;
} dp_progress;

/* A stream's buffered bytes to its sink(chunk). */
static int drain(lua_State *L, dp_transfer *t, int sink)
{
    const char *chunk;
    size_t n = dp_transfer_take(t, &chunk);

    if (n > 0) {
        lua_pushvalue(L, sink);
        lua_pushlstring(L, chunk, n);
        if (lua_pcall(L, 1, 0, 0) != 0)
            return DP_RAISED;
    }
    dp_transfer_resume(t);
    return DP_GO_ON;
}


/* Between the engine's steps: a stream's bytes to its sink, and
 * progress(done, total) once per MiB. */
static int report(lua_State *L, dp_transfer *t, void *ud)
{
    dp_progress *p = ud;
    curl_off_t total;

    if (t->stream && drain(L, t, p->sink) != DP_GO_ON)
        return DP_RAISED;
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

/* The result table of docs/transport.md; kind NULL when t answered;
 * digest: the file's MD5 after the call, or NULL. */
static int push_result(lua_State *L, const dp_transfer *t, const char *kind, const char *message,
                       const char *digest)
{
    int ok = t->status / 100 == 2; /* the answer began: a cut one says what it was of */
    curl_off_t total = ok ? expected_total(t) : -1;

    lua_createtable(L, 0, 6);
    if (kind != NULL) {
        set_string(L, "kind", kind, strlen(kind));
        set_string(L, "message", message, strlen(message));
        if (t->status > 0) /* the answer that was cut short */
            set_integer(L, "answered", t->status);
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
    if (ok && t->etag[0] != '\0')
        set_string(L, "etag", t->etag, strlen(t->etag));
    if (kind == NULL && !ok && t->body_len > 0)
        set_string(L, "error_body", t->body, t->body_len);
    if (digest != NULL && digest[0] != '\0')
        set_string(L, "digest", digest, strlen(digest));
    return 1;
}

int dp_download_refuse(lua_State *L, const char *kind, const char *message)
{
    static const dp_transfer none; /* nothing ran: no status, no bytes */

    return push_result(L, &none, kind, message, NULL);
}

int dp_download_begin(lua_State *L, dp_client *c, int arg)
{
    const char *url = luaL_checkstring(L, arg);
    const char *path = lua_isnil(L, arg + 1) ? NULL : luaL_checkstring(L, arg + 1);
    const char *problem;
    dp_download_opts o;
    int https = 0;
    CURLcode rc;

    read_opts(L, arg + 2, path == NULL, &o);
    /* raises when c is busy: nothing of a running transfer is touched */
    if (!dp_client_ready(L, c))
        return dp_download_refuse(L, "closed", "client is closed");
    /* The URL comes from the server: a bad one is an answer, not a bug. */
    if ((problem = dp_check_download_url(url, c->loopback, &https)) != NULL) {
        lua_pushfstring(L, "the server listed a download URL that %s", problem);
        return dp_download_refuse(L, "http", lua_tostring(L, -1));
    }
    dp_transfer_reset(&c->dl);
    c->dl.offset = 0;
    if (!keep_if_range(c, &o))
        return dp_download_refuse(L, "network", "out of memory");
    if (path != NULL && (problem = dp_part_open(&c->part, path, o.resume)) != NULL) {
        dp_download_close(c);
        return dp_download_refuse(L, "io", problem);
    }
    rc = prepare(c, url, https, path != NULL ? (curl_off_t)c->part.size : o.offset, &o);
    /* after prepare: binding a new handle clears them */
    c->dl.sink = path != NULL ? &c->part : NULL;
    c->dl.stream = path == NULL;
    c->dl.offset = path != NULL ? (curl_off_t)c->part.size : o.offset;
    if (rc != CURLE_OK) {
        dp_download_close(c);
        return dp_download_refuse(L, "network", curl_easy_strerror(rc));
    }
    return 0;
}

void dp_download_close(dp_client *c)
{
    int had_part = c->dl.sink != NULL;

    c->dl.sink = NULL;
    c->dl.stream = 0;
    if (had_part && !dp_part_close(&c->part))
        c->dl.sink_failed = 1;
    /* plain pointer options: libcurl cannot refuse them; a forked child
     * leaves the parent's handle alone */
    if (c->dl.curl != NULL && !dp_forked(c->pid)) {
        (void)curl_easy_setopt(c->dl.curl, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
        (void)curl_easy_setopt(c->dl.curl, CURLOPT_CLOSESOCKETFUNCTION, (curl_closesocket_callback)NULL);
    }
    free(c->if_range);
    c->if_range = NULL;
}

int dp_download_end(lua_State *L, dp_client *c, CURLcode rc)
{
    const char *kind, *message = NULL;
    char digest[25] = "";
    dp_sent sent;

    if (c->dl.sink != NULL && !dp_part_digest(&c->part, digest))
        digest[0] = '\0';
    dp_download_close(c);
    kind = dp_transfer_result(&c->dl, rc, &message, &sent);
    if (kind == DP_OK && c->dl.sink_failed) { /* close(2) failed */
        kind = "io";
        message = "writing the file failed";
    }
    push_result(L, &c->dl, kind, message, digest);
    dp_transfer_wipe(&c->dl);
    return 1;
}

/* client:download(url, path, opts) -> result (docs/transport.md)
 *   opts: progress(done, total) every MiB; resume: append to the file at
 *   path from its size with a Range request (else a new file, 0600, that
 *   must not exist); if_range: the ETag the part was made from;
 *   low_speed_limit (bytes/s, 1) and low_speed_time (s, 60): a slower
 *   transfer ends; timeout (s, 0: none). Never through a symbolic link.
 *   path nil: a stream, each chunk to opts.sink(chunk) between steps,
 *   from opts.offset (a Range request when > 0). */
int dp_client_download(lua_State *L)
{
    dp_client *c = dp_check_client(L, 1);
    dp_progress progress = {0, 0, 0};
    int status;
    pid_t pid;
    CURLcode rc;

    lua_settop(L, 4);
    luaL_checktype(L, 4, LUA_TTABLE);
    lua_getfield(L, 4, "progress");
    progress.fn = lua_isnil(L, -1) ? 0 : lua_gettop(L);
    lua_getfield(L, 4, "sink");
    progress.sink = lua_gettop(L);
    if (dp_download_begin(L, c, 2))
        return 1;
    c->busy = 1;
    pid = c->pid;
    status = dp_client_run(L, c, &c->dl, report, &progress, &rc);
    if (status == DP_GO_ON && c->dl.stream) /* what came with the last step */
        status = drain(L, &c->dl, progress.sink);
    if (status == DP_GO_ON && c->closing) /* by the sink, just now */
        status = DP_STOPPED;
    if (status != DP_GO_ON)
        dp_download_close(c);
    dp_client_unbusy(L, c, pid); /* raises in a child forked by progress */
    if (status == DP_RAISED)
        return lua_error(L); /* progress's error, as it was */
    if (status == DP_STOPPED)
        return dp_download_refuse(L, "closed", "client is closed");
    return dp_download_end(L, c, rc);
}

/* m:progress(client) for asynchronous downloads: see dp.h */
int dp_download_progress(const dp_client *c, lua_Integer *done, lua_Integer *total, lua_Integer *written)
{
    if (c->dl.status / 100 != 2)
        return 0;
    *done = (lua_Integer)(c->dl.offset + c->dl.written);
    *total = (lua_Integer)expected_total(&c->dl);
    *written = (lua_Integer)c->dl.written;
    return 1;
}

/* ---- downloads driven from Lua: the cosocket transport's ---- */

#define DP_PART_MT "dataportability.core.part_file"

static int failed(lua_State *L, const char *message)
{
    lua_pushnil(L);
    lua_pushstring(L, message);
    return 2;
}

/* core.part_file(path, resume) -> part | nil, message (part.h); path nil:
 * no file, a running MD5 of what is written */
static int l_part_file(lua_State *L)
{
    const char *path = luaL_optstring(L, 1, NULL);
    int resume = lua_toboolean(L, 2);
    dp_part *p = lua_newuserdata(L, sizeof *p);
    const char *problem;

    p->fd = -1; /* closed, should setting the metatable fail */
    p->md5 = NULL;
    luaL_getmetatable(L, DP_PART_MT);
    lua_setmetatable(L, -2);
    problem = dp_part_open(p, path, resume);
    return problem != NULL ? failed(L, problem) : 1;
}

static dp_part *check_part(lua_State *L)
{
    dp_part *p = luaL_checkudata(L, 1, DP_PART_MT);
    if (p->md5 == NULL)
        luaL_error(L, "attempt to use a closed " DP_PART_MT);
    return p;
}

/* part:write(chunk) -> true | nil, message */
static int l_part_write(lua_State *L)
{
    dp_part *p = check_part(L);
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);

    if (!dp_part_write(p, s, n))
        return failed(L, "writing the file failed");
    lua_pushboolean(L, 1);
    return 1;
}

/* part:truncate() -> true | nil, message */
static int l_part_truncate(lua_State *L)
{
    if (!dp_part_truncate(check_part(L)))
        return failed(L, "writing the file failed");
    lua_pushboolean(L, 1);
    return 1;
}

/* part:size() -> bytes in the file */
static int l_part_size(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)check_part(L)->size);
    return 1;
}

/* part:digest() -> base64 MD5 of the whole file so far */
static int l_part_digest(lua_State *L)
{
    char digest[25];

    if (!dp_part_digest(check_part(L), digest))
        return failed(L, "MD5 failed");
    lua_pushstring(L, digest);
    return 1;
}

/* part:close() -> true | nil, message; idempotent, and run by __gc */
static int l_part_close(lua_State *L)
{
    if (!dp_part_close(luaL_checkudata(L, 1, DP_PART_MT)))
        return failed(L, "writing the file failed");
    lua_pushboolean(L, 1);
    return 1;
}

/* core.download_target(url, loopback_endpoint) -> https, host, port,
 * path (with its query) | nil, message: where a socket fetches a
 * download URL, checked as client:download checks it. */
static int l_download_target(lua_State *L)
{
    const char *url = luaL_checkstring(L, 1);
    int https = 0, pushed = 4;
    const char *problem = dp_check_download_url(url, lua_toboolean(L, 2), &https);
    char *host = NULL, *port = NULL, *path = NULL, *query = NULL;
    CURLU *u;

    if (problem != NULL) {
        lua_pushfstring(L, "the server listed a download URL that %s", problem);
        return failed(L, lua_tostring(L, -1));
    }
    u = curl_url();
    if (u == NULL || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK) {
        pushed = failed(L, "the server listed a download URL that is not a URL");
    } else {
        int has_query = curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK;
        lua_pushboolean(L, https);
        lua_pushstring(L, host);
        lua_pushinteger(L, (lua_Integer)strtol(port, NULL, 10));
        if (has_query)
            lua_pushfstring(L, "%s?%s", path, query);
        else
            lua_pushstring(L, path);
    }
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_free(query);
    curl_url_cleanup(u);
    return pushed;
}

void dp_download_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"write", l_part_write},
        {"truncate", l_part_truncate},
        {"size", l_part_size},
        {"digest", l_part_digest},
        {"close", l_part_close},
        {NULL, NULL}
    };
    static const luaL_Reg meta[] = {
        {"__gc", l_part_close},
        {"__close", l_part_close},
        {NULL, NULL}
    };
    static const luaL_Reg funcs[] = {
        {"part_file", l_part_file},
        {"download_target", l_download_target},
        {NULL, NULL}
    };

    dp_new_type(L, DP_PART_MT, meta, methods);
    dp_setfuncs(L, funcs);
}
