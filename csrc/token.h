/* Bearer token checks and wiping: no Lua, no libcurl, so fuzz targets and
 * embedding tests can link this file alone. */
#ifndef DP_TOKEN_H
#define DP_TOKEN_H

#include <stddef.h>

#define DP_TOKEN_MAX 4096

/* NULL when `s` is a valid RFC 6750 b64token of at most DP_TOKEN_MAX bytes,
 * otherwise a static sentence saying what is wrong. It never quotes the
 * token. */
const char *dp_token_problem(const char *s, size_t len);

/* Overwrites `len` bytes in a way the compiler may not elide. */
void dp_wipe(void *p, size_t len);

#endif
