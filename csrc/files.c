#define _POSIX_C_SOURCE 200809L /* O_NOFOLLOW, O_CLOEXEC, link, mkstemp */
/* Archive files hold a person's data: private directories, files that are
 * created 0600 and never through a symbolic link, and a finished file
 * that never replaces one the module did not create (export.lua). The
 * command line reads the modes of secret files and writes credentials
 * here too, so that it never runs a shell (cli/login.lua). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dp.h"

/* nil, the message: fmt has the path and, when `why` is not NULL, it */
static int failed(lua_State *L, const char *fmt, const char *path, const char *why)
{
    lua_pushnil(L);
    lua_pushfstring(L, fmt, path, why);
    return 2;
}

/* core.private_dir(path [, create]) -> true | nil, message
 * The directory at path, made 0700 when missing and `create`; an existing
 * one must be a directory (not a link to one), the user's, and not
 * writable by group or others. */
static int l_private_dir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    int create = lua_toboolean(L, 2);
    struct stat st;

    luaL_argcheck(L, path[0] != '\0', 1, "path must not be empty");
    if (create && mkdir(path, 0700) != 0 && errno != EEXIST)
        return failed(L, "cannot create the directory %s: %s", path, strerror(errno));
    if (lstat(path, &st) != 0)
        return failed(L, "cannot use the directory %s: %s", path, strerror(errno));
    if (S_ISLNK(st.st_mode))
        return failed(L, "%s is a symbolic link: give the directory it points to", path, NULL);
    if (!S_ISDIR(st.st_mode))
        return failed(L, "%s is not a directory", path, NULL);
    if (st.st_uid != geteuid())
        return failed(L, "%s belongs to another user", path, NULL);
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0)
        return failed(L, "%s is writable by group or others: run chmod go-w on it", path, NULL);
    lua_pushboolean(L, 1);
    return 1;
}

/* core.file_size(path) -> size | nil: of a regular file, never through a
 * symbolic link; nil when there is none. */
static int l_file_size(lua_State *L)
{
    struct stat st;

    if (lstat(luaL_checkstring(L, 1), &st) != 0 || !S_ISREG(st.st_mode))
        return 0;
    lua_pushinteger(L, (lua_Integer)st.st_size);
    return 1;
}

/* core.publish(part, final) -> true | nil, message: part becomes final,
 * which must not exist (link(2) never replaces a file, rename(2) would). */
static int l_publish(lua_State *L)
{
    const char *part = luaL_checkstring(L, 1);
    const char *final = luaL_checkstring(L, 2);

    if (link(part, final) != 0)
        return failed(L, "cannot make %s: %s", final, strerror(errno));
    if (unlink(part) != 0)
        return failed(L, "cannot remove %s: %s", part, strerror(errno));
    lua_pushboolean(L, 1);
    return 1;
}

/* Writes len bytes to fd, whatever number write(2) takes at a time. */
static int write_all(int fd, const char *data, size_t len)
{
    size_t done = 0;

    while (done < len) {
        ssize_t n = write(fd, data + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        done += (size_t)n;
    }
    return 0;
}

/* core.write_private(path, data) -> true | nil, message: a small file of
 * the module's (a download's identity, the CLI's credentials), 0600. It is
 * written whole to a new file beside path (mkstemp: 0600, O_EXCL), then
 * renamed over path: never written through a link or into a file someone
 * else made, never left half written, 0600 whatever path was before. */
static int l_write_private(lua_State *L)
{
    size_t plen, len;
    const char *path = luaL_checklstring(L, 1, &plen);
    const char *data = luaL_checklstring(L, 2, &len);
    char *tmp = lua_newuserdata(L, plen + sizeof ".XXXXXX"); /* collected, whatever happens */
    int fd, saved;

    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".XXXXXX", sizeof ".XXXXXX");
    fd = mkstemp(tmp);
    if (fd < 0)
        return failed(L, "cannot write %s: %s", path, strerror(errno));
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0 || write_all(fd, data, len) != 0 || fsync(fd) != 0) {
        saved = errno;
        (void)close(fd);
        (void)unlink(tmp);
        return failed(L, "cannot write %s: %s", path, strerror(saved));
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        saved = errno;
        (void)unlink(tmp);
        return failed(L, "cannot write %s: %s", path, strerror(saved));
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* core.file_mode(path) -> permission bits, "file" | "directory" | "other"
 * | nil, message. Follows symbolic links, as opening the file does: what
 * counts is the mode of what would be read. */
static int l_file_mode(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct stat st;

    if (stat(path, &st) != 0)
        return failed(L, "cannot use %s: %s", path, strerror(errno));
    lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
    lua_pushstring(L, S_ISREG(st.st_mode) ? "file" : S_ISDIR(st.st_mode) ? "directory" : "other");
    return 2;
}

/* core.is_terminal(fd) -> boolean: whether a progress bar may be drawn. */
static int l_is_terminal(lua_State *L)
{
    lua_Integer fd = luaL_checkinteger(L, 1);

    lua_pushboolean(L, fd >= 0 && fd <= 1024 && isatty((int)fd) == 1);
    return 1;
}

void dp_files_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"private_dir", l_private_dir},
        {"file_size", l_file_size},
        {"publish", l_publish},
        {"write_private", l_write_private},
        {"file_mode", l_file_mode},
        {"is_terminal", l_is_terminal},
        {NULL, NULL}
    };
    dp_setfuncs(L, funcs);
}
