-- The checks of fuzz/response_fuzz.c: what a hostile server's answer can
-- do to the Lua layer. Loaded once; returns check(input), which raises on a
-- broken invariant (the C side then aborts, and libFuzzer keeps the input).
--
-- Input, one field a line, the body last (every field may be missing):
--   <status> [<method>]   status: the last 3 digits of the number (else
--                         500); method, after a space:
--                         reset, initiate, state, retry, cancel,
--                         check_access_type, oauth.refresh, oauth.revoke
--   <content-type>        as a transport gives it: see header_value
--   <retry-after>
--   <secret>              the token the call used, which the server echoes
--   <body...>
--
-- Checks:
--   1. errors.from_response never raises, and gives an error table: the
--      method, a known kind, http_status, a boolean retryable, a one-line
--      message; tostring is one line without control bytes.
--   2. errors.redact(body, secret): the secret survives nowhere, except
--      as part of the word in a "<redacted>" marker; a body without the
--      secret comes back as it was.
--   3. The whole path of a call, through a fake transport that answers
--      with the input: client methods (client.lua) and a token source's
--      refresh and revoke (oauth.lua), with the secret as the token. A
--      call never raises; it returns a result or nil and an error table
--      as in 1; the secret is in neither, nor in tostring.
-- Every call runs under an instruction budget, so a loop that never ends
-- is a crash, not a hang.
local errors = require("dataportability.errors")
local dp = require("dataportability")
local core = require("dataportability.core")
local budget = assert(fuzz_budget, "fuzz_budget comes from response_fuzz.c") -- luacheck: ignore

local find, match, sub, format = string.find, string.match, string.sub, string.format
local pack, unpack = table.pack, table.unpack

local STRICT = os.getenv("DP_FUZZ_STRICT") == "1"

-- Findings reported and not fixed yet (docs/hardening.md). Each narrows one
-- check; DP_FUZZ_STRICT=1 restores them all. Drop an entry once its fix is
-- in, and the corpus input named after it becomes its regression test.
-- Findings F1-F4 (docs/hardening.md) are fixed; the corpus inputs named
-- regress-f1..f4 are their regression tests.
-- A finding reported and not fixed yet gets an entry here that narrows one
-- check; DP_FUZZ_STRICT=1 restores them all.
local KNOWN = STRICT and {} or {
    -- By design since the F4 fix: the error table's own field names
    -- ("message", "kind", ...) stay even when a token is a substring of
    -- them; real tokens are 100+ bytes, so the calls of check 3 use tokens
    -- of 16 bytes or more.
    scrub_short_token = true,
}

local BUDGET = 20000 -- thousands of Lua instructions, for one call

local function fail(fmt, ...)
    error(format(fmt, ...), 0)
end

-- f(...) under the budget; its results. Raising is a failure.
local function run(what, f, ...)
    budget(BUDGET)
    local r = pack(pcall(f, ...))
    if budget(-1) then
        fail("%s ran over its budget of %d thousand Lua instructions", what, BUDGET)
    end
    if not r[1] then
        fail("%s raised: %s", what, tostring(r[2]))
    end
    return unpack(r, 2, r.n)
end

-- Whether `secret` is in `s` other than inside a "<redacted>" marker (for
-- secrets without '<' and '>', the only way it can be there legitimately:
-- a secret "redact" is in every marker).
local function leaks(s, secret)
    local pos = 1
    while true do
        local i, j = find(s, secret, pos, true)
        if not i then return false end
        local inside = false
        for m = i - 1, i - 8, -1 do
            if m >= 1 and sub(s, m, m + 9) == "<redacted>" and j <= m + 8 then
                inside = true
                break
            end
        end
        if not inside then return true end
        pos = i + 1
    end
end

-- Whether `secret` leaks from any string, key, value or tostring reachable
-- from `v`.
local function leaks_deep(v, secret, seen)
    seen = seen or {}
    if type(v) == "string" then return leaks(v, secret) end
    if type(v) ~= "table" or seen[v] then return false end
    seen[v] = true
    if leaks(tostring(v), secret) then return true end
    for k, x in pairs(v) do
        if leaks_deep(k, secret, seen) or leaks_deep(x, secret, seen) then return true end
    end
    return false
end

local KINDS = { redirect = true, api = true, http = true }

-- tostring(err), without the fields of a known finding.
local function printed(err)
    if KNOWN.raw_status_reason then
        local copy = {}
        for k, v in pairs(err) do copy[k] = v end
        copy.status, copy.reason = nil, nil
        return tostring(setmetatable(copy, getmetatable(err)))
    end
    return tostring(err)
end

-- status: the answer's; optional: http_status may be missing (an error
-- about a 2xx answer's content).
local function check_error(err, method, status, kinds, optional)
    if not errors.is_error(err) then fail("not an error table: %s", tostring(err)) end
    if err.method ~= method then fail("method %s, not %s", tostring(err.method), method) end
    if not kinds[err.kind] then fail("unexpected kind %s", tostring(err.kind)) end
    if err.http_status ~= status and not (optional and err.http_status == nil) then
        fail("http_status %s, not %d", tostring(err.http_status), status)
    end
    if type(err.retryable) ~= "boolean" then fail("retryable is not a boolean") end
    if type(err.message) ~= "string" then fail("message is not a string") end
    if find(err.message, "%c") then fail("message has a control byte: %q", err.message) end
    local s = run("tostring", printed, err)
    if type(s) ~= "string" then fail("tostring gave a %s", type(s)) end
    if find(s, "%c") then fail("tostring has a control byte: %q", s) end
