-- The client: its options, the API's methods as table entries, and the
-- one request path they all share.
local core = require("dataportability.core")
local errors = require("dataportability.errors")
local async = require("dataportability.async")
local scopes = require("dataportability.scopes")
local oauth = require("dataportability.oauth")
local retry = require("dataportability.retry")
local options = require("dataportability.options")
local transport = require("dataportability.transport")
local export = require("dataportability.export")
local json = require("cjson.safe")

local type, pairs, ipairs, tostring, error, setmetatable = type, pairs, ipairs, tostring, error, setmetatable
local select, next, floor = select, next, math.floor
local format, find, gsub, byte = string.format, string.find, string.gsub, string.byte
local date = os.date
local unpack = table.unpack or unpack -- luacheck: ignore 143

local _M = { VERSION = core._VERSION }

local function whole_at_least_0(v)
    if v < 0 or v % 1 ~= 0 then return "must be a whole number >= 0" end
end

-- Every option and its type; anything else is a programming error. The
-- transport's own (endpoint, timeouts, header values) are checked in C.
local OPTIONS = options.spec({
    endpoint = "string", timeout = "number", connect_timeout = "number",
    ca_file = "string", user_agent = "string", quota_project = "string", proxy = "string",
    driver = { "table", check = function(v)
        if not async.is_driver(v) then return "must come from dp.driver()" end
    end },
    retries = { "number", check = whole_at_least_0 },
    retry_max_delay = { "number", check = function(v)
        if v ~= v or v < 0 then return "must be a number of seconds >= 0" end
    end },
    on_retry = "function",
    pool = "string",
})

local Client = { __name = "dataportability.client" }
Client.__index = Client

--- client.create(opts, fname, argn, level) -> client: for the public
--- function `fname`, whose argument #argn is opts; level is what the
--- caller would give error() to blame the line that called `fname`.
local function create(opts, fname, argn, level)
    opts = options.check(opts, OPTIONS, fname, argn, level + 1)
    local t = transport.new(opts, fname, level + 1)
    return setmetatable({
        transport = t, driver = opts.driver, cosockets = transport.in_nginx(),
        retries = opts.retries or retry.RETRIES, retry_max_delay = opts.retry_max_delay or retry.MAX_DELAY,
        on_retry = opts.on_retry,
    }, Client)
end

local function check_token_type(token, fname)
    if type(token) ~= "string" and not oauth.is_source(token) then
        error(format("bad argument #1 to '%s' (token string or token source expected, got %s)", fname,
            type(token)), 3)
    end
end

-- The answer of most calls: shared, never changed.
local EMPTY = setmetatable({}, { __newindex = function() error("read-only", 2) end })

-- What a transport's seven values (docs/transport.md) mean: the decoded
-- JSON body of a 2xx, or nil, err. Nothing in either holds 8 bytes in a
-- row of the token (errors.redact), redacted before anything is cut.
local function outcome(m, token, status, resp, content_type, retry_after, kind, message, sent)
    if not status then -- nothing usable came back
        return nil, errors.new(m.id, kind, message and errors.redact(message, token),
            { sent = sent ~= "no", stale_connection = sent == "stale" or nil })
    end
    if status >= 200 and status < 300
        and (resp == "{}\n" or resp == "{}" or resp == "" or find(resp, "^%s*{%s*}%s*$")) then
        return EMPTY
    end
    if status < 200 or status >= 300 then
        return nil, errors.from_response(m.id, status, resp, content_type, retry_after, token)
    end
    local doc = json.decode(errors.redact(resp, token))
    if type(doc) ~= "table" then
        return nil, errors.new(m.id, "http",
            format("HTTP %d with a body that is not a JSON object", status), { http_status = status })
    end
    return errors.scrub(doc, token)
end

-- The one request path, blocking.
local function call(self, m, path, token, body)
    return outcome(m, token, self.transport:request(m.http, path, token, body and json.encode(body)))
end

-- The same, through the event loop: done(doc) or done(nil, err), later.
local function call_async(self, m, path, token, body, done)
    self.driver = self.driver or async.default_driver()
    if not path then -- refused before any I/O: body is the error
        return self.driver:settle(done, nil, body)
    end
    self.driver:start(self.transport, m.http, path, token, body and json.encode(body),
        function(...) done(outcome(m, token, ...)) end)
end

---------------------------------------------------------------------------
-- The API's methods: each is an entry here (its id, HTTP form, argument
-- types, how its arguments become a path and a body, how its answer
-- becomes the result), made into client:name() and client:name_async()
-- below.

-- "archiveJobs/abc" or "abc" -> "abc" percent-encoded, or nil, message.
local function job_segment(job_id)
    local id = gsub(job_id, "^archiveJobs/", "")
    if id == "" or id == "." or id == ".." or find(id, "/", 1, true) then
        return nil, "job id must be 'ID' or 'archiveJobs/ID', got '" .. job_id .. "'"
    end
    return (gsub(id, "[^%w%-._~]", function(c) return format("%%%02X", byte(c)) end))
