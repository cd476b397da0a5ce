#define _POSIX_C_SOURCE 200809L /* inet_pton, strcasecmp */
/* Endpoint and download URL checks (endpoint.h), parsed by libcurl's URL
 * API. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "endpoint.h"

int dp_is_loopback(const char *host)
{
    struct in_addr v4;
    size_t len = strlen(host);

    if (strcasecmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0)
        return 1;
    if (len > 0 && inet_pton(AF_INET, host, &v4) == 1)
        return (ntohl(v4.s_addr) >> 24) == 127;
    return 0;
}

const char *dp_parse_endpoint(const char *endpoint, dp_endpoint *ep)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL, *extra = NULL;
    const char *problem = NULL;

    memset(ep, 0, sizeof *ep);
    if (u == NULL)
        return "out of memory";
    if (curl_url_set(u, CURLUPART_URL, endpoint, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK) {
        problem = "is not a URL of the form https://host[:port]";
        goto done;
    }
    ep->https = strcmp(scheme, "https") == 0;
    ep->loopback = dp_is_loopback(host);
    if (!ep->https && !(strcmp(scheme, "http") == 0 && ep->loopback)) {
        problem = "must be https:// (http:// only for a loopback host)";
        goto done;
    }
    if (curl_url_get(u, CURLUPART_USER, &extra, 0) != CURLUE_NO_USER ||
        curl_url_get(u, CURLUPART_QUERY, &extra, 0) != CURLUE_NO_QUERY ||
        curl_url_get(u, CURLUPART_FRAGMENT, &extra, 0) != CURLUE_NO_FRAGMENT ||
        strcmp(path, "/") != 0) {
        problem = "must be only scheme://host[:port], without credentials, path or query";
        goto done;
    }
    ep->host_start = strlen(scheme) + 3; /* after "://" */
    ep->host_len = strlen(host);
    ep->port = strtol(port, NULL, 10);
    ep->base = malloc(ep->host_start + ep->host_len + strlen(port) + 2);
    if (ep->base == NULL) {
        problem = "out of memory";
        goto done;
    }
    sprintf(ep->base, "%s://%s:%s", scheme, host, port);
done:
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_free(extra);
    curl_url_cleanup(u);
    return problem;
}

const char *dp_check_download_url(const char *url, int loopback_endpoint, int *https)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *user = NULL;
    const char *problem = NULL;

    if (u == NULL)
        return "out of memory";
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
        problem = "is not a URL";
    else if (curl_url_get(u, CURLUPART_USER, &user, 0) != CURLUE_NO_USER)
        problem = "carries credentials";
    else if (!(*https = strcmp(scheme, "https") == 0) &&
             !(strcmp(scheme, "http") == 0 && loopback_endpoint && dp_is_loopback(host)))
        problem = "is not https://";
    curl_free(scheme);
    curl_free(host);
    curl_free(user);
    curl_url_cleanup(u);
    return problem;
}