end

-- A header's value as both transports give it (client.c dp_keep_header,
-- transport/ngx.lua header_value): leading spaces skipped, printable ASCII
-- up to the first other byte, cut to cap - 1, trailing spaces dropped.
local function header_value(v, cap)
    v = match(sub(match(v, "^ *([\32-\126]*)"), 1, cap - 1), "^(.-) *$")
    return v ~= "" and v or nil
end

local function parse(input)
    local head, ct, ra, secret, body = match(input, "^([^\n]*)\n?([^\n]*)\n?([^\n]*)\n?([^\n]*)\n?(.*)$")
    local digits = match(head, "^%s*(%d+)")
    local status = digits and tonumber(sub(digits, -3)) or 500
    local method = match(head, "^%s*%d*%s+([%w_.]+)") or "reset"
    return status, method, header_value(ct, 128), header_value(ra, 64), secret, body
end

-- ---- 3: the whole path of a call, through a fake transport ----

local answer = {} -- what the fake transport answers: status, body, content type, retry after

local fake = {
    request = function()
        return answer[1], answer[2], answer[3], answer[4]
    end,
    close = function() end,
}

-- Made once; the transport is swapped for the fake.
local client = dp.new({ endpoint = "http://127.0.0.1:9" })
client.transport:close()
client.transport = fake
client.retries = 0 -- where retries exist: no waiting between attempts

local CLIENT_SECRET = "GOCSPX-fuzzing-client-secret"
local source = dp.token_source({
    client_id = "fuzz.apps.googleusercontent.com", client_secret = CLIENT_SECRET,
    refresh_token = "1//0gfuzz", token_endpoint = "http://127.0.0.1:9/token",
    revoke_endpoint = "http://127.0.0.1:9/revoke",
})
source.token_transport:close()
source.revoke_transport:close()
source.token_transport, source.revoke_transport = fake, fake

local CALLS = {
    reset = function(t) return client:reset(t) end,
    initiate = function(t) return client:initiate(t, { "myactivity.youtube" }) end,
    state = function(t) return client:state(t, "archiveJobs/123") end,
    retry = function(t) return client:retry(t, "123") end,
    cancel = function(t) return client:cancel(t, "123") end,
    check_access_type = function(t) return client:check_access_type(t) end,
}
local OAUTH_CALLS = {
    ["oauth.refresh"] = function(t)
        source.refresh_token = t
        return source:refresh()
    end,
    ["oauth.revoke"] = function(t)
        source.refresh_token = t
        return source:revoke()
    end,
}
-- The kinds a server's answer can give (the others are the transport's).
local CALL_KINDS = { redirect = true, api = true, http = true }

local function check_call(status, method, ct, ra, secret, body)
    local oauth = OAUTH_CALLS[method] ~= nil
    local f = OAUTH_CALLS[method] or CALLS[method] or CALLS.reset
    if #secret > core.limits.token_max or not core.check_token(secret) then
        secret = "ya29.fuzz-token" -- the calls refuse others before any I/O
    elseif KNOWN.scrub_short_token and #secret < 16 then
        secret = "ya29.fuzz-token-" .. secret
    end
    answer[1], answer[2], answer[3], answer[4] = status, body, ct, ra
    local r, err = run(method, f, secret)
    if r == nil then
        local id = errors.is_error(err) and err.method
        if type(id) ~= "string" then fail("%s: an error without a method", method) end
        check_error(err, id, status, CALL_KINDS, true)
    end
    local secrets = { secret }
    if oauth then secrets[2] = CLIENT_SECRET end
    for _, s in ipairs(secrets) do
        local known = oauth and KNOWN.oauth_redacts_raw_body_only and (find(body, "\\", 1, true)
            or find(ct or "", s, 1, true) or find(ra or "", s, 1, true))
        if not known and leaks_deep({ r, err }, s) then
            fail("%s: the secret %q reached what the call returned", method, s)
        end
    end
end

-- ---- the checks ----

local METHOD_IDS = { "authorization.reset", "portabilityArchive.initiate", "oauth.token" }

return function(input)
    local status, method, ct, ra, secret, body = parse(input)

    -- 1
    local id = METHOD_IDS[status % #METHOD_IDS + 1]
    local err = run("from_response", errors.from_response, id, status, body, ct, ra)
    check_error(err, id, status, KINDS)

    -- 2
    if not find(secret, "[<>]") and not (secret == "" and KNOWN.redact_empty_secret) then
        local out = run("redact", errors.redact, body, secret)
        if type(out) ~= "string" then fail("redact gave a %s", type(out)) end
        if secret ~= "" and leaks(out, secret) then fail("redact left the secret %q", secret) end
        if not find(body, secret, 1, true) and out ~= body then
            fail("redact changed a body without the secret")
        end
    end

    -- 3
    check_call(status, method, ct, ra, secret, body)
end
