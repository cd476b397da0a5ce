#define _POSIX_C_SOURCE 200809L /* getpid */
/* The client type: one libcurl easy handle for the API, reused across
 * calls so that connections are kept alive, and one for downloads. Every
 * blocking transfer runs on the client's engine (dp_client_run), which
 * calls Lua only between libcurl's steps; asynchronous ones on a host's
 * event loop (multi.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dp.h"
#include "endpoint.h"
#include "token.h"

/* ---- option reading (the Lua layer validated them; this guards C) ---- */

static const char *opt_string(lua_State *L, const char *name)
{
    const char *s;
    size_t len;

    lua_getfield(L, 1, name);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return NULL;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "option '%s' must be a string", name);
    s = lua_tolstring(L, -1, &len);
    if (strlen(s) != len)
        luaL_error(L, "option '%s' must not contain NUL bytes", name);
    lua_pop(L, 1); /* still referenced by the options table */
    return s;
}

/* Header values must not smuggle CR, LF or other control bytes. */
static const char *opt_header_value(lua_State *L, const char *name)
{
    const char *s = opt_string(L, name);
    const char *p;

    for (p = s; p != NULL && *p != '\0'; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            luaL_error(L, "option '%s' must be printable ASCII", name);
    return s;
}

static long opt_millis(lua_State *L, const char *name, double dflt)
{
    double seconds = dflt;

    lua_getfield(L, 1, name);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "option '%s' must be a number", name);
        seconds = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    if (!(seconds > 0 && seconds <= 86400))
        luaL_error(L, "option '%s' must be a number of seconds in (0, 86400]", name);
    return (long)(seconds * 1000 + 0.5);
}

typedef struct {
    const char *endpoint, *ca_file, *user_agent, *quota_project, *proxy;
    long timeout_ms, connect_ms;
} dp_options;

/* Reads the options table at index 1 and parses its endpoint into *ep (the
 * caller frees ep->base). Bad options raise. */
static void read_options(lua_State *L, dp_options *o, dp_endpoint *ep)
{
    const char *problem;

    luaL_checktype(L, 1, LUA_TTABLE);
    o->endpoint = opt_string(L, "endpoint");
    o->ca_file = opt_string(L, "ca_file");
    o->user_agent = opt_header_value(L, "user_agent");
    o->quota_project = opt_header_value(L, "quota_project");
    o->proxy = opt_string(L, "proxy");
    o->timeout_ms = opt_millis(L, "timeout", 60);
    o->connect_ms = opt_millis(L, "connect_timeout", 10);
    luaL_argcheck(L, o->endpoint != NULL, 1, "option 'endpoint' is required");
    problem = dp_parse_endpoint(o->endpoint, ep);
    if (problem != NULL)
        luaL_error(L, "option 'endpoint' %s", problem);
}

/* ---- lifecycle ---- */

dp_client *dp_check_client(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, DP_CLIENT_MT);
}

/* Frees c's libcurl objects; in a forked child, abandons them instead. */
static void drop_handles(dp_client *c)
{
    CURL *easy[3];
    int i, forked = dp_forked(c->pid);

    easy[0] = c->req.curl;
    easy[1] = c->unshared;
    easy[2] = c->dl.curl;
    c->req.curl = c->unshared = c->dl.curl = NULL;
    for (i = 0; i < 3; i++) {
        if (easy[i] != NULL && c->engine != NULL && !forked)
            (void)curl_multi_remove_handle(c->engine, easy[i]); /* a raise left it there */
        if (easy[i] != NULL && forked)
            dp_abandon(easy[i]);
        else if (easy[i] != NULL)
            curl_easy_cleanup(easy[i]);
    }
    if (c->engine != NULL && forked)
        dp_abandon(c->engine);
    else if (c->engine != NULL)
        (void)curl_multi_cleanup(c->engine); /* OK: no handle is left in it */
    c->engine = NULL;
    if (c->share != NULL && !forked) /* after its last handle */
        dp_share_release(c->share);
    c->share = NULL; /* a forked child's share was abandoned with its state's */
    c->url_set = 0;
}

static void release(lua_State *L, dp_client *c)
{
    if (c->multi != NULL && dp_forked(c->pid))
        dp_multi_forget(L, c);
    else if (c->multi != NULL)
        dp_multi_cancel(L, c);
    dp_download_close(c); /* a download stopped by a raise, or running in a multi */
    drop_handles(c);
    dp_transfer_free(&c->req); /* the buffers; the handles are gone */
    dp_transfer_free(&c->dl);
    curl_slist_free_all(c->headers);
    c->headers = NULL;
    free(c->base);
    c->base = NULL;
    free(c->url);
    c->url = NULL;
    c->url_cap = 0;
    dp_wipe(c->post, c->post_cap);
    free(c->post);
    c->post = NULL;
    c->post_cap = c->post_len = 0;
    c->closing = 0;
}

