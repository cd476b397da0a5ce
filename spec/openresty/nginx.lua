-- A real nginx + ngx_lua for spec/30-openresty_spec.lua: one process
-- (daemon, no master), a random loopback port, its own temp prefix. It serves
-- examples/openresty/reset_handler.lua and the test-only handlers of
-- spec/openresty/cases.lua. Stopped by its own pid, never by name.
local _M = {}

local MODULES = {
    "/usr/lib/nginx/modules/ndk_http_module.so",
    "/usr/lib/nginx/modules/ngx_http_lua_module.so",
}

local function capture(cmd)
    local p = assert(io.popen("(" .. cmd .. ") 2>&1"))
    local out = p:read("*a")
    p:close()
    return out
end

local function exec(cmd)
    local r = os.execute(cmd)
    return r == true or r == 0
end

local function read_file(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    return s
end

local function write_file(path, data)
    local f = assert(io.open(path, "wb"))
    f:write(data)
    f:close()
end

local function trim(s)
    return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

local function random_port()
    local f = assert(io.open("/dev/urandom", "rb"))
    local b = f:read(2)
    f:close()
    return 20000 + (b:byte(1) * 256 + b:byte(2)) % 40000
end

-- A zombie counts as gone: the daemonised nginx is reaped by init, not by us.
local function alive(pid)
    local stat = read_file("/proc/" .. pid .. "/stat")
    return stat ~= nil and stat:match(".*%)%s+(%a)") ~= "Z"
end

local function conf(o)
    local d, root = o.dir, o.root
    local L = {}
    for _, m in ipairs(MODULES) do
        if read_file(m) then L[#L + 1] = "load_module " .. m .. ";" end
    end
    L[#L + 1] = ([[
daemon on;
master_process off;
pid %s/nginx.pid;
lock_file %s/nginx.lock;
error_log %s/logs/error.log info;
events { worker_connections 256; }
http {
    access_log %s/logs/access.log;
    client_body_temp_path %s/tmp;]]):format(d, d, d, d, d)
    for _, m in ipairs({ "proxy", "fastcgi", "uwsgi", "scgi" }) do
        if not o.nginx_v:find("--without-http_" .. m .. "_module", 1, true) then
            L[#L + 1] = ("    %s_temp_path %s/tmp;"):format(m, d)
        end
    end
    L[#L + 1] = ([[
    lua_package_path "%s/lua/?.lua;%s/lua/?/init.lua;%s/examples/openresty/?.lua;%s/spec/openresty/?.lua;;";
    lua_package_cpath "%s/build/luajit/?.so;;";
    lua_ssl_trusted_certificate %s;
    lua_ssl_verify_depth 2;
    lua_shared_dict dp_test 1m;
    init_worker_by_lua_block { require("cases").init_worker(%q, %d) }
    server {
        listen 127.0.0.1:%d;
        location = /reset {
            content_by_lua_block {
                require("reset_handler").handle({ endpoint = %q, timeout = 5,
                    user_agent = "spec/1.0", quota_project = "spec-project" })
            }
        }
        location /t/ { content_by_lua_block { require("cases").run() } }
        location = /phase/header_filter {
            content_by_lua_block { ngx.say("body") }
            header_filter_by_lua_block { ngx.header["X-DP-Raised"] = require("cases").in_phase().raised }
        }
        location = /phase/set {
            set_by_lua_block $dp_raised { return require("cases").in_phase().raised or "" }
            content_by_lua_block { ngx.say(ngx.var.dp_raised) }
        }
        location = /phase/log {
            content_by_lua_block { ngx.say("body") }
            log_by_lua_block { require("cases").in_phase() }
        }
        location = /phase/result { content_by_lua_block { require("cases").recorded() } }
        location = /raw/close { # a body that ends when the connection does
            chunked_transfer_encoding off;
            content_by_lua_block {
                ngx.header["Retry-After"] = string.rep("9", 100)
                ngx.print(string.rep("x", tonumber(ngx.var.arg_bytes)))
            }
        }
    }
    # HTTPS with a self-signed certificate: a CA nobody trusts here
    server {
        listen 127.0.0.1:%d ssl;
        ssl_certificate %s/self.pem;
        ssl_certificate_key %s/self.key;
        location / { return 200 "{}"; }
    }
}
]]):format(root, root, root, root, root, o.ca_file, o.endpoint, o.owner_pid, o.port, o.endpoint,
        o.self_signed_port, d, d)
    return table.concat(L, "\n")
end

local Server = {}
Server.__index = Server

--- Starts nginx for the emulator `emu`; raises on failure.
function _M.start(emu)
    local root = trim(capture("pwd"))
    assert(read_file(root .. "/build/luajit/dataportability/core.so"), "run `make luajit` first")
    local nginx = trim(capture("command -v nginx || command -v /usr/sbin/nginx || echo nginx"))
    local dir = trim(capture('mktemp -d "${TMPDIR:-/tmp}/dataportability-openresty.XXXXXX"'))
    assert(exec("mkdir -p '" .. dir .. "/logs' '" .. dir .. "/tmp'"))
    assert(exec("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2"
        .. " -subj /CN=localhost -addext subjectAltName=DNS:localhost -keyout '" .. dir
        .. "/self.key' -out '" .. dir .. "/self.pem' 2>/dev/null"))
    local o = { dir = dir, root = root, ca_file = emu.ca_file, endpoint = emu.https_endpoint,
                owner_pid = tonumber(trim(capture("echo $PPID"))), nginx_v = capture(nginx .. " -V") }
    local out
    for _ = 1, 10 do
        o.port, o.self_signed_port = random_port(), random_port()
        write_file(dir .. "/nginx.conf", conf(o))
        out = capture(nginx .. " -p '" .. dir .. "/' -c '" .. dir .. "/nginx.conf'; echo rc=$?")
        if out:find("rc=0", 1, true) then break end
        if not out:find("Address already in use", 1, true) then break end
    end
    local self = setmetatable({ dir = dir, port = o.port, url = "http://127.0.0.1:" .. o.port,
                                self_signed = "https://localhost:" .. o.self_signed_port }, Server)
    for _ = 1, 100 do
        self.pid = tonumber(read_file(dir .. "/nginx.pid") or "")
        if self.pid and alive(self.pid) then return self end
        exec("sleep 0.05")
    end
    exec("rm -rf '" .. dir .. "'")
    error("nginx did not start: " .. tostring(out))
end

--- The text of error.log and access.log.
function Server:logs()
    local d = self.dir .. "/logs/"
    return (read_file(d .. "error.log") or "") .. (read_file(d .. "access.log") or "")
end

--- Stops nginx by its pid (TERM, KILL after ~5 s) and removes its prefix.
function Server:stop()
    local pid = self.pid
    if pid and alive(pid) and (read_file("/proc/" .. pid .. "/cmdline") or ""):find(self.dir, 1, true) then
        exec("kill -TERM " .. pid)
        for i = 1, 120 do
            if not alive(pid) then break end
            if i == 100 then exec("kill -KILL " .. pid) end
            exec("sleep 0.05")
        end
    end
    exec("rm -rf '" .. self.dir .. "'")
end

return _M
