/* The concurrent baseline: the libcurl multi interface over HTTP/2, COUNT
 * resets (POST with no body to URL/v1/authorization:reset, "Authorization:
 * Bearer bench-token-<i>", and the module's User-Agent and Accept) with at
 * most CONCURRENCY in flight, multiplexed on one connection. A finished easy
 * handle is reused for the next token.
 * Every libcurl return is checked.
 *
 *   multi URL CA COUNT CONCURRENCY
 *   -> {"client":"c-multi","calls":N,"ok":K,"seconds":S}
 *
 * ok counts the 200 answers. Exit status 1 when any call failed. */
#define _POSIX_C_SOURCE 200809L
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct transfer {
    CURL *easy;
    struct curl_slist *headers;
    char body[64]; /* the answer is "{}": more is an error */
    size_t len;
    int overflow;
};

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct transfer *t = userdata;
    size_t n = size * nmemb;
    if (t->len + n > sizeof t->body) {
        t->overflow = 1;
        return n;
    }
    memcpy(t->body + t->len, ptr, n);
    t->len += n;
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
    fprintf(stderr, "multi: %s: %s\n", what, why);
    return 1;
}

#define CHECK_EASY(call)                                                        \
    do {                                                                        \
        CURLcode rc_ = (call);                                                  \
        if (rc_ != CURLE_OK)                                                    \
            return die(#call, curl_easy_strerror(rc_));                         \
    } while (0)

#define CHECK_MULTI(call)                                                       \
    do {                                                                        \
        CURLMcode rc_ = (call);                                                 \
        if (rc_ != CURLM_OK)                                                    \
            return die(#call, curl_multi_strerror(rc_));                        \
    } while (0)

/* Sets up a fresh easy handle once; the options stay across transfers. */
static int setup(struct transfer *t, const char *url, const char *ca)
{
    t->easy = curl_easy_init();
    if (!t->easy)
        return die("curl_easy_init", "failed");
    CHECK_EASY(curl_easy_setopt(t->easy, CURLOPT_URL, url));
    CHECK_EASY(curl_easy_setopt(t->easy, CURLOPT_CAINFO, ca));
    CHECK_EASY(curl_easy_setopt(t->easy, CURLOPT_USERAGENT, "dataportability-lua/0.1.0"));
    CHECK_EASY(curl_easy_setopt(t->easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS));
    CHECK_EASY(curl_easy_setopt(t->easy, CURLOPT_PIPEWAIT, 1L));
    CHECK_EASY(curl_easy_setopt(t->easy, CURLOPT_POST, 1L));
    CHECK_EASY(curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, ""));
    CHECK_EASY(curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE, 0L));
    CHECK_EASY(curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, on_write));
    CHECK_EASY(curl_easy_setopt(t->easy, CURLOPT_WRITEDATA, t));
    CHECK_EASY(curl_easy_setopt(t->easy, CURLOPT_PRIVATE, t));
    CHECK_EASY(curl_easy_setopt(t->easy, CURLOPT_NOSIGNAL, 1L));
    CHECK_EASY(curl_easy_setopt(t->easy, CURLOPT_TIMEOUT, 60L));
    return 0;
}

/* Starts the call for token number i on t's handle. */
static int start(CURLM *multi, struct transfer *t, long i)
{
    char header[128];
    snprintf(header, sizeof header, "Authorization: Bearer bench-token-%ld", i);
    t->headers = curl_slist_append(NULL, header);
    if (!t->headers || !curl_slist_append(t->headers, "Accept: application/json"))
        return die("curl_slist_append", "out of memory");
    CHECK_EASY(curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers));
    t->len = 0;
    t->overflow = 0;
    CHECK_MULTI(curl_multi_add_handle(multi, t->easy));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 5 || atol(argv[3]) <= 0 || atol(argv[4]) <= 0) {
        fprintf(stderr, "usage: multi URL CA COUNT CONCURRENCY\n");
        return 2;
    }
    const char *ca = argv[2];
    long count = atol(argv[3]), concurrency = atol(argv[4]);
    if (concurrency > count)
        concurrency = count;
    char url[1024];
    if (snprintf(url, sizeof url, "%s/v1/authorization:reset", argv[1]) >= (int)sizeof url)
        return die("url", "too long");

    CHECK_EASY(curl_global_init(CURL_GLOBAL_DEFAULT));
    CURLM *multi = curl_multi_init();
    if (!multi)
        return die("curl_multi_init", "failed");
    CHECK_MULTI(curl_multi_setopt(multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX));

    struct transfer *ts = calloc((size_t)concurrency, sizeof *ts);
    if (!ts)
        return die("calloc", "out of memory");
    for (long k = 0; k < concurrency; k++)
        if (setup(&ts[k], url, ca))
            return 1;

    long next = 1, ok = 0, failed = 0, done = 0;
    double started = now();
    for (long k = 0; k < concurrency; k++)
        if (start(multi, &ts[k], next++))
            return 1;

    while (done < count) {
        int running = 0, queued = 0;
        CHECK_MULTI(curl_multi_perform(multi, &running));
        CURLMsg *msg;
        long ended = 0;
        while ((msg = curl_multi_info_read(multi, &queued)) != NULL) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            CURL *easy = msg->easy_handle;
            CURLcode result = msg->data.result; /* msg is invalid after remove */
            struct transfer *t = NULL;
            long status = 0;
            CHECK_EASY(curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&t));
            if (result == CURLE_OK)
                CHECK_EASY(curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status));
            CHECK_MULTI(curl_multi_remove_handle(multi, easy));
            CHECK_EASY(curl_easy_setopt(easy, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL));
            curl_slist_free_all(t->headers);
            t->headers = NULL;
            done++;
            ended++;
            if (result == CURLE_OK && status == 200 && !t->overflow && t->len == 2 &&
                memcmp(t->body, "{}", 2) == 0) {
                ok++;
            } else if (failed++ == 0) {
                fprintf(stderr, "multi: a call: %s, HTTP %ld\n",
                        result == CURLE_OK ? "answered" : curl_easy_strerror(result), status);
            }
            if (next <= count && start(multi, t, next++))
                return 1;
        }
        /* Slots just refilled: drive them before waiting. */
        if (done < count && ended == 0)
            CHECK_MULTI(curl_multi_poll(multi, NULL, 0, 1000, NULL));
    }
    double seconds = now() - started;

    printf("{\"client\":\"c-multi\",\"calls\":%ld,\"ok\":%ld,\"seconds\":%.6f}\n", count, ok, seconds);
    for (long k = 0; k < concurrency; k++)
        curl_easy_cleanup(ts[k].easy);
    free(ts);
    CHECK_MULTI(curl_multi_cleanup(multi));
    curl_global_cleanup();
    return failed ? 1 : 0;
}
