/* Shared declarations of the dataportability.core C module. */
#ifndef DP_H
#define DP_H

#include <lua.h>
#include <lauxlib.h>

#define DP_CLIENT_MT "dataportability.client"

/* luaL_setfuncs without upvalues, for Lua 5.1 and LuaJIT alike. */
static inline void dp_setfuncs(lua_State *L, const luaL_Reg *l)
{
    for (; l->name != NULL; l++) {
        lua_pushcfunction(L, l->func);
        lua_setfield(L, -2, l->name);
    }
}

/* Registers the client metatable and puts `new` in the table on top. */
void dp_client_open(lua_State *L);

#endif
