/* Hashes and randomness from libcrypto: archive checksums (MD5, as Cloud
 * Storage gives them) and PKCE (SHA-256 of a random verifier). */
#define _POSIX_C_SOURCE 200809L /* O_NOFOLLOW, O_CLOEXEC, fdopen */
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "dp.h"

/* Base64 of n bytes; url: the URL-safe alphabet without padding (RFC 7636). */
static void push_base64(lua_State *L, const unsigned char *bytes, int n, int url)
{
    char out[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
    int len = EVP_EncodeBlock((unsigned char *)out, bytes, n), i;

    if (url) {
        while (len > 0 && out[len - 1] == '=')
            len--;
        for (i = 0; i < len; i++)
            out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    }
    lua_pushlstring(L, out, (size_t)len);
}

static int md5_failed(lua_State *L, const char *message)
{
    lua_pushnil(L);
    lua_pushstring(L, message);
    return 2;
}

/* core.md5_file(path) -> base64 MD5 of the file | nil, message */
static int l_md5_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    unsigned char digest[EVP_MAX_MD_SIZE], buf[65536];
    unsigned int len = 0;
    size_t n;
    int ok;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    FILE *fp = fd >= 0 ? fdopen(fd, "rb") : NULL;
    EVP_MD_CTX *ctx;

    if (fp == NULL && fd >= 0)
        (void)close(fd);
    if (fp == NULL)
        return md5_failed(L, "cannot open the file");
    ctx = EVP_MD_CTX_new();
    ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_md5(), NULL) == 1;
    while (ok && (n = fread(buf, 1, sizeof buf, fp)) > 0)
        ok = EVP_DigestUpdate(ctx, buf, n) == 1;
    ok = ok && !ferror(fp) && EVP_DigestFinal_ex(ctx, digest, &len) == 1;
    EVP_MD_CTX_free(ctx);
    fclose(fp);
    if (!ok)
        return md5_failed(L, "cannot read the file");
    push_base64(L, digest, (int)len, 0);
    return 1;
}

/* core.sha256_base64url(s) -> the PKCE S256 challenge of s */
static int l_sha256_base64url(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;

    if (EVP_Digest(s, n, digest, &len, EVP_sha256(), NULL) != 1)
        return luaL_error(L, "SHA-256 failed");
    push_base64(L, digest, (int)len, 1);
    return 1;
}

/* core.random_base64url(n) -> n random bytes from the system's CSPRNG,
 * base64url: PKCE verifiers and OAuth state values. */
static int l_random_base64url(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    unsigned char bytes[48];

    luaL_argcheck(L, n >= 1 && n <= (lua_Integer)sizeof bytes, 1, "1 to 48 bytes");
    if (RAND_bytes(bytes, (int)n) != 1)
        return luaL_error(L, "no random bytes");
    push_base64(L, bytes, (int)n, 1);
    dp_wipe(bytes, sizeof bytes);
    return 1;
}

void dp_crypto_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"md5_file", l_md5_file},
        {"sha256_base64url", l_sha256_base64url},
        {"random_base64url", l_random_base64url},
        {NULL, NULL}
    };
    dp_setfuncs(L, funcs);
}
