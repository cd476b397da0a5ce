/* The Lua C API differences between Lua 5.1 (and LuaJIT) and 5.2 to 5.4
 * that the core meets, in one place. */
#ifndef DP_COMPAT_H
#define DP_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM >= 502
#define dp_rawlen lua_rawlen
#else
#define dp_rawlen lua_objlen
#endif

/* luaL_setfuncs without upvalues. */
static inline void dp_setfuncs(lua_State *L, const luaL_Reg *l)
{
    for (; l->name != NULL; l++) {
        lua_pushcfunction(L, l->func);
        lua_setfield(L, -2, l->name);
    }
}

#endif
