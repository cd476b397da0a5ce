/* forkhelper: what spec/17-fork_spec.lua needs from lua-posix, for the Luas
 * Debian builds no lua-posix for (Lua 5.4, so the valgrind and ASan+UBSan
 * suites too). Names and return conventions follow lua-posix's
 * posix.unistd, posix.poll, posix.sys.wait and posix.signal:
 *
 *   fork()            -> pid (0 in the child)
 *   _exit([status])   -> does not return: no atexit handlers, no stdio flush
 *   pipe()            -> read_fd, write_fd
 *   read(fd, count)   -> string ("" at end of file)
 *   write(fd, buf)    -> bytes written
 *   close(fd)         -> 0
 *   rpoll(fd, ms)     -> 1 when fd is readable (or at end of file), 0 after ms
 *   wait([pid [, options]])
 *                     -> pid, "exited" | "killed" | "stopped", code;
 *                        with WNOHANG and the child still running: 0, "running"
 *                        (lua-posix answers 0, "exited", 0 there)
 *   kill(pid [, sig]) -> 0 (sig defaults to SIGTERM)
 *   SIGKILL, SIGTERM, WNOHANG
 *
 * Each answers nil, message, errno on failure. Calls interrupted by a
 * signal are retried (rpoll with its whole timeout again).
 *
 * Built per Lua by `make spec-helpers` (build/<lua>/forkhelper.so, and
 * build/asan/forkhelper.so under ASan+UBSan); busted finds it through
 * --cpath. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>

#include "compat.h"

static int push_error(lua_State *L, const char *what)
{
    int e = errno;

    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", what, strerror(e));
    lua_pushinteger(L, e);
    return 3;
}

static int check_int(lua_State *L, int arg)
{
    lua_Integer n = luaL_checkinteger(L, arg);

    luaL_argcheck(L, n >= INT_MIN && n <= INT_MAX, arg, "out of range");
    return (int)n;
}

static int opt_int(lua_State *L, int arg, int def)
{
    return lua_isnoneornil(L, arg) ? def : check_int(L, arg);
}

static int check_fd(lua_State *L, int arg)
{
    int fd = check_int(L, arg);

    luaL_argcheck(L, fd >= 0, arg, "not a file descriptor");
    return fd;
}

static int l_fork(lua_State *L)
{
    pid_t pid = fork();

    if (pid == -1)
        return push_error(L, "fork");
    lua_pushinteger(L, (lua_Integer)pid);
    return 1;
}

static int l__exit(lua_State *L)
{
    _exit(opt_int(L, 1, 0));
    return 0; /* not reached */
}

static int l_pipe(lua_State *L)
{
    int fds[2];

    if (pipe(fds) == -1)
        return push_error(L, "pipe");
    lua_pushinteger(L, fds[0]);
    lua_pushinteger(L, fds[1]);
    return 2;
}

static int l_read(lua_State *L)
{
    int fd = check_fd(L, 1);
    lua_Integer count = luaL_checkinteger(L, 2);
    char *buf;
    ssize_t n;

    luaL_argcheck(L, count >= 0 && count <= 1 << 24, 2, "out of range");
    buf = lua_newuserdata(L, count > 0 ? (size_t)count : 1); /* freed by the GC */
    do
        n = read(fd, buf, (size_t)count);
    while (n == -1 && errno == EINTR);
    if (n == -1)
        return push_error(L, "read");
    lua_pushlstring(L, buf, (size_t)n);
    return 1;
}

static int l_write(lua_State *L)
{
    int fd = check_fd(L, 1);
    size_t len;
    const char *buf = luaL_checklstring(L, 2, &len);
    ssize_t n;

    do
        n = write(fd, buf, len);
    while (n == -1 && errno == EINTR);
    if (n == -1)
        return push_error(L, "write");
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

static int l_close(lua_State *L)
{
    /* Not retried on EINTR: on Linux the descriptor is closed anyway. */
    if (close(check_fd(L, 1)) == -1)
        return push_error(L, "close");
    lua_pushinteger(L, 0);
    return 1;
}

static int l_rpoll(lua_State *L)
{
    struct pollfd p;
    int n;

    p.fd = check_fd(L, 1);
    p.events = POLLIN;
    p.revents = 0;
    do
        n = poll(&p, 1, opt_int(L, 2, -1));
    while (n == -1 && errno == EINTR);
    if (n == -1)
        return push_error(L, "poll");
    lua_pushinteger(L, n);
    return 1;
}

static int l_wait(lua_State *L)
{
    pid_t pid = (pid_t)opt_int(L, 1, -1);
    int options = opt_int(L, 2, 0), status = 0;

    do
        pid = waitpid(pid, &status, options);
    while (pid == -1 && errno == EINTR);
    if (pid == -1)
        return push_error(L, "waitpid");
    lua_pushinteger(L, (lua_Integer)pid);
    if (pid == 0) { /* WNOHANG, and no change */
        lua_pushliteral(L, "running");
        return 2;
    }
    if (WIFEXITED(status)) {
        lua_pushliteral(L, "exited");
        lua_pushinteger(L, WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
        lua_pushliteral(L, "killed");
        lua_pushinteger(L, WTERMSIG(status));
    } else if (WIFSTOPPED(status)) {
        lua_pushliteral(L, "stopped");
        lua_pushinteger(L, WSTOPSIG(status));
    } else {
        return 1;
    }
    return 3;
}

static int l_kill(lua_State *L)
{
    if (kill((pid_t)check_int(L, 1), opt_int(L, 2, SIGTERM)) == -1)
        return push_error(L, "kill");
    lua_pushinteger(L, 0);
    return 1;
}

int luaopen_forkhelper(lua_State *L);

int luaopen_forkhelper(lua_State *L)
{
    static const luaL_Reg functions[] = {
        {"fork", l_fork},
        {"_exit", l__exit},
        {"pipe", l_pipe},
        {"read", l_read},
        {"write", l_write},
        {"close", l_close},
        {"rpoll", l_rpoll},
        {"wait", l_wait},
        {"kill", l_kill},
        {NULL, NULL}
    };

    lua_newtable(L);
    dp_setfuncs(L, functions);
    lua_pushinteger(L, SIGKILL);
    lua_setfield(L, -2, "SIGKILL");
    lua_pushinteger(L, SIGTERM);
    lua_setfield(L, -2, "SIGTERM");
    lua_pushinteger(L, WNOHANG);
    lua_setfield(L, -2, "WNOHANG");
    return 1;
}
