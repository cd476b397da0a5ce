/* What the files of dataportability.core share. Each object has its file:
 * endpoint.c (URL checks), transfer.c (the Lua-free engine), client.c (the
 * client type), download.c and batch.c (its methods that call back into
 * Lua), multi.c (requests driven by a host's event loop), share.c (the
 * caches a Lua state's clients share), files.c (private archive files),
 * crypto.c, token.c and core.c (the module). */
#ifndef DP_H
#define DP_H

#include <sys/types.h>

#include "compat.h"
#include "transfer.h"

#define DP_CLIENT_MT "dataportability.core.client"

typedef struct dp_multi dp_multi;
typedef struct dp_share dp_share;

typedef struct dp_client {
    dp_transfer req;            /* req.curl is NULL once closed */
    dp_transfer dl;             /* downloads (download.c): dl.curl made on first use */
    CURLM *engine;              /* runs the blocking transfers; made on first use */
    /* Asynchronous requests (multi.c) swap this handle into req. It never
     * joins the share: a connection made in the host's loop closes through
     * that loop's multi, and must not outlive it in the shared cache. */
    CURL *unshared;
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
    int busy;                   /* a call that runs Lua callbacks is under way */
    int closing;                /* closed while busy: released when that call returns */
    pid_t pid;                  /* the process whose connections the handles hold */
    dp_part part;               /* the file of the running download (download.c) */
    char *if_range;             /* its "If-Range: <etag>" header, or NULL */
    dp_multi *multi;            /* set while an asynchronous request runs */
    int downloading;            /* ... and it is a download: dl, not req */
    int ref;                    /* keeps the userdata alive meanwhile */
    struct dp_client *next;     /* in multi's list of running clients */
} dp_client;

/* ---- core.c ---- */

/* Registers the metatable `name`: `meta` metamethods, and `methods` as its
 * __index. */
void dp_new_type(lua_State *L, const char *name, const luaL_Reg *meta, const luaL_Reg *methods);

/* ---- fork safety (share.c) ----
 * libcurl objects made in another process hold that process's connections:
 * freeing them would talk on its sockets (TLS close_notify), using them
 * would read its answers. They are abandoned: kept reachable, never
 * touched again. */
int dp_forked(pid_t pid);
void dp_abandon(void *object);

/* ---- share.c ---- */

void dp_share_open(lua_State *L);
/* The Lua state's share for this process, made on first use; the caller
 * holds a use until dp_share_release. */
dp_share *dp_share_acquire(lua_State *L);
CURLSH *dp_share_handle(const dp_share *s);
void dp_share_release(dp_share *s);

/* ---- client.c ---- */

/* Registers the client type and puts `new` and `check_options` in the
 * table on top. */
void dp_client_open(lua_State *L);
dp_client *dp_check_client(lua_State *L, int idx);
/* Raises when a callback of c's running call starts another call, and
 * starts c afresh in a process other than the one that made it. Returns
 * whether c is usable (not closed). */
int dp_client_ready(lua_State *L, dp_client *c);
/* Checks the request arguments at arg..arg+4 (method, path, token, body,
 * body type) and prepares c's handle; with `unshared`, the unshared one,
 * swapped in (dp_client_swap) once nothing can raise. Returns 0 when
 * ready, else pushes the seven failure values and returns 7, handles
 * unswapped. Bad arguments raise. */
int dp_client_prepare(lua_State *L, dp_client *c, int arg, int unshared);
/* After a request: detaches its header nodes and wipes the token. */
void dp_client_release(dp_client *c);
/* A path the client sends: starts with /, printable ASCII, no #. */
int dp_valid_path(const char *path, size_t len);
/* Exchanges req.curl and the unshared handle, made on first use; false
 * when out of memory. */
int dp_client_swap(dp_client *c);
/* Points c's handle at base + path. */
CURLcode dp_client_set_url(dp_client *c, const char *path, size_t path_len);
/* The Content-Type header of a bodiless POST: none. */
extern char dp_no_type[];
/* Pushes the seven values of t's outcome (docs/transport.md); returns 7. */
int dp_push_result(lua_State *L, dp_transfer *t, CURLcode rc);
int dp_push_failure(lua_State *L, const char *kind, const char *message, dp_sent sent);

/* Runs t, a transfer of c, to its end on c's engine. Between libcurl's
 * steps, between(L, t, ud) may call Lua and answer DP_GO_ON or DP_RAISED
 * (a callback raised: its error is on top). Returns DP_GO_ON (the result
 * in *rc), DP_RAISED, or DP_STOPPED: the client was closed meanwhile, or
 * the process forked in a callback (then libcurl is not called again). */
#define DP_GO_ON 0
#define DP_RAISED 1
#define DP_STOPPED 2
int dp_client_run(lua_State *L, dp_client *c, dp_transfer *t,
                  int (*between)(lua_State *L, dp_transfer *t, void *ud), void *ud, CURLcode *rc);
/* Ends a call that set c->busy: a close asked for meanwhile is done now;
 * a fork inside a callback raises (the child cannot go on with the
 * parent's transfer). */
void dp_client_unbusy(lua_State *L, dp_client *c, pid_t pid);

/* ---- download.c, batch.c: client methods ---- */

int dp_client_download(lua_State *L);
/* A download in three steps, for the blocking call and the multi: begin
 * reads url, path and opts at arg..arg+2, opens the part file and
 * prepares c->dl; it returns 0, or pushes the result of a download
 * refused before any I/O and returns 1 (bad options raise). end closes
 * the part and pushes the result of the transfer that ended with rc;
 * close only closes (a transfer that stopped). */
int dp_download_begin(lua_State *L, dp_client *c, int arg);
int dp_download_end(lua_State *L, dp_client *c, CURLcode rc);
void dp_download_close(dp_client *c);
/* Pushes the result table of a download refused before it ran; 1. */
int dp_download_refuse(lua_State *L, const char *kind, const char *message);
/* Once the running download's answer is 2xx (else 0): the bytes of the
 * file, its whole size (-1: not known yet), the bytes of this call. */
int dp_download_progress(const dp_client *c, lua_Integer *done, lua_Integer *total, lua_Integer *written);
/* core.part_file and core.download_target, for downloads driven from Lua */
void dp_download_open(lua_State *L);
int dp_client_many(lua_State *L);
void dp_batch_open(lua_State *L);

/* ---- multi.c ---- */

void dp_multi_open(lua_State *L);
/* Takes c's running request out of its multi, dropping the result. */
void dp_multi_cancel(lua_State *L, dp_client *c);
/* The same in a forked child: c is forgotten, libcurl is not called. */
void dp_multi_forget(lua_State *L, dp_client *c);

/* ---- files.c ---- */

void dp_files_open(lua_State *L);

/* ---- crypto.c ---- */

void dp_crypto_open(lua_State *L);

#endif
