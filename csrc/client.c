#define _POSIX_C_SOURCE 200809L /* inet_pton, strcasecmp */
/* The client object: one libcurl easy handle, reused across calls so that
 * connections are kept alive. Every request, blocking (l_request) or not
 * (multi.c), is set up by dp_client_prepare and read by
 * dp_client_push_result. */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "dp.h"
#include "token.h"

#define BODY_MAX (1024 * 1024) /* larger responses are cut: too_large */

/* ---- endpoint ---- */

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

typedef struct {
    char *base;        /* scheme://host:port, malloc'd */
    size_t host_start; /* the host inside base, brackets kept for IPv6 */
    size_t host_len;
    long port;         /* explicit, or the scheme's default */
    int https;
    int loopback;
} dp_endpoint;

/* Checks the endpoint and fills *ep. Returns NULL, or a static sentence
 * saying what is wrong (then ep->base is NULL). */
static const char *parse_endpoint(const char *endpoint, dp_endpoint *ep)
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

/* ---- option reading (the Lua layer validated them; this guards C) ---- */

static const char *opt_string(lua_State *L, const char *name)
{
    const char *s;
    size_t len;

    lua_getfield(L, 1, name);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return NULL;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "option '%s' must be a string", name);
    s = lua_tolstring(L, -1, &len);
    if (strlen(s) != len)
        luaL_error(L, "option '%s' must not contain NUL bytes", name);
    lua_pop(L, 1); /* still referenced by the options table */
    return s;
}

/* Header values must not smuggle CR, LF or other control bytes. */
static const char *opt_header_value(lua_State *L, const char *name)
{
    const char *s = opt_string(L, name);
    const char *p;

    for (p = s; p != NULL && *p != '\0'; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
            luaL_error(L, "option '%s' must be printable ASCII", name);
    return s;
}

static long opt_millis(lua_State *L, const char *name, double dflt)
{
    double seconds = dflt;

    lua_getfield(L, 1, name);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "option '%s' must be a number", name);
        seconds = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    if (!(seconds > 0 && seconds <= 86400))
        luaL_error(L, "option '%s' must be a number of seconds in (0, 86400]", name);
    return (long)(seconds * 1000 + 0.5);
}

typedef struct {
    const char *endpoint, *ca_file, *user_agent, *quota_project, *proxy;
    long timeout_ms, connect_ms;
} dp_options;

/* Reads the options table at index 1 and parses its endpoint into *ep (the
 * caller frees ep->base). Bad options raise. */
static void read_options(lua_State *L, dp_options *o, dp_endpoint *ep)
{
    const char *problem;

    luaL_checktype(L, 1, LUA_TTABLE);
    o->endpoint = opt_string(L, "endpoint");
    o->ca_file = opt_string(L, "ca_file");
    o->user_agent = opt_header_value(L, "user_agent");
    o->quota_project = opt_header_value(L, "quota_project");
    o->proxy = opt_string(L, "proxy");
    o->timeout_ms = opt_millis(L, "timeout", 60);
    o->connect_ms = opt_millis(L, "connect_timeout", 10);
    luaL_argcheck(L, o->endpoint != NULL, 1, "option 'endpoint' is required");
    problem = parse_endpoint(o->endpoint, ep);
    if (problem != NULL)
        luaL_error(L, "option 'endpoint' %s", problem);
}

