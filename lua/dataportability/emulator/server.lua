--- Request handlers of the Data Portability API emulator: the entry points
-- nginx calls, and the routing to the modules beside this one.
-- Runs inside nginx + ngx_lua (LuaJIT); started by dataportability.emulator.
-- The server runs as ONE process (master_process off), so a shared-dict
-- read-modify-write with no yield in between is atomic.
--
--   127.0.0.1 (HTTP and HTTPS)  /v1/...            api.lua      the API
--                               POST /batch        batch.lua    batches of /v1 requests
--                               /token /revoke
--                               /o/oauth2/v2/auth  oauth.lua    OAuth 2.0
--                               /emulator/v1/...   admin.lua    admin API
--   127.0.0.2 (HTTPS port)      /<bucket>/...      archive.lua  signed downloads
-- luacheck: globals ngx

local R = require("dataportability.emulator.respond")
local admin = require("dataportability.emulator.admin")
local api = require("dataportability.emulator.api")
local archive = require("dataportability.emulator.archive")
local batch = require("dataportability.emulator.batch")
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

--- content_by_lua entry point of the API host (127.0.0.1), and of each
-- part of a batch (a subrequest: ngx.ctx.part has its path and headers;
-- only the /v1 API is reachable from a batch).
function _M.handle()
    ngx.update_time()
    local part = ngx.ctx.part
    local raw = R.path()
    local uri, method = part and ngx.unescape_uri(raw) or ngx.var.uri, ngx.req.get_method()
    if not part and str_sub(uri, 1, 13) == "/emulator/v1/" then
        return admin.handle(method, str_sub(uri, 13), read_body())
    end
    local is_api = uri == "/v1" or str_sub(uri, 1, 4) == "/v1/"
    local oauth_handler = not part and OAUTH[uri]
    local is_batch = not part and uri == "/batch" and method == "POST"
    if not is_api and not oauth_handler and not is_batch then return R.send_html_404() end
    local body = read_body()
    traffic.log(body, oauth_handler ~= nil)
    local rule = traffic.take(uri, method)
    if rule then traffic.apply(rule, oauth_handler and "oauth" or "api", rpc_name(uri)) end
    if oauth_handler then return oauth_handler(body) end
    if is_batch then return batch.handle(body) end
    if api.handle(method, uri, raw, body) == false then
        return R.send_json(404, R.rpc_error(404, "Method not found."))
    end
end

--- header_filter_by_lua: nginx's own Server header never goes out (the
-- handlers set Google's where Google sends one).
function _M.header_filter()
    if ngx.header["Server"] == nil then ngx.header["Server"] = nil end
end

-- nginx's own errors (a malformed request, a body too large, a failed
-- handler), as Google's front end words them; <code> holds the path.
local ERROR_PAGES = {
    [400] = { "Bad Request", "Your client has issued a malformed or illegal request." },
    [404] = { "Not Found", "The requested URL <code>%s</code> was not found on this server." },
    [405] = { "Method Not Allowed", "The request method is inappropriate for the URL <code>%s</code>." },
    [408] = { "Request Timeout", "Your client has taken too long to issue its request." },
    [411] = { "Length Required", "POST requests require a <code>Content-length</code> header." },
    [413] = { "Request Entity Too Large", "Your client issued a request that was too large." },
    [414] = { "Request-URI Too Large", "The requested URL is too large to process." },
    [500] = { "Internal Server Error", "The server encountered an error and could not complete "
        .. "your request.<p>Please try again in 30 seconds." },
}

--- content_by_lua of the error_page location: the page for ngx.status.
function _M.error_page()
    local code = ngx.status
    -- headers too large, plain HTTP to the HTTPS port: nginx's own codes, sent as 400
    if code == 494 or code == 497 then code = 400 end
    local page = ERROR_PAGES[code] or ERROR_PAGES[400]
    local path = (ngx.var.request_uri or ""):match("^[^?]*")
    return R.send_html(code, page[1], page[2]:format(R.html_escape(path)))
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
