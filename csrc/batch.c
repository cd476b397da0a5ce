/* client:many: one bodiless POST per token, up to `concurrency` at once,
 * through libcurl's multi interface. Over HTTPS the transfers ask for
 * HTTP/2 and wait for one connection to multiplex on (PIPEWAIT); where the
 * server offers only HTTP/1.1 each slot keeps its own connection alive.
 *
 * A batch keeps its connections to itself, in its multi, and closes them
 * when it ends. In the state's shared cache (share.c) the client's own
 * HTTP/1.1 connection would mark the host as one that cannot multiplex,
 * and the batch would open a connection per slot; and up to 4 idle
 * connections per slot would linger there. */
#define _POSIX_C_SOURCE 200809L /* pid_t */
#include <stdlib.h>
#include <string.h>

#include "dp.h"

#define DP_BATCH_MT "dataportability.core.batch"

typedef struct {
    dp_transfer t;
    lua_Integer index; /* the token's position in the list; 0: idle */
} dp_slot;

typedef struct {
    CURLM *multi;
    dp_slot *slots;
    int nslots;
    struct curl_slist *headers; /* the client's fixed headers: a callback may close it */
    pid_t pid;                  /* the process whose connections the multi holds */
} dp_batch;

/* Idempotent: also the __gc of a batch left behind by a raise. In a
 * process forked from a callback, the libcurl objects are abandoned. */
static void free_batch(dp_batch *b)
{
    int i, forked = dp_forked(b->pid);

    for (i = 0; i < b->nslots; i++) {
        if (b->slots[i].index != 0 && !forked)
            (void)curl_multi_remove_handle(b->multi, b->slots[i].t.curl);
        if (forked && b->slots[i].t.curl != NULL)
            dp_abandon(b->slots[i].t.curl);
        if (forked)
            b->slots[i].t.curl = NULL;
        dp_transfer_free(&b->slots[i].t);
    }
    free(b->slots);
    b->slots = NULL;
    b->nslots = 0;
    if (b->multi != NULL && forked)
        dp_abandon(b->multi);
    else if (b->multi != NULL)
        (void)curl_multi_cleanup(b->multi);
    b->multi = NULL;
    curl_slist_free_all(b->headers);
    b->headers = NULL;
}

static int l_batch_gc(lua_State *L)
{
    free_batch(luaL_checkudata(L, 1, DP_BATCH_MT));
    return 0;
}

/* A slot's handle: the client's options, its own callbacks' data, HTTP/2
 * where TLS lets the server choose it. */
