#define _POSIX_C_SOURCE 200809L /* close, getpid */
/* Asynchronous requests: libcurl's multi interface, driven by the host's
 * event loop. libcurl names the sockets to watch and the one timer to arm;
 * they are recorded here, never handed to Lua from inside a libcurl
 * callback, and read by the Lua driver after each call (m:changes()).
 * Sockets libcurl closes are kept open until the driver has stopped
 * watching them (m:flush()), so that a descriptor number cannot be reused
 * under a watcher that still refers to it. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dp.h"

#define DP_MULTI_MT "dataportability.core.multi"

typedef struct {
    curl_socket_t fd;
    int what; /* CURL_POLL_IN, _OUT, _INOUT or _REMOVE */
} dp_watch;

struct dp_multi {
    CURLM *handle;       /* NULL once closed */
    dp_client *running;  /* clients with a request in flight */
    long timeout_ms;     /* the timer libcurl asked for; -1: none */
    int timeout_changed;
    int closing;         /* close sockets at once */
    dp_watch *watch;     /* socket changes since the last m:changes() */
    size_t nwatch, watch_cap;
    curl_socket_t *to_close;
    size_t nclose, close_cap;
    int failed;          /* a change could not be recorded: out of memory */
    pid_t pid;           /* the process whose connections the handle holds */
};

static dp_multi *check_multi(lua_State *L)
{
    return luaL_checkudata(L, 1, DP_MULTI_MT);
}

static int grow(void **items, size_t *cap, size_t need, size_t size)
{
    size_t n = *cap ? *cap * 2 : 8;
    void *p;

    if (need <= *cap)
        return 1;
    p = realloc(*items, n * size);
    if (p == NULL)
        return 0;
    *items = p;
    *cap = n;
    return 1;
}

/* ---- libcurl callbacks: they only record ---- */

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    dp_multi *m = userp;
    size_t i;

    (void)easy;
    (void)socketp;
    for (i = 0; i < m->nwatch; i++)
        if (m->watch[i].fd == fd) {
            m->watch[i].what = what;
            return 0;
        }
    if (!grow((void **)&m->watch, &m->watch_cap, m->nwatch + 1, sizeof *m->watch)) {
        m->failed = 1;
        return -1;
    }
    m->watch[m->nwatch].fd = fd;
    m->watch[m->nwatch].what = what;
    m->nwatch++;
    return 0;
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    dp_multi *m = userp;

    (void)multi;
    m->timeout_ms = timeout_ms;
    m->timeout_changed = 1;
    return 0;
}

static int on_close_socket(void *clientp, curl_socket_t fd)
{
    dp_multi *m = clientp;

    if (m->closing || !grow((void **)&m->to_close, &m->close_cap, m->nclose + 1, sizeof *m->to_close))
        return close(fd);
    m->to_close[m->nclose++] = fd;
    return 0;
}

/* ---- running clients ---- */

