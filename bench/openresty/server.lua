--- The nginx under test for the OpenResty figures: Debian's nginx with
-- ngx_lua, one process (dataportability.emulator.nginx runs nginx without a
-- master, so its one process is the one worker), on a random loopback port,
-- plain HTTP/1.1 for the load generator. Its upstream is one HTTPS server,
-- `endpoint` (https://localhost:PORT), trusted through `ca`:
--
--   POST /module       client:reset on the worker's client (handlers.lua)
--   POST /proxy_pass   the same POST through nginx's own upstream module,
--                      kept-alive and verified: the ceiling in nginx
--   GET  /export       client:export of a job (handlers.lua)
--
--   local s = assert(require("bench.openresty.server").start(endpoint, ca))
--   ... s.url is http://127.0.0.1:PORT, s.pid its one process ...
--   s.stop()
--
-- Run from the repository root after `make luajit`.
local nginx = require("dataportability.emulator.nginx")

local _M = {}

-- Both ways to the upstream keep as many idle connections: the cosocket
-- pool and nginx's upstream keepalive.
local POOL = 32

local function http_block(upstream, ca)
    return function(s)
        return ([[
    access_log off;
    server_tokens off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    lua_ssl_trusted_certificate %q;
    lua_ssl_verify_depth 2;
    lua_socket_pool_size %d;
    lua_socket_keepalive_timeout 300s;
    upstream bench_upstream {
        server %s;
        keepalive %d;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:%d;
        location = /module { content_by_lua_block { require("bench.openresty.handlers").reset() } }
        location = /proxy_pass {
            proxy_pass https://bench_upstream/v1/authorization:reset;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate %q;
            proxy_ssl_server_name on;
            proxy_ssl_name localhost;
        }
        location = /export { content_by_lua_block { require("bench.openresty.handlers").export() } }
    }]]):format(ca, POOL, upstream, POOL, s.ports[1], ca)
    end
end

--- start(endpoint, ca) -> {url=, pid=, stop=fn} | nil, message
function _M.start(endpoint, ca)
    local host, port = endpoint:match("^https://([^:/]+):(%d+)$")
    if not host then return nil, "endpoint must be https://HOST:PORT, got " .. endpoint end
    local root = (nginx.sh("pwd"):gsub("%s+$", ""))
    if not nginx.read_file(root .. "/build/luajit/dataportability/core.so") then
        return nil, "build/luajit/dataportability/core.so is missing (make luajit)"
    end
    local s, err = nginx.start({
        ports = { false },
        lua_path = root .. "/?.lua;;", -- bench.openresty.handlers
        lua_cpath = root .. "/build/luajit/?.so;;",
        init_worker = ("require('bench.openresty.handlers').init(%q)"):format(endpoint),
        http = http_block((host == "localhost" and "127.0.0.1" or host) .. ":" .. port, ca),
        watch = tonumber((nginx.sh("echo $PPID"):gsub("%s", ""))), -- the shell's parent is us
    })
    if not s then return nil, err end
    return {
        url = "http://127.0.0.1:" .. s.ports[1],
        pid = s.pid,
        stop = function() return s:stop() end,
    }
end

return _M