static CURLcode new_slot(const dp_client *c, dp_slot *s)
{
    CURLcode rc;

    s->t.curl = curl_easy_duphandle(c->req.curl);
    if (s->t.curl == NULL)
        return CURLE_OUT_OF_MEMORY;
    rc = dp_transfer_bind(&s->t, s);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(s->t.curl, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
    if (rc == CURLE_OK && c->https)
        rc = curl_easy_setopt(s->t.curl, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(s->t.curl, CURLOPT_PIPEWAIT, 1L);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(s->t.curl, CURLOPT_CUSTOMREQUEST, (char *)NULL);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(s->t.curl, CURLOPT_POSTFIELDSIZE, 0L);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(s->t.curl, CURLOPT_POSTFIELDS, "");
    return rc;
}

/* on_done(index, ...): report_to pushes on_done and the index, the caller
 * the seven values of the outcome, and report calls it. A raise in on_done
 * is left on the stack, and raised again once the batch is down. report
 * returns the pcall status. */
static void report_to(lua_State *L, lua_Integer index)
{
    lua_pushvalue(L, 6);
    lua_pushinteger(L, index);
}

static int report(lua_State *L, int nargs)
{
    return lua_pcall(L, nargs + 1, 0, 0) == 0 ? DP_GO_ON : DP_RAISED;
}

/* Starts the token at `index` in slot s; an invalid one is reported at
 * once, never sent. Returns DP_GO_ON, or DP_RAISED with the error on top. */
static int start(lua_State *L, dp_batch *b, dp_slot *s, lua_Integer index)
{
    size_t len;
    const char *token, *problem;
    struct curl_slist *h;
    CURLcode rc;
    CURLMcode mrc;

    lua_rawgeti(L, 4, (int)index);
    if (lua_type(L, -1) != LUA_TSTRING) { /* changed under the batch by a callback */
        lua_pushfstring(L, "tokens[%d] is a %s, not a string", (int)index, luaL_typename(L, -1));
        return DP_RAISED;
    }
    token = lua_tolstring(L, -1, &len);
    problem = dp_token_problem(token, len);
    if (problem != NULL) {
        lua_pop(L, 1);
        report_to(L, index);
        return report(L, dp_push_failure(L, "invalid_token", problem, DP_SENT_NO));
    }
    dp_transfer_reset(&s->t);
    h = dp_transfer_headers(&s->t, b->headers, dp_no_type, token, len);
    rc = h == NULL ? CURLE_OUT_OF_MEMORY : curl_easy_setopt(s->t.curl, CURLOPT_HTTPHEADER, h);
    lua_pop(L, 1);
    mrc = rc == CURLE_OK ? curl_multi_add_handle(b->multi, s->t.curl) : CURLM_OK;
    if (rc != CURLE_OK || mrc != CURLM_OK) {
        dp_transfer_wipe(&s->t);
        report_to(L, index);
        return report(L, dp_push_failure(L, "network", rc != CURLE_OK ? curl_easy_strerror(rc)
                                         : curl_multi_strerror(mrc), DP_SENT_NO));
    }
    s->index = index;
    return 0;
}

/* Reports the transfers that ended; *ended counts them. Returns DP_GO_ON,
 * DP_RAISED, or DP_STOPPED when a callback closed the client or forked. */
static int finish(lua_State *L, const dp_client *c, dp_batch *b, int *ended)
{
    dp_transfer *t;
    CURLcode rc;

    while ((t = dp_engine_done(b->multi, &rc)) != NULL) {
        dp_slot *s = t->owner;
        lua_Integer index = s->index;

        (void)curl_easy_setopt(t->curl, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
        s->index = 0;
        (*ended)++;
        report_to(L, index);
        if (report(L, dp_push_result(L, t, rc)) != DP_GO_ON)
            return DP_RAISED;
        if (c->closing || dp_forked(b->pid))
            return DP_STOPPED;
    }
    return DP_GO_ON;
}

/* client:many(method, path, tokens, concurrency, on_done)
 *   on_done(i, <the seven values of a request>) for each tokens[i], as the
 *   transfers end. An error raised by on_done stops the batch and is
 *   raised again. On a closed client, or one closed in on_done, the tokens
 *   not reported are the caller's to answer. */
int dp_client_many(lua_State *L)
{
    dp_client *c = dp_check_client(L, 1);
    const char *method = luaL_checkstring(L, 2);
    size_t path_len;
    const char *path = luaL_checklstring(L, 3, &path_len);
    lua_Integer concurrency = luaL_checkinteger(L, 5);
    lua_Integer n, next = 1;
    dp_batch *b;
    int i, running = 0, wait = 0, failed = DP_GO_ON;
    CURLMcode mrc = CURLM_OK;
    const struct curl_slist *h;

    luaL_argcheck(L, strcmp(method, "POST") == 0, 2, "a batch sends POST");
    luaL_argcheck(L, dp_valid_path(path, path_len), 3, "path must start with / and be printable ASCII");
    luaL_checktype(L, 4, LUA_TTABLE);
    luaL_argcheck(L, concurrency >= 1 && concurrency <= DP_CONCURRENCY_MAX, 5,
                  "concurrency must be in [1, limits.concurrency_max]");
    luaL_checktype(L, 6, LUA_TFUNCTION);
    lua_settop(L, 6);
    if (!dp_client_ready(L, c)) /* closed: every token is left unreported */
        return 0;
    n = (lua_Integer)dp_rawlen(L, 4);
    if (n == 0)
        return 0;
    if (concurrency > n)
        concurrency = n;
    if (dp_client_set_url(c, path, path_len) != CURLE_OK) /* the slots copy it */
        return luaL_error(L, "out of memory");

    b = lua_newuserdata(L, sizeof *b); /* index 7: freed by __gc after a raise */
    memset(b, 0, sizeof *b);
    b->pid = c->pid;
    luaL_getmetatable(L, DP_BATCH_MT);
    lua_setmetatable(L, -2);
    b->multi = curl_multi_init();
    b->slots = calloc((size_t)concurrency, sizeof *b->slots);
    if (b->multi == NULL || b->slots == NULL)
        return luaL_error(L, "out of memory");
    b->nslots = (int)concurrency;
    for (h = c->headers; h != NULL; h = h->next) {
        struct curl_slist *l = curl_slist_append(b->headers, h->data);
        if (l == NULL)
            return luaL_error(L, "out of memory");
        b->headers = l;
    }
    if (curl_multi_setopt(b->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX) != CURLM_OK)
        return luaL_error(L, "libcurl cannot multiplex");
    for (i = 0; i < b->nslots; i++)
        if (new_slot(c, &b->slots[i]) != CURLE_OK)
            return luaL_error(L, "libcurl refused a transfer's options");

    /* A callback that closes the client stops the batch: the tokens not
     * reported are left to the caller. */
    c->busy = 1;
    while (failed == DP_GO_ON && mrc == CURLM_OK && (running > 0 || next <= n)) {
        int ended = 0;

        for (i = 0; i < b->nslots && next <= n && failed == DP_GO_ON; i++)
            if (b->slots[i].index == 0) {
                failed = start(L, b, &b->slots[i], next++);
                if (failed == DP_GO_ON && (c->closing || dp_forked(b->pid)))
                    failed = DP_STOPPED;
            }
        if (failed == DP_GO_ON)
            mrc = dp_engine_step(b->multi, wait, &running);
        if (failed == DP_GO_ON && mrc == CURLM_OK)
            failed = finish(L, c, b, &ended);
        wait = ended == 0; /* a slot freed: fill it before waiting */
    }
    free_batch(b);
    dp_client_unbusy(L, c, b->pid); /* raises in a child forked by on_done */
    if (failed == DP_RAISED) /* on_done's error is on top */
        return lua_error(L);
    if (mrc != CURLM_OK)
        return luaL_error(L, "libcurl's multi interface failed: %s", curl_multi_strerror(mrc));
    return 0;
}

void dp_batch_open(lua_State *L)
{
    static const luaL_Reg meta[] = {
        {"__gc", l_batch_gc},
        {NULL, NULL}
    };
    static const luaL_Reg none[] = {{NULL, NULL}};

    dp_new_type(L, DP_BATCH_MT, meta, none);
}
