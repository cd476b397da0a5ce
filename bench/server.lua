--- The benchmark's server: one static nginx process on a random loopback
-- port, HTTPS with HTTP/2 and HTTP/1.1, answering
-- POST /v1/authorization:reset with 200 {} (401 without a Bearer token).
-- No Lua runs per request: the figures measure the clients, not the server.
--
--   local server = dofile("bench/server.lua")     -- or require("bench.server")
--   local s = assert(server.start())               -- {url=, ca=, pid=, stop=}
--   ... s.url is https://localhost:PORT, s.ca the CA certificate ...
--   s.stop()
--
-- Run with LUA_PATH="./lua/?.lua;./lua/?/init.lua;;" from the repository root.
-- Alone, `lua5.4 bench/server.lua` starts it, prints url and ca, and stops it
-- on Enter.
local nginx = require("dataportability.emulator.nginx")
local emulator = require("dataportability.emulator")

local _M = {}

local function http_block(s)
    local d = s.dir
    return ([[
    access_log off;
    server_tokens off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    http2_max_concurrent_streams 128;
    ssl_certificate %q;
    ssl_certificate_key %q;
    ssl_protocols TLSv1.2 TLSv1.3;
    server {
        listen 127.0.0.1:%d ssl http2;
        server_name localhost;
        location = /v1/authorization:reset {
            default_type application/json;
            if ($http_authorization !~ "^Bearer ") {
                return 401 '{"error":{"code":401,"status":"UNAUTHENTICATED"}}';
            }
            return 200 '{}';
        }
        location / { return 404; }
    }]]):format(d .. "/conf/server.pem", d .. "/conf/server.key", s.ports[1])
end

--- start([opts]) -> {url=, ca=, pid=, dir=, stop=fn} | nil, message
-- opts.watch: a pid; nginx stops itself once that process is gone (default:
-- the calling Lua process), so an interrupted run leaves nothing behind.
function _M.start(opts)
    opts = opts or {}
    local watch = opts.watch
    if watch == nil then
        watch = tonumber((nginx.sh("echo $PPID"):gsub("%s", ""))) -- the shell's parent is us
    end
    local s, err = nginx.start({
        ports = { false },
        prepare = emulator.make_certs,
        http = http_block,
        watch = watch or nil,
    })
    if not s then return nil, err end
    return {
        url = "https://localhost:" .. s.ports[1],
        ca = s.dir .. "/ca.pem",
        pid = s.pid,
        dir = s.dir,
        stop = function() return s:stop() end,
    }
end

if arg and arg[0] and arg[0]:match("bench/server%.lua$") and not package.loaded["bench.server"] then
    local s = assert(_M.start())
    print("url " .. s.url)
    print("ca  " .. s.ca)
    io.write("Enter stops it. ")
    io.read("*l")
    assert(s.stop())
end

return _M
