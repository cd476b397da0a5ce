--- The v1 methods of the Data Portability API emulator (inside nginx).
-- Shapes and status codes follow Google's reference; where Google's
-- behaviour is not known, docs/emulator.md names the choice made.
-- luacheck: globals ngx

local cjson = require("cjson.safe")
local R = require("dataportability.emulator.respond")
local S = require("dataportability.emulator.state")
local archive = require("dataportability.emulator.archive")

local floor, huge = math.floor, math.huge
local str_find, str_lower, str_match = string.find, string.lower, string.match

local _M = {}

local SERVICE = R.SERVICE
local array = R.array

local parse_time, format_time = R.parse_time, R.format_time

local function now_timestamp()
    local t = ngx.now()
    local s = floor(t)
    return format_time(s, floor((t - s) * 1000) * 1000000)  -- ngx.now() has milliseconds
end

---------------------------------------------------------------------------
-- Requests

-- The system parameters Google takes on every method, in the query
-- (https://cloud.google.com/apis/docs/system-parameters and the discovery
-- document's "parameters"). Any other query parameter is refused.
local SYSTEM_PARAMS = {}
for name in ([[access_token oauth_token alt $alt callback $callback fields $fields key $key
    prettyPrint $prettyPrint quotaUser $quotaUser userProject $userProject $.xgafv $ct
    $requestReason uploadType upload_protocol userIp]]):gmatch("%S+") do
    SYSTEM_PARAMS[name] = true
end

local function bearer_token()
    local h = R.headers()["authorization"]
    if type(h) == "table" then h = h[1] end
    local scheme, token = (h or ""):match("^%s*(%S+)%s+(%S+)%s*$")
    if scheme and str_lower(scheme) == "bearer" then return token end
    if h then return nil end
    -- no header: the access_token (or oauth_token) query parameter
    local q = R.query()
    token = q.access_token or q.oauth_token
    if type(token) == "table" then token = token[1] end
    if type(token) == "string" and token ~= "" then return token end
end

local function bad(message, field)
    return R.send_json(400, R.bad_request(message, field))
end

-- What is wrong with the query: the first parameter (in query order) that
-- is not a system one, or a JSONP callback name; nil when nothing is.
local function check_query()
    for pair in (ngx.var.args or ""):gmatch("[^&]+") do
        local name = ngx.unescape_uri((str_match(pair, "^[^=]*")))
        if name ~= "" and not SYSTEM_PARAMS[name] then
            return ('Invalid JSON payload received. Unknown name "%s": Cannot bind query parameter. '
                .. "Field '%s' could not be found in request message."):format(name, name)
        end
    end
    local callback = R.param("callback")
    if callback ~= nil and not R.valid_callback(callback) then
        return "Invalid JSONP callback name: " .. tostring(callback) .. "."
    end
end

--- The caller's token record and token, or nil once an error is sent.
-- Checks run in this order: the answer's format (alt), the credentials
-- (any one dataportability.* scope), the query parameters.
local function authorize(method)
    local alt = R.param("alt")
    if alt == "proto" then
        return R.send_json(501, R.rpc_error(501, "The emulator does not answer alt=proto: Google does "
            .. "not publish the protocol buffer definitions of this API. Use alt=json (the default)."))
    end
    if alt ~= nil and alt ~= "json" then
        return bad("Invalid value for alt: " .. tostring(alt) .. ". This method answers alt=json "
            .. "(the default) only.", "alt")
    end
    local token = bearer_token()
    if not token then return R.send_auth_error("missing", method) end
    local rec, status = S.access(token)
    if not rec or status == "revoked" then return R.send_auth_error("invalid", method) end
    if status == "expired" then return R.send_auth_error("expired", method) end
    if #S.groups(rec.scopes) == 0 then return R.send_auth_error("scope", method) end
    local problem = check_query()
    if problem then return bad(problem) end
    return rec, token
end

--- A proto-JSON request body of a message whose JSON names are the keys of
-- `fields` (proto names accepted too, as Google does). "" and "{}" are the
-- empty message; the first unknown field in document order is named.
-- Returns the fields by JSON name (nulls dropped), or nil, message.
local function parse_message(body, fields)
    if not str_find(body, "%S") then return {} end
    local v = cjson.decode(body)
    if v == nil then return nil, "Invalid JSON payload received. Unexpected token." end
    if type(v) ~= "table" or str_find(body, "^%s*%[") then
        return nil, 'Invalid JSON payload received. Unknown name "": Root element must be a message.'
    end
    local unknown, at = nil, huge
    for k in pairs(v) do
        if not fields[k] then
            -- a key written with escapes is not found: it is named last
            local pos = str_find(body, cjson.encode(k), 1, true) or #body + 1
            if not unknown or pos < at then unknown, at = k, pos end
        end
    end
    if unknown then
        return nil, 'Invalid JSON payload received. Unknown name "' .. unknown .. '": Cannot find field.'
    end
    local out = {}
    for k, val in pairs(v) do
        if val ~= cjson.null then out[fields[k]] = val end
    end
    return out
end

local EMPTY = {}
local INITIATE_FIELDS = {
    resources = "resources", startTime = "startTime", start_time = "startTime",
    endTime = "endTime", end_time = "endTime",
}

--- 400/403 with an ErrorInfo whose reason is the emulator's own (domain:
-- the service), for the cases whose details Google does not document.
local function refuse(code, status, reason, method, message, resources)
    return R.send_json(code, R.rpc_error(code, message, { R.error_info(reason, method,
        resources and { resources = table.concat(resources, ",") }, SERVICE) }, status))
