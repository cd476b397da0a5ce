--- Request handlers of the Data Portability API emulator.
-- Runs inside nginx + ngx_lua (LuaJIT); started by dataportability.emulator.
-- The server runs as ONE process (master_process off), so a shared-dict
-- read-modify-write with no yield in between is atomic.
-- luacheck: globals ngx

local cjson = require("cjson.safe")

local concat, sort, remove = table.concat, table.sort, table.remove
local str_find, str_sub, str_rep, str_lower = string.find, string.sub, string.rep, string.lower

local _M = {}

local JSON_TYPE = "application/json; charset=UTF-8"
local HTML_TYPE = "text/html; charset=UTF-8"
local SERVICE = "dataportability.googleapis.com"
local RESET_METHOD = "google.dataportability.v1.DataPortabilityService.ResetAuthorization"
local SCOPE_PREFIX = "https://www.googleapis.com/auth/dataportability."
local REALM = 'Bearer realm="https://accounts.google.com/"'
local MAX_LOG = 10000         -- request log entries kept
local MAX_LOGGED_BODY = 1024  -- body bytes kept per entry
local PAGE_BYTES = 786432     -- request-log bytes per admin answer
local REVOKED = 1             -- shared-dict flag on a token

-- Scopes accepted by authorization.reset (discovery doc rev 20241208);
-- Google lists a method's scopes in WWW-Authenticate on insufficient_scope.
local RESET_SCOPES = [[alerts.subscriptions businessmessaging.conversations
chrome.autofill chrome.bookmarks chrome.dictionary chrome.extensions chrome.history
chrome.reading_list chrome.settings discover.follows discover.likes discover.not_interested
maps.aliased_places maps.commute_routes maps.commute_settings maps.ev_profile
maps.factual_contributions maps.offering_contributions maps.photos_videos
maps.questions_answers maps.reviews maps.starred_places myactivity.maps myactivity.myadcenter
myactivity.play myactivity.search myactivity.shopping myactivity.youtube mymaps.maps
order_reserve.purchases_reservations play.devices play.grouping play.installs play.library
play.playpoints play.promotions play.purchases play.redemptions play.subscriptions
play.usersettings saved.collections search_ugc.media.reviews_and_stars
search_ugc.media.streaming_video_providers search_ugc.media.thumbs search_ugc.media.watched
searchnotifications.settings searchnotifications.subscriptions shopping.addresses
shopping.reviews streetview.imagery youtube.channel youtube.clips youtube.comments
youtube.live_chat youtube.music youtube.playable youtube.posts youtube.private_playlists
youtube.private_videos youtube.public_playlists youtube.public_videos youtube.shopping
youtube.subscriptions youtube.unlisted_playlists youtube.unlisted_videos]]
RESET_SCOPES = (RESET_SCOPES:gsub("%s*(%S+)%s*", " " .. SCOPE_PREFIX .. "%1"):sub(2))

-- Known v1 methods the emulator does not implement (answered 501, not 404).
local UNIMPLEMENTED = {
    { "POST", "^/v1/portabilityArchive:initiate$", "InitiatePortabilityArchive" },
    { "GET", "^/v1/archiveJobs/[^/]+/portabilityArchiveState$", "GetPortabilityArchiveState" },
    { "POST", "^/v1/archiveJobs/[^/]+:retry$", "RetryPortabilityArchive" },
    { "POST", "^/v1/archiveJobs/[^/]+:cancel$", "CancelPortabilityArchive" },
    { "POST", "^/v1/accessType:check$", "CheckAccessType" },
}

local STATUS_NAME = {
    [400] = "INVALID_ARGUMENT", [401] = "UNAUTHENTICATED", [403] = "PERMISSION_DENIED",
    [404] = "NOT_FOUND", [409] = "ABORTED", [429] = "RESOURCE_EXHAUSTED", [499] = "CANCELLED",
    [500] = "INTERNAL", [501] = "UNIMPLEMENTED", [502] = "UNAVAILABLE", [503] = "UNAVAILABLE",
    [504] = "DEADLINE_EXCEEDED",
}

