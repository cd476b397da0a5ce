--- The emulator's state, in nginx shared dicts: tokens, consents, jobs,
-- OAuth clients and codes, configuration. The server is ONE process
-- (master_process off), so a get-modify-set with no yield in between is
-- atomic; nothing here yields.
--
--   dp_tokens  "at:<access token>", "rt:<refresh token>", "grant:<id>" (revoked
--              grants), "code:<authorization code>"
--   dp_state   "faults", "config", "client:<id>", "pair:<user>\n<project>",
--              "secret", "hash:<job>/<file>:<size>"
--   dp_jobs    "<job id>"
-- luacheck: globals ngx

local cjson = require("cjson.safe")
local crypto = require("dataportability.emulator.crypto")

local _M = {}

local SCOPE_PREFIX = "https://www.googleapis.com/auth/dataportability."
_M.SCOPE_PREFIX = SCOPE_PREFIX

local function dict(name) return ngx.shared[name] end

local function get_json(d, key)
    local s = dict(d):get(key)
    return s and cjson.decode(s)
end

local function set_json(d, key, value, ttl)
    local ok, err = dict(d):set(key, cjson.encode(value), ttl or 0)
    if not ok then error("shared dict " .. d .. " is full: " .. tostring(err)) end
end

local function now()
    return ngx.now()
end
_M.now = now

---------------------------------------------------------------------------
-- Configuration (applies to jobs initiated after it is set)

local DEFAULTS = {
    job_seconds = 1,              -- IN_PROGRESS for this long ...
    outcome = "COMPLETE",         -- ... then this
    url_seconds = 3600,           -- X-Goog-Expires of the signed URLs
    time_based_seconds = 86400,   -- one export per group per window (time-based)
    md5_max_bytes = 1073741824,   -- larger files get x-goog-hash crc32c only
    bucket = "dataportability-emulator",
    -- files: nil = one "<group>.zip" of 1 KiB per resource group
}
_M.DEFAULTS = DEFAULTS
local OUTCOMES = { COMPLETE = true, FAILED = true, CANCELLED = true }
_M.JOB_STATES = { IN_PROGRESS = true, COMPLETE = true, FAILED = true, CANCELLED = true }

--- The effective configuration: defaults with the stored fields over them.
function _M.config()
    local c = get_json("dp_state", "config") or {}
    for k, v in pairs(DEFAULTS) do
        if c[k] == nil then c[k] = v end
    end
    return c
end

local function nonneg(v) return type(v) == "number" and v >= 0 end
local function count(v) return nonneg(v) and v % 1 == 0 end

local function check_files(files)
    if type(files) ~= "table" or #files == 0 then return "files must be a non-empty array" end
    local seen = {}
    for _, f in ipairs(files) do
        if type(f) ~= "table" or type(f.name) ~= "string" or not f.name:match("^[%w._~-]+$")
            or #f.name > 200 then
            return "each file needs a name of [A-Za-z0-9._~-]"
        end
        if seen[f.name] then return "duplicate file name " .. f.name end
        seen[f.name] = true
        if not count(f.size) or f.size > 2 ^ 53 then return "each file needs a size >= 0 (bytes)" end
    end
end

local CONFIG_CHECKS = {
    job_seconds = function(v) return not nonneg(v) and "job_seconds must be a number >= 0" end,
    outcome = function(v) return not OUTCOMES[v] and "outcome must be COMPLETE, FAILED or CANCELLED" end,
    url_seconds = function(v)
        return not (count(v) and v >= 1 and v <= 604800) and "url_seconds must be 1..604800"
    end,
    time_based_seconds = function(v) return not nonneg(v) and "time_based_seconds must be >= 0" end,
    md5_max_bytes = function(v) return not nonneg(v) and "md5_max_bytes must be >= 0" end,
    bucket = function(v)
        return not (type(v) == "string" and v:match("^[a-z0-9][a-z0-9._-]*$")) and "bad bucket name"
    end,
    files = check_files,
}

