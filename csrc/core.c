/* dataportability.core: the module entry. libcurl is initialised once per
 * process, whatever number of Lua states load the module. */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <errno.h>
#include <pthread.h>
#include <time.h>

#include <curl/curl.h>

#include "dp.h"
#include "token.h"

#define DP_VERSION "0.1.0"

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result = CURLE_FAILED_INIT;

static void init_curl(void)
{
    curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

void dp_new_type(lua_State *L, const char *name, const luaL_Reg *meta, const luaL_Reg *methods)
{
    luaL_newmetatable(L, name);
    dp_setfuncs(L, meta);
    lua_newtable(L);
    dp_setfuncs(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

/* core.check_token(s) -> true | nil, reason */
static int l_check_token(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *problem = dp_token_problem(s, len);

    if (problem == NULL) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, problem);
    return 2;
}

/* core.sleep(seconds): blocks the thread; for polling from plain scripts. */
static int l_sleep(lua_State *L)
{
    lua_Number s = luaL_checknumber(L, 1);
    struct timespec ts;

    luaL_argcheck(L, s >= 0 && s <= 86400, 1, "seconds in [0, 86400] expected");
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (lua_Number)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    return 0;
}

/* core.now() -> seconds on a monotonic clock, for timers and deadlines. */
static int l_now(lua_State *L)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return luaL_error(L, "clock_gettime failed");
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/* core.limits: docs/transport.md */
static void push_limits(lua_State *L)
{
    static const struct {
        const char *name;
        lua_Integer value;
    } limits[] = {
        {"body_max", DP_BODY_MAX},
        {"content_type_max", DP_CONTENT_TYPE_MAX - 1},
        {"retry_after_max", DP_RETRY_AFTER_MAX - 1},
        {"header_lines_max", DP_HEADER_LINES_MAX},
        {"concurrency_max", DP_CONCURRENCY_MAX},
        {"token_max", DP_TOKEN_MAX},
    };
    size_t i;

    lua_createtable(L, 0, (int)(sizeof limits / sizeof limits[0]));
    for (i = 0; i < sizeof limits / sizeof limits[0]; i++) {
        lua_pushinteger(L, limits[i].value);
        lua_setfield(L, -2, limits[i].name);
    }
    lua_setfield(L, -2, "limits");
}

/* Unix only (the rockspec says so): no Windows export macro. */
__attribute__((visibility("default"))) int luaopen_dataportability_core(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"check_token", l_check_token},
        {"now", l_now},
        {"sleep", l_sleep},
        {NULL, NULL}
    };

    if (pthread_once(&curl_once, init_curl) != 0 || curl_init_result != CURLE_OK)
        return luaL_error(L, "dataportability.core: libcurl initialisation failed");

    lua_newtable(L);
    dp_setfuncs(L, funcs);
    dp_client_open(L);
    dp_share_open(L);
    dp_batch_open(L);
    dp_crypto_open(L);
    dp_files_open(L);
    dp_multi_open(L);
    dp_download_open(L);
    lua_pushliteral(L, DP_VERSION);
    lua_setfield(L, -2, "_VERSION");
    lua_pushstring(L, curl_version_info(CURLVERSION_NOW)->version);
    lua_setfield(L, -2, "curl_version");
    push_limits(L);
    return 1;
}
