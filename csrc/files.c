#define _POSIX_C_SOURCE 200809L /* O_NOFOLLOW, O_CLOEXEC, link */
/* Archive files hold a person's data: private directories, files that are
 * created 0600 and never through a symbolic link, and a finished file
 * that never replaces one the module did not create (export.lua). */
#include <errno.h>
#include <fcntl.h>
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

/* core.write_private(path, data) -> true | nil, message: a small file of
 * the module's (a download's identity), 0600, never through a link. */
static int l_write_private(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    size_t len, done = 0;
    const char *data = luaL_checklstring(L, 2, &len);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);

    if (fd < 0)
        return failed(L, "cannot write %s: %s", path, strerror(errno));
    while (done < len) {
        ssize_t n = write(fd, data + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            (void)close(fd);
            return failed(L, "cannot write %s: %s", path, strerror(errno));
        }
        done += (size_t)n;
    }
    if (close(fd) != 0)
        return failed(L, "cannot write %s: %s", path, strerror(errno));
    lua_pushboolean(L, 1);
    return 1;
}

int dp_open_private(const char *path, int resume)
{
    int flags = O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC;

    return open(path, resume ? flags : flags | O_CREAT | O_EXCL, 0600);
}

void dp_files_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"private_dir", l_private_dir},
        {"file_size", l_file_size},
        {"publish", l_publish},
        {"write_private", l_write_private},
        {NULL, NULL}
    };
    dp_setfuncs(L, funcs);
}