/* ---- one transfer: libcurl's callbacks write into a dp_transfer ---- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud)
{
    dp_transfer *t = ud;
    size_t n = size * nmemb;

    if (n > BODY_MAX - t->body_len) {
        t->too_large = 1;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (t->body_len + n > t->body_cap) {
        size_t cap = t->body_cap ? t->body_cap : 1024;
        char *p;
        while (cap < t->body_len + n)
            cap *= 2;
        if (cap > BODY_MAX)
            cap = BODY_MAX;
        p = realloc(t->body, cap);
        if (p == NULL)
            return 0;
        t->body = p;
        t->body_cap = cap;
    }
    memcpy(t->body + t->body_len, data, n);
    t->body_len += n;
    return n;
}

void dp_keep_header(const char *line, size_t len, const char *name, char *out, size_t cap)
{
    size_t name_len = strlen(name), i, n = 0;

    if (len <= name_len || strncasecmp(line, name, name_len) != 0 || line[name_len] != ':')
        return;
    for (i = name_len + 1; i < len && line[i] == ' '; i++)
        ;
    for (; i < len && n + 1 < cap && line[i] >= 0x20 && line[i] <= 0x7e; i++)
        out[n++] = line[i];
    while (n > 0 && out[n - 1] == ' ')
        n--;
    out[n] = '\0';
}

static size_t on_header(char *line, size_t size, size_t nmemb, void *ud)
{
    dp_transfer *t = ud;
    size_t n = size * nmemb;

    if (n >= 5 && strncmp(line, "HTTP/", 5) == 0) { /* a new response (after 100 Continue) */
        t->content_type[0] = '\0';
        t->retry_after[0] = '\0';
        t->headers_done = 0;
    }
    if ((n == 2 && line[0] == '\r' && line[1] == '\n') || (n == 1 && line[0] == '\n'))
        t->headers_done = 1;
    else if (line[0] == 'c' || line[0] == 'C') /* the two names kept, cheaply told apart */
        dp_keep_header(line, n, "content-type", t->content_type, sizeof t->content_type);
    else if (line[0] == 'r' || line[0] == 'R')
        dp_keep_header(line, n, "retry-after", t->retry_after, sizeof t->retry_after);
    return n;
}

/* Counts the times a request really goes out: libcurl sends a request
 * again on a new connection when a reused one turns out dead, and a retry
 * must know whether the server may have seen it. libcurl calls this right
 * before each send, the silent one included. */
static int on_send(void *ud, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
    dp_transfer *t = ud;

    (void)primary_ip;
    (void)local_ip;
    (void)primary_port;
    (void)local_port;
    t->sends++;
    return CURL_PREREQFUNC_OK;
}

CURLcode dp_transfer_bind(dp_transfer *t)
{
    CURLcode rc = curl_easy_setopt(t->curl, CURLOPT_WRITEFUNCTION, on_body);

    if (rc == CURLE_OK)
        rc = curl_easy_setopt(t->curl, CURLOPT_WRITEDATA, (void *)t);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(t->curl, CURLOPT_HEADERFUNCTION, on_header);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(t->curl, CURLOPT_HEADERDATA, (void *)t);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(t->curl, CURLOPT_PREREQFUNCTION, on_send);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(t->curl, CURLOPT_PREREQDATA, (void *)t);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(t->curl, CURLOPT_ERRORBUFFER, t->errbuf);
    return rc;
}

void dp_transfer_reset(dp_transfer *t)
{
    t->body_len = 0;
    t->too_large = 0;
    t->headers_done = 0;
    t->sends = 0;
    t->content_type[0] = t->retry_after[0] = t->errbuf[0] = '\0';
}

struct curl_slist *dp_transfer_headers(dp_transfer *t, struct curl_slist *headers, char *type,
                                       const char *token, size_t token_len)
{
    if (type != NULL) {
        t->type_node.data = type;
        t->type_node.next = headers;
        headers = &t->type_node;
    }
    if (token != NULL) {
        memcpy(t->auth, AUTH_PREFIX, sizeof AUTH_PREFIX - 1);
        memcpy(t->auth + sizeof AUTH_PREFIX - 1, token, token_len);
        t->auth[sizeof AUTH_PREFIX - 1 + token_len] = '\0';
        t->auth_len = sizeof AUTH_PREFIX + token_len;
        t->auth_node.data = t->auth;
        t->auth_node.next = headers;
        headers = &t->auth_node;
    }
    return headers;
}

void dp_transfer_wipe(dp_transfer *t)
{
    dp_wipe(t->auth, t->auth_len);
    t->auth_len = 0;
    if (t->body != NULL)
        dp_wipe(t->body, t->body_len); /* token endpoints answer with secrets */
    t->body_len = 0;
}