local STATUS_MESSAGE = {
    [400] = "Request contains an invalid argument.",
    [403] = "The caller does not have permission",
    [404] = "Requested entity was not found.",
    [409] = "The operation was aborted.",
    [429] = "Quota exceeded for quota metric 'Requests' and limit 'Requests per minute' of "
        .. "service 'dataportability.googleapis.com' for consumer 'project_number:000000000000'.",
    [499] = "The operation was cancelled.",
    [500] = "Internal error encountered.",
    [501] = "Operation is not implemented, or supported, or enabled.",
    [502] = "The service is currently unavailable.",
    [503] = "The service is currently unavailable.",
    [504] = "Deadline expired before operation could complete.",
}

---------------------------------------------------------------------------
-- JSON output. cjson 2.1.0 escapes "/" and cannot mark empty arrays, and
-- Google emits keys in proto field order, pretty-printed unless
-- prettyPrint=false; so a small encoder of our own.

local ARRAY = {}  -- metatable that marks a table as a JSON array
local function array(t) return setmetatable(t or {}, ARRAY) end

local KEY_RANK = {
    error = 1, code = 2, message = 3, status = 4, details = 5, ["@type"] = 6, reason = 7,
    domain = 8, metadata = 9, service = 10, method = 11, retryDelay = 12, fieldViolations = 13,
    field = 14, description = 15,
}
local function key_less(a, b)
    local ra, rb = KEY_RANK[a] or 99, KEY_RANK[b] or 99
    if ra ~= rb then return ra < rb end
    return a < b
end

-- Google's JSON (Gson-style, HTML-safe) leaves "/" alone but writes
-- < > & = ' as \u escapes: signed URLs come back full of \u0026 and \u003d.
local HTML_SAFE = { ["<"] = "\\u003c", [">"] = "\\u003e", ["&"] = "\\u0026",
                                        ["="] = "\\u003d", ["'"] = "\\u0027" }
local function encode_string(s)
    -- cjson escapes "/" as "\/"; every "\/" it emits is such an escape
    return (cjson.encode(s):gsub("\\/", "/"):gsub("[<>&=']", HTML_SAFE))
end

local function encode(v, pretty, indent)
    if type(v) == "string" then return encode_string(v) end
    if type(v) ~= "table" then return cjson.encode(v) end
    indent = indent or ""
    local inner = indent .. "  "
    local open = pretty and ("\n" .. inner) or ""
    local close = pretty and ("\n" .. indent) or ""
    local sep = pretty and ",\n" .. inner or ","
    local parts = {}
    if getmetatable(v) == ARRAY or #v > 0 then
        if #v == 0 then return "[]" end
        for i = 1, #v do parts[i] = encode(v[i], pretty, inner) end
        return "[" .. open .. concat(parts, sep) .. close .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    if #keys == 0 then return "{}" end
    sort(keys, key_less)
    for i, k in ipairs(keys) do
        parts[i] = encode_string(k) .. (pretty and ": " or ":") .. encode(v[k], pretty, inner)
    end
    return "{" .. open .. concat(parts, sep) .. close .. "}"
end
_M.encode = encode

---------------------------------------------------------------------------
-- Responses

local function send(status, body, ctype, headers)
    ngx.status = status
    ngx.header["Content-Type"] = ctype or JSON_TYPE
    ngx.header["Content-Length"] = #body
    for k, v in pairs(headers or {}) do ngx.header[k] = v end
    ngx.print(body)
    return ngx.exit(ngx.HTTP_OK)
end

local function pretty()
    local p = ngx.var.arg_prettyPrint
    return not (p and (str_lower(p) == "false" or p == "0"))
end

-- Google's front end adds these to every API response.
local function google_headers()
    ngx.header["Server"] = "ESF"
    ngx.header["Vary"] = { "Origin", "X-Origin", "Referer" }
    ngx.header["X-Content-Type-Options"] = "nosniff"
    ngx.header["X-Frame-Options"] = "SAMEORIGIN"
    ngx.header["X-XSS-Protection"] = "0"
    ngx.header["Cache-Control"] = "private"
end