/* close and __close: idempotent. Inside a callback of the client's own
 * running call, the call stops and the close completes when it returns. */
static int l_close(lua_State *L)
{
    dp_client *c = dp_check_client(L, 1);

    if (c->busy)
        c->closing = c->req.curl != NULL;
    else
        release(L, c);
    return 0;
}

/* __gc: nothing can be running then (a running call holds the client),
 * but lua_close from a callback (os.exit(code, true)) finalizes all. */
static int l_gc(lua_State *L)
{
    release(L, dp_check_client(L, 1));
    return 0;
}

static int l_tostring(lua_State *L)
{
    dp_client *c = dp_check_client(L, 1);
    lua_pushfstring(L, DP_CLIENT_MT ": %p%s", (void *)c,
                    c->req.curl != NULL && !c->closing ? "" : " (closed)");
    return 1;
}

static int add_header(dp_client *c, const char *header)
{
    struct curl_slist *l = curl_slist_append(c->headers, header);
    if (l == NULL)
        return 0;
    c->headers = l;
    return 1;
}

#define SETOPT(opt, val)                                                     \
    do {                                                                     \
        CURLcode rc_ = curl_easy_setopt(c->req.curl, opt, val);              \
        if (rc_ != CURLE_OK)                                                 \
            return luaL_error(L, "libcurl refused " #opt ": %s",             \
                              curl_easy_strerror(rc_));                      \
    } while (0)

/* core.new{endpoint=, timeout=, connect_timeout=, ca_file=, user_agent=,
 *          quota_project=, proxy=} -> client. Bad options raise. */
static int l_new(lua_State *L)
{
    dp_options o;
    dp_endpoint ep;
    dp_client *c;

    /* Closed first, so that any error below leaves a consistent object
     * for __gc. */
    c = lua_newuserdata(L, sizeof *c);
    memset(c, 0, sizeof *c);
    c->ref = LUA_NOREF;
    c->pid = getpid();
    c->req.sink = c->dl.sink = NULL;
    c->part.fd = -1;
    luaL_getmetatable(L, DP_CLIENT_MT);
    lua_setmetatable(L, -2);

    read_options(L, &o, &ep);
    c->base = ep.base;
    c->https = ep.https;
    c->loopback = ep.loopback;
    /* No "Expect:" needed: libcurl 7.80+ asks for 100-continue only above
     * 1 MiB of body, and no request here comes near. */
    if (!add_header(c, "Accept: application/json"))
        return luaL_error(L, "out of memory");
    if (o.quota_project != NULL) {
        lua_pushfstring(L, "x-goog-user-project: %s", o.quota_project);
        if (!add_header(c, lua_tostring(L, -1)))
            return luaL_error(L, "out of memory");
        lua_pop(L, 1);
    }
    c->req.curl = curl_easy_init();
    if (c->req.curl == NULL)
        return luaL_error(L, "curl_easy_init failed");
    c->share = dp_share_acquire(L);
    SETOPT(CURLOPT_SHARE, dp_share_handle(c->share));

#if LIBCURL_VERSION_NUM >= 0x075500 /* 7.85.0 */
    SETOPT(CURLOPT_PROTOCOLS_STR, ep.https ? "https" : "http");
    SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "https");
#else
    SETOPT(CURLOPT_PROTOCOLS, ep.https ? CURLPROTO_HTTPS : CURLPROTO_HTTP);
    SETOPT(CURLOPT_REDIR_PROTOCOLS, CURLPROTO_HTTPS);
#endif
    SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
    SETOPT(CURLOPT_SSL_VERIFYPEER, 1L);
    SETOPT(CURLOPT_SSL_VERIFYHOST, 2L);
    SETOPT(CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    if (o.ca_file != NULL)
        SETOPT(CURLOPT_CAINFO, o.ca_file);
    /* One call at a time: HTTP/1.1 keep-alive is the fastest here. */
    SETOPT(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
    SETOPT(CURLOPT_TIMEOUT_MS, o.timeout_ms);
    SETOPT(CURLOPT_CONNECTTIMEOUT_MS, o.connect_ms);
    SETOPT(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)DP_BODY_MAX);
    /* A proxy only ever sees a CONNECT tunnel, never a request in clear. */
    SETOPT(CURLOPT_HTTPPROXYTUNNEL, 1L);
    if (o.proxy != NULL)
        SETOPT(CURLOPT_PROXY, o.proxy);
    else if (ep.loopback)
        SETOPT(CURLOPT_NOPROXY, "*"); /* the emulator is local */
    if (o.user_agent != NULL)
        SETOPT(CURLOPT_USERAGENT, o.user_agent);
    SETOPT(CURLOPT_HTTPHEADER, c->headers);
    if (dp_transfer_bind(&c->req, c) != CURLE_OK)
        return luaL_error(L, "libcurl refused the transfer's callbacks");
    return 1;
}