void dp_transfer_free(dp_transfer *t)
{
    if (t->curl != NULL)
        curl_easy_cleanup(t->curl);
    t->curl = NULL;
    dp_wipe(t->auth, t->auth_len);
    t->auth_len = 0;
    if (t->body != NULL)
        dp_wipe(t->body, t->body_cap);
    free(t->body);
    t->body = NULL;
    t->body_len = t->body_cap = 0;
}

/* ---- lifecycle ---- */

dp_client *dp_check_client(lua_State *L, int idx)
{
    return luaL_checkudata(L, idx, DP_CLIENT_MT);
}

/* close, __gc and __close: idempotent. */
static int l_close(lua_State *L)
{
    dp_client *c = dp_check_client(L, 1);

    if (c->multi != NULL)
        dp_multi_cancel(L, c);
    dp_transfer_free(&c->req);
    if (c->unshared != NULL)
        curl_easy_cleanup(c->unshared);
    c->unshared = NULL;
    if (c->download != NULL)
        curl_easy_cleanup(c->download);
    c->download = NULL;
    if (c->share != NULL) /* after its last handle */
        dp_share_release(c->share);
    c->share = NULL;
    curl_slist_free_all(c->headers);
    c->headers = NULL;
    free(c->base);
    c->base = NULL;
    free(c->url);
    c->url = NULL;
    c->url_cap = 0;
    dp_wipe(c->post, c->post_cap);
    free(c->post);
    c->post = NULL;
    c->post_cap = c->post_len = 0;
    return 0;
}

static int l_tostring(lua_State *L)
{
    dp_client *c = dp_check_client(L, 1);
    lua_pushfstring(L, DP_CLIENT_MT ": %p%s", (void *)c, c->req.curl ? "" : " (closed)");
    return 1;
}

static int add_header(dp_client *c, const char *header)
{
    struct curl_slist *l = curl_slist_append(c->headers, header);
    if (l == NULL)
        return 0;
    c->headers = l;
    return 1;
}

#define SETOPT(opt, val)                                                     \
    do {                                                                     \
        CURLcode rc_ = curl_easy_setopt(c->req.curl, opt, val);              \
        if (rc_ != CURLE_OK)                                                 \
            return luaL_error(L, "libcurl refused " #opt ": %s",             \
                              curl_easy_strerror(rc_));                      \
    } while (0)

/* core.new{endpoint=, timeout=, connect_timeout=, ca_file=, user_agent=,
 *          quota_project=, proxy=} -> client. Bad options raise. */
static int l_new(lua_State *L)
{
    dp_options o;
    dp_endpoint ep;
    dp_client *c;

    /* Closed first, so that any error below leaves a consistent object
     * for __gc. */
    c = lua_newuserdata(L, sizeof *c);
    memset(c, 0, sizeof *c);
    c->ref = LUA_NOREF;
    luaL_getmetatable(L, DP_CLIENT_MT);
    lua_setmetatable(L, -2);

    read_options(L, &o, &ep);
    c->base = ep.base;
    c->https = ep.https;
    c->loopback = ep.loopback;
    /* No "Expect:" needed: libcurl 7.80+ asks for 100-continue only above
     * 1 MiB of body, and no request here comes near. */
    if (!add_header(c, "Accept: application/json"))
        return luaL_error(L, "out of memory");
    if (o.quota_project != NULL) {
        lua_pushfstring(L, "x-goog-user-project: %s", o.quota_project);
        if (!add_header(c, lua_tostring(L, -1)))
            return luaL_error(L, "out of memory");
        lua_pop(L, 1);
    }
    c->req.curl = curl_easy_init();
    if (c->req.curl == NULL)
        return luaL_error(L, "curl_easy_init failed");
    c->share = dp_share_acquire(L);
    SETOPT(CURLOPT_SHARE, dp_share_handle(c->share));

#if LIBCURL_VERSION_NUM >= 0x075500 /* 7.85.0 */
    SETOPT(CURLOPT_PROTOCOLS_STR, ep.https ? "https" : "http");
    SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "https");