static void unlink_client(dp_multi *m, dp_client *c)
{
    dp_client **p;

    for (p = &m->running; *p != NULL; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    c->next = NULL;
    c->multi = NULL;
}

/* Takes c out of m: the request or download ends, its result is dropped. */
static void detach(lua_State *L, dp_multi *m, dp_client *c)
{
    /* cannot fail for a member */
    (void)curl_multi_remove_handle(m->handle, c->downloading ? c->dl.curl : c->req.curl);
    unlink_client(m, c);
    if (c->downloading) {
        c->downloading = 0;
        dp_download_close(c);
    } else {
        dp_client_release(c);
        (void)dp_client_swap(c); /* back to the shared handle: nothing to make */
    }
    luaL_unref(L, LUA_REGISTRYINDEX, c->ref);
    c->ref = LUA_NOREF;
}

void dp_multi_cancel(lua_State *L, dp_client *c)
{
    detach(L, c->multi, c);
}

void dp_multi_forget(lua_State *L, dp_client *c)
{
    unlink_client(c->multi, c);
    c->downloading = 0;
    dp_download_close(c); /* the file only: libcurl is not called in a child */
    luaL_unref(L, LUA_REGISTRYINDEX, c->ref);
    c->ref = LUA_NOREF;
}

/* ---- methods ---- */

static void flush_closes(dp_multi *m)
{
    size_t i;

    for (i = 0; i < m->nclose; i++)
        (void)close(m->to_close[i]); /* nothing to do if it fails */
    m->nclose = 0;
}

/* In a process forked from the one that made m: its handle holds that
 * process's connections, and the sockets to close are its too. */
static void abandon(lua_State *L, dp_multi *m)
{
    while (m->running != NULL) /* they start afresh when used (client.c) */
        dp_multi_forget(L, m->running);
    dp_abandon(m->handle);
    m->handle = NULL;
    m->nwatch = 0;
    flush_closes(m); /* this process's copies only */
}

static int l_close(lua_State *L)
{
    dp_multi *m = check_multi(L);

    if (m->handle == NULL)
        return 0;
    if (dp_forked(m->pid))
        abandon(L, m);
    m->closing = 1;
    while (m->running != NULL)
        detach(L, m, m->running);
    if (m->handle != NULL)
        (void)curl_multi_cleanup(m->handle); /* closes cached connections */
    m->handle = NULL;
    flush_closes(m);
    free(m->watch);
    free(m->to_close);
    m->watch = NULL;
    m->to_close = NULL;
    m->nwatch = m->watch_cap = m->close_cap = 0;
    return 0;
}

static int l_tostring(lua_State *L)
{
    dp_multi *m = check_multi(L);
    lua_pushfstring(L, DP_MULTI_MT ": %p%s", (void *)m, m->handle ? "" : " (closed)");
    return 1;
}

static int new_handle(dp_multi *m)
{
    m->handle = curl_multi_init();
    m->pid = getpid();
    return m->handle != NULL &&
           curl_multi_setopt(m->handle, CURLMOPT_SOCKETFUNCTION, on_socket) == CURLM_OK &&
           curl_multi_setopt(m->handle, CURLMOPT_SOCKETDATA, (void *)m) == CURLM_OK &&
           curl_multi_setopt(m->handle, CURLMOPT_TIMERFUNCTION, on_timer) == CURLM_OK &&
           curl_multi_setopt(m->handle, CURLMOPT_TIMERDATA, (void *)m) == CURLM_OK;
}

/* An open multi of this process: in a forked child, a new handle. */
static dp_multi *check_open(lua_State *L)
{
    dp_multi *m = check_multi(L);
    if (m->handle == NULL)
        luaL_error(L, "attempt to use a closed " DP_MULTI_MT);
    if (dp_forked(m->pid)) {
        abandon(L, m);
        m->timeout_ms = -1;
        m->timeout_changed = 1;
        if (!new_handle(m))
            luaL_error(L, "curl_multi_init failed");
    }
    return m;
}

/* Puts easy, the handle of c's new request or download, into m:
 * connections it makes close through m. NULL, or what failed. */
static const char *join(lua_State *L, dp_multi *m, dp_client *c, CURL *easy)
{
    CURLcode rc = curl_easy_setopt(easy, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
    CURLMcode mrc;

    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_CLOSESOCKETDATA, (void *)m);
    if (rc != CURLE_OK)
        return curl_easy_strerror(rc);
    if ((mrc = curl_multi_add_handle(m->handle, easy)) != CURLM_OK)
        return curl_multi_strerror(mrc);
    lua_pushvalue(L, 2);
    c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    c->multi = m;
    c->next = m->running;
    m->running = c;
    return NULL;
}

/* m:add(client, method, path [, token [, body [, body type]]]) -> nothing
 * when the request started, else the seven values of a failed request */
static int l_add(lua_State *L)
{
    dp_multi *m = check_open(L);
    dp_client *c = dp_check_client(L, 2);
    /* Connections made here close through on_close_socket, which needs
     * this multi: the request goes on the client's unshared handle. */
    int failed = dp_client_prepare(L, c, 3, 1);
    const char *problem;

    if (failed)
        return failed;
    if ((problem = join(L, m, c, c->req.curl)) != NULL) {
        dp_client_release(c);
        (void)dp_client_swap(c);
        return dp_push_failure(L, "network", problem, DP_SENT_NO);
    }
    return 0;
}

/* m:download(client, url, path, opts) -> nothing when the download
 * started, else its result table (client:download's, docs/transport.md;
 * opts.progress and a stream's opts.sink are the caller's to call:
 * m:progress, m:take). The download handle is in no share (download.c). */
static int l_download(lua_State *L)
{
    dp_multi *m = check_open(L);
    dp_client *c = dp_check_client(L, 2);
    const char *problem;

    lua_settop(L, 5);
    if (dp_download_begin(L, c, 3))
        return 1;
    if ((problem = join(L, m, c, c->dl.curl)) != NULL) {
        dp_download_close(c);
        return dp_download_refuse(L, "network", problem);
    }
    c->downloading = 1;
    return 0;
}

/* m:progress(client) -> bytes in the file, the whole file's size or nil,
 * bytes of this download: of the client's running download in m, once its
 * answer is 2xx; nothing before, or when none runs */
static int l_progress(lua_State *L)
{
    dp_multi *m = check_open(L);
    dp_client *c = dp_check_client(L, 2);
    lua_Integer done, total, written;

    if (c->multi != m || !c->downloading || !dp_download_progress(c, &done, &total, &written))
        return 0;
    lua_pushinteger(L, done);
    if (total >= 0)
        lua_pushinteger(L, total);
    else
        lua_pushnil(L);
    lua_pushinteger(L, written);
    return 3;
}

/* m:take(client) -> the bytes a stream download of the client (path nil)
 * buffered, or nothing; a full buffer's transfer goes on. */
static int l_take(lua_State *L)
{
    dp_multi *m = check_open(L);
    dp_client *c = dp_check_client(L, 2);
    const char *chunk;
    size_t n;

    if (c->multi != m || !c->downloading || !c->dl.stream)
        return 0;
    n = dp_transfer_take(&c->dl, &chunk);
    if (n > 0)
        lua_pushlstring(L, chunk, n);
    dp_transfer_resume(&c->dl); /* libcurl's timer, armed for it, shows in m:changes() */
    return n > 0 ? 1 : 0;
}

/* m:remove(client): ends the client's running request in m, if any,
 * dropping its result. */
static int l_remove(lua_State *L)
{
    dp_multi *m = check_open(L);
    dp_client *c = dp_check_client(L, 2);

    if (c->multi == m)
        detach(L, m, c);
    return 0;
}

/* m:action(fd, readable, writable): fd < 0 means the timer fired. */
static int l_action(lua_State *L)
{
    dp_multi *m = check_open(L);
    lua_Integer fd = luaL_checkinteger(L, 2);
    int events = (lua_toboolean(L, 3) ? CURL_CSELECT_IN : 0) |
                 (lua_toboolean(L, 4) ? CURL_CSELECT_OUT : 0);
    int running;
    CURLMcode mrc;

    if (fd < 0)
        mrc = curl_multi_socket_action(m->handle, CURL_SOCKET_TIMEOUT, 0, &running);
    else
        mrc = curl_multi_socket_action(m->handle, (curl_socket_t)fd, events, &running);
    if (mrc != CURLM_OK || m->failed)
        return luaL_error(L, "curl_multi_socket_action: %s",
                          m->failed ? "out of memory" : curl_multi_strerror(mrc));
    lua_pushinteger(L, running);
    return 1;
}

/* m:changes() -> {fd, mask, fd, mask, ...}, timeout_ms|nil
 * mask: 0 stop watching, 1 readable, 2 writable, 3 both. timeout_ms: the
 * timer to arm (-1: disarm), nil when unchanged. */
static int l_changes(lua_State *L)
{
    dp_multi *m = check_open(L);
    size_t i;

    lua_createtable(L, (int)(m->nwatch * 2), 0);
    for (i = 0; i < m->nwatch; i++) {
        int what = m->watch[i].what;
        lua_pushinteger(L, (lua_Integer)m->watch[i].fd);
        lua_rawseti(L, -2, (int)(2 * i + 1));
        lua_pushinteger(L, what == CURL_POLL_REMOVE ? 0 : what); /* IN 1, OUT 2, INOUT 3 */
        lua_rawseti(L, -2, (int)(2 * i + 2));
    }
    m->nwatch = 0;
    if (m->timeout_changed)
        lua_pushinteger(L, m->timeout_ms);
    else
        lua_pushnil(L);
    m->timeout_changed = 0;
    return 2;
}

/* m:flush(): closes the sockets libcurl is done with, once unwatched. */
static int l_flush(lua_State *L)
{
    flush_closes(check_open(L));
    return 0;
}

/* m:done() -> client and the seven values of its request's outcome (of a
 * download: its result table), or nothing when nothing has ended */
static int l_done(lua_State *L)
{
    dp_multi *m = check_open(L);
    CURLcode rc;
    dp_transfer *t = dp_engine_done(m->handle, &rc);
    dp_client *c;
    int pushed;

    if (t == NULL)
        return 0;
    c = t->owner;
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref);
    if (t == &c->dl) /* the result table, and the part file closed */
        pushed = dp_download_end(L, c, rc);
    else
        pushed = dp_push_result(L, t, rc); /* before detach swaps handles */
    detach(L, m, c); /* its removal from m is done: a second one does nothing */
    return 1 + pushed;
}

/* core.new_multi() -> multi */
static int l_new_multi(lua_State *L)
{
    dp_multi *m = lua_newuserdata(L, sizeof *m);

    memset(m, 0, sizeof *m); /* closed until the handle exists */
    m->timeout_ms = -1;
    luaL_getmetatable(L, DP_MULTI_MT);
    lua_setmetatable(L, -2);
    if (!new_handle(m))
        return luaL_error(L, "curl_multi_init failed");
    return 1;
}

void dp_multi_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"add", l_add},
        {"download", l_download},
        {"progress", l_progress},
        {"take", l_take},
        {"remove", l_remove},
        {"action", l_action},
        {"changes", l_changes},
        {"flush", l_flush},
        {"done", l_done},
        {"close", l_close},
        {NULL, NULL}
    };
    static const luaL_Reg meta[] = {
        {"__gc", l_close},
        {"__close", l_close},
        {"__tostring", l_tostring},
        {NULL, NULL}
    };

    dp_new_type(L, DP_MULTI_MT, meta, methods);
    lua_pushcfunction(L, l_new_multi);
    lua_setfield(L, -2, "new_multi");
}
