--- The emulator's request log and fault injection (inside nginx). Every
-- request to the API, the OAuth endpoints and the storage host is logged
-- (credentials redacted) and may be faulted; admin requests never are.
-- luacheck: globals ngx

local cjson = require("cjson.safe")
local R = require("dataportability.emulator.respond")

local concat, remove = table.concat, table.remove
local str_sub, str_rep, str_lower = string.sub, string.rep, string.lower

local _M = {}

local MAX_LOG = 10000         -- request log entries kept
local MAX_LOGGED_BODY = 1024  -- body bytes kept per entry
local PAGE_BYTES = 786432     -- request-log bytes per admin answer

-- Query and form fields that carry credentials: never logged.
local SECRET_FIELDS = {
    access_token = true, oauth_token = true, key = true, token = true, refresh_token = true,
    code = true, client_secret = true, code_verifier = true, ["X-Goog-Signature"] = true,
}

local function redact_fields(q)
    return (q:gsub("([^&=]+)=([^&]*)", function(k, v)
        if SECRET_FIELDS[ngx.unescape_uri(k)] then return k .. "=<redacted>" end
        return k .. "=" .. v
    end))
end

---------------------------------------------------------------------------
-- Request log

--- Logs the current request. form: the body is form-encoded and its
-- credential fields are redacted.
function _M.log(body, form)
    local headers = {}
    for name, value in pairs(R.headers()) do
        if type(value) == "table" then value = concat(value, ", ") end
        if name == "authorization" then
            local scheme = value:match("^%s*(%a+)%s")
            value = scheme and (scheme .. " <redacted>") or "<redacted>"
            if scheme and str_lower(scheme) == "bearer" then value = "Bearer <redacted>" end
        end
        headers[name] = value
    end
    ngx.update_time()
    local entry = R.encode({
        method = ngx.req.get_method(), path = R.path(),
        query = redact_fields(ngx.var.args or ""), headers = headers,
        host = headers.host or (ngx.var.server_addr .. ":" .. ngx.var.server_port),
        body_length = #body, body = str_sub(form and redact_fields(body) or body, 1, MAX_LOGGED_BODY),
        connection = tonumber(ngx.var.connection),
        connection_requests = tonumber(ngx.var.connection_requests),
        protocol = ngx.var.server_protocol, scheme = ngx.var.scheme, time = ngx.now(),
        tls_resumed = ngx.var.https == "on" and ngx.var.ssl_session_reused == "r" or nil,
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

--- One page of the log from sequence number `from`; "next" names the
-- following page when the answer would outgrow clients' 1 MiB body limits.
function _M.page(from)
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
    empty = true, oversize = true, redirect = true, truncate = true, cut = true,
}

local function rules()
    return cjson.decode(ngx.shared.dp_state:get("faults") or "[]") or {}
end

local function save(list)
    ngx.shared.dp_state:set("faults", cjson.encode(list))
end

--- Validates an admin fault rule; returns the rule or nil, message.
function _M.check(rule)
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
    local function whole(v) return v >= 0 and v % 1 == 0 end
    local err = check("path", "string") or check("path_prefix", "string") or check("method", "string")
        or check("status", "number", function(v) return v >= 100 and v <= 599 and v % 1 == 0 end)
        or check("seconds", "number", function(v) return v >= 0 end)
        or check("bytes", "number", whole) or check("after_bytes", "number", whole)
        or check("content_length", "boolean") or check("retry_after", "string")
        or check("retry_delay", "string") or check("message", "string")
        or check("location", "string") or check("error", "string") or check("after", "boolean")
    if err then return nil, err end
    if rule.action == "delay" and not rule.seconds then return nil, "delay needs seconds" end
    return rule
end

function _M.add(rule)
    local list = rules()
    list[#list + 1] = rule
    save(list)
end

function _M.list() return rules() end
function _M.clear() ngx.shared.dp_state:delete("faults") end

--- The next rule matching this request, with its count used up by one.
function _M.take(uri, method)
    local list = rules()
    for i, rule in ipairs(list) do
        if (rule.path == nil or rule.path == uri) and (rule.method == nil or rule.method == method)
            and (rule.path_prefix == nil or str_sub(uri, 1, #rule.path_prefix) == rule.path_prefix) then
            rule.count = rule.count - 1
            if rule.count <= 0 then remove(list, i) end
            save(list)
            return rule
        end
    end
end

-- 200 with `total` bytes of JSON-ish filler, streamed so memory stays flat.
local function stream_filler(total, with_length)
    ngx.status = 200
    ngx.header["Content-Type"] = R.JSON_TYPE
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

local OAUTH_ERRORS = { [400] = "invalid_grant", [401] = "invalid_client", [429] = "rate_limit_exceeded",
                       [503] = "temporarily_unavailable" }
local XML_CODES = { [400] = "InvalidArgument", [401] = "AuthenticationRequired", [403] = "AccessDenied",
                    [404] = "NoSuchKey", [429] = "SlowDown", [500] = "InternalError",
                    [503] = "ServiceUnavailable" }

-- Error for a status fault, in the shape of the part faulted: the API's
-- google.rpc.Status (the real shape for 401/403/429), OAuth's
-- {"error", "error_description"}, or Cloud Storage's XML.
local function send_status(rule, kind, method)
    local code = rule.status or 500
    local headers = { ["Retry-After"] = rule.retry_after }
    local message = rule.message or R.STATUS_MESSAGE[code] or "Unknown error."
    if kind == "oauth" then
        return R.send(code, R.encode({ error = rule.error or OAUTH_ERRORS[code] or "internal_failure",
            error_description = message }, true) .. "\n", "application/json; charset=utf-8", headers)
    end
    if kind == "storage" then
        return R.send_xml_error(code, rule.error or XML_CODES[code] or "InternalError", message, nil, headers)
    end
    if code == 401 then return R.send_auth_error("invalid", method, rule.message) end
    if code == 403 then return R.send_auth_error("scope", method, rule.message) end
    local details = {}
    if code == 429 then
        details[1] = R.error_info("RATE_LIMIT_EXCEEDED", method, {
            quota_metric = R.SERVICE .. "/default_requests", quota_limit = "defaultPerMinutePerProject",
            quota_limit_value = "60", quota_location = "global",
            consumer = "projects/000000000000" })
    end
    if rule.retry_delay then
        details[#details + 1] = { ["@type"] = "type.googleapis.com/google.rpc.RetryInfo",
                                  retryDelay = rule.retry_delay }
    end
    return R.send_json(code, R.rpc_error(code, message, details), headers)
end

--- Applies a rule taken for this request. `delay`, `cut` and `drop` with
-- `after` return (the request then goes on: late, cut short, or never
-- answered); every other action answers.
-- kind: "api" | "oauth" | "storage"; method: the RPC name for ErrorInfo.
function _M.apply(rule, kind, method)
    local action = rule.action
    if action == "delay" then return ngx.sleep(rule.seconds) end
    if action == "cut" then ngx.ctx.cut = rule.after_bytes or 0; return end
    if action == "status" then return send_status(rule, kind, method) end
    if action == "drop" then
        -- a download changes nothing: `after` makes no difference there
        -- with `after`, the request goes on and takes effect; respond.send
        -- then closes the connection instead of answering
        if rule.after and kind ~= "storage" then ngx.ctx.drop_answer = true; return end
        return ngx.exit(444)  -- nginx closes without a response
    end
    if action == "html" then
        local code = rule.status or 502
        return R.send_html(code, "Server Error", "The server encountered a temporary "
            .. "error and could not complete your request.<p>Please try again in 30 seconds.")
    end
    if action == "malformed" then
        local code = rule.status or 500
        return R.send(code, '{\n  "error": {\n    "code": ' .. code .. ',\n    "mess')
    end
    if action == "empty" then return R.send(rule.status or 500, "") end
    if action == "oversize" then return stream_filler(rule.bytes or 2097152, rule.content_length) end
    if action == "redirect" then
        local location = rule.location or "https://127.0.0.2:9/v1/authorization:reset"
        return R.send(rule.status or 302, "<HTML><HEAD><TITLE>Moved</TITLE></HEAD><BODY>"
            .. "<H1>Moved</H1>The document has moved <A HREF=\"" .. R.html_escape(location)
            .. "\">here</A>.</BODY></HTML>\n", R.HTML_TYPE, { Location = location })
    end
    if action == "truncate" then
        -- promise `bytes`, send half, then close: the client sees a short body
        local total = rule.bytes or 1024
        ngx.status = rule.status or 200
        ngx.header["Content-Type"] = R.JSON_TYPE
        ngx.header["Content-Length"] = total
        ngx.print(str_sub('{"filler":"' .. str_rep("x", total), 1, math.floor(total / 2)))
        ngx.flush(true)
        return ngx.exit(444)
    end
end

return _M