#else
    SETOPT(CURLOPT_PROTOCOLS, ep.https ? CURLPROTO_HTTPS : CURLPROTO_HTTP);
    SETOPT(CURLOPT_REDIR_PROTOCOLS, CURLPROTO_HTTPS);
#endif
    SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
    SETOPT(CURLOPT_SSL_VERIFYPEER, 1L);
    SETOPT(CURLOPT_SSL_VERIFYHOST, 2L);
    SETOPT(CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    if (o.ca_file != NULL)
        SETOPT(CURLOPT_CAINFO, o.ca_file);
    /* One call at a time: HTTP/1.1 keep-alive is the fastest here. */
    SETOPT(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
    SETOPT(CURLOPT_TIMEOUT_MS, o.timeout_ms);
    SETOPT(CURLOPT_CONNECTTIMEOUT_MS, o.connect_ms);
    SETOPT(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)BODY_MAX);
    /* A proxy only ever sees a CONNECT tunnel, never a request in clear. */
    SETOPT(CURLOPT_HTTPPROXYTUNNEL, 1L);
    if (o.proxy != NULL)
        SETOPT(CURLOPT_PROXY, o.proxy);
    else if (ep.loopback)
        SETOPT(CURLOPT_NOPROXY, "*"); /* the emulator is local */
    if (o.user_agent != NULL)
        SETOPT(CURLOPT_USERAGENT, o.user_agent);
    SETOPT(CURLOPT_HTTPHEADER, c->headers);
    SETOPT(CURLOPT_PRIVATE, (void *)c);
    if (dp_transfer_bind(&c->req) != CURLE_OK)
        return luaL_error(L, "libcurl refused the transfer's callbacks");
    return 1;
}

/* core.check_options(opts) -> {scheme=, host=, port=, base=, loopback=,
 * timeout_ms=, connect_timeout_ms=}: the checks and parse of core.new, for
 * transports that do not use libcurl. Bad options raise. */
static int l_check_options(lua_State *L)
{
    dp_options o;
    dp_endpoint ep;

    read_options(L, &o, &ep);
    lua_createtable(L, 0, 7);
    lua_pushstring(L, ep.https ? "https" : "http");
    lua_setfield(L, -2, "scheme");
    lua_pushlstring(L, ep.base + ep.host_start, ep.host_len);
    lua_setfield(L, -2, "host");
    lua_pushinteger(L, ep.port);
    lua_setfield(L, -2, "port");
    lua_pushstring(L, ep.base);
    lua_setfield(L, -2, "base");
    free(ep.base);
    lua_pushboolean(L, ep.loopback);
    lua_setfield(L, -2, "loopback");
    lua_pushinteger(L, o.timeout_ms);
    lua_setfield(L, -2, "timeout_ms");
    lua_pushinteger(L, o.connect_ms);
    lua_setfield(L, -2, "connect_timeout_ms");
    return 1;
}

/* ---- requests ---- */

int dp_fail(lua_State *L, const char *kind, const char *message)
{
    lua_pushnil(L);
    lua_pushstring(L, kind);
    lua_pushstring(L, message);
    return 3;
}

const char *dp_kind_of(CURLcode rc, const dp_transfer *t)
{
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return "dns";
    case CURLE_COULDNT_CONNECT:
        return "connect";
    case CURLE_FILESIZE_EXCEEDED:
        return "too_large";
    case CURLE_WRITE_ERROR:
        return t->too_large ? "too_large" : "network";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
        return "tls";
    default:
        return "network";
    }
}

int dp_valid_method(const char *m)
{
    return strcmp(m, "GET") == 0 || strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0 ||
           strcmp(m, "PATCH") == 0 || strcmp(m, "DELETE") == 0;
}

int dp_valid_path(const char *p, size_t len)
{
    size_t i;

    if (len == 0 || p[0] != '/')
        return 0;
    for (i = 0; i < len; i++)
        if ((unsigned char)p[i] <= 0x20 || (unsigned char)p[i] > 0x7e || p[i] == '#')
            return 0;
    return 1;
}

