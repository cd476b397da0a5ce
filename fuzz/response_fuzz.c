/* libFuzzer target: what a hostile server's answer does to the Lua layer
 * (lua/dataportability/errors.lua, client.lua, oauth.lua), in an embedded
 * Lua 5.4 with lua-cjson. The checks and the input format are in
 * fuzz/response_fuzz.lua; this file runs them and feeds libFuzzer.
 *
 * The core (csrc/) is linked in and preloaded as dataportability.core, so
 * that the Lua layer loads as in real use; requests never reach it (the
 * Lua side swaps in a fake transport).
 *
 * Coverage: liblua and cjson.so are not instrumented, so libFuzzer would
 * be blind to which Lua code ran. A line hook turns each (line, previous
 * line) pair of the Lua code into a counter in __libfuzzer_extra_counters,
 * which libFuzzer reads as coverage. A count hook enforces the budget that
 * the Lua side arms (fuzz_budget), so that a loop that never ends is a
 * crash instead of a hang.
 *
 * DP_FUZZ_ROOT (compiled in, or from the environment) is the repository:
 * lua/ and fuzz/response_fuzz.lua are read from it. DP_CJSON_CPATH is
 * package.cpath, for cjson.so. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lualib.h>
#include <lauxlib.h>

#ifndef DP_FUZZ_ROOT
#define DP_FUZZ_ROOT "."
#endif
#ifndef DP_CJSON_CPATH
#define DP_CJSON_CPATH "/usr/lib/x86_64-linux-gnu/lua/5.4/?.so"
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int luaopen_dataportability_core(lua_State *L); /* csrc/core.c */

#define COV_SIZE (1 << 14)
__attribute__((used, section("__libfuzzer_extra_counters"))) static uint8_t lua_cov[COV_SIZE];

#define HOOK_COUNT 1000 /* instructions between count hooks */

static lua_State *L;
static int check_ref = LUA_NOREF;
static int prev_line;
static long budget_left = -1; /* count hooks left; -1: no budget armed */
static int budget_over;

static void hook(lua_State *l, lua_Debug *ar)
{
    if (ar->event == LUA_HOOKLINE) {
        uint32_t h = (uint32_t)ar->currentline * 2654435761u ^ (uint32_t)prev_line * 40503u;
        if (lua_getinfo(l, "S", ar) && ar->source != NULL)
            h ^= (uint32_t)(uintptr_t)ar->source;
        lua_cov[h % COV_SIZE]++;
        prev_line = ar->currentline;
    } else if (ar->event == LUA_HOOKCOUNT && budget_left >= 0) {
        if (budget_left == 0) {
            budget_over = 1;
            budget_left = -1;
            luaL_error(l, "instruction budget exhausted");
        }
        budget_left--;
    }
}

/* fuzz_budget(n): arms a budget of n thousand instructions, or disarms it
 * (n < 0) and returns whether it ran out since it was armed. */
static int l_fuzz_budget(lua_State *l)
{
    lua_Integer n = luaL_checkinteger(l, 1);

    if (n >= 0) {
        budget_left = (long)(n * 1000 / HOOK_COUNT);
        budget_over = 0;
        return 0;
    }
    budget_left = -1;
    lua_pushboolean(l, budget_over);
    budget_over = 0;
    return 1;
}

static int traceback(lua_State *l)
{
    luaL_traceback(l, l, lua_tostring(l, 1), 1);
    return 1;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *root = getenv("DP_FUZZ_ROOT");

    (void)argc;
    (void)argv;
    if (root == NULL || root[0] == '\0')
        root = DP_FUZZ_ROOT;
    L = luaL_newstate();
    if (L == NULL)
        abort();
    luaL_openlibs(L);

    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua", root, root);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, DP_CJSON_CPATH);
    lua_setfield(L, -2, "cpath");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_dataportability_core);
    lua_setfield(L, -2, "dataportability.core");
    lua_pop(L, 2);
    lua_pushcfunction(L, l_fuzz_budget);
    lua_setglobal(L, "fuzz_budget");

    lua_pushcfunction(L, traceback);
    lua_pushfstring(L, "%s/fuzz/response_fuzz.lua", root);
    if (luaL_loadfile(L, lua_tostring(L, -1)) != LUA_OK || lua_pcall(L, 0, 1, -3) != LUA_OK ||
        !lua_isfunction(L, -1)) {
        fprintf(stderr, "response_fuzz: cannot load the checks: %s\n",
                lua_isstring(L, -1) ? lua_tostring(L, -1) : "it returned no function");
        exit(1);
    }
    check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_settop(L, 0);
    lua_sethook(L, hook, LUA_MASKLINE | LUA_MASKCOUNT, HOOK_COUNT);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    prev_line = 0;
    lua_pushcfunction(L, traceback);
    lua_rawgeti(L, LUA_REGISTRYINDEX, check_ref);
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, 1) != LUA_OK) {
        fprintf(stderr, "response_fuzz: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, 0);
    /* Frees this input's garbage now: libFuzzer runs LeakSanitizer after
     * any input that allocated more blocks than it freed, and a full scan
     * of the Lua heap after every input would be most of the time. */
    lua_gc(L, LUA_GCCOLLECT, 0);
    return 0;
}
