#define _DEFAULT_SOURCE /* explicit_bzero in glibc's <string.h> */
#include "token.h"

#include <string.h>

static int is_b64token_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
           c == '~' || c == '+' || c == '/';
}

const char *dp_token_problem(const char *s, size_t len)
{
    size_t i = 0;

    if (len == 0)
        return "token is empty";
    if (len > DP_TOKEN_MAX)
        return "token is longer than 4096 bytes";
    while (i < len && is_b64token_char((unsigned char)s[i]))
        i++;
    if (i == 0)
        return "token must start with a letter, a digit or one of -._~+/";
    while (i < len && s[i] == '=')
        i++;
    if (i != len)
        return "token contains a byte outside the bearer token alphabet "
               "(letters, digits, -._~+/ and trailing =)";
    return NULL;
}

void dp_wipe(void *p, size_t len)
{
    if (p == NULL || len == 0)
        return;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 25))
    explicit_bzero(p, len);
#else
    volatile unsigned char *v = p;
    while (len--)
        *v++ = 0;
#endif
}