end

local function job_path(template)
    return function(job_id)
        local id, why = job_segment(job_id)
        if not id then return nil, why end
        return format(template, id)
    end
end

-- RFC 3339 on the wire: a string is checked, a number is epoch seconds.
local function timestamp(v, name)
    if type(v) == "number" then
        if v ~= v or v < 0 or v >= 253402300800 then
            return nil, name .. " is out of range"
        end
        local whole = floor(v)
        local frac = v - whole
        return date("!%Y-%m-%dT%H:%M:%S", whole) .. (frac > 0 and format("%.3f", frac):sub(2) or "") .. "Z"
    end
    if not find(v, "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.?%d*Z$")
        and not find(v, "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.?%d*[+-]%d%d:%d%d$") then
        return nil, name .. " must be an RFC 3339 time such as 2024-10-02T15:01:23Z, got '" .. v .. "'"
    end
    return v
end

local RANGE = { start_time = "startTime", end_time = "endTime" }

local function initiate_body(resources, range)
    if next(resources) == nil then
        return nil, "resources must list at least one resource group"
    end
    local body = { resources = setmetatable({}, json.array_mt) }
    for i, r in ipairs(resources) do
        if type(r) ~= "string" then
            return nil, format("resources[%d] must be a string, got %s", i, type(r))
        end
        if not scopes.scope_for(r) then
            return nil, format("unknown resource group '%s' (dp.add_resource teaches new ones)", r)
        end
        body.resources[i] = r
    end
    for k, v in pairs(range or {}) do
        local wire = RANGE[k]
        if not wire or (type(v) ~= "string" and type(v) ~= "number") then
            return nil, format("bad time range field '%s' (start_time and end_time: string or number)",
                tostring(k))
        end
        local t, why = timestamp(v, k)
        if not t then return nil, why end
        body[wire] = t
    end
    return "/v1/portabilityArchive:initiate", body
end

local function field(doc, name)
    local v = doc[name]
    return type(v) == "string" and v or nil
end

