/* Hashes and randomness from libcrypto for PKCE (SHA-256 of a random
 * verifier); archive checksums are part files' (part.c). */
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
        {"sha256_base64url", l_sha256_base64url},
        {"random_base64url", l_random_base64url},
        {NULL, NULL}
    };
    dp_setfuncs(L, funcs);
}