/* core.check_options(opts) -> {scheme=, host=, port=, base=, loopback=,
 * timeout_ms=, connect_timeout_ms=}: the checks and parse of core.new, for
 * transports that do not use libcurl. Bad options raise. */
static int l_check_options(lua_State *L)
{
    dp_options o;
    dp_endpoint ep;

    read_options(L, &o, &ep);
    lua_createtable(L, 0, 7);
    lua_pushstring(L, ep.https ? "https" : "http");
    lua_setfield(L, -2, "scheme");
    lua_pushlstring(L, ep.base + ep.host_start, ep.host_len);
    lua_setfield(L, -2, "host");
    lua_pushinteger(L, ep.port);
    lua_setfield(L, -2, "port");
    lua_pushstring(L, ep.base);
    lua_setfield(L, -2, "base");
    free(ep.base);
    lua_pushboolean(L, ep.loopback);
    lua_setfield(L, -2, "loopback");
    lua_pushinteger(L, o.timeout_ms);
    lua_setfield(L, -2, "timeout_ms");
    lua_pushinteger(L, o.connect_ms);
    lua_setfield(L, -2, "connect_timeout_ms");
    return 1;
}

/* ---- a process of its own ---- */

/* In a process forked from the one that made c: c's handles, its engine
 * and its share hold that process's connections. They are abandoned, and
 * c starts afresh with a copy of its options (curl_easy_duphandle copies
 * no connection and no share) and this process's share. */
static void restart(lua_State *L, dp_client *c)
{
    CURL *fresh = curl_easy_duphandle(c->req.curl);

    if (c->multi != NULL)
        dp_multi_forget(L, c);
    drop_handles(c); /* abandons: c->pid is the parent's */
    c->pid = getpid();
    if (fresh == NULL)
        luaL_error(L, "out of memory"); /* c stays closed */
    c->req.curl = fresh;
    c->share = dp_share_acquire(L);
    if (curl_easy_setopt(fresh, CURLOPT_SHARE, dp_share_handle(c->share)) != CURLE_OK ||
        curl_easy_setopt(fresh, CURLOPT_HTTPHEADER, c->headers) != CURLE_OK ||
        curl_easy_setopt(fresh, CURLOPT_CLOSESOCKETFUNCTION, (curl_closesocket_callback)NULL) != CURLE_OK ||
        dp_transfer_bind(&c->req, c) != CURLE_OK)
        luaL_error(L, "libcurl refused a copy of the client's options");
}

int dp_client_ready(lua_State *L, dp_client *c)
{
    if (c->req.curl == NULL || c->closing)
        return 0;
    if (c->busy)
        luaL_error(L, "client is busy: one of its calls is running (called from that call's callback?)");
    if (dp_forked(c->pid))
        restart(L, c);
    if (c->multi != NULL)
        luaL_error(L, "client is busy with an asynchronous request");
    return 1;
}

/* ---- requests ---- */

static int valid_method(const char *m)
{
    return strcmp(m, "GET") == 0 || strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0 ||
           strcmp(m, "PATCH") == 0 || strcmp(m, "DELETE") == 0;
}

int dp_valid_path(const char *p, size_t len)
{
    size_t i;

    if (len == 0 || p[0] != '/')
        return 0;
    for (i = 0; i < len; i++)
        if ((unsigned char)p[i] <= 0x20 || (unsigned char)p[i] > 0x7e || p[i] == '#')
            return 0;
    return 1;
}

/* libcurl copies the URL: it is set again only when it changes. */
CURLcode dp_client_set_url(dp_client *c, const char *path, size_t path_len)
{
    size_t base_len = strlen(c->base), need = base_len + path_len + 1;

    if (c->url_set && strcmp(c->url + base_len, path) == 0)
        return CURLE_OK;
    c->url_set = 0;
    if (need > c->url_cap) {
        char *p = realloc(c->url, need);
        if (p == NULL)
            return CURLE_OUT_OF_MEMORY;
        c->url = p;
        c->url_cap = need;
    }
    memcpy(c->url, c->base, base_len);
    memcpy(c->url + base_len, path, path_len + 1);
    c->url_set = curl_easy_setopt(c->req.curl, CURLOPT_URL, c->url) == CURLE_OK;
    return c->url_set ? CURLE_OK : CURLE_OUT_OF_MEMORY;
}

