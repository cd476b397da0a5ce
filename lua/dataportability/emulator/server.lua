--- Request handlers of the Data Portability API emulator: the entry points
-- nginx calls, and the routing to the modules beside this one.
-- Runs inside nginx + ngx_lua (LuaJIT); started by dataportability.emulator.
-- The server runs as ONE process (master_process off), so a shared-dict
-- read-modify-write with no yield in between is atomic.
--
--   127.0.0.1 (HTTP and HTTPS)  /v1/...            api.lua      the API
--                               /token /revoke
--                               /o/oauth2/v2/auth  oauth.lua    OAuth 2.0
--                               /emulator/v1/...   admin.lua    admin API
--   127.0.0.2 (HTTPS port)      /<bucket>/...      archive.lua  signed downloads
-- luacheck: globals ngx

local R = require("dataportability.emulator.respond")
local admin = require("dataportability.emulator.admin")
local api = require("dataportability.emulator.api")
local archive = require("dataportability.emulator.archive")
local oauth = require("dataportability.emulator.oauth")
local traffic = require("dataportability.emulator.traffic")

local str_sub, str_find = string.sub, string.find

local _M = {}

_M.encode = R.encode

--- init_by_lua: opts.https_port, where the storage host listens too.
function _M.init(opts)
    archive.set_host("127.0.0.2:" .. opts.https_port)
end

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

local OAUTH = {
    ["/token"] = oauth.token, ["/revoke"] = oauth.revoke, ["/o/oauth2/v2/auth"] = oauth.authorize,
}

-- The RPC a /v1 path names, for the ErrorInfo of a faulted answer.
local RPC_SUFFIXES = {
    { ":initiate", "InitiatePortabilityArchive" },
    { "/portabilityArchiveState", "GetPortabilityArchiveState" },
    { ":retry", "RetryPortabilityArchive" },
    { ":cancel", "CancelPortabilityArchive" },
    { ":check", "CheckAccessType" },
}
local function rpc_name(uri)
    for _, s in ipairs(RPC_SUFFIXES) do
        if str_find(uri, s[1], -#s[1], true) then return R.rpc_method(s[2]) end
    end
    return R.rpc_method("ResetAuthorization")
end

--- content_by_lua entry point of the API host (127.0.0.1).
function _M.handle()
    ngx.update_time()
    local uri, method = ngx.var.uri, ngx.req.get_method()
    if str_sub(uri, 1, 13) == "/emulator/v1/" then
        return admin.handle(method, str_sub(uri, 13), read_body())
    end
    local is_api = uri == "/v1" or str_sub(uri, 1, 4) == "/v1/"
    local oauth_handler = OAUTH[uri]
    if not is_api and not oauth_handler then return R.send_html_404() end
    local body = read_body()
    traffic.log(body, oauth_handler ~= nil)
    local rule = traffic.take(uri, method)
    if rule then traffic.apply(rule, is_api and "api" or "oauth", rpc_name(uri)) end
    if oauth_handler then return oauth_handler(body) end
    local raw = ngx.var.request_uri:match("^[^?]*")
    if api.handle(method, uri, raw, body) == false then
        return R.send_json(404, R.rpc_error(404, "Method not found."))
    end
end

--- content_by_lua entry point of the storage host (127.0.0.2).
function _M.handle_storage()
    ngx.update_time()
    local body = read_body()
    traffic.log(body)
    local rule = traffic.take(ngx.var.uri, ngx.req.get_method())
    if rule then traffic.apply(rule, "storage") end
    return archive.serve()
end

return _M