local function strings(list)
    local out = {}
    for _, v in ipairs(type(list) == "table" and list or {}) do
        if type(v) == "string" then out[#out + 1] = v end
    end
    return out
end

local function new_job(doc)
    local id = field(doc, "archiveJobId")
    if not id then return nil, "the answer has no archiveJobId" end
    return { archive_job_id = (gsub(id, "^archiveJobs/", "")), access_type = field(doc, "accessType") }
end

local API = {
    reset = {
        id = "authorization.reset", http = "POST", args = {}, revokes = true,
        build = function() return "/v1/authorization:reset" end,
        result = function() return true end,
    },
    initiate = {
        id = "portabilityArchive.initiate", http = "POST", args = { "table", "table?" },
        build = initiate_body,
        result = new_job,
    },
    state = {
        id = "archiveJobs.getPortabilityArchiveState", http = "GET", args = { "string" },
        build = job_path("/v1/archiveJobs/%s/portabilityArchiveState"),
        result = function(doc)
            local state = field(doc, "state")
            if not state then return nil, "the answer has no state" end
            return { state = state, urls = strings(doc.urls), name = field(doc, "name"),
                     export_time = field(doc, "exportTime"), start_time = field(doc, "startTime") }
        end,
    },
    retry = {
        id = "archiveJobs.retry", http = "POST", args = { "string" },
        build = job_path("/v1/archiveJobs/%s:retry"),
        result = new_job,
    },
    cancel = {
        id = "archiveJobs.cancel", http = "POST", args = { "string" },
        build = job_path("/v1/archiveJobs/%s:cancel"),
        result = function() return true end,
    },
    check_access_type = {
        id = "accessType.check", http = "POST", args = {},
        build = function() return "/v1/accessType:check" end,
        result = function(doc)
            return { time_based_resources = strings(doc.timeBasedResources),
                     one_time_resources = strings(doc.oneTimeResources) }
        end,
    },
}

-- Wrong argument types raise, naming the argument (the token is #1).
local function check_args(m, fname, ...)
    for i, want in ipairs(m.args) do
        local v = select(i, ...)
        local optional = find(want, "?", 1, true) ~= nil
        want = gsub(want, "%?", "")
        if type(v) ~= want and not (optional and v == nil) then
            error(format("bad argument #%d to '%s' (%s expected, got %s)", i + 1, fname, want, type(v)), 3)
        end
    end
end

-- path, body; or nil, err for a value refused before any I/O.
local function build(m, ...)
    local path, body = m.build(...)
    if not path then
        return nil, errors.new(m.id, "invalid_argument", body)
    end
    return path, body
end

-- The method's result from a decoded answer, or nil, err.
local function result(m, doc, err)
    if not doc then return nil, err end
    local r, why = m.result(doc)
    if r == nil then
        return nil, errors.new(m.id, "http", "unexpected answer: " .. why)
    end
    return r
end

-- With a token source: its cached access token, refreshed once and sent
-- again when the server answers 401.
local function call_with(self, m, path, token, body)
    if type(token) == "string" or not oauth.is_source(token) then
        return call(self, m, path, token, body)
    end
    local access, err = token:token()
    if not access then return nil, err end
    local doc
    doc, err = call(self, m, path, access, body)
    if not doc and err.http_status == 401 then
        access, err = token:refresh()
        if not access then return nil, err end
        doc, err = call(self, m, path, access, body)
    end
    if doc and m.revokes then token:forget() end
    return doc, err
end

-- After a failed attempt (try.attempts of them so far): marks err with
-- the attempts, and maybe_applied for a reset that probably took effect
-- on an attempt whose answer was lost; returns the wait before sending
-- again, as retry.lua allows, or nil. A stale kept-alive connection is
-- retried at once, where the method allows it at all: the server most
-- likely closed it idle, and a new connection is all it takes.
-- call_with on the event loop: done(doc) or done(nil, err), later; a
-- token source refreshes on the same loop, never blocking it.
local function call_with_async(self, m, path, token, body, done)
    if not oauth.is_source(token) then
        return call_async(self, m, path, token, body, done)
    end
    self.driver = self.driver or async.default_driver()
    token.driver = token.driver or self.driver
    local function send(access, refreshed)
        call_async(self, m, path, access, body, function(doc, err)
            if not doc and err.http_status == 401 and not refreshed then
                return token:refresh_async(function(fresh, rerr)
                    if not fresh then return done(nil, rerr) end
                    send(fresh, true)
                end)
            end
            if doc and m.revokes then token:forget() end
            done(doc, err)
        end)
    end
    token:token_async(function(access, err)
        if not access then return done(nil, err) end
        send(access, false)
    end)
end

local function judge(self, m, try, err)
    err.attempts = try.attempts
    if m.revokes and try.lost and err.status == "UNAUTHENTICATED" then
        err.maybe_applied = true
    end
    try.lost = try.lost or (err.http_status == nil and err.sent == true)
    local delay = try.attempts <= self.retries and retry.allowed(m.id, err)
        and (err.stale_connection and 0 or retry.delay(try.attempts, err, self.retry_max_delay))
    if not delay or core.now() - try.started + delay > retry.MAX_TOTAL then
        return nil
    end
    return delay
end

-- Another attempt is coming after `delay` seconds: on_retry hears of it.
local function announce(self, m, try, err, delay)
    if self.on_retry then
        self.on_retry({ method = m.id, attempt = try.attempts, delay = delay, err = err })
    end
    try.attempts = try.attempts + 1
end

local function new_try(started)
    return { attempts = 1, lost = false, started = started }
end

local sleep = transport.sleep

for name, m in pairs(API) do
    Client[name] = function(self, token, ...)
        check_token_type(token, name)
        check_args(m, name, ...)
        local path, body = build(m, ...)
        if not path then return nil, body end
        local started = core.now()
        local doc, err = call_with(self, m, path, token, body)
        if not doc then -- tables for the retries only when one fails
            local try = new_try(started)
            local delay = judge(self, m, try, err)
            while delay do
                announce(self, m, try, err, delay)
                sleep(delay)
                doc, err = call_with(self, m, path, token, body)
                if doc then break end
                delay = judge(self, m, try, err)
            end
        end
        return result(m, doc, err)
    end

    local async_name = name .. "_async"
    Client[async_name] = function(self, token, ...)
        local n = select("#", ...)
        local args, callback = { ... }, select(n > 0 and n or 1, ...)
        check_token_type(token, async_name)
        if self.cosockets then
            error("asynchronous calls are for event loops outside nginx; in OpenResty the plain"
                .. " calls do not block", 2)
        end
        if type(callback) ~= "function" then
            error(format("bad argument #%d to '%s' (the last argument must be the callback function,"
                .. " got %s)", n > 0 and n + 1 or 2, async_name, type(callback)), 2)
        end
        check_args(m, async_name, unpack(args, 1, n - 1))
        local path, body = build(m, unpack(args, 1, n - 1))
        if not path then -- refused before any I/O: body is the error
            return call_async(self, m, nil, token, body, function(_, err) callback(nil, err) end)
        end
        local try = new_try(core.now())
        local function attempt()
            call_with_async(self, m, path, token, body, function(doc, err)
                local delay = not doc and judge(self, m, try, err)
                if not delay then return callback(result(m, doc, err)) end
                announce(self, m, try, err, delay)
                self.driver:after(delay, attempt)
            end)
        end
        attempt()
    end
end

local MANY_OPTIONS = options.spec({
    concurrency = { "number", check = function(v)
        local most = core.limits.concurrency_max
        if v < 1 or v > most or v % 1 ~= 0 then return format("must be a whole number in [1, %d]", most) end
    end },
    on_result = "function",
})

local function check_many(tokens, opts)
    if type(tokens) ~= "table" then
        error(format("bad argument #1 to 'reset_many' (table of token strings expected, got %s)",
            type(tokens)), 3)
    end
    for i = 1, #tokens do
        if type(tokens[i]) ~= "string" then
            error(format("bad argument #1 to 'reset_many' (tokens[%d] is a %s, not a string)", i,
                type(tokens[i])), 3)
        end
    end
    opts = options.check(opts, MANY_OPTIONS, "reset_many", 2, 3)
    return opts.concurrency or 32, opts.on_result
end

--- client:reset_many(tokens [, opts]) -> results, failed: resets every
--- token of the list, opts.concurrency (32) at a time; results[i] is true
--- or an error table with .index = i; opts.on_result(i, ok, err) as each
--- outcome is final. Retryable failures are sent again together, after
--- the longest wait any of them asks for.
function Client:reset_many(tokens, opts)
    local concurrency, on_result = check_many(tokens, opts)
    local m = API.reset
    local path = m.build()
    local results, failed, tries = {}, 0, {}
    local function final(i, err)
        results[i] = err
        failed = failed + 1
        if on_result then on_result(i, false, err) end
    end
    local round, positions = tokens, nil -- positions[k]: the index of round[k] in tokens
    while round[1] do
        local seen, again, wait, started = {}, {}, 0, core.now()
        self.transport:many(m.http, path, round, concurrency, function(k, ...)
            seen[k] = true
            local i = positions and positions[k] or k
            local doc, err = outcome(m, round[k], ...)
            if doc then
                results[i] = true
                if on_result then on_result(i, true) end
                return
            end
            err.index = i
            tries[i] = tries[i] or new_try(started) -- no later than its first attempt
            local delay = judge(self, m, tries[i], err)
            if not delay then return final(i, err) end
            again[#again + 1] = { k = k, i = i, err = err }
            if delay > wait then wait = delay end
        end)
        for k = 1, #round do -- the client was closed, before or during the round
            if not seen[k] then
                local i, _, err = positions and positions[k] or k, outcome(m, round[k], nil, nil, nil, nil,
                    "closed", "client is closed", "no")
                err.index = i
                final(i, err)
            end
        end
        local next_round, next_positions = {}, {}
        for _, r in ipairs(again) do -- all wait the longest wait: no one past MAX_TOTAL
            if core.now() - tries[r.i].started + wait > retry.MAX_TOTAL then
                final(r.i, r.err)
            else
                announce(self, m, tries[r.i], r.err, wait)
                next_round[#next_round + 1], next_positions[#next_positions + 1] = round[r.k], r.i
            end
        end
        if next_round[1] then sleep(wait) end
        round, positions = next_round, next_positions
    end
    return results, failed
end

--- client:export(token, resources, opts) -> result | nil, err: the whole
--- export workflow (lua/dataportability/export.lua).
function Client:export(token, resources, opts)
    check_token_type(token, "export")
    export.check(opts, "export")
    -- not a tail call: it may raise
    local exported, err = export.run(export.blocking(self), token, resources, opts)
    return exported, err
end

--- client:export_async(token, resources, opts, callback): the same on the
--- client's event loop; callback(result) or callback(nil, err), later.
--- It runs as a coroutine that each step suspends; what a callback
--- raises is raised from the loop's turn that ran it.
function Client:export_async(token, resources, opts, callback)
    check_token_type(token, "export_async")
    if self.cosockets then
        error("asynchronous calls are for event loops outside nginx; in OpenResty client:export does"
            .. " not block", 2)
    end
    export.check(opts, "export_async")
    if type(callback) ~= "function" then
        error(format("bad argument #4 to 'export_async' (function expected, got %s)", type(callback)), 2)
    end
    self.driver = self.driver or async.default_driver()
    local co
    local function resume(...)
        local ok, err = coroutine.resume(co, ...)
        if not ok then error(err, 0) end
    end
    co = coroutine.create(function()
        callback(export.run(export.on_loop(self, self.driver, resume), token, resources, opts))
    end)
    resume()
end

--- client:close(): idempotent; later calls return a `closed` error.
function Client:close()
    local driver = self.driver
    if driver then -- from one of its hooks: once they have returned
        return driver:after_hooks(function()
            self.transport:close()
            driver:cancelled(self.transport)
        end)
    end
    self.transport:close()
end

Client.__close = Client.close

function Client:__tostring()
    return tostring(self.transport)
end

_M.create = create
_M.check_token_type = check_token_type

return _M