/* libcurl copies the URL: it is set again only when it changes. */
CURLcode dp_client_set_url(dp_client *c, const char *path, size_t path_len)
{
    size_t base_len = strlen(c->base), need = base_len + path_len + 1;

    if (c->url_set && strcmp(c->url + base_len, path) == 0)
        return CURLE_OK;
    c->url_set = 0;
    if (need > c->url_cap) {
        char *p = realloc(c->url, need);
        if (p == NULL)
            return CURLE_OUT_OF_MEMORY;
        c->url = p;
        c->url_cap = need;
    }
    memcpy(c->url, c->base, base_len);
    memcpy(c->url + base_len, path, path_len + 1);
    c->url_set = curl_easy_setopt(c->req.curl, CURLOPT_URL, c->url) == CURLE_OK;
    return c->url_set ? CURLE_OK : CURLE_OUT_OF_MEMORY;
}

int dp_client_swap(dp_client *c)
{
    CURL *h;

    if (c->unshared == NULL) {
        /* duphandle copies every option but the share */
        c->unshared = curl_easy_duphandle(c->req.curl);
        if (c->unshared == NULL)
            return 0;
    }
    h = c->req.curl;
    c->req.curl = c->unshared;
    c->unshared = h;
    c->url_set = 0;
    return 1;
}

char dp_no_type[] = "Content-Type:"; /* drops libcurl's form type */

/* The body is copied into the client: an asynchronous request outlives
 * the Lua string, and a form body may carry secrets, wiped on release. */
static CURLcode set_method(dp_client *c, const char *method, const char *body, size_t body_len)
{
    CURLcode rc = curl_easy_setopt(c->req.curl, CURLOPT_CUSTOMREQUEST, (char *)NULL);

    if (rc == CURLE_OK && strcmp(method, "GET") == 0)
        return curl_easy_setopt(c->req.curl, CURLOPT_HTTPGET, 1L);
    if (body_len + 1 > c->post_cap) {
        char *p = malloc(body_len + 1);
        if (p == NULL)
            return CURLE_OUT_OF_MEMORY;
        dp_wipe(c->post, c->post_cap);
        free(c->post);
        c->post = p;
        c->post_cap = body_len + 1;
    }
    memcpy(c->post, body ? body : "", body_len);
    c->post_len = body_len;
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->req.curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->req.curl, CURLOPT_POSTFIELDS, c->post);
    if (rc == CURLE_OK && strcmp(method, "POST") != 0)
        rc = curl_easy_setopt(c->req.curl, CURLOPT_CUSTOMREQUEST, method);
    return rc;
}

int dp_client_prepare(lua_State *L, dp_client *c, int arg, int unshared)
{
    static char json_type[] = "Content-Type: application/json";
    static char form_type[] = "Content-Type: application/x-www-form-urlencoded";
    const char *method = luaL_checkstring(L, arg);
    size_t path_len, token_len = 0, body_len = 0;
    const char *path = luaL_checklstring(L, arg + 1, &path_len);
    const char *token = luaL_optlstring(L, arg + 2, NULL, &token_len);
    const char *body = luaL_optlstring(L, arg + 3, NULL, &body_len);
    const char *form = luaL_optstring(L, arg + 4, "json");
    char *type = NULL;
    const char *problem;
    CURLcode rc;

    luaL_argcheck(L, dp_valid_method(method), arg, "method must be GET, POST, PUT, PATCH or DELETE");
    luaL_argcheck(L, dp_valid_path(path, path_len), arg + 1, "path must start with / and be printable ASCII");
    luaL_argcheck(L, body == NULL || strcmp(method, "GET") != 0, arg + 3, "a GET has no body");
    luaL_argcheck(L, strcmp(form, "json") == 0 || strcmp(form, "form") == 0, arg + 4,
                  "body type must be 'json' or 'form'");
    if (c->req.curl == NULL)
        return dp_fail(L, "closed", "client is closed");
    if (c->multi != NULL)
        return luaL_error(L, "client is busy with an asynchronous request");
    if (token != NULL && (problem = dp_token_problem(token, token_len)) != NULL)
        return dp_fail(L, "invalid_token", problem);
    if (unshared && !dp_client_swap(c))
        return dp_fail(L, "network", "out of memory");

    if (strcmp(method, "GET") != 0)
        type = body == NULL ? dp_no_type : form[0] == 'f' ? form_type : json_type;
    dp_transfer_reset(&c->req);
    rc = dp_client_set_url(c, path, path_len);
    if (rc == CURLE_OK)
        rc = set_method(c, method, body, body_len);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c->req.curl, CURLOPT_HTTPHEADER,
                              dp_transfer_headers(&c->req, c->headers, type, token, token_len));
    if (rc != CURLE_OK) {
        dp_client_release(c);
        if (unshared)
            (void)dp_client_swap(c);
        return dp_fail(L, "network", curl_easy_strerror(rc));
    }
    return 0;
}

