/* Endpoint and download URL checks: no Lua, no transfer. */
#ifndef DP_ENDPOINT_H
#define DP_ENDPOINT_H

#include <stddef.h>

typedef struct {
    char *base;        /* scheme://host:port, malloc'd */
    size_t host_start; /* the host inside base, brackets kept for IPv6 */
    size_t host_len;
    long port;         /* explicit, or the scheme's default */
    int https;
    int loopback;
} dp_endpoint;

/* 127.0.0.0/8, [::1] or localhost. */
int dp_is_loopback(const char *host);
/* Checks an API endpoint (https://host[:port], http:// only to loopback)
 * and fills *ep. Returns NULL, or a static sentence saying what is wrong
 * (then ep->base is NULL). */
const char *dp_parse_endpoint(const char *endpoint, dp_endpoint *ep);
/* Checks a download URL the server listed: https, http only to a loopback
 * host and only when the API endpoint is loopback too (the emulator), so
 * that a hostile API server cannot make the client fetch local services.
 * Sets *https. Returns NULL, or a static sentence. */
const char *dp_check_download_url(const char *url, int loopback_endpoint, int *https);

#endif
