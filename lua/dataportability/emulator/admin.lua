--- The emulator's admin API, plain JSON under /emulator/v1/ (inside
-- nginx): never logged, never faulted. See docs/emulator.md.
-- luacheck: globals ngx

local cjson = require("cjson.safe")
local R = require("dataportability.emulator.respond")
local S = require("dataportability.emulator.state")
local traffic = require("dataportability.emulator.traffic")

local array = R.array
local str_lower, str_match, tonumber, type = string.lower, string.match, tonumber, type

local _M = {}

local function reply(status, tbl)
    return R.send(status, R.encode(tbl) .. "\n")
end

local function fail(message)
    return reply(400, { error = message })
end

local function read_json(body)
    local v = cjson.decode(body)
    if type(v) ~= "table" then return nil end
    return v
end

local function is_word(v, max)
    return type(v) == "string" and v:match("^%S+$") ~= nil and #v <= (max or 4096)
end

local function strings(v, what)
    if type(v) == "string" then v = { v } end
    if type(v) ~= "table" then return nil, what .. " must be an array" end
    for _, s in ipairs(v) do
        if not is_word(s) then return nil, what .. " must be strings without spaces" end
    end
    return v
end

local function optional(v, ok, message)
    if v ~= nil and not ok(v) then return message end
end

local function positive(v) return type(v) == "number" and v > 0 end
local function user_name(v) return type(v) == "string" and v:match("^[^%c]+$") ~= nil and #v <= 256 end

---------------------------------------------------------------------------
-- Tokens and clients

local function add_token(body)
    local v = read_json(body)
    if not v or (v.token == nil and v.refresh_token == nil) then
        return fail('expected {"token": string, "scopes": [string], ...}')
    end
    local scopes, err = strings(v.scopes or {}, "scopes")
    if not scopes then return fail(err) end
    local access = S.access_type(v.access_type)
    err = optional(v.token, is_word, "token must be a string without spaces")
        or optional(v.refresh_token, is_word, "refresh_token must be a string without spaces")
        or optional(v.user, user_name, "user must be a string")
        or optional(v.client_id, is_word, "client_id must be a string without spaces")
        or optional(v.expires_in, positive, "expires_in must be a number of seconds > 0")
        or (not access and "access_type must be ONE_TIME, TIME_BASED or {group: type}")
    if err then return fail(err) end
    local user = v.user or S.default_user(v.token or v.refresh_token)
    local grant = v.refresh_token and S.new_grant() or nil
    local rec = { scopes = scopes, user = user, project = v.client_id, access_type = access, grant = grant }
    if v.token then
        rec.expires_at = v.expires_in and ngx.now() + v.expires_in
        S.put_access(v.token, rec)
    end
    if v.refresh_token then
        S.put_refresh(v.refresh_token, { scopes = scopes, user = user, project = v.client_id,
            access_type = access, grant = grant, expires_in = v.expires_in, client_id = v.client_id })
    end
    return reply(200, { token = v.token, refresh_token = v.refresh_token, scopes = array(scopes), user = user,
                        access_type = access, expires_in = v.expires_in, client_id = v.client_id })
end

local function add_client(body)
    local v = read_json(body)
    if not v or not is_word(v.client_id) or type(v.client_secret) ~= "string" then
        return fail('expected {"client_id": string, "client_secret": string, "redirect_uris": [string]}')
    end
    local uris, err = strings(v.redirect_uris or {}, "redirect_uris")
    if not uris then return fail(err) end
    if #uris == 0 then return fail("redirect_uris must not be empty") end
    local access = S.access_type(v.access_type)
    err = optional(v.user, user_name, "user must be a string")
        or optional(v.expires_in, positive, "expires_in must be a number of seconds > 0")
        or optional(v.consent, function(c) return c == "grant" or c == "deny" end,
            'consent must be "grant" or "deny"')
        or (not access and "access_type must be ONE_TIME, TIME_BASED or {group: type}")
    if err then return fail(err) end
    local client = { client_id = v.client_id, client_secret = v.client_secret, redirect_uris = array(uris),
                     access_type = access, user = v.user, expires_in = v.expires_in, consent = v.consent }
    S.put_client(client)
    return reply(200, client)
end

---------------------------------------------------------------------------
-- Jobs

local function view(job)
    return {
        id = job.id, state = job.state, outcome = job.outcome, user = job.user, client_id = job.project,
        resources = array(job.resources), access_type = job.access_type, files = array(job.files),
        start_time = job.start_time, end_time = job.end_time, export_time = job.export_time,
        created = job.created, ready_at = job.ready_at, finished = job.finished,
        url_seconds = job.url_seconds, bucket = job.bucket, retry_of = job.retry_of,
    }
end

local function get_job(id)
    local job = S.job(id)
    if not job then return reply(404, { error = "no job " .. id }) end
    return reply(200, view(job))
end

