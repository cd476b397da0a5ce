/* Shared declarations of the dataportability.core C module. */
#ifndef DP_H
#define DP_H

#include <curl/curl.h>
#include <lua.h>
#include <lauxlib.h>

#include "token.h"

#if LIBCURL_VERSION_NUM < 0x075000
#error "dataportability needs libcurl 7.80 or later (CURLOPT_PREREQFUNCTION)"
#endif

#define DP_CLIENT_MT "dataportability.client"
#define DP_MULTI_MT "dataportability.multi"
#define AUTH_PREFIX "Authorization: Bearer "

typedef struct dp_multi dp_multi;
typedef struct dp_share dp_share;

/* One request and its answer: the client's own, or one of a batch's
 * (batch.c). The libcurl callbacks write here, and never call into Lua. */
typedef struct dp_transfer {
    CURL *curl;
    char *body;                 /* the response body */
    size_t body_len, body_cap;
    int too_large;
    int headers_done;           /* the blank line ending the headers was seen */
    int sends;                  /* times libcurl sent the request */
    char content_type[128];
    char retry_after[64];
    char errbuf[CURL_ERROR_SIZE];
    /* Per-request header nodes, linked in front of the client's fixed
     * headers: they live here, not on a C stack, because an asynchronous
     * request outlives the call that started it. */
    struct curl_slist type_node, auth_node;
    char auth[sizeof AUTH_PREFIX + DP_TOKEN_MAX]; /* wiped after each request */
    size_t auth_len;
} dp_transfer;

typedef struct dp_client {
    dp_transfer req;            /* req.curl is NULL once closed */
    /* Asynchronous requests (multi.c) swap this handle into req. It never
     * joins the share: a connection made in the host's loop closes through
     * that loop's multi, and must not outlive it in the shared cache. */
    CURL *unshared;
    CURL *download;             /* archive downloads (download.c), made on first use */
    dp_share *share;            /* caches shared with the Lua state's other clients */
    struct curl_slist *headers; /* per-client fixed headers */
    char *base;                 /* scheme://host:port */
    int https;
    int loopback;               /* the endpoint's host is loopback */
    char *url;                  /* base + path of the last request */
    size_t url_cap;
    int url_set;                /* url is what req.curl has */
    char *post;                 /* request body of the current request */
    size_t post_len, post_cap;
    dp_multi *multi;            /* set while an asynchronous request runs */
    int ref;                    /* keeps the userdata alive meanwhile */
    struct dp_client *next;     /* in multi's list of running clients */
} dp_client;

/* luaL_setfuncs without upvalues, for Lua 5.1 and LuaJIT alike. */
static inline void dp_setfuncs(lua_State *L, const luaL_Reg *l)
{
    for (; l->name != NULL; l++) {
        lua_pushcfunction(L, l->func);
        lua_setfield(L, -2, l->name);
    }
}

/* Registers the metatable `name`: `meta` metamethods, and `methods` as its
 * __index. */
void dp_new_type(lua_State *L, const char *name, const luaL_Reg *meta, const luaL_Reg *methods);
/* Registers the client metatable and puts `new` and `check_options` in the
 * table on top. */
void dp_client_open(lua_State *L);
/* Registers the multi metatable and puts `new_multi` in the table on top. */
void dp_multi_open(lua_State *L);

/* Adds client:download; the client type must exist. */
void dp_download_open(lua_State *L);
/* Adds method `name` to the client type, which must exist. */
void dp_client_method(lua_State *L, const char *name, lua_CFunction fn);
/* Registers the share metatable (share.c). */
void dp_share_open(lua_State *L);
/* Puts md5_file, sha256_base64url and random_base64url in the table on top. */
void dp_crypto_open(lua_State *L);

/* Adds client:many (batch.c); the client type must exist. */
void dp_batch_open(lua_State *L);

/* The Lua state's share (share.c), made on first use; the caller holds a
 * use until dp_share_release. */
dp_share *dp_share_acquire(lua_State *L);
CURLSH *dp_share_handle(const dp_share *s);
void dp_share_release(dp_share *s);

dp_client *dp_check_client(lua_State *L, int idx);
/* If the header line (len bytes, from libcurl) is header `name`, writes
 * its value to out: printable bytes only, trimmed, cut to cap - 1. */
void dp_keep_header(const char *line, size_t len, const char *name, char *out, size_t cap);
/* 127.0.0.0/8, [::1] or localhost. */
int dp_is_loopback(const char *host);
/* The error kind of a failed transfer. */
const char *dp_kind_of(CURLcode rc, const dp_transfer *t);
/* Points t's handle's callbacks and buffers at t. */
CURLcode dp_transfer_bind(dp_transfer *t);
/* Clears t's answer before a new request. */
void dp_transfer_reset(dp_transfer *t);
/* Links the Authorization node (and the Content-Type node when type is
 * not NULL) in front of `headers`; returns the new head. The token was
 * checked. */
struct curl_slist *dp_transfer_headers(dp_transfer *t, struct curl_slist *headers, char *type,
                                       const char *token, size_t token_len);
/* Wipes the token and the answer; frees nothing. */
void dp_transfer_wipe(dp_transfer *t);
/* Frees the handle and the buffers, wiped. */
void dp_transfer_free(dp_transfer *t);
/* Pushes the outcome of t's request that ended with rc: status, body,
 * content_type, retry_after; or nil, kind, message, sends. Returns 4. */
int dp_transfer_push(lua_State *L, dp_transfer *t, CURLcode rc);
/* Pushes nil, kind, message; returns 3. */
int dp_fail(lua_State *L, const char *kind, const char *message);
/* Exchanges req.curl and the unshared handle, made on first use; false
 * when out of memory. */
int dp_client_swap(dp_client *c);
/* Points c's handle at base + path. */
CURLcode dp_client_set_url(dp_client *c, const char *path, size_t path_len);
/* Request methods and paths the client sends. */
int dp_valid_method(const char *method);
int dp_valid_path(const char *path, size_t len);
/* The Content-Type header of a bodiless POST: none. */
extern char dp_no_type[];
/* Checks the request arguments at arg..arg+4 (method, path, token, body,
 * body type) and prepares c's handle; with `unshared`, the unshared one,
 * swapped in (dp_client_swap) once nothing can raise. Returns 0 when ready,
 * else pushes nil, kind, message and returns 3, handles unswapped. Bad
 * arguments raise. */
int dp_client_prepare(lua_State *L, dp_client *c, int arg, int unshared);
/* After a request: detaches its header nodes and wipes the token. */
void dp_client_release(dp_client *c);
/* Takes c's running request out of its multi, dropping the result. */
void dp_multi_cancel(lua_State *L, dp_client *c);

#endif