int dp_client_swap(dp_client *c)
{
    CURL *h;

    if (c->unshared == NULL) {
        /* duphandle copies every option but the share */
        c->unshared = curl_easy_duphandle(c->req.curl);
        if (c->unshared == NULL)
            return 0;
    }
    h = c->req.curl;
    c->req.curl = c->unshared;
    c->unshared = h;
    c->url_set = 0;
    return 1;
}

char dp_no_type[] = "Content-Type:"; /* drops libcurl's form type */

/* The body is copied into the client: an asynchronous request outlives
 * the Lua string, and a form body may carry secrets, wiped on release. */
static CURLcode set_method(dp_client *c, const char *method, const char *body, size_t body_len)
{
    CURLcode rc = curl_easy_setopt(c->req.curl, CURLOPT_CUSTOMREQUEST, (char *)NULL);

    if (rc == CURLE_OK && strcmp(method, "GET") == 0)
        return curl_easy_setopt(c->req.curl, CURLOPT_HTTPGET, 1L);
    if (body_len + 1 > c->post_cap) {
        char *p = malloc(body_len + 1);
        if (p == NULL)
            return CURLE_OUT_OF_MEMORY;
        dp_wipe(c->post, c->post_cap);
        free(c->post);
        c->post = p;
        c->post_cap = body_len + 1;
    }
    memcpy(c->post, body ? body : "", body_len);
    c->post_len = body_len;
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->req.curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->req.curl, CURLOPT_POSTFIELDS, c->post);
    if (rc == CURLE_OK && strcmp(method, "POST") != 0)
        rc = curl_easy_setopt(c->req.curl, CURLOPT_CUSTOMREQUEST, method);
    return rc;
}

int dp_client_prepare(lua_State *L, dp_client *c, int arg, int unshared)
{
    static char json_type[] = "Content-Type: application/json";
    static char form_type[] = "Content-Type: application/x-www-form-urlencoded";
    const char *method = luaL_checkstring(L, arg);
    size_t path_len, token_len = 0, body_len = 0;
    const char *path = luaL_checklstring(L, arg + 1, &path_len);
    const char *token = luaL_optlstring(L, arg + 2, NULL, &token_len);
    const char *body = luaL_optlstring(L, arg + 3, NULL, &body_len);
    const char *form = luaL_optstring(L, arg + 4, "json");
    char *type = NULL;
    const char *problem;
    CURLcode rc;

    luaL_argcheck(L, valid_method(method), arg, "method must be GET, POST, PUT, PATCH or DELETE");
    luaL_argcheck(L, dp_valid_path(path, path_len), arg + 1, "path must start with / and be printable ASCII");
    luaL_argcheck(L, body == NULL || strcmp(method, "GET") != 0, arg + 3, "a GET has no body");
    luaL_argcheck(L, strcmp(form, "json") == 0 || strcmp(form, "form") == 0, arg + 4,
                  "body type must be 'json' or 'form'");
    if (!dp_client_ready(L, c))
        return dp_push_failure(L, "closed", "client is closed", DP_SENT_NO);
    if (token != NULL && (problem = dp_token_problem(token, token_len)) != NULL)
        return dp_push_failure(L, "invalid_token", problem, DP_SENT_NO);
    if (unshared && !dp_client_swap(c))
        return dp_push_failure(L, "network", "out of memory", DP_SENT_NO);

    if (strcmp(method, "GET") != 0)
        type = body == NULL ? dp_no_type : form[0] == 'f' ? form_type : json_type;
    dp_transfer_reset(&c->req);
    rc = dp_client_set_url(c, path, path_len);
    if (rc == CURLE_OK)
        rc = set_method(c, method, body, body_len);
    if (rc == CURLE_OK) {
        struct curl_slist *h = dp_transfer_headers(&c->req, c->headers, type, token, token_len);
        rc = h == NULL ? CURLE_OUT_OF_MEMORY : curl_easy_setopt(c->req.curl, CURLOPT_HTTPHEADER, h);
    }
    if (rc != CURLE_OK) {
        dp_client_release(c);
        if (unshared)
            (void)dp_client_swap(c);
        return dp_push_failure(L, "network", curl_easy_strerror(rc), DP_SENT_NO);
    }
    return 0;
}

