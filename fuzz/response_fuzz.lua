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
--   2. errors.redact(body, secret), for a secret without '<' or '>': no
--      8 bytes of the secret in a row (a shorter secret: itself) survive,
--      outside "<redacted>" markers, in the result as it is or decoded
--      (JSON escapes, percent-encoding, HTML character references; the
--      decoder here is written independently); a body without such a run,
--      as it is and decoded, comes back as it was.
--   3. The whole path of a call, through a fake transport that answers
--      with the input: client methods (client.lua) and a token source's
--      refresh and revoke (oauth.lua), with the secret as the token. A
--      call never raises; it returns a result or nil and an error table
--      as in 1; no 8 bytes in a row of the secret (nor of the client
--      secret, for the OAuth calls) are in either, keys included, nor in
--      tostring, as they are or decoded; except where they are the
--      module's own words (OWN).
-- Every call runs under an instruction budget, so a loop that never ends
-- is a crash, not a hang.
local errors = require("dataportability.errors")
local dp = require("dataportability")
local core = require("dataportability.core")
local budget = assert(fuzz_budget, "fuzz_budget comes from response_fuzz.c") -- luacheck: ignore

local find, match, gsub, sub, format = string.find, string.match, string.gsub, string.sub, string.format
local pack, unpack = table.pack, table.unpack

local STRICT = os.getenv("DP_FUZZ_STRICT") == "1"

-- Findings reported and not fixed yet (docs/hardening.md). Each narrows one
-- check; DP_FUZZ_STRICT=1 restores them all. Drop an entry once its fix is
-- in, and the corpus input named after it becomes its regression test.
-- Findings F1-F4 (docs/hardening.md) are fixed; the corpus inputs named
-- regress-f1..f4 are their regression tests. (F4's by-design part, an error
-- table's own field names, is check 3's OWN exception and 16-byte prefix.)
local KNOWN = STRICT and {} or {}

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

-- ---- leaks: 8 bytes of a secret in a row (WINDOW), as is or decoded ----

local WINDOW = 8
local MARK = "<redacted>"

