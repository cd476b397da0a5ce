/* A minimal Lua 5.4 interpreter, linked with ASan and UBSan, for running
 * the busted suite against the sanitized core (build/asan).
 *
 * Why not LD_PRELOAD=libasan.so with Debian's lua5.4: the variable is
 * inherited by every program the specs start (mktemp, sh, curl, nginx,
 * openssl), which then run under ASan too and abort on their own leaks.
 * Linked into this one executable, the runtime stays in this process and in
 * the Lua children the specs start through $DP_TEST_LUA (this program
 * again), which load the sanitized core as well.
 *
 * Usage: asan_lua script [args]: like `lua5.4 script [args]`: the global
 * `arg` (arg[0] the script, arg[-1] this program), the script's `...`, a
 * traceback on error, exit status 1 on error. The state is closed before
 * exiting, so that every Lua-owned object is collected and __gc has run
 * when LeakSanitizer looks; busted ends with os.exit(code, true), which
 * closes it too.
 *
 * C modules are never unloaded (dlclose below does nothing), so that a leak
 * report names the functions of the module that allocated, not
 * "<unknown module>". */
#include <stdio.h>
#include <stdlib.h>

#include <lua.h>
#include <lualib.h>
#include <lauxlib.h>

/* Interposes libdl's: lua_close dlcloses every C module it loaded. */
int dlclose(void *handle);
int dlclose(void *handle)
{
    (void)handle;
    return 0;
}

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);

    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

static int run(lua_State *L, int argc, char **argv)
{
    int i, status;

    /* arg = { [-1] = argv[0], [0] = script, args... } */
    lua_createtable(L, argc - 2, 2);
    for (i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - 1);
    }
    lua_setglobal(L, "arg");

    lua_pushcfunction(L, traceback);
    status = luaL_loadfile(L, argv[1]);
    if (status == LUA_OK) {
        luaL_checkstack(L, argc, "too many arguments");
        for (i = 2; i < argc; i++)
            lua_pushstring(L, argv[i]);
        status = lua_pcall(L, argc - 2, 0, 1);
    }
    if (status != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        fprintf(stderr, "%s: %s\n", argv[0], msg != NULL ? msg : "(error object is not a string)");
        fflush(stderr);
    }
    return status;
}

int main(int argc, char **argv)
{
    lua_State *L;
    int status;

    if (argc < 2) {
        fprintf(stderr, "usage: %s script [args]\n", argv[0]);
        return 2;
    }
    /* LeakSanitizer reports, and exits, after the last atexit handler but
     * before stdio is flushed: line buffering keeps busted's summary. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    L = luaL_newstate();
    if (L == NULL) {
        fprintf(stderr, "%s: cannot create the Lua state\n", argv[0]);
        return 1;
    }
    luaL_openlibs(L);
    lua_gc(L, LUA_GCGEN, 0, 0); /* as lua5.4's own interpreter */
    status = run(L, argc, argv);
    lua_close(L);
    return status == LUA_OK ? EXIT_SUCCESS : EXIT_FAILURE;
}
