-- Where requests go (docs/transport.md): the C core's transport (libcurl)
-- everywhere, or inside nginx the cosocket one, so that a call never
-- blocks the worker. Both the client and the OAuth token sources get theirs
-- here, built the same way from the user's options.
local core = require("dataportability.core")

local type, tostring, error, pcall, rawget, require = type, tostring, error, pcall, rawget, require
local find, gsub, getenv = string.find, string.gsub, os.getenv

local _M = {}

_M.DEFAULT_ENDPOINT = "https://dataportability.googleapis.com"
_M.USER_AGENT = "dataportability-lua/" .. core._VERSION

--- transport.in_nginx() -> boolean: inside an nginx worker with cosockets.
function _M.in_nginx()
    local ngx = rawget(_G, "ngx")
    return type(ngx) == "table" and ngx.socket ~= nil and ngx.get_phase ~= nil
end

--- transport.emulator_host(fname, level) -> "host:port" | nil: as with
--- Google's emulators, DATAPORTABILITY_EMULATOR_HOST=host:port sends
--- everything to a local emulator. A malformed value raises, naming
--- `fname`; level is what the caller would give error().
function _M.emulator_host(fname, level)
    local host = getenv("DATAPORTABILITY_EMULATOR_HOST")
    if host == nil or host == "" then
        return nil
    end
    if find(host, "[/@?#%s]") then
        error(fname .. ": DATAPORTABILITY_EMULATOR_HOST must be host:port, got '" .. host .. "'", level + 1)
    end
    return host
end

--- transport.sleep(seconds): blocks; inside nginx, yields to its event loop.
function _M.sleep(seconds)
    if _M.in_nginx() then
        rawget(_G, "ngx").sleep(seconds)
    else
        core.sleep(seconds)
    end
end

-- The option names of a transport (core.new's, and `pool`); the others
-- of a client's options are the client's.
local function transport_options(opts, endpoint)
    return {
        endpoint = endpoint,
        timeout = opts.timeout,
        connect_timeout = opts.connect_timeout,
        ca_file = opts.ca_file,
        user_agent = opts.user_agent and _M.USER_AGENT .. " " .. opts.user_agent or _M.USER_AGENT,
        quota_project = opts.quota_project,
        proxy = opts.proxy,
        pool = opts.pool,
    }
end


--- transport.new(opts, fname [, level [, endpoint_option]]) -> transport
--- opts: the user's options, already of the right types (options.lua):
--- endpoint (default: the emulator's when DATAPORTABILITY_EMULATOR_HOST
--- is set, else Google's), timeout, connect_timeout, ca_file, user_agent
--- (after this library's), quota_project, proxy, pool; others are
--- ignored. A value the transport refuses raises "fname: option 'NAME'
--- ...", blaming what level (as for error(), default 1) says; the
--- message calls the endpoint `endpoint_option` when given (the user's
--- name for it, such as token_endpoint).
function _M.new(opts, fname, level, endpoint_option)
    level = (level or 1) + 1 -- this function's own frame
    local endpoint = opts.endpoint
    if endpoint == nil then
        local host = _M.emulator_host(fname, level)
        endpoint = host and "http://" .. host or _M.DEFAULT_ENDPOINT
    end
    -- called by pcall itself: a C error then has no position to strip
    local new = _M.in_nginx() and require("dataportability.transport.ngx").new or core.new
    local ok, t = pcall(new, transport_options(opts, endpoint))
    if not ok then
        local message = gsub(tostring(t), "^[%w_./-]+%.lua:%d+: ", "") -- raised inside ngx.lua
        if endpoint_option then
            message = gsub(message, "^option 'endpoint'", "option '" .. endpoint_option .. "'")
        end
        error(fname .. ": " .. message, level)
    end
    return t
end

return _M