end

local function same_pair(job, rec)
    return job and job.user == rec.user and (job.project or "") == (rec.project or "")
end

-- A job the caller may see, or nil once 404 is sent: another pair's job is
-- as unknown as a missing one.
local function own_job(id, rec)
    local job = S.job(id)
    if not same_pair(job, rec) then return R.send_json(404, R.rpc_error(404)) end
    return job
end

---------------------------------------------------------------------------
-- Methods

local function initiate(body)
    local method = R.rpc_method("InitiatePortabilityArchive")
    local rec = authorize(method)
    if not rec then return end
    local req, err = parse_message(body, INITIATE_FIELDS)
    if not req then return bad(err) end
    local res = req.resources
    if type(res) == "table" and next(res) == nil then res = nil end
    if res == nil then return bad("At least one resource is required.", "resources") end
    if type(res) ~= "table" or #res == 0 then
        return bad("Invalid value at 'resources' (TYPE_STRING), " .. cjson.encode(res), "resources")
    end
    local resources, seen = {}, {}
    for i, r in ipairs(res) do
        if type(r) ~= "string" then
            return bad(("Invalid value at 'resources[%d]' (TYPE_STRING), %s"):format(i - 1,
                tostring(cjson.encode(r))), "resources")
        end
        if not seen[r] then resources[#resources + 1], seen[r] = r, true end
    end
    local times = {}
    for _, f in ipairs({ { "startTime", "start_time" }, { "endTime", "end_time" } }) do
        local v = req[f[1]]
        if v ~= nil then
            local t, nanos = parse_time(v)
            if not t then
                return bad(("Invalid value at '%s' (type.googleapis.com/google.protobuf.Timestamp), "
                    .. "Field '%s', Illegal timestamp format; timestamps must end with 'Z' or have a "
                    .. "valid timezone offset."):format(f[2], f[1]), f[1])
            end
            times[f[1]] = { t, nanos, format_time(t, nanos) }
        end
    end
    local st, et = times.startTime, times.endTime
    if st and et and (st[1] > et[1] or (st[1] == et[1] and st[2] > et[2])) then
        return bad("startTime must not be later than endTime.", "startTime")
    end

    -- every group needs its scope on the token
    local granted, missing = {}, {}
    for _, g in ipairs(S.groups(rec.scopes)) do granted[g] = true end
    for _, r in ipairs(resources) do
        if not granted[r] then missing[#missing + 1] = r end
    end
    if #missing > 0 then
        return refuse(403, nil, "RESOURCES_NOT_AUTHORIZED", method, "The requested resources are not "
            .. "authorized by the OAuth token: " .. table.concat(missing, ", ") .. ".", missing)
    end

    -- one-time groups: once per consent; time-based: once per window
    local cfg, now = S.config(), ngx.now()
    local pair = S.pair(rec.user, rec.project)
    local exhausted, too_soon, one_time = {}, {}, false
    for _, r in ipairs(resources) do
        if S.group_access(rec, r) == "ONE_TIME" then
            one_time = true
            if pair.exhausted[r] then exhausted[#exhausted + 1] = r end
        elseif pair.exported[r] and now - pair.exported[r] < cfg.time_based_seconds then
            too_soon[#too_soon + 1] = r
        end
    end
    if #exhausted > 0 then
        return refuse(403, nil, "ONE_TIME_ACCESS_EXHAUSTED", method, "One-time access to these "
            .. "resources was already used: " .. table.concat(exhausted, ", ") .. ". Reset the "
            .. "authorization and obtain a new consent to export them again.", exhausted)
    end
    if #too_soon > 0 then
        return refuse(400, "FAILED_PRECONDITION", "TIME_BASED_EXPORT_TOO_SOON", method,
            ("Time-based resources can be exported once every %g hours; already exported: %s.")
                :format(cfg.time_based_seconds / 3600, table.concat(too_soon, ", ")), too_soon)
    end
    for _, r in ipairs(resources) do
        if S.group_access(rec, r) == "ONE_TIME" then pair.exhausted[r] = true else pair.exported[r] = now end
    end
    S.save_pair(rec.user, rec.project, pair)

    local access = one_time and "ACCESS_TYPE_ONE_TIME" or "ACCESS_TYPE_TIME_BASED"
    local job = S.new_job({
        user = rec.user, project = rec.project, resources = resources, access_type = access,
        start_time = st and st[3], end_time = et and et[3], export_time = et and et[3] or now_timestamp(),
    })
    return R.send_json(200, { archiveJobId = job.id, accessType = access })
end

local function get_state(id)
    local rec = authorize(R.rpc_method("GetPortabilityArchiveState"))
    if not rec then return end
    local job = own_job(id, rec)
    if not job then return end
    local out = { name = "archiveJobs/" .. id .. "/portabilityArchiveState", state = job.state,
                  startTime = job.start_time, exportTime = job.export_time }
    if job.state == "COMPLETE" then out.urls = array(archive.urls(job)) end
    return R.send_json(200, out)
end

-- The caller's own job for retry and cancel, when it is in `wanted`;
-- otherwise the error answer is sent and nil returned.
local function job_in(rpc, id, body, wanted, reason, verb)
    local method = R.rpc_method(rpc)
    local rec = authorize(method)
    if not rec then return nil end
    local _, err = parse_message(body, EMPTY)
    if err then bad(err) return nil end
    local job = own_job(id, rec)
    if job and job.state ~= wanted then
        local article = wanted == "IN_PROGRESS" and "an" or "a"
        refuse(400, "FAILED_PRECONDITION", reason, method, ("Archive job %s is %s; only %s %s job can be %s.")
            :format(id, job.state, article, wanted, verb))
        return nil
    end
    return job
end

local function retry(id, body)
    local job = job_in("RetryPortabilityArchive", id, body, "FAILED", "ARCHIVE_JOB_NOT_FAILED", "retried")
    if not job then return end
    -- a retry needs no new consent: no one-time or time-based check
    local new = S.new_job({
        user = job.user, project = job.project, resources = job.resources, access_type = job.access_type,
        start_time = job.start_time, end_time = job.end_time,
        export_time = job.end_time or now_timestamp(), retry_of = job.id,
    })
    return R.send_json(200, { archiveJobId = new.id })
end

local function cancel(id, body)
    local job = job_in("CancelPortabilityArchive", id, body, "IN_PROGRESS", "ARCHIVE_JOB_NOT_IN_PROGRESS",
        "cancelled")
    if not job then return end
    job.state, job.ready_at, job.finished = "CANCELLED", nil, ngx.now()
    S.save_job(job)
    return R.send_json(200, {})
end

local function check_access_type(body)
    local rec = authorize(R.rpc_method("CheckAccessType"))
    if not rec then return end
    local _, err = parse_message(body, EMPTY)
    if err then return bad(err) end
    local one, timed = {}, {}
    for _, g in ipairs(S.groups(rec.scopes)) do
        local list = S.group_access(rec, g) == "TIME_BASED" and timed or one
        list[#list + 1] = g
    end
    return R.send_json(200, { oneTimeResources = #one > 0 and array(one) or nil,
                              timeBasedResources = #timed > 0 and array(timed) or nil })
end

-- Revokes the token and every token of its (user, project) pair, and
-- clears the pair's exhausted one-time groups and time-based exports.
local function reset(body)
    local rec, token = authorize(R.rpc_method("ResetAuthorization"))
    if not rec then return end
    local _, err = parse_message(body, EMPTY)
    if err then return bad(err) end
    S.revoke_access(token)
    S.reset_pair(rec.user, rec.project)
    return R.send_json(200, {})
end

--- Answers a /v1 request; false when no method matches.
-- uri is nginx's decoded path, raw the path as sent.
function _M.handle(method, uri, raw, body)
    if method == "POST" and uri == "/v1/authorization:reset" then return reset(body) end
    if method == "POST" and uri == "/v1/portabilityArchive:initiate" then return initiate(body) end
    if method == "POST" and uri == "/v1/accessType:check" then return check_access_type(body) end
    -- {name=archiveJobs/*...}: the id segment may be percent-encoded, ":" too
    local seg = raw:match("^/v1/archiveJobs/([^/]+)/portabilityArchiveState$")
    if seg and method == "GET" then return get_state(ngx.unescape_uri(seg)) end
    seg = raw:match("^/v1/archiveJobs/([^/]+)$")
    local id, verb = ngx.unescape_uri(seg or ""):match("^(.+):(%a+)$")
    if id and method == "POST" and verb == "retry" then return retry(id, body) end
    if id and method == "POST" and verb == "cancel" then return cancel(id, body) end
    return false
end

return _M