-- Every WINDOW bytes in a row of `secret` (a shorter secret: itself).
local function windows(secret)
    local w = #secret < WINDOW and #secret or WINDOW
    local list, seen = {}, {}
    for i = 1, #secret - w + 1 do
        local x = sub(secret, i, i + w - 1)
        if not seen[x] then seen[x], list[#list + 1] = true, x end
    end
    return list
end

-- s decoded as errors.redact decodes it (JSON escapes, percent-encoding,
-- HTML character references), written here independently of errors.lua.
local SIMPLE = { ["/"] = "/", ["\\"] = "\\", ['"'] = '"', b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }
local ENTITIES = { amp = "&", lt = "<", gt = ">", quot = '"', apos = "'", sol = "/", bsol = "\\",
                   equals = "=", plus = "+", period = ".", lowbar = "_", percnt = "%", num = "#",
                   colon = ":", semi = ";", comma = ",", excl = "!", quest = "?", dollar = "$",
                   lpar = "(", rpar = ")", ast = "*", commat = "@", Hat = "^", grave = "`",
                   verbar = "|", lsqb = "[", rsqb = "]", lcub = "{", rcub = "}", hyphen = "\226\128\144",
                   dash = "\226\128\144", nbsp = "\194\160" }

local function utf8_char(cp)
    if cp >= 0x110000 then return nil end
    if cp < 0x80 then return string.char(cp) end
    if cp < 0x800 then return string.char(0xC0 | cp >> 6, 0x80 | cp & 63) end
    if cp < 0x10000 then return string.char(0xE0 | cp >> 12, 0x80 | cp >> 6 & 63, 0x80 | cp & 63) end
    return string.char(0xF0 | cp >> 18, 0x80 | cp >> 12 & 63, 0x80 | cp >> 6 & 63, 0x80 | cp & 63)
end

local function decoded(s)
    local out, i, n = {}, 1, #s
    while i <= n do
        local e = find(s, "[\\%%&]", i)
        if not e then
            out[#out + 1] = sub(s, i)
            break
        end
        out[#out + 1] = sub(s, i, e - 1)
        local c, b, j = sub(s, e, e), nil, nil
        if c == "\\" then
            local x = sub(s, e + 1, e + 1)
            local hex = x == "u" and match(s, "^%x%x%x%x", e + 2)
            if hex then
                local cp
                cp, j = tonumber(hex, 16), e + 5
                local low = cp >= 0xD800 and cp <= 0xDBFF and match(s, "^\\u(%x%x%x%x)", e + 6)
                if low and tonumber(low, 16) >= 0xDC00 and tonumber(low, 16) <= 0xDFFF then
                    cp, j = 0x10000 + (cp - 0xD800) * 0x400 + tonumber(low, 16) - 0xDC00, e + 11
                end
                b = utf8_char(cp)
            elseif SIMPLE[x] then
                b, j = SIMPLE[x], e + 1
            end
        elseif c == "%" then
            local hex = match(s, "^%x%x", e + 1)
            if hex then b, j = string.char(tonumber(hex, 16)), e + 2 end
        else
            local semi = find(s, ";", e + 1, true)
            local name = semi and sub(s, e + 1, semi - 1) or ""
            local cp = (match(name, "^#[xX]%x+$") and #name <= 8 and tonumber(sub(name, 3), 16))
                or (match(name, "^#%d+$") and #name <= 8 and tonumber(sub(name, 2)))
            if cp then
                b = utf8_char(cp)
            elseif match(name, "^%a+$") and #name <= 6 then
                b = ENTITIES[name]
            end
            j = semi
        end
        out[#out + 1] = b or c
        i = b and j + 1 or e + 1
    end
    return table.concat(out)
end

-- The module's own words (names, kinds, fields, messages): a secret that
-- holds some of them is no leak where the module wrote them.
local OWN = table.concat({ "authorization.reset", "portabilityArchive.initiate",
    "archiveJobs.getPortabilityArchiveState", "archiveJobs.retry", "archiveJobs.cancel", "accessType.check",
    "oauth.token", "oauth.revoke", "dataportability:", "redirect", "api", "http", "invalid_token",
    "kind", "message", "method", "retryable", "http_status", "code", "status", "reason", "domain", "details",
    "metadata", "excerpt", "retry_after", "sent", "stale_connection", "maybe_applied", "attempts", "index",
    "state", "urls", "name", "export_time", "start_time", "archive_job_id", "access_type",
    "time_based_resources", "one_time_resources",
    "server answered HTTP with a redirect, which is never followed", "an empty body", "...",
    "a body that is not a Google error (no content type)", "HTTP 200 with a body that is not a JSON object",
    "the token endpoint gave no valid access token", "no refresh token to renew the access token with",
    "unexpected answer: the answer has no archiveJobId", "the answer has no state",
}, "\n")

-- The first of the windows `list` in `s` (markers aside) or in s decoded;
-- `own`: not one of the module's own words.
local function leak(s, list, own)
    s = gsub(s, MARK, "<") -- no window of a secret without '<' across a marker
    local d = decoded(s)
    for _, w in ipairs(list) do
        if (find(s, w, 1, true) or (d ~= s and find(d, w, 1, true)))
            and not (own and find(OWN, w, 1, true)) then
            return w
        end
    end
end

-- Every string, key and tostring reachable from v, into `into`, with
-- where each was in `at`.
local function strings(v, into, at, path, seen)
    if type(v) == "string" then
        into[#into + 1], at[#into + 1] = v, path
    elseif type(v) == "table" and not seen[v] then
        seen[v] = true
        local mt = getmetatable(v)
        if mt and mt.__tostring then
            into[#into + 1], at[#into + 1] = tostring(v), "tostring(" .. path .. ")"
        end
        for k, x in pairs(v) do
            local where = path .. "." .. tostring(k)
            strings(k, into, at, where .. " (key)", seen)
            strings(x, into, at, where, seen)
        end
    end
end

-- The first window of `list` in any string, key or tostring reachable from
-- v, and where it was. All in one string first: '<' is in no secret here.
local function leak_deep(v, list)
    local all, at = {}, {}
    strings(v, all, at, "result", {})
    if not leak(table.concat(all, "<"), list, true) then return nil end
    for i, s in ipairs(all) do
        local w = leak(s, list, true)
        if w then return w, at[i] end
    end
    return "?", "the strings joined" -- a window across two strings: not a leak
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
    elseif #secret < 16 then
        -- By design: a token of a few bytes is found in the module's own
        -- words and numbers ("HTTP 404", "message"); real ones are 100+.
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
        local w, where = leak_deep({ r, err }, windows(s))
        if w and w ~= "?" then
            fail("%s: %q of the secret %q reached what the call returned: %s", method, w, s, where)
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
    if not find(secret, "[<>]") then
        local out = run("redact", errors.redact, body, secret)
        if type(out) ~= "string" then fail("redact gave a %s", type(out)) end
        if secret ~= "" then
            local list = windows(secret)
            local w = leak(out, list)
            if w then fail("redact left %q of the secret %q", w, secret) end
            if out ~= body and not leak(body, list) then
                fail("redact changed a body without %d bytes in a row of the secret", #list[1])
            end
        elseif out ~= body then
            fail("redact changed a body for an empty secret")
        end
    end

    -- 3
    check_call(status, method, ct, ra, secret, body)
end
