-- Secrets never leak, whole or in part: a hostile server (a test nginx on
-- loopback) echoes a realistic access token, refresh token, client secret,
-- authorization code or PKCE verifier in every place an answer has (the
-- JSON error message, its other fields and nested keys, OAuth's error, an
-- HTML page, Content-Type, Retry-After, a success), written in every form
-- (as is, JSON escapes \/ and \uXXXX, percent-encoding, HTML character
-- references, split across lines, mixed) and padded so that the echo
-- straddles each cut: the message's at 2000 bytes, the excerpt's at 200 and
-- 800, Content-Type's at 127 and Retry-After's at 63 (the C core's). For
-- each answer: no 8 bytes in a row of any secret (WINDOW), as is or decoded,
-- anywhere in the error table (keys included), its tostring, or a result.
local dp = require("dataportability")
local core = require("dataportability.core")
local nginx = require("dataportability.emulator.nginx")
local cjson = require("cjson.safe")

local WINDOW = 8

-- Realistic secrets, random each run: Google's shapes and lengths.
local B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local function random(n)
    local hex = nginx.random_hex(n)
    local out = {}
    for i = 1, n do
        local v = tonumber(hex:sub(2 * i - 1, 2 * i), 16) % 64 + 1
        out[i] = B64URL:sub(v, v)
    end
    return table.concat(out)
end
local ACCESS = "ya29.a0" .. random(211) -- 218 bytes
local REFRESH = "1//0g" .. random(98) -- 103
local CLIENT_SECRET = "GOCSPX-" .. random(28) -- 35
local CODE = "4/0A" .. random(69) -- 73
local VERIFIERS = { random(43), random(128) }

-- Inside the test nginx: the echo of a secret, in the form and the place
-- the request names. An API call's job id is "<form>.<place>.<pad>", its
-- secret the bearer token; an OAuth call goes to
-- /<endpoint>/<form>/<place>/<pad>/<form field of the secret to echo>.
local HANDLERS = [==[
local format, rep, byte = string.format, string.rep, string.byte

local function send(status, body, content_type, headers)
    ngx.status = status
    ngx.header["Content-Type"] = content_type or "application/json; charset=UTF-8"
    for k, v in pairs(headers or {}) do ngx.header[k] = v end
    ngx.print(body)
    return ngx.exit(ngx.OK)
end

-- Every n-th byte of s through f (n = 1: every byte).
local function every(s, n, f)
    local i = 0
    return (s:gsub(".", function(c)
        i = i + 1
        if i % n == 0 then return f(c, i) end
    end))
end
local function u(c, i) return format(i % 2 == 0 and "\\u%04X" or "\\u%04x", byte(c)) end
local function pct(c, i) return format(i % 2 == 0 and "%%%02X" or "%%%02x", byte(c)) end
local function ref(c, i) return format(i % 2 == 0 and "&#%d;" or "&#x%X;", byte(c)) end

-- The forms; `json`: inside a JSON string (a line break is "\n" there).
local FORMS = {
    literal = function(s) return s end,
    slash = function(s) return (s:gsub("/", "\\/")) end,
    u_special = function(s) return (s:gsub("[^%w]", function(c) return format("\\u%04x", byte(c)) end)) end,
    u_every3 = function(s) return every(s, 3, u) end,
    u_all = function(s) return every(s, 1, u) end,
    pct_special = function(s) return (s:gsub("[^%w]", function(c) return format("%%%02X", byte(c)) end)) end,
    pct_every3 = function(s) return every(s, 3, pct) end,
    pct_all = function(s) return every(s, 1, pct) end,
    ref_every3 = function(s) return every(s, 3, ref) end,
    ref_slash = function(s) return (s:gsub("/", "&sol;")) end,
    mixed = function(s)
        return every(s, 1, function(c, i)
            local k = i % 4
            return k == 1 and u(c, i) or k == 2 and pct(c, i) or k == 3 and ref(c, i) or c
        end)
    end,
    split = function(s, json) -- lines of 20 bytes
        return (s:gsub("(" .. rep(".", 20) .. ")", "%1" .. (json and "\\n" or "\r\n")))
    end,
    -- JSON that decodes to text holding \u escapes
    double = function(s) return every(s, 3, function(c) return format("\\\\u%04x", byte(c)) end) end,
}

local function json_body(status, message, fields)
    return format('{"error": {"code": %d, "message": "%s", "status": "%s"%s}}', status, message,
        fields or "UNAUTHENTICATED", "")
end

local PLACES = {}

-- Google's error: the message
function PLACES.message(e, pad) return send(401, json_body(401, pad .. e .. " end")) end

-- Google's error: every other field, nested keys and values
function PLACES.fields(e, pad)
    return send(403, format('{"error": {"code": 403, "message": "denied", "status": "%s", "details": ['
        .. '{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "%s", "domain": "%s",'
        .. ' "metadata": {"%s": "%s", "k": "%s%s"}},'
        .. ' {"@type": "x", "deep": [[{"%s": ["%s", {"%s%s": 1}]}]]}]}}',
        e, e, e, e, e, pad, e, e, e, pad, e))
end

-- OAuth's error: the description, and the error code
function PLACES.oauth(e, pad)
    return send(400, format('{"error": "invalid_grant", "error_description": "%s%s"}', pad, e))
end
function PLACES.oauth_code(e) return send(400, format('{"error": "%s"}', e)) end

-- an HTML page: its excerpt
function PLACES.html(e, pad)
    return send(502, "<html><body><p>" .. pad .. e .. "</p></body></html>", "text/html")
end

-- the headers the client keeps
function PLACES.content_type(e, pad) return send(503, "<p>busy</p>", "text/html; x=" .. pad .. e) end
function PLACES.retry_after(e, pad)
    return send(429, json_body(429, "slow down", "RESOURCE_EXHAUSTED"), nil, { ["Retry-After"] = pad .. e })
end

-- a success: the API's answer, or the token endpoint's
function PLACES.success(e, pad, oauth)
    if oauth then
        return send(200, format('{"access_token": "ya29.fresh-%s", "expires_in": 3600, "scope": "%s%s"}',
            ngx.var.request_id, pad, e))
    end
    return send(200, format('{"state": "%s", "name": "archiveJobs/%s", "urls": ["https://127.0.0.2/%s%s"],'
        .. ' "exportTime": "%s", "%s": "%s"}', e, e, pad, e, e, e, e))
end

local uri = ngx.var.uri
local form, place, pad = uri:match("^/v1/archiveJobs/([%w_]+)%.([%w_]+)%.(%d+)/")
local secret, which
if form then
    secret = (ngx.var.http_authorization or ""):match("^Bearer (%S+)$")
else
    form, place, pad, which = uri:match("^/%a+/([%w_]+)/([%w_]+)/(%d+)/([%w_]+)$")
    ngx.req.read_body()
    secret = which and ngx.req.get_post_args()[which]
end
if not (secret and FORMS[form] and PLACES[place]) then
    return send(404, json_body(404, "no such case", "NOT_FOUND"))
end
local json = place ~= "html" and place ~= "content_type" and place ~= "retry_after"
return PLACES[place](FORMS[form](secret, json), rep("#", tonumber(pad)), which ~= nil)
]==]

-- The forms each place can carry: headers are one printable line; a JSON
-- string carries the "double" escapes.
local ALL_FORMS = { "literal", "slash", "u_special", "u_every3", "u_all", "pct_special", "pct_every3",
                    "pct_all", "ref_every3", "ref_slash", "mixed", "split", "double" }
local function forms_for(place)
    local list = {}
    for _, f in ipairs(ALL_FORMS) do
        local header = place == "content_type" or place == "retry_after"
        if not (header and f == "split") and not (f == "double" and (header or place == "html")) then
            list[#list + 1] = f
        end
    end
    return list
end

-- How many times longer than the secret its echo is, in a form: as sent
-- (what Content-Type, Retry-After and the excerpt cut), and once decoded
-- from JSON (what the message's cut counts). Near enough: the pads go a
-- little past both ends.
local RAW = { literal = 1, slash = 1.1, u_special = 1.2, u_every3 = 2.7, u_all = 6, pct_special = 1.1,
              pct_every3 = 1.7, pct_all = 3, ref_every3 = 2.5, ref_slash = 1.1, mixed = 3.5, split = 1.1,
              double = 3.4 }
local FROM_JSON = { pct_every3 = 1.7, pct_all = 3, ref_every3 = 2.5, mixed = 2.6, double = 2.7 }

-- Pads that put the echo (e bytes) across a cut `at` bytes after the
-- pad's start: every `step` bytes from the echo's last byte at the cut to
-- its first, and the pads that leave 7, 8 or 9 bytes on either side (0 to
-- 12 with `edges`).
local function pads(at, e, step, edges)
    local list, seen = {}, {}
    local function add(n)
        if n >= 0 and not seen[n] then seen[n], list[#list + 1] = true, n end
    end
    for n = at - e, at, step do add(n) end
    for k = edges and 0 or 7, edges and 12 or 9 do
        add(at - e + k)
        add(at - k)
    end
    return list
end

-- Each place's cuts: bytes from the pad's start to the cut, and whether
-- the cut counts decoded JSON. The excerpt is cut at 800 raw bytes, 15
-- after "<html><body><p>", then at 200 bytes of text; 0: no pad.
local CUTS = {
    message = { { 2000, true } }, oauth = { { 2000, true } }, html = { { 200 }, { 800 - 15 } },
    content_type = { { 127 - #"text/html; x=" } }, retry_after = { { 63 } }, fields = { { 0 } },
    oauth_code = { { 0 } }, success = { { 0 } },
}

-- Every WINDOW bytes in a row of each secret.
local function windows(secrets)
    local list, seen = {}, {}
    for _, s in ipairs(secrets) do
        for i = 1, #s - WINDOW + 1 do
            local w = s:sub(i, i + WINDOW - 1)
            if not seen[w] then seen[w], list[#list + 1] = true, w end
        end
    end
    return list
end

-- s decoded, one layer of each encoding after the other (written here,
-- not errors.lua's): JSON escapes, percent-encoding, character references.
local function decoded(s)
    s = s:gsub("\\u(%x%x%x%x)", function(h)
        local c = tonumber(h, 16)
        return c < 128 and string.char(c) or nil
    end):gsub("\\/", "/")
    s = s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
    s = s:gsub("&#[xX](%x+);", function(h) return tonumber(h, 16) < 128 and string.char(tonumber(h, 16)) end)
        :gsub("&#(%d+);", function(d) return tonumber(d) < 128 and string.char(tonumber(d)) end)
        :gsub("&sol;", "/")
    return s
end

-- Every string reachable from v (keys, values, and tostring where a
-- metatable defines it), with where it was.
local function strings(v, out, at, path, seen)
    if type(v) == "string" then
        out[#out + 1], at[#out + 1] = v, path
    elseif type(v) == "table" and not seen[v] then
        seen[v] = true
        local mt = getmetatable(v)
        if mt and mt.__tostring then out[#out + 1], at[#out + 1] = tostring(v), "tostring(" .. path .. ")" end
        for k, x in pairs(v) do
            strings(k, out, at, path .. "[" .. tostring(k) .. "] (key)", seen)
            strings(x, out, at, path .. "." .. tostring(k), seen)
        end
    end
end

-- nil, or where a window of the secrets is in v, as it is or decoded.
local function leak(v, list)
    local all, at = {}, {}
    strings(v, all, at, "", {})
    local joined = table.concat(all, "<") -- '<' is in no secret: no window across two strings
    local d = decoded(joined)
    for _, w in ipairs(list) do
        if joined:find(w, 1, true) or d:find(w, 1, true) then
            for i, s in ipairs(all) do
                if s:find(w, 1, true) or decoded(s):find(w, 1, true) then
                    return ("%q at %s: %q"):format(w, at[i], s:sub(1, 300))
                end
            end
        end
    end
end

-- #large: eleven thousand requests; under Lua 5.4 and LuaJIT, not under
-- valgrind (the C paths are those of every other spec; this is the Lua
-- layer's redaction).
describe("secrets never leak, whole or in part #large", function()
    local server, base
    local tried, counts = 0, {}

    lazy_setup(function()
        server = assert(nginx.start({
            watch = tonumber((nginx.sh("echo $PPID"):gsub("%s", ""))),
            prepare = function(d) return nginx.write_file(d .. "/secrets.lua", HANDLERS) end,
            http = function(s)
                return ([[
    lua_socket_log_errors off;
    large_client_header_buffers 4 16k;
    server {
        listen 127.0.0.1:%d;
        location / { content_by_lua_file %s/secrets.lua; }
    }
]]):format(s.ports[1], s.dir)
            end,
        }))
        base = "http://127.0.0.1:" .. server.ports[1]
    end)

    lazy_teardown(function()
        if server then assert(server:stop()) end
        io.stderr:write(("\nspec/22: %d hostile answers tried (%s)\n"):format(tried,
            table.concat(counts, " + ")))
    end)

    -- Runs attempt(form, place, pad) for every form and pad of `places`;
    -- each returns what the call returned, which must hold no window of
    -- `secrets`. All are tried; the failure reports how many leaked.
    local function sweep(places, secrets, attempt, step, edges)
        local list = windows(secrets)
        local leaks, count, first = 0, 0, nil
        for _, place in ipairs(places) do
            for _, form in ipairs(forms_for(place)) do
                for _, cut in ipairs(CUTS[place]) do
                    local at, longest = cut[1], 0
                    for _, s in ipairs(secrets) do longest = math.max(longest, #s) end
                    local e = math.ceil(longest * (cut[2] and (FROM_JSON[form] or 1.05) or RAW[form]))
                    for _, pad in ipairs(at == 0 and { 0, 3 } or pads(at, e, step, edges)) do
                        count = count + 1
                        local where = leak(attempt(form, place, pad), list)
                        if where then
                            leaks = leaks + 1
                            first = first or ("%s, %s, pad %d: %s"):format(place, form, pad, where)
                        end
                    end
                end
            end
        end
        tried, counts[#counts + 1] = tried + count, count
        if leaks > 0 then
            error(("%d of %d hostile answers leaked; the first: %s"):format(leaks, count, first), 2)
        end
        return count
    end

    describe("the access token, in an API call's answer", function()
        local client
        before_each(function() client = dp.new({ endpoint = base, retries = 0, timeout = 5 }) end)
        after_each(function() client:close() end)

        local function state(form, place, pad)
            local r, err = client:state(ACCESS, ("%s.%s.%d"):format(form, place, pad))
            if place == "success" then
                assert.is_table(r, tostring(err))
            else
                assert.is_nil(r)
                assert.is_true(dp.is_error(err))
                assert.is_nil(tostring(err):find("%c"))
            end
            return { r, err }
        end

        it("the JSON error message, padded across its 2000-byte cut", function()
            assert.equals(218, #ACCESS)
            sweep({ "message" }, { ACCESS }, state, 7, true)
        end)

        it("status, reason, domain, metadata and details, keys and values", function()
            sweep({ "fields" }, { ACCESS }, state, 1)
        end)

        it("an HTML page, across the excerpt's cuts at 200 and 800 bytes", function()
            sweep({ "html" }, { ACCESS }, state, 7, true)
        end)

        it("Content-Type, across the 127 bytes the core keeps", function()
            assert.equals(127, core.limits.content_type_max)
            sweep({ "content_type" }, { ACCESS }, state, 1)
        end)

        it("Retry-After, across the 63 bytes the core keeps", function()
            assert.equals(63, core.limits.retry_after_max)
            sweep({ "retry_after" }, { ACCESS }, state, 1)
        end)

        it("a success", function()
            sweep({ "success" }, { ACCESS }, state, 1)
        end)
    end)

    describe("OAuth's secrets, in the token and revocation endpoints' answers", function()
        local PLACES = { "oauth", "oauth_code", "message", "fields", "html", "content_type", "retry_after",
                         "success" }

        local function source_at(case)
            return dp.token_source({ client_id = "cid", client_secret = CLIENT_SECRET,
                refresh_token = REFRESH, token_endpoint = base .. "/token/" .. case,
                revoke_endpoint = base .. "/revoke/" .. case, timeout = 5 })
        end

        -- What a source shows of itself: its fields, its JSON, its tostring.
        local function shown(source)
            local fields = {}
            for k, v in pairs(source) do fields[k] = v end
            return { fields, cjson.encode(source) or "", tostring(source) }
        end

        it("refresh: the refresh token and the client secret", function()
            for _, which in ipairs({ "refresh_token", "client_secret" }) do
                sweep(PLACES, { REFRESH, CLIENT_SECRET }, function(form, place, pad)
                    local source = source_at(("%s/%s/%d/%s"):format(form, place, pad, which))
                    local token, err = source:refresh()
                    assert.equals(place == "success", token ~= nil, tostring(err))
                    return { token and "" or err, shown(source) }
                end, 23)
            end
        end)

        it("revoke: the refresh token", function()
            sweep(PLACES, { REFRESH, CLIENT_SECRET }, function(form, place, pad)
                local source = source_at(("%s/%s/%d/token"):format(form, place, pad))
                local ok, err = source:revoke()
                return { ok, err, shown(source) }
            end, 29)
        end)

        it("exchange_code: the code, the PKCE verifier (43 and 128 bytes) and the client secret", function()
            for _, verifier in ipairs(VERIFIERS) do
                for _, which in ipairs({ "code", "code_verifier", "client_secret" }) do
                    sweep(PLACES, { CODE, verifier, CLIENT_SECRET }, function(form, place, pad)
                        local source, err = dp.exchange_code({ client_id = "cid",
                            client_secret = CLIENT_SECRET, code = CODE, code_verifier = verifier,
                            redirect_uri = "http://127.0.0.1:1/cb",
                            token_endpoint = base .. ("/token/%s/%s/%d/%s"):format(form, place, pad, which),
                            revoke_endpoint = base .. "/revoke", timeout = 5 })
                        assert.equals(place == "success", source ~= nil, tostring(err))
                        return { err, source and shown(source) }
                    end, 53)
                end
            end
        end)
    end)
end)
