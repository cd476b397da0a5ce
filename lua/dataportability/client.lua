-- The client: option checks, the API's methods as table entries, and the
-- one request path they all share.
local core = require("dataportability.core")
local errors = require("dataportability.errors")
local async = require("dataportability.async")
local json = require("cjson.safe")

local type, pairs, tostring, error, setmetatable, rawget = type, pairs, tostring, error, setmetatable, rawget
local format, find, getenv = string.format, string.find, os.getenv

local _M = { VERSION = "0.1.0" }

local DEFAULT_ENDPOINT = "https://dataportability.googleapis.com"
local USER_AGENT = "dataportability-lua/" .. _M.VERSION

-- Every option and its type; anything else is a programming error.
local OPTIONS = {
    endpoint = "string", timeout = "number", connect_timeout = "number",
    ca_file = "string", user_agent = "string", quota_project = "string", proxy = "string",
    driver = "table",
}

-- The API's methods. A new method is one entry here and a small wrapper.
local METHODS = {
    reset = { id = "authorization.reset", http = "POST", path = "/v1/authorization:reset" },
}

local Client = { __name = "dataportability.client" }
Client.__index = Client

local function check_options(opts, fname)
    if opts == nil then
        return {}
    end
    if type(opts) ~= "table" then
        error(format("bad argument to '%s' (options table expected, got %s)", fname, type(opts)), 4)
    end
    for k, v in pairs(opts) do
        local want = OPTIONS[k]
        if not want then
            error(format("%s: unknown option '%s'", fname, tostring(k)), 4)
        end
        if type(v) ~= want then
            error(format("%s: option '%s' must be a %s, got %s", fname, k, want, type(v)), 4)
        end
    end
    if opts.driver and not async.is_driver(opts.driver) then
        error(fname .. ": option 'driver' must come from dp.driver()", 4)
    end
    return opts
end

-- As with Google's emulators: DATAPORTABILITY_EMULATOR_HOST=host:port.
local function default_endpoint()
    local host = getenv("DATAPORTABILITY_EMULATOR_HOST")
    if host == nil or host == "" then
        return DEFAULT_ENDPOINT
    end
    if find(host, "[/@?#%s]") then
        error("DATAPORTABILITY_EMULATOR_HOST must be host:port, got '" .. host .. "'", 4)
    end
    return "http://" .. host
end

-- In nginx, requests go through cosockets so that they never block the
-- worker; everywhere else through libcurl in the C core.
local function in_nginx()
    local ngx = rawget(_G, "ngx")
    return type(ngx) == "table" and ngx.socket ~= nil and ngx.get_phase ~= nil
end

local function new_transport(o)
    if in_nginx() then
        return require("dataportability.transport.ngx").new(o)
    end
    return core.new(o)
end

local function create(opts, fname)
    opts = check_options(opts, fname)
    local ok, transport = pcall(new_transport, {
        endpoint = opts.endpoint or default_endpoint(),
        timeout = opts.timeout,
        connect_timeout = opts.connect_timeout,
        ca_file = opts.ca_file,
        user_agent = opts.user_agent and USER_AGENT .. " " .. opts.user_agent or USER_AGENT,
        quota_project = opts.quota_project,
        proxy = opts.proxy,
    })
    if not ok then
        error(fname .. ": " .. tostring(transport), 3)
    end
    return setmetatable({ transport = transport, driver = opts.driver, cosockets = in_nginx() }, Client)
end

local function check_token_type(token, fname)
    if type(token) ~= "string" then
        error(format("bad argument #1 to '%s' (token string expected, got %s)", fname, type(token)), 3)
    end
end

-- What a transport's answer means: the decoded JSON body of a 2xx, or
-- nil, err.
local function outcome(m, token, status, resp, content_type, retry_after)
    if not status then -- nothing usable came back: then come the kind and the message
        return nil, errors.new(m.id, resp, content_type)
    end
    resp = errors.redact(resp, token)
    if status < 200 or status >= 300 then
        return nil, errors.from_response(m.id, status, resp, content_type, retry_after)
    end
    if resp == "" then
        return {}
    end
    local doc = json.decode(resp)
    if type(doc) ~= "table" then
        return nil, errors.new(m.id, "http",
            format("HTTP %d with a body that is not a JSON object", status), { http_status = status })
    end
    return doc
end

-- The one request path, blocking.
local function call(self, m, token, body)
    return outcome(m, token, self.transport:request(m.http, m.path, token, body and json.encode(body)))
end

-- The same, through the event loop: done(doc) or done(nil, err), later.
local function call_async(self, m, token, body, done)
    if self.cosockets then
        error("asynchronous calls are for event loops outside nginx; in OpenResty the plain"
            .. " calls do not block", 3)
    end
    self.driver = self.driver or async.default_driver()
    self.driver:start(self.transport, m.http, m.path, token, body and json.encode(body),
        function(...) done(outcome(m, token, ...)) end)
end

local function check_callback(callback, fname)
    if type(callback) ~= "function" then
        error(format("bad argument #2 to '%s' (function expected, got %s)", fname, type(callback)), 3)
    end
end

--- client:reset(token) -> true | nil, err
function Client:reset(token)
    check_token_type(token, "reset")
    local ok, err = call(self, METHODS.reset, token)
    if not ok then
        return nil, err
    end
    return true
end

--- client:reset_async(token, callback): callback(true) or callback(nil, err),
--- on the event loop, never before reset_async returns.
function Client:reset_async(token, callback)
    check_token_type(token, "reset_async")
    check_callback(callback, "reset_async")
    call_async(self, METHODS.reset, token, nil, function(ok, err)
        if ok then callback(true) else callback(nil, err) end
    end)
end

--- client:close(): idempotent; later calls return a `closed` error.
function Client:close()
    self.transport:close()
    if self.driver then
        self.driver:cancelled(self.transport)
    end
end

Client.__close = Client.close

function Client:__tostring()
    return tostring(self.transport)
end

_M.create = create
_M.check_token_type = check_token_type

return _M
