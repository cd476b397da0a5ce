/* The caches every client of one Lua state shares through libcurl's share
 * interface: connections, DNS answers and TLS sessions, so that a
 * short-lived client reuses a warm connection instead of paying a
 * handshake. A Lua state runs on one thread at a time, so the share needs
 * no locks; each state has its own.
 *
 * The share must outlive every handle attached to it, and Lua does not
 * promise to finalize clients before the share at lua_close: the share is
 * counted, and freed by whichever comes last, its __gc or its last
 * client. */
#define _POSIX_C_SOURCE 200809L /* getpid */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "dp.h"

#define DP_SHARE_MT "dataportability.core.share"

struct dp_share {
    CURLSH *handle;
    int users;     /* clients holding it */
    int collected; /* its userdata is gone */
    pid_t pid;     /* the process whose connections it holds */
};

static char registry_key; /* its address keys the state's share */

/* ---- fork safety ---- */

int dp_forked(pid_t pid)
{
    return pid != getpid();
}

/* What was abandoned stays reachable from here: a child forked from a
 * long-lived process abandons only what it inherited, once. */
typedef struct dp_abandoned {
    struct dp_abandoned *next;
    void *object;
} dp_abandoned;

static dp_abandoned *abandoned;
static pthread_mutex_t abandoned_lock = PTHREAD_MUTEX_INITIALIZER;

void dp_abandon(void *object)
{
    dp_abandoned *a = malloc(sizeof *a);

    if (a == NULL)
        return; /* then it is lost, which is still safe */
    a->object = object;
    (void)pthread_mutex_lock(&abandoned_lock);
    a->next = abandoned;
    abandoned = a;
    (void)pthread_mutex_unlock(&abandoned_lock);
}

/* ---- the share ---- */

static void free_share(dp_share *s)
{
    if (dp_forked(s->pid)) {
        dp_abandon(s->handle);
        dp_abandon(s);
        return;
    }
    (void)curl_share_cleanup(s->handle); /* OK: no handle is attached */
    free(s);
}

static int l_gc(lua_State *L)
{
    dp_share **box = luaL_checkudata(L, 1, DP_SHARE_MT);

    if (*box != NULL) {
        (*box)->collected = 1;
        if ((*box)->users == 0 || dp_forked((*box)->pid))
            free_share(*box);
        *box = NULL;
    }
    return 0;
}

static dp_share *new_share(lua_State *L)
{
    static const curl_lock_data shared[] = {
        CURL_LOCK_DATA_CONNECT, CURL_LOCK_DATA_DNS, CURL_LOCK_DATA_SSL_SESSION
    };
    dp_share **box = lua_newuserdata(L, sizeof *box);
    size_t i;

    *box = NULL;
    luaL_getmetatable(L, DP_SHARE_MT);
    lua_setmetatable(L, -2);
    *box = calloc(1, sizeof **box);
    if (*box == NULL)
        luaL_error(L, "out of memory");
    (*box)->pid = getpid();
    (*box)->handle = curl_share_init();
    if ((*box)->handle == NULL) {
        free(*box);
        *box = NULL;
        luaL_error(L, "curl_share_init failed");
    }
    for (i = 0; i < sizeof shared / sizeof shared[0]; i++)
        if (curl_share_setopt((*box)->handle, CURLSHOPT_SHARE, shared[i]) != CURLSHE_OK)
            luaL_error(L, "libcurl cannot share its caches");
    lua_pushlightuserdata(L, &registry_key);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
    return *box;
}

void dp_share_open(lua_State *L)
{
    static const luaL_Reg meta[] = {
        {"__gc", l_gc},
        {NULL, NULL}
    };
    static const luaL_Reg none[] = {{NULL, NULL}};

    dp_new_type(L, DP_SHARE_MT, meta, none);
}

dp_share *dp_share_acquire(lua_State *L)
{
    dp_share **box, *s;

    lua_pushlightuserdata(L, &registry_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    box = lua_touserdata(L, -1);
    if (box != NULL && *box != NULL && dp_forked((*box)->pid)) {
        /* Another process's caches: this one starts its own; the clients
         * still holding the old share abandon it as they start afresh. */
        free_share(*box);
        *box = NULL;
        box = NULL;
    }
    if (box == NULL) {
        s = new_share(L);
        lua_pop(L, 1);
    } else {
        s = *box;
    }
    lua_pop(L, 1);
    if (s == NULL) /* only while the state closes */
        luaL_error(L, "the Lua state is closing");
    s->users++;
    return s;
}

CURLSH *dp_share_handle(const dp_share *s)
{
    return s->handle;
}

void dp_share_release(dp_share *s)
{
    if (--s->users == 0 && s->collected)
        free_share(s);
}
