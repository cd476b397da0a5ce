/* Embedding test: several Lua states in one process, on several threads at
 * once, each loading dataportability and resetting tokens against the
 * emulator over HTTPS, with reset and reset_many; then states closed, one
 * client still open, and opened again. libcurl's global initialisation must
 * happen once and safely. Prints "N passed, M failed".
 *
 * Environment: DATAPORTABILITY_EMULATOR_HOST, DATAPORTABILITY_EMULATOR_HTTPS,
 * DATAPORTABILITY_EMULATOR_CA (from `dataportability-emulator start`),
 * LUA_PATH and LUA_CPATH pointing at the build. */
#include <pthread.h>
#include <stdio.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#define THREADS 4
#define ROUNDS 2

static const char *script =
    "local id = ...\n"
    "local dp = require('dataportability')\n"
    "local emu = require('dataportability.emulator').admin('http://' .. "
    "os.getenv('DATAPORTABILITY_EMULATOR_HOST'))\n"
    "local c = dp.new{endpoint = os.getenv('DATAPORTABILITY_EMULATOR_HTTPS'),\n"
    "                 ca_file = os.getenv('DATAPORTABILITY_EMULATOR_CA')}\n"
    "for i = 1, 5 do\n"
    "  local token = ('ya29.embed-%s-%d'):format(id, i)\n"
    "  emu:add_token(token, {'https://www.googleapis.com/auth/dataportability.myactivity.youtube'})\n"
    "  assert(c:reset(token) == true, 'reset failed')\n"
    "  local ok, err = c:reset(token)\n"
    "  assert(ok == nil and err.http_status == 401, 'second reset must be 401')\n"
    "end\n"
    "c:close()\n"
    "local many = {}\n"
    "for i = 1, 5 do\n"
    "  many[i] = ('ya29.embed-many-%s-%d'):format(id, i)\n"
    "  emu:add_token(many[i], {'https://www.googleapis.com/auth/dataportability.myactivity.youtube'})\n"
    "end\n"
    "local kept = dp.new{endpoint = os.getenv('DATAPORTABILITY_EMULATOR_HTTPS'),\n"
    "                    ca_file = os.getenv('DATAPORTABILITY_EMULATOR_CA')}\n"
    "local results, failed = kept:reset_many(many, {concurrency = 3})\n"
    "assert(failed == 0 and #results == 5, 'reset_many failed')\n"
    "-- kept stays open: lua_close finalizes it and the shared caches, in either order\n";

typedef struct {
    int id;
    int ok;
    char error[256];
} job;

static void *run(void *arg)
{
    job *j = arg;
    lua_State *L = luaL_newstate();

    j->ok = 0;
    if (L == NULL) {
        snprintf(j->error, sizeof j->error, "luaL_newstate failed");
        return NULL;
    }
    luaL_openlibs(L);
    if (luaL_loadstring(L, script) != 0) {
        snprintf(j->error, sizeof j->error, "%s", lua_tostring(L, -1));
    } else {
        lua_pushfstring(L, "%d", j->id);
        if (lua_pcall(L, 1, 0, 0) != 0)
            snprintf(j->error, sizeof j->error, "%s", lua_tostring(L, -1));
        else
            j->ok = 1;
    }
    lua_close(L);
    return NULL;
}

int main(void)
{
    job jobs[ROUNDS][THREADS];
    int passed = 0, failed = 0, r, i;

    for (r = 0; r < ROUNDS; r++) {
        pthread_t threads[THREADS];
        int started[THREADS];
        for (i = 0; i < THREADS; i++) {
            jobs[r][i].id = r * THREADS + i;
            jobs[r][i].error[0] = '\0';
            jobs[r][i].ok = 0;
            started[i] = pthread_create(&threads[i], NULL, run, &jobs[r][i]) == 0;
            if (!started[i])
                snprintf(jobs[r][i].error, sizeof jobs[r][i].error, "pthread_create failed");
        }
        for (i = 0; i < THREADS; i++) {
            if (started[i] && pthread_join(threads[i], NULL) != 0)
                jobs[r][i].ok = 0;
            if (jobs[r][i].ok) {
                passed++;
            } else {
                failed++;
                fprintf(stderr, "state %d: %s\n", jobs[r][i].id, jobs[r][i].error);
            }
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