--- Merges `patch` into the stored configuration (a JSON null restores a
-- field's default). Returns the effective configuration, or nil, message.
function _M.set_config(patch)
    if type(patch) ~= "table" then return nil, "body must be a JSON object" end
    local stored = get_json("dp_state", "config") or {}
    for k, v in pairs(patch) do
        local check = CONFIG_CHECKS[k]
        if not check then return nil, "unknown config field " .. tostring(k) end
        if v == cjson.null then
            stored[k] = nil
        else
            local err = check(v)
            if err then return nil, err end
            stored[k] = v
        end
    end
    set_json("dp_state", "config", stored)
    return _M.config()
end

---------------------------------------------------------------------------
-- Consents: one record per (user, project) pair. `gen` counts resets: a
-- token minted under an older generation is revoked. `exhausted` holds the
-- one-time groups exported, `exported` the time of each time-based export.

local function pair_key(user, project)
    return "pair:" .. user .. "\n" .. (project or "")
end

function _M.pair(user, project)
    local p = get_json("dp_state", pair_key(user, project)) or {}
    p.gen = p.gen or 0
    p.exhausted = p.exhausted or {}
    p.exported = p.exported or {}
    return p
end

function _M.save_pair(user, project, p)
    -- cjson writes an empty table as {}: fine, both are maps
    set_json("dp_state", pair_key(user, project), p)
end

--- authorization.reset: revokes the pair's tokens, clears its exports.
function _M.reset_pair(user, project)
    local p = _M.pair(user, project)
    _M.save_pair(user, project, { gen = p.gen + 1 })
end

---------------------------------------------------------------------------
-- Tokens. An access token's record: scopes, user, project, access_type,
-- expires_at (nil: never), gen, grant (shared with the refresh token that
-- minted it: revoking either revokes both), revoked.

--- "ONE_TIME" | "TIME_BASED" | {group = type}, from admin or client input.
function _M.access_type(v)
    local names = { ONE_TIME = "ONE_TIME", TIME_BASED = "TIME_BASED",
                    ACCESS_TYPE_ONE_TIME = "ONE_TIME", ACCESS_TYPE_TIME_BASED = "TIME_BASED" }
    if v == nil then return "ONE_TIME" end
    if type(v) == "string" then return names[v] end
    if type(v) ~= "table" then return nil end
    local out = {}
    for group, t in pairs(v) do
        if type(group) ~= "string" or not names[t] then return nil end
        out[group] = names[t]
    end
    return out
end

--- The access type of one resource group under a token's record.
function _M.group_access(rec, group)
    local t = rec.access_type
    if type(t) == "table" then return t[group] or "ONE_TIME" end
    return t or "ONE_TIME"
end

--- The resource groups of a scope list (dataportability.* scopes only).
function _M.groups(scopes)
    local out = {}
    for _, s in ipairs(scopes or {}) do
        if s:sub(1, #SCOPE_PREFIX) == SCOPE_PREFIX and #s > #SCOPE_PREFIX then
            out[#out + 1] = s:sub(#SCOPE_PREFIX + 1)
        end
    end
    return out
end

function _M.default_user(token)
    return "user-" .. ngx.md5(token):sub(1, 12)
end

--- A new grant id, and the generation a new token of the pair gets.
function _M.new_grant() return crypto.random_hex(12) end

--- Stores an access token; ttl keeps expired records around for an hour so
-- that they answer ACCESS_TOKEN_EXPIRED rather than "unknown".
function _M.put_access(token, rec)
    rec.kind = "access"
    rec.gen = rec.gen or _M.pair(rec.user, rec.project).gen
    local ttl = rec.expires_at and math.max(rec.expires_at - now(), 0) + 3600 or 0
    set_json("dp_tokens", "at:" .. token, rec, ttl)
end

function _M.put_refresh(token, rec)
    rec.kind = "refresh"
    rec.gen = rec.gen or _M.pair(rec.user, rec.project).gen
    set_json("dp_tokens", "rt:" .. token, rec)
end

--- rec, "ok" | "revoked" | "expired"; nil for an unknown token.
local function lookup(prefix, token)
    local rec = get_json("dp_tokens", prefix .. token)
    if not rec then return nil end
    if rec.revoked or (rec.grant and dict("dp_tokens"):get("grant:" .. rec.grant))
        or _M.pair(rec.user, rec.project).gen ~= rec.gen then
        return rec, "revoked"
    end
    if rec.expires_at and now() >= rec.expires_at then return rec, "expired" end
    return rec, "ok"
end

function _M.access(token) return lookup("at:", token) end
function _M.refresh(token) return lookup("rt:", token) end

function _M.revoke_grant(grant)
    dict("dp_tokens"):set("grant:" .. grant, true)
end

function _M.revoke_access(token)
    local rec = get_json("dp_tokens", "at:" .. token)
    if rec then
        rec.revoked = true
        set_json("dp_tokens", "at:" .. token, rec)
    end
end

---------------------------------------------------------------------------
-- OAuth clients and authorization codes

function _M.put_client(c) set_json("dp_state", "client:" .. c.client_id, c) end
function _M.client(id) return get_json("dp_state", "client:" .. id) end

function _M.put_code(code, rec, ttl) set_json("dp_tokens", "code:" .. code, rec, ttl) end

--- An authorization code is single-use: taking it deletes it.
function _M.take_code(code)
    local rec = get_json("dp_tokens", "code:" .. code)
    if rec then dict("dp_tokens"):delete("code:" .. code) end
    return rec
end

---------------------------------------------------------------------------
-- Jobs. Record: id, user, project, resources, access_type, state, outcome,
-- created, ready_at (IN_PROGRESS until then; nil: until forced), start_time,
-- export_time, files, url_seconds, bucket, retry_of.

function _M.save_job(job) set_json("dp_jobs", job.id, job) end

--- The job, its state brought up to date; nil if unknown.
function _M.job(id)
    local job = get_json("dp_jobs", id)
    if job and job.state == "IN_PROGRESS" and job.ready_at and now() >= job.ready_at then
        job.state, job.ready_at = job.outcome, nil
        job.finished = job.finished or now()
        _M.save_job(job)
    end
    return job
end

function _M.jobs()
    local out = {}
    for _, id in ipairs(dict("dp_jobs"):get_keys(0)) do
        out[#out + 1] = _M.job(id)
    end
    table.sort(out, function(a, b) return a.created < b.created end)
    return out
end

--- A new job in IN_PROGRESS with the current configuration.
function _M.new_job(fields)
    local c = _M.config()
    local job = {
        id = crypto.random_hex(16), state = "IN_PROGRESS", outcome = c.outcome,
        created = now(), ready_at = now() + c.job_seconds, url_seconds = c.url_seconds,
        bucket = c.bucket, md5_max_bytes = c.md5_max_bytes,
    }
    for k, v in pairs(fields) do job[k] = v end
    job.files = job.files or c.files
    if not job.files then
        job.files = {}
        for i, group in ipairs(job.resources) do job.files[i] = { name = group .. ".zip", size = 1024 } end
    end
    if job.ready_at and job.ready_at <= job.created then job.state, job.ready_at = job.outcome, nil end
    _M.save_job(job)
    return job
end

---------------------------------------------------------------------------
-- Archive files

--- The per-emulator secret that signs download URLs (new after a clear).
function _M.secret()
    local d = dict("dp_state")
    local s = d:get("secret")
    if not s then
        s = crypto.random_hex(32)
        d:set("secret", s)
    end
    return s
end

function _M.file_hash(key) return dict("dp_state"):get("hash:" .. key) end
function _M.set_file_hash(key, v) dict("dp_state"):set("hash:" .. key, v) end

--- Forgets everything (admin POST /reset).
function _M.flush()
    for _, name in ipairs({ "dp_tokens", "dp_state", "dp_jobs", "dp_log" }) do
        dict(name):flush_all()
        dict(name):flush_expired()
    end
end

return _M