local function send_json(status, tbl, headers)
    local p = pretty()
    google_headers()
    return send(status, encode(tbl, p) .. (p and "\n" or ""), JSON_TYPE, headers)
end

local function error_info(reason, method, extra)
    local metadata = { service = SERVICE, method = method }
    for k, v in pairs(extra or {}) do metadata[k] = v end
    return { ["@type"] = "type.googleapis.com/google.rpc.ErrorInfo", reason = reason,
                      domain = "googleapis.com", metadata = metadata }
end

-- google.rpc.Status body; details omitted when empty, as Google does.
local function rpc_error(code, message, details)
    local err = { code = code, message = message, status = STATUS_NAME[code] or "UNKNOWN" }
    if details and #details > 0 then err.details = array(details) end
    return { error = err }
end

local function bad_request(description)
    return rpc_error(400, description, { {
        ["@type"] = "type.googleapis.com/google.rpc.BadRequest",
        fieldViolations = array({ { description = description } }) } })
end

local AUTH_ERRORS = {
    missing = { 401, "Request is missing required authentication credential. Expected OAuth 2 "
        .. "access token, login cookie or other valid authentication credential. See "
        .. "https://developers.google.com/identity/sign-in/web/devconsole-project.",
        "CREDENTIALS_MISSING", REALM },
    invalid = { 401, "Request had invalid authentication credentials. Expected OAuth 2 access "
        .. "token, login cookie or other valid authentication credential. See "
        .. "https://developers.google.com/identity/sign-in/web/devconsole-project.",
        "ACCESS_TOKEN_TYPE_UNSUPPORTED", REALM .. ', error="invalid_token"' },
    scope = { 403, "Request had insufficient authentication scopes.",
        "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
        REALM .. ', error="insufficient_scope", scope="' .. RESET_SCOPES .. '"' },
}

local function send_auth_error(kind, message)
    local e = AUTH_ERRORS[kind]
    return send_json(e[1], rpc_error(e[1], message or e[2], { error_info(e[3], RESET_METHOD) }),
        { ["WWW-Authenticate"] = e[4] })
end

-- Error for a status fault: the real shape for 401/403/429, bare Status otherwise.
local function send_status_fault(rule)
    local code = rule.status or 500
    local headers = { ["Retry-After"] = rule.retry_after }
    if code == 401 then return send_auth_error("invalid", rule.message) end
    if code == 403 then return send_auth_error("scope", rule.message) end
    local details = {}
    if code == 429 then
        details[1] = error_info("RATE_LIMIT_EXCEEDED", RESET_METHOD, {
            quota_metric = SERVICE .. "/default_requests", quota_limit = "defaultPerMinutePerProject",
            quota_limit_value = "60", quota_location = "global",
            consumer = "projects/000000000000" })
    end
    if rule.retry_delay then
        details[#details + 1] = { ["@type"] = "type.googleapis.com/google.rpc.RetryInfo",
                                                            retryDelay = rule.retry_delay }
    end
    local message = rule.message or STATUS_MESSAGE[code] or "Unknown error."
    return send_json(code, rpc_error(code, message, details), headers)
end

