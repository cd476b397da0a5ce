/* The sequential baseline: the ceiling for a libcurl client. One easy
 * handle, reused for every call (one kept-alive HTTP/1.1 connection), each
 * call a POST with no body to URL/v1/authorization:reset carrying
 * "Authorization: Bearer bench-token-<i>" in a header list built the
 * ordinary way. The request's other headers are the module's (User-Agent,
 * Accept), so that both put the same bytes on the wire. Every libcurl
 * return is checked.
 *
 *   loop URL CA COUNT
 *   -> {"client":"c-loop","calls":N,"ok":K,"seconds":S}
 *
 * ok counts the 200 answers. Exit status 1 when any call failed. */
#define _POSIX_C_SOURCE 200809L
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct body {
    char *data;
    size_t len, cap;
};

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct body *b = userdata;
    size_t n = size * nmemb;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *p = realloc(b->data, cap);
        if (!p)
            return 0; /* libcurl fails the transfer with CURLE_WRITE_ERROR */
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int die(const char *what, const char *why)
{
    fprintf(stderr, "loop: %s: %s\n", what, why);
    return 1;
}

#define SETOPT(h, opt, val)                                                     \
    do {                                                                        \
        CURLcode rc_ = curl_easy_setopt((h), (opt), (val));                     \
        if (rc_ != CURLE_OK)                                                    \
            return die("curl_easy_setopt " #opt, curl_easy_strerror(rc_));      \
    } while (0)

int main(int argc, char **argv)
{
    if (argc != 4 || atol(argv[3]) <= 0) {
        fprintf(stderr, "usage: loop URL CA COUNT\n");
        return 2;
    }
    const char *ca = argv[2];
    long count = atol(argv[3]);
    char url[1024];
    if (snprintf(url, sizeof url, "%s/v1/authorization:reset", argv[1]) >= (int)sizeof url)
        return die("url", "too long");

    CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (rc != CURLE_OK)
        return die("curl_global_init", curl_easy_strerror(rc));
    CURL *h = curl_easy_init();
    if (!h)
        return die("curl_easy_init", "failed");

    struct body body = {NULL, 0, 0};
    SETOPT(h, CURLOPT_URL, url);
    SETOPT(h, CURLOPT_CAINFO, ca);
    SETOPT(h, CURLOPT_USERAGENT, "dataportability-lua/0.1.0");
    SETOPT(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    SETOPT(h, CURLOPT_POST, 1L);
    SETOPT(h, CURLOPT_POSTFIELDS, "");
    SETOPT(h, CURLOPT_POSTFIELDSIZE, 0L);
    SETOPT(h, CURLOPT_WRITEFUNCTION, on_write);
    SETOPT(h, CURLOPT_WRITEDATA, &body);
    SETOPT(h, CURLOPT_NOSIGNAL, 1L);
    SETOPT(h, CURLOPT_TIMEOUT, 60L);

    long ok = 0, failed = 0;
    double started = now();
    for (long i = 1; i <= count; i++) {
        char header[128];
        snprintf(header, sizeof header, "Authorization: Bearer bench-token-%ld", i);
        struct curl_slist *headers = curl_slist_append(NULL, header);
        struct curl_slist *more = headers ? curl_slist_append(headers, "Accept: application/json") : NULL;
        if (!more) {
            curl_slist_free_all(headers);
            return die("curl_slist_append", "out of memory");
        }
        SETOPT(h, CURLOPT_HTTPHEADER, headers);
        body.len = 0;
        rc = curl_easy_perform(h);
        long status = 0;
        if (rc == CURLE_OK) {
            CURLcode info = curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
            if (info != CURLE_OK)
                return die("curl_easy_getinfo", curl_easy_strerror(info));
        }
        SETOPT(h, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
        curl_slist_free_all(headers);
        if (rc == CURLE_OK && status == 200 && body.len == 2 && memcmp(body.data, "{}", 2) == 0) {
            ok++;
        } else if (failed++ == 0) {
            fprintf(stderr, "loop: call %ld: %s, HTTP %ld\n", i,
                    rc == CURLE_OK ? "answered" : curl_easy_strerror(rc), status);
        }
    }
    double seconds = now() - started;

    printf("{\"client\":\"c-loop\",\"calls\":%ld,\"ok\":%ld,\"seconds\":%.6f}\n", count, ok, seconds);
    curl_easy_cleanup(h);
    free(body.data);
    curl_global_cleanup();
    return failed ? 1 : 0;
}