-- {"state": ..., "outcome"?, "seconds"?}: forces a state; IN_PROGRESS with
-- `seconds` finishes (as `outcome`) that much later, without it only when forced.
local function set_job(id, body)
    local job = S.job(id)
    if not job then return reply(404, { error = "no job " .. id }) end
    local v = read_json(body)
    if not v then return fail("body must be a JSON object") end
    local err = optional(v.state, function(s) return S.JOB_STATES[s] end,
            "state must be IN_PROGRESS, COMPLETE, FAILED or CANCELLED")
        or optional(v.outcome, function(s) return S.JOB_STATES[s] and s ~= "IN_PROGRESS" end,
            "outcome must be COMPLETE, FAILED or CANCELLED")
        or optional(v.seconds, function(s) return type(s) == "number" and s >= 0 end,
            "seconds must be a number >= 0")
        or (v.seconds and (v.state or "IN_PROGRESS") ~= "IN_PROGRESS" and "seconds needs state IN_PROGRESS")
    if err then return fail(err) end
    job.outcome = v.outcome or job.outcome
    local state = v.state or (v.seconds and "IN_PROGRESS")
    if state == "IN_PROGRESS" then
        job.state, job.ready_at, job.finished = state, v.seconds and ngx.now() + v.seconds, nil
    elseif state then
        job.state, job.ready_at, job.finished = state, nil, ngx.now()
    end
    S.save_job(job)
    return get_job(id)
end

---------------------------------------------------------------------------
-- Dispatch

local ROUTES = {
    ["GET /health"] = function() return reply(200, { ok = true }) end,
    ["POST /tokens"] = add_token,
    ["POST /clients"] = add_client,
    ["GET /config"] = function() return reply(200, S.config()) end,
    ["PUT /config"] = function(body)
        local v = read_json(body)
        local config, err = S.set_config(v or "")
        if not config then return fail(err) end
        return reply(200, config)
    end,
    ["GET /jobs"] = function()
        local out = {}
        for i, job in ipairs(S.jobs()) do out[i] = view(job) end
        return reply(200, { jobs = array(out) })
    end,
    ["POST /faults"] = function(body)
        local rule, err = traffic.check(read_json(body))
        if not rule then return fail(err or "bad fault") end
        traffic.add(rule)
        return reply(200, {})
    end,
    ["GET /faults"] = function() return reply(200, { faults = array(traffic.list()) }) end,
    ["DELETE /faults"] = function()
        traffic.clear()
        return reply(200, {})
    end,
    ["GET /requests"] = function() return R.send(200, traffic.page(tonumber(ngx.var.arg_from))) end,
    ["DELETE /requests"] = function()
        ngx.shared.dp_log:flush_all()
        ngx.shared.dp_log:flush_expired()
        return reply(200, {})
    end,
    ["POST /reset"] = function()
        S.flush()
        return reply(200, {})
    end,
}
ROUTES["DELETE /state"] = ROUTES["POST /reset"]

---------------------------------------------------------------------------
-- Who may call: a web page can reach loopback too. A "simple" cross-origin
-- request (a form, or fetch with text/plain) goes out without a preflight,
-- and DNS rebinding points a page's own name at 127.0.0.1. A browser sends
-- application/json only after a preflight, which finds no CORS headers
-- here, and always names the page's host in Host.

-- Host is 127.0.0.0/8, [::1] or localhost, with no port or the port the
-- request came in on (server_port: the HTTP or the HTTPS one).
local function loopback_host(host, port)
    if type(host) ~= "string" then return false end  -- none, or repeated
    local name, rest = str_match(host, "^(%[::1%])(.*)$")
    if not name then name, rest = str_match(host, "^([^:]*)(.*)$") end
    if rest ~= "" and rest ~= ":" .. port then return false end
    if name == "[::1]" or str_lower(name) == "localhost" then return true end
    local a, b, c, d = str_match(name, "^(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)$")
    return a == "127" and tonumber(b) <= 255 and tonumber(c) <= 255 and tonumber(d) <= 255
end

-- The media type is application/json, parameters allowed.
local function json_type(v)
    if type(v) ~= "string" then return false end  -- none, or repeated
    local essence = str_match(v, "^[ \t]*([^;]-)[ \t]*;") or str_match(v, "^[ \t]*(.-)[ \t]*$")
    return str_lower(essence) == "application/json"
end

local READS = { GET = true, HEAD = true }

-- nil when the request may go on, else the status and message that refuse it.
local function guard(method)
    local h, port = ngx.req.get_headers(0), ngx.var.server_port
    if not loopback_host(h.host, port) then
        return 403, "the admin API needs a Host of localhost, 127.0.0.0/8 or [::1], with no port or port "
            .. port
    end
    if not READS[method] and not json_type(h["content-type"]) then
        return 415, "admin writes need Content-Type: application/json (an empty body is fine)"
    end
end

--- Answers /emulator/v1/<path>.
function _M.handle(method, path, body)
    local status, message = guard(method)
    if status then return reply(status, { error = message }) end
    local h = ROUTES[method .. " " .. path]
    if h then return h(body) end
    local id = path:match("^/jobs/([^/]+)$")
    if id and method == "GET" then return get_job(ngx.unescape_uri(id)) end
    if id and method == "POST" then return set_job(ngx.unescape_uri(id), body) end
    return reply(404, { error = "no admin endpoint " .. method .. " /emulator/v1" .. path })
end

return _M