void dp_client_release(dp_client *c)
{
    /* Plain pointer options: libcurl cannot refuse them. The handle must
     * not keep pointers to the token or to a multi that may go away. */
    if (c->req.curl != NULL) {
        (void)curl_easy_setopt(c->req.curl, CURLOPT_HTTPHEADER, c->headers);
        (void)curl_easy_setopt(c->req.curl, CURLOPT_CLOSESOCKETFUNCTION, (curl_closesocket_callback)NULL);
    }
    dp_transfer_wipe_token(&c->req);
    dp_wipe(c->post, c->post_len);
    c->post_len = 0;
}

static const char *const sent_names[] = {"no", "yes", "stale"};

int dp_push_failure(lua_State *L, const char *kind, const char *message, dp_sent sent)
{
    int i;

    for (i = 0; i < 4; i++)
        lua_pushnil(L);
    lua_pushstring(L, kind);
    lua_pushstring(L, message);
    lua_pushstring(L, sent_names[sent]);
    return 7;
}

int dp_push_result(lua_State *L, dp_transfer *t, CURLcode rc)
{
    const char *message = NULL;
    dp_sent sent;
    const char *kind = dp_transfer_result(t, rc, &message, &sent);

    if (kind != DP_OK) {
        dp_push_failure(L, kind, message, sent);
    } else {
        lua_pushinteger(L, t->status);
        lua_pushlstring(L, t->body ? t->body : "", t->body_len);
        if (t->content_type[0] != '\0')
            lua_pushstring(L, t->content_type);
        else
            lua_pushnil(L);
        if (t->retry_after[0] != '\0')
            lua_pushstring(L, t->retry_after);
        else
            lua_pushnil(L);
        lua_pushnil(L);
        lua_pushnil(L);
        lua_pushnil(L);
    }
    dp_transfer_wipe(t);
    return 7;
}

/* ---- the blocking loop ---- */

int dp_client_run(lua_State *L, dp_client *c, dp_transfer *t,
                  int (*between)(lua_State *L, dp_transfer *t, void *ud), void *ud, CURLcode *rc)
{
    CURLMcode mrc = CURLM_OK;
    int running = 1, wait = 0, status = DP_GO_ON;
    pid_t pid = c->pid;

    *rc = CURLE_OK;
    if (c->engine == NULL && (c->engine = curl_multi_init()) == NULL) {
        *rc = CURLE_OUT_OF_MEMORY;
        return DP_GO_ON;
    }
    if ((mrc = curl_multi_add_handle(c->engine, t->curl)) != CURLM_OK)
        running = 0;
    while (running) {
        mrc = dp_engine_step(c->engine, wait, &running);
        wait = 1;
        if (mrc != CURLM_OK)
            break;
        if (between != NULL && (status = between(L, t, ud)) != DP_GO_ON)
            break;
        if (dp_forked(pid)) /* in a callback: the parent goes on with t */
            return DP_STOPPED;
        if (c->closing) {
            status = DP_STOPPED;
            break;
        }
    }
    if (status == DP_RAISED && dp_forked(pid))
        return DP_RAISED;
    if (mrc != CURLM_OK || status != DP_GO_ON || dp_engine_done(c->engine, rc) != t) {
        (void)curl_multi_remove_handle(c->engine, t->curl);
        if (mrc != CURLM_OK) {
            snprintf(t->errbuf, sizeof t->errbuf, "%s", curl_multi_strerror(mrc));
            *rc = CURLE_FAILED_INIT;
        }
    }
    return status;
}

void dp_client_unbusy(lua_State *L, dp_client *c, pid_t pid)
{
    c->busy = 0;
    if (dp_forked(pid))
        luaL_error(L, "the process forked inside a callback: the child cannot go on with the "
                      "parent's transfer");
    if (c->closing)
        release(L, c);
}

/* client:request(method, path [, token [, body [, "json"|"form"]]])
 *   -> the seven values of docs/transport.md */
static int l_request(lua_State *L)
{
    dp_client *c = dp_check_client(L, 1);
    int failed = dp_client_prepare(L, c, 2, 0);
    CURLcode rc;

    if (failed)
        return failed;
    (void)dp_client_run(L, c, &c->req, NULL, NULL, &rc); /* no callback: it runs to its end */
    dp_client_release(c);
    return dp_push_result(L, &c->req, rc);
}

void dp_client_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"request", l_request},
        {"download", dp_client_download},
        {"many", dp_client_many},
        {"close", l_close},
        {NULL, NULL}
    };
    static const luaL_Reg meta[] = {
        {"__gc", l_gc},
        {"__close", l_close},
        {"__tostring", l_tostring},
        {NULL, NULL}
    };

    dp_new_type(L, DP_CLIENT_MT, meta, methods);
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "new");
    lua_pushcfunction(L, l_check_options);
    lua_setfield(L, -2, "check_options");
}