local function html_escape(s)
    return (s:gsub("[&<>\"]", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;" }))
end

-- Shaped like the error pages of Google's front end (GFE).
local function html_page(code, title, text)
    return "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
        .. "  <title>Error " .. code .. " (" .. title .. ")!!1</title>\n"
        .. "  <p><b>" .. code .. ".</b> <ins>That\226\128\153s an error.</ins>\n"
        .. "  <p>" .. text .. "  <ins>That\226\128\153s all we know.</ins>\n"
end

local function send_html_404()
    local path = ngx.var.request_uri:match("^[^?]*")
    return send(404, html_page(404, "Not Found", "The requested URL <code>"
        .. html_escape(path) .. "</code> was not found on this server."), HTML_TYPE)
end

---------------------------------------------------------------------------
-- Request log

local function redact_query(q)
    -- query-string credentials Google accepts must not reach the log either
    return (q:gsub("([%w_]+)=([^&]*)", function(k, v)
        if k == "access_token" or k == "oauth_token" or k == "key" then return k .. "=<redacted>" end
        return k .. "=" .. v
    end))
end

local function log_request(body, raw_path)
    local headers = {}
    for name, value in pairs(ngx.req.get_headers(200)) do
        if type(value) == "table" then value = concat(value, ", ") end
        if name == "authorization" then
            value = str_find(str_lower(value), "^bearer%s") and "Bearer <redacted>" or "<redacted>"
        end
        headers[name] = value
    end
    ngx.update_time()
    local entry = encode({
        method = ngx.req.get_method(), path = raw_path,
        query = redact_query(ngx.var.args or ""), headers = headers,
        body_length = #body, body = str_sub(body, 1, MAX_LOGGED_BODY),
        connection = tonumber(ngx.var.connection),
        connection_requests = tonumber(ngx.var.connection_requests),
        protocol = ngx.var.server_protocol, scheme = ngx.var.scheme, time = ngx.now(),
    })
    -- entries live under sequence-number keys "first".."last"
    local log = ngx.shared.dp_log
    local last = log:incr("last", 1, 0)
    local first = log:get("first") or 1
    log:set(tostring(last), entry)
    while last - first >= MAX_LOG do
        log:delete(tostring(first))
        first = first + 1
    end
    log:set("first", first)
end

-- One page of the log from sequence number `from`; "next" names the
-- following page when the answer would outgrow clients' 1 MiB body limits.
local function logged_requests(from)
    local log = ngx.shared.dp_log
    local first, last = log:get("first") or 1, log:get("last") or 0
    local i, size, out = math.max(from or first, first), 0, {}
    while i <= last do
        local entry = log:get(tostring(i))  -- nil (skipped) if evicted
        if entry then
            if size + #entry > PAGE_BYTES and #out > 0 then break end
            out[#out + 1] = entry
            size = size + #entry + 1
        end
        i = i + 1
    end
    local next_page = i <= last and (',"next":' .. i) or ""
    return '{"requests":[' .. concat(out, ",") .. "]" .. next_page .. "}\n"
end

---------------------------------------------------------------------------
-- Faults

local FAULT_ACTIONS = {
    status = true, delay = true, drop = true, html = true, malformed = true,
    empty = true, oversize = true, redirect = true, truncate = true,
}

-- Next rule matching this request, with its count used up by one.
local function take_fault(uri, method)
    local state = ngx.shared.dp_state
    local rules = cjson.decode(state:get("faults") or "[]") or {}
    for i, rule in ipairs(rules) do
        if (rule.path == nil or rule.path == uri) and (rule.method == nil or rule.method == method) then
            rule.count = rule.count - 1
            if rule.count <= 0 then remove(rules, i) end
            state:set("faults", cjson.encode(rules))
            return rule
        end
    end
end

-- 200 with `total` bytes of JSON-ish filler, streamed so memory stays flat.
local function stream_filler(total, with_length)
    ngx.status = 200
    ngx.header["Content-Type"] = JSON_TYPE
    if with_length then ngx.header["Content-Length"] = total end
    local function out(s)
        return ngx.print(s) and ngx.flush(true)
    end
    local head, tail = '{"filler":"', '"}\n'
    if total < #head + #tail then
        out(str_rep(" ", total))
        return ngx.exit(ngx.HTTP_OK)
    end
    local chunk = str_rep("x", 65536)
    local left = total - #head - #tail
    if not out(head) then return ngx.exit(ngx.HTTP_OK) end
    while left > 0 do
        local n = left < #chunk and left or #chunk
        if not out(n == #chunk and chunk or str_sub(chunk, 1, n)) then return ngx.exit(ngx.HTTP_OK) end
        left = left - n
    end
    out(tail)
    return ngx.exit(ngx.HTTP_OK)
end

local function apply_fault(rule)
    local action = rule.action
    if action == "status" then return send_status_fault(rule) end
    if action == "drop" then return ngx.exit(444) end  -- nginx closes without a response
    if action == "html" then
        local code = rule.status or 502
        return send(code, html_page(code, "Server Error", "The server encountered a temporary "
            .. "error and could not complete your request.<p>Please try again in 30 seconds."),
            HTML_TYPE)
    end
    if action == "malformed" then
        local code = rule.status or 500
        return send(code, '{\n  "error": {\n    "code": ' .. code .. ',\n    "mess')
    end
    if action == "empty" then return send(rule.status or 500, "") end
    if action == "oversize" then return stream_filler(rule.bytes or 2097152, rule.content_length) end
    if action == "redirect" then
        local location = rule.location or "https://127.0.0.2:9/v1/authorization:reset"
        return send(rule.status or 302, "<HTML><HEAD><TITLE>Moved</TITLE></HEAD><BODY>"
            .. "<H1>Moved</H1>The document has moved <A HREF=\"" .. html_escape(location)
            .. "\">here</A>.</BODY></HTML>\n", HTML_TYPE, { Location = location })
    end
    if action == "truncate" then
        -- promise `bytes`, send half, then close: the client sees a short body
        local total = rule.bytes or 1024
        ngx.status = rule.status or 200
        ngx.header["Content-Type"] = JSON_TYPE
        ngx.header["Content-Length"] = total
        ngx.print(str_sub('{"filler":"' .. str_rep("x", total), 1, math.floor(total / 2)))
        ngx.flush(true)
        return ngx.exit(444)
    end
end

-- Validates an admin fault rule; returns the rule or nil, message.
local function check_fault(rule)
    if type(rule) ~= "table" then return nil, "body must be a JSON object" end
    if not FAULT_ACTIONS[rule.action] then return nil, "unknown action: " .. tostring(rule.action) end
    rule.count = rule.count or 1
    if type(rule.count) ~= "number" or rule.count < 1 then return nil, "count must be >= 1" end
    local function check(field, kind, ok)
        local v = rule[field]
        if v ~= nil and (type(v) ~= kind or (ok and not ok(v))) then
            return field .. " must be a valid " .. kind
        end
    end
    local err = check("path", "string") or check("method", "string")
        or check("status", "number", function(v) return v >= 100 and v <= 599 and v % 1 == 0 end)
        or check("seconds", "number", function(v) return v >= 0 end)
        or check("bytes", "number", function(v) return v >= 0 and v % 1 == 0 end)
        or check("content_length", "boolean") or check("retry_after", "string")
        or check("retry_delay", "string") or check("message", "string")
        or check("location", "string")
    if err then return nil, err end
    if rule.action == "delay" and not rule.seconds then return nil, "delay needs seconds" end
    return rule
end

---------------------------------------------------------------------------
-- The API

local function read_body()
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    local file = not body and ngx.req.get_body_file()
    if file then  -- not expected: client_body_buffer_size equals the max body size
        local f = io.open(file, "rb")
        body = f and f:read("*a")
        if f then f:close() end
    end
    return body or ""
end

local function bearer_token()
    local h = ngx.var.http_authorization
    local scheme, token = (h or ""):match("^%s*(%S+)%s+(%S+)%s*$")
    if scheme and str_lower(scheme) == "bearer" then return token end
end

-- A ResetAuthorizationRequest has no fields: accept "", "{}"; reject the rest
-- with Google's proto-JSON messages. Returns nil or an error message.
local function check_empty_message(body)
    if not str_find(body, "%S") then return nil end
    local v = cjson.decode(body)
    if v == nil then return "Invalid JSON payload received. Unexpected token." end
    if type(v) ~= "table" or str_find(body, "^%s*%[") then
        return 'Invalid JSON payload received. Unknown name "": Root element must be a message.'
    end
    if next(v) == nil then return nil end
    -- name the first field in document order, as Google does
    local rest = body:match('^%s*{%s*"(.*)$') or '"'
    local raw = str_find(rest, '^"') and "" or rest:match('^(.-[^\\])"') or ""
    local name = cjson.decode('"' .. raw .. '"') or raw
    return 'Invalid JSON payload received. Unknown name "' .. name .. '": Cannot find field.'
end

local function reset(body)
    local token = bearer_token()
    if not token then return send_auth_error("missing") end
    local tokens = ngx.shared.dp_tokens
    local scopes, flags = tokens:get(token)
    if not scopes or flags == REVOKED then return send_auth_error("invalid") end
    if not str_find(" " .. scopes, " " .. SCOPE_PREFIX, 1, true) then
        return send_auth_error("scope")
    end
    local err = check_empty_message(body)
    if err then return send_json(400, bad_request(err)) end
    tokens:set(token, scopes, 0, REVOKED)
    return send_json(200, {})
end

local function api(uri, method)
    local body = read_body()
    log_request(body, ngx.var.request_uri:match("^[^?]*"))
    local rule = take_fault(uri, method)
    if rule and rule.action == "delay" then
        ngx.sleep(rule.seconds)
    elseif rule then
        return apply_fault(rule)
    end
    if uri == "/v1/authorization:reset" and method == "POST" then return reset(body) end
    for _, m in ipairs(UNIMPLEMENTED) do
        if method == m[1] and str_find(uri, m[2]) then
            return send_json(501, rpc_error(501, "The dataportability emulator does not implement "
                .. "google.dataportability.v1.DataPortabilityService." .. m[3] .. "."))
        end
    end
    return send_json(404, rpc_error(404, "Method not found."))
end

---------------------------------------------------------------------------
-- Admin API (/emulator/v1/...): not logged, never faulted.

local function admin_reply(status, tbl)
    return send(status, encode(tbl) .. "\n")
end

local function admin_body()
    local v = cjson.decode(read_body())
    if type(v) ~= "table" then return nil end
    return v
end

local function add_token()
    local v = admin_body()
    if not v or type(v.token) ~= "string" or not v.token:match("^%S+$") or #v.token > 4096 then
        return admin_reply(400, { error = "expected {\"token\": string, \"scopes\": [string]}" })
    end
    local scopes = v.scopes or {}
    if type(scopes) == "string" then scopes = { scopes } end
    if type(scopes) ~= "table" then return admin_reply(400, { error = "scopes must be an array" }) end
    for _, s in ipairs(scopes) do
        if type(s) ~= "string" or not s:match("^%S+$") then
            return admin_reply(400, { error = "scopes must be strings without spaces" })
        end
    end
    local ok, err = ngx.shared.dp_tokens:set(v.token, concat(scopes, " "))
    if not ok then return admin_reply(500, { error = err }) end
    return admin_reply(200, { token = v.token, scopes = array(scopes) })
end

local function add_fault()
    local rule, err = check_fault(admin_body())
    if not rule then return admin_reply(400, { error = err or "bad fault" }) end
    local state = ngx.shared.dp_state
    local rules = cjson.decode(state:get("faults") or "[]") or {}
    rules[#rules + 1] = rule
    state:set("faults", cjson.encode(rules))
    return admin_reply(200, {})
end

local function flush(name)
    ngx.shared[name]:flush_all()
    ngx.shared[name]:flush_expired()
end

local ADMIN = {
    ["GET /health"] = function() return admin_reply(200, { ok = true }) end,
    ["POST /tokens"] = add_token,
    ["POST /faults"] = add_fault,
    ["DELETE /faults"] = function()
        ngx.shared.dp_state:delete("faults")
        return admin_reply(200, {})
    end,
    ["GET /requests"] = function() return send(200, logged_requests(tonumber(ngx.var.arg_from))) end,
    ["DELETE /requests"] = function()
        flush("dp_log")
        return admin_reply(200, {})
    end,
}
ADMIN["POST /reset"] = function()
    flush("dp_tokens"); flush("dp_state"); flush("dp_log")
    return admin_reply(200, {})
end
ADMIN["DELETE /state"] = ADMIN["POST /reset"]

--- content_by_lua entry point for every request.
function _M.handle()
    local uri, method = ngx.var.uri, ngx.req.get_method()
    if str_sub(uri, 1, 13) == "/emulator/v1/" then
        local h = ADMIN[method .. " " .. str_sub(uri, 13)]
        if h then return h() end
        return admin_reply(404, { error = "no admin endpoint " .. method .. " " .. uri })
    end
    if uri == "/v1" or str_sub(uri, 1, 4) == "/v1/" then return api(uri, method) end
    return send_html_404()
end

return _M