void dp_client_release(dp_client *c)
{
    /* Plain pointer options: libcurl cannot refuse them. The handle must
     * not keep pointers to the token or to a multi that may go away. */
    if (c->req.curl != NULL) {
        (void)curl_easy_setopt(c->req.curl, CURLOPT_HTTPHEADER, c->headers);
        (void)curl_easy_setopt(c->req.curl, CURLOPT_CLOSESOCKETFUNCTION, (curl_closesocket_callback)NULL);
    }
    dp_wipe(c->req.auth, c->req.auth_len);
    c->req.auth_len = 0;
    dp_wipe(c->post, c->post_len);
    c->post_len = 0;
}

int dp_transfer_push(lua_State *L, dp_transfer *t, CURLcode rc)
{
    long status = 0;

    if (rc == CURLE_OK)
        rc = curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &status);
    if (rc == CURLE_OK && !t->headers_done) {
        dp_fail(L, "network", "the connection closed before the headers ended");
    } else if (rc != CURLE_OK) {
        const char *kind = dp_kind_of(rc, t);
        if (strcmp(kind, "too_large") == 0)
            dp_fail(L, kind, "response body is larger than 1 MiB");
        else
            dp_fail(L, kind, t->errbuf[0] != '\0' ? t->errbuf : curl_easy_strerror(rc));
    } else {
        lua_pushinteger(L, status);
        lua_pushlstring(L, t->body ? t->body : "", t->body_len);
        if (t->content_type[0] != '\0')
            lua_pushstring(L, t->content_type);
        else
            lua_pushnil(L);
        if (t->retry_after[0] != '\0')
            lua_pushstring(L, t->retry_after);
        else
            lua_pushnil(L);
        dp_transfer_wipe(t);
        return 4;
    }
    lua_pushinteger(L, t->sends);
    dp_transfer_wipe(t);
    return 4;
}

/* client:request(method, path [, token [, body [, "json"|"form"]]])
 *   -> status, body, content_type|nil, retry_after|nil
 *   -> nil, kind, message, sends  (nothing was received, or the body was
 *      cut; sends: how many times the request went out, 0 if never) */
static int l_request(lua_State *L)
{
    dp_client *c = dp_check_client(L, 1);
    int failed = dp_client_prepare(L, c, 2, 0);
    CURLcode rc;

    if (failed)
        return failed;
    rc = curl_easy_perform(c->req.curl);
    dp_client_release(c);
    return dp_transfer_push(L, &c->req, rc);
}

void dp_client_method(lua_State *L, const char *name, lua_CFunction fn)
{
    luaL_getmetatable(L, DP_CLIENT_MT);
    lua_getfield(L, -1, "__index");
    lua_pushcfunction(L, fn);
    lua_setfield(L, -2, name);
    lua_pop(L, 2);
}

void dp_client_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"request", l_request},
        {"close", l_close},
        {NULL, NULL}
    };
    static const luaL_Reg meta[] = {
        {"__gc", l_close},
        {"__close", l_close},
        {"__tostring", l_tostring},
        {NULL, NULL}
    };

    dp_new_type(L, DP_CLIENT_MT, meta, methods);
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "new");
    lua_pushcfunction(L, l_check_options);
    lua_setfield(L, -2, "check_options");
}
