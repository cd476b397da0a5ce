--- Local stand-in for Google's Data Portability API, for tests.
-- Launches nginx + ngx_lua (handlers in dataportability.emulator.server) on
-- 127.0.0.1 only, and talks to its admin API. Plain Lua 5.1-5.4 / LuaJIT.
--
--   local emulator = require("dataportability.emulator")
--   local emu = assert(emulator.start())
--   emu:add_token("tok", { "https://www.googleapis.com/auth/dataportability.myactivity.youtube" })
--   emu:set_fault({ action = "status", status = 503, count = 2 })
--   ... point the client at emu.endpoint (or emu.https_endpoint + emu.ca_file) ...
--   emu:stop()

local _M = {}

local SERVER_MODULE = "dataportability.emulator.server"
local DEFAULT_MODULES = {  -- Debian's libnginx-mod-http-lua; OpenResty has them built in
    "/usr/lib/nginx/modules/ndk_http_module.so",
    "/usr/lib/nginx/modules/ngx_http_lua_module.so",
}
local OWNED_MARKER = ".dataportability-emulator-tmp"  -- prefix dirs we created and may delete

---------------------------------------------------------------------------
-- Small portable helpers (no POSIX bindings: everything goes through sh)

local function q(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- true when the command exits 0 (os.execute differs between 5.1 and 5.2+)
local function exec(cmd)
    local r = os.execute(cmd)
    return r == true or r == 0
end

-- output (stdout and stderr), ok
local function capture(cmd)
    local p = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"rc=$?\""))
    local out = p:read("*a")
    p:close()
    local body, rc = out:match("^(.-)rc=(%d+)%s*$")
    return body or out, rc == "0"
end

local function read_file(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    return s
end

local function write_file(path, data)
    local f, err = io.open(path, "wb")
    if not f then return nil, err end
    f:write(data)
    f:close()
    return true
end

local function sleep(seconds)
    return exec("sleep " .. seconds)
end

local function trim(s)
    return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

local function absolute(path)
    if path:sub(1, 1) == "/" then return path end
    return trim(capture("pwd")) .. "/" .. path:gsub("^%./", "")
end

-- Ports come from /dev/urandom so we never reseed the caller's math.random.
local function random_port()
    local f = io.open("/dev/urandom", "rb")
    local b = f and f:read(3)
    if f then f:close() end
    local n = b and (b:byte(1) * 65536 + b:byte(2) * 256 + b:byte(3)) or math.random(0, 39999)
    return 20000 + n % 40000
end

local function random_hex()
    local f = io.open("/dev/urandom", "rb")
    local b = f and f:read(8) or tostring(os.time()) .. tostring(os.clock())
    if f then f:close() end
    return (b:gsub(".", function(c) return ("%02x"):format(c:byte()) end):sub(1, 16))
end

local HAS_PROC = read_file("/proc/self/stat") ~= nil

-- A zombie counts as gone: our daemonized nginx is reaped by init, not by us.
local function alive(pid)
    if HAS_PROC then
        local stat = read_file("/proc/" .. pid .. "/stat")
        return stat ~= nil and stat:match(".*%)%s+(%a)") ~= "Z"
    end
    return exec("kill -0 " .. pid .. " 2>/dev/null")
end

-- Guard against a recycled pid: our nginx was started with "-p <dir>/".
local function is_ours(pid, dir)
    if not HAS_PROC then return true end
    local cmdline = read_file("/proc/" .. pid .. "/cmdline")
    return cmdline ~= nil and cmdline:find(dir, 1, true) ~= nil
end

local function lua_dir()
    local name = SERVER_MODULE:gsub("%.", "/") .. ".lua"
    for template in package.path:gmatch("[^;]+") do
        local file = template:gsub("%?", (SERVER_MODULE:gsub("%.", "/")))
        if file:sub(-#name) == name and read_file(file) then
            return absolute(file:sub(1, -#name - 1))
        end
    end
end

---------------------------------------------------------------------------
-- Admin client

-- HTTP through the module's own C core, to the plain-HTTP loopback port.
local function transport(endpoint)
    local core = require("dataportability.core")
    local c = core.new({ endpoint = endpoint, timeout = 10, connect_timeout = 5 })
    return function(method, path, body) return c:request(method, path, nil, body) end
end

local Admin = {}
Admin.__index = Admin

-- One admin round trip; failures raise (they are test set-up errors).
function Admin:call(method, path, tbl)
    local cjson = require("cjson")
    self._transport = self._transport or transport(self.endpoint)
    local status, body, msg = self._transport(method, "/emulator/v1" .. path, tbl and cjson.encode(tbl))
    if status ~= 200 then
        error(("emulator admin %s %s failed: %s"):format(method, path, status
            and (status .. " " .. trim(tostring(body))) or (tostring(body) .. ": " .. tostring(msg))), 3)
    end
    return cjson.decode(body)
end

--- Registers (or re-enables) an access token with its granted scopes.
function Admin:add_token(token, scopes)
    if type(token) ~= "string" then error("arg #1 to add_token, expected string, got " .. type(token), 2) end
    if type(scopes) == "string" then scopes = { scopes } end
    self:call("POST", "/tokens", { token = token, scopes = scopes or {} })
    return true
end

--- Adds a fault rule (see the README of the admin API for its fields).
function Admin:set_fault(fault)
    if type(fault) ~= "table" then error("arg #1 to set_fault, expected table, got " .. type(fault), 2) end
    self:call("POST", "/faults", fault)
    return true
end

function Admin:clear_faults() self:call("DELETE", "/faults"); return true end

--- The logged /v1 requests, oldest first (fetched page by page).
function Admin:requests()
    local all, from = {}, nil
    repeat
        local page = self:call("GET", "/requests" .. (from and ("?from=" .. from) or ""))
        for _, r in ipairs(page.requests) do
            for _, k in ipairs({ "body_length", "connection", "connection_requests" }) do
                r[k] = math.tointeger and math.tointeger(r[k]) or r[k]  -- 5.3+: 3, not 3.0
            end
            all[#all + 1] = r
        end
        from = page.next
    until not from
    return all
end

function Admin:clear_requests() self:call("DELETE", "/requests"); return true end
function Admin:clear() self:call("POST", "/reset"); return true end

--- Admin client for an emulator that is already running.
-- endpoint: "http://127.0.0.1:N", "127.0.0.1:N", or nil for $DATAPORTABILITY_EMULATOR_HOST.
function _M.admin(endpoint)
    endpoint = endpoint or os.getenv("DATAPORTABILITY_EMULATOR_HOST")
    if type(endpoint) ~= "string" then return nil, "no endpoint and no DATAPORTABILITY_EMULATOR_HOST" end
    if not endpoint:find("^https?://") then endpoint = "http://" .. endpoint end
    return setmetatable({ endpoint = endpoint }, Admin)
end

---------------------------------------------------------------------------
-- Launcher

local function make_certs(dir)
    local cnf = dir .. "/conf/openssl.cnf"
    write_file(cnf, [[
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
]])
    local c = dir .. "/conf/"
    local out, ok = capture(table.concat({
        "umask 077",
        "openssl ecparam -name prime256v1 -genkey -noout -out " .. q(c .. "ca.key"),
        "openssl req -new -x509 -config " .. q(cnf) .. " -extensions ca -key " .. q(c .. "ca.key")
            .. " -subj '/CN=dataportability emulator test CA' -days 3650 -sha256 -set_serial 0x"
            .. random_hex() .. " -out " .. q(dir .. "/ca.pem"),
        "openssl ecparam -name prime256v1 -genkey -noout -out " .. q(c .. "server.key"),
        "openssl req -new -config " .. q(cnf) .. " -key " .. q(c .. "server.key")
            .. " -subj /CN=localhost -out " .. q(c .. "server.csr"),
        "openssl x509 -req -in " .. q(c .. "server.csr") .. " -CA " .. q(dir .. "/ca.pem")
            .. " -CAkey " .. q(c .. "ca.key") .. " -set_serial 0x" .. random_hex()
            .. " -days 825 -sha256 -extfile " .. q(cnf) .. " -extensions server"
            .. " -out " .. q(c .. "server.pem"),
        "chmod 644 " .. q(dir .. "/ca.pem"),
    }, " && "))
    os.remove(c .. "ca.key")  -- nobody needs to sign anything else with it
    os.remove(c .. "server.csr")
    if not ok then return nil, "openssl failed: " .. out end
    return true
end

local function nginx_conf(o)
    local d = o.dir
    local function path(p) return '"' .. d .. "/" .. p .. '"' end
    local L = {}
    for _, m in ipairs(o.modules) do L[#L + 1] = "load_module " .. m .. ";" end
    -- one process: stoppable by one pid, no user switch, atomic shared-dict updates
    L[#L + 1] = "daemon on;\nmaster_process off;"
    L[#L + 1] = "pid " .. path("nginx.pid") .. ";\nlock_file " .. path("logs/nginx.lock") .. ";"
    L[#L + 1] = "error_log " .. path("logs/error.log") .. " warn;"
    L[#L + 1] = "events { worker_connections 1024; }\nhttp {"
    -- no $request, no headers: neither the query nor Authorization may be logged
    L[#L + 1] = [[  log_format emulator '$time_iso8601 $connection/$connection_requests ]]
        .. [[$scheme $server_protocol "$request_method $uri" $status $bytes_sent $request_time';]]
    L[#L + 1] = "  access_log " .. path("logs/access.log") .. " emulator;"
    for _, t in ipairs(o.temp_paths) do
        L[#L + 1] = "  " .. t .. "_temp_path " .. path("tmp/" .. t) .. ";"
    end
    L[#L + 1] = [[
    client_max_body_size 1m;
    client_body_buffer_size 1m;
    client_body_in_single_buffer on;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    merge_slashes off;
    server_tokens off;
    lua_shared_dict dp_tokens 4m;
    lua_shared_dict dp_state 1m;
    lua_shared_dict dp_log 64m;]]
    L[#L + 1] = '  lua_package_path "' .. o.lua_dir .. '?.lua;;";'
    if o.owner_pid then
        L[#L + 1] = ("  init_worker_by_lua_block { require(%q).init_worker(%d, %s) }")
            :format(SERVER_MODULE, o.owner_pid, o.owns_dir and ("%q"):format(d) or "nil")
    end
    L[#L + 1] = "  ssl_certificate " .. path("conf/server.pem") .. ";"
    L[#L + 1] = "  ssl_certificate_key " .. path("conf/server.key") .. ";"
    L[#L + 1] = "  ssl_protocols TLSv1.2 TLSv1.3;\n  server {"
    L[#L + 1] = "    listen 127.0.0.1:" .. o.http_port .. ";"
    L[#L + 1] = "    listen 127.0.0.1:" .. o.https_port .. " ssl http2;"
    L[#L + 1] = "    server_name localhost;"
    L[#L + 1] = ("    location / { content_by_lua_block { require(%q).handle() } }"):format(SERVER_MODULE)
    L[#L + 1] = "  }\n}\n"
    return table.concat(L, "\n")
end

-- What this nginx needs: load_module lines unless ngx_lua is built in
-- (OpenResty), and temp paths for the modules it has (defaults point at /var).
local function nginx_needs(nginx, modules)
    local v = capture(q(nginx) .. " -V")
    if not modules then
        modules = {}
        if not v:find("lua-nginx-module", 1, true) then
            for _, m in ipairs(DEFAULT_MODULES) do
                if read_file(m) then modules[#modules + 1] = m end
            end
        end
    end
    local temp = { "client_body" }
    for _, m in ipairs({ "proxy", "fastcgi", "uwsgi", "scgi" }) do
        if not v:find("--without-http_" .. m .. "_module", 1, true) then temp[#temp + 1] = m end
    end
    return modules, temp
end

local function stop_pid(pid, dir)
    if not pid or not alive(pid) then return true end
    if not is_ours(pid, dir) then return nil, "pid " .. pid .. " is not the emulator in " .. dir end
    exec("kill -TERM " .. pid .. " 2>/dev/null")
    for i = 1, 120 do
        if not alive(pid) then
            return true -- exited; init reaps it (a daemon is not our child)
        end
        if i == 100 then exec("kill -KILL " .. pid .. " 2>/dev/null") end  -- after ~5 s
        sleep(0.05)
    end
    return nil, "nginx pid " .. pid .. " did not exit"
end

local function error_tail(dir)
    local log = read_file(dir .. "/logs/error.log") or ""
    return log:sub(-2000)
end

local Emulator = setmetatable({}, { __index = Admin })
Emulator.__index = Emulator

--- Stops nginx (TERM, then KILL after ~5 s) and removes a prefix dir we created.
-- Idempotent. Returns true, or nil and a message.
function Emulator:stop()
    if self.stopped then return true end
    local ok, err = stop_pid(self.pid, self.dir)
    if not ok then return nil, err end
    self.stopped = true
    if self.owns_dir then exec("rm -rf " .. q(self.dir)) end
    return true
end

--- True while the emulator's nginx process exists.
function Emulator:running()
    return not self.stopped and self.pid ~= nil and alive(self.pid)
end

--- Stops the emulator whose prefix is dir (as printed by the CLI).
function _M.stop_dir(dir)
    dir = absolute(dir)
    local pid = tonumber(read_file(dir .. "/nginx.pid") or "")
    local ok, err = stop_pid(pid, dir)
    if not ok then return nil, err end
    if read_file(dir .. "/" .. OWNED_MARKER) then exec("rm -rf " .. q(dir)) end
    return true
end

--- Starts an emulator. opts (all optional): dir, http_port, https_port,
-- nginx (binary; default $DATAPORTABILITY_EMULATOR_NGINX, else nginx on PATH
-- or in /usr/sbin), modules (load_module paths; default Debian's if present),
-- watch (default true: the server stops itself once this Lua process is gone).
-- Returns the emulator object, or nil and a message.
function _M.start(opts)
    opts = opts or {}
    -- /usr/sbin is often missing from a non-root PATH; OpenResty lives elsewhere
    local nginx = opts.nginx or os.getenv("DATAPORTABILITY_EMULATOR_NGINX")
        or trim(capture("command -v nginx || command -v /usr/sbin/nginx || command -v "
            .. "/usr/local/sbin/nginx || command -v /usr/local/openresty/nginx/sbin/nginx || echo nginx"))
    local dir, owns_dir = opts.dir, false
    if dir then
        dir = absolute(dir)
    else
        local out, ok = capture('mktemp -d "${TMPDIR:-/tmp}/dataportability-emulator.XXXXXX"')
        if not ok then return nil, "mktemp failed: " .. out end
        dir, owns_dir = trim(out), true
    end
    local function fail(msg)
        if owns_dir then exec("rm -rf " .. q(dir)) end
        return nil, msg
    end
    local _, ok = capture("mkdir -p " .. q(dir .. "/logs") .. " " .. q(dir .. "/conf")
        .. " " .. q(dir .. "/tmp"))
    if not ok then return fail("cannot create " .. dir) end
    if owns_dir then write_file(dir .. "/" .. OWNED_MARKER, "") end

    local ldir = lua_dir()
    if not ldir then return fail("cannot find " .. SERVER_MODULE .. " on package.path") end
    local certs, err = make_certs(dir)
    if not certs then return fail(err) end

    local owner_pid
    if opts.watch ~= false then
        owner_pid = tonumber(trim(capture("echo $PPID")))  -- the shell's parent: this process
    end
    local conf = { dir = dir, owns_dir = owns_dir, lua_dir = ldir, owner_pid = owner_pid }
    conf.modules, conf.temp_paths = nginx_needs(nginx, opts.modules)

    if opts.http_port and opts.http_port == opts.https_port then
        return fail("http_port and https_port must differ")
    end
    local out
    ok = false
    for _ = 1, 10 do
        conf.http_port = opts.http_port or random_port()
        conf.https_port = opts.https_port or random_port()
        if conf.http_port ~= conf.https_port then
            write_file(dir .. "/conf/nginx.conf", nginx_conf(conf))
            out, ok = capture(q(nginx) .. " -p " .. q(dir .. "/") .. " -c " .. q(dir .. "/conf/nginx.conf"))
            if ok then break end
            -- retry with fresh random ports only when a random one was taken
            local taken = tonumber(out:match("bind%(%) to [%d.]+:(%d+) failed %(%d+: Address already in use"))
            if not taken or taken == opts.http_port or taken == opts.https_port then break end
        end
    end
    if not ok then
        out = out or ""
        return fail("nginx failed to start: " .. (out:find("%S") and trim(out) or error_tail(dir)))
    end

    local emu = setmetatable({
        dir = dir, owns_dir = owns_dir, http_port = conf.http_port, https_port = conf.https_port,
        host = "127.0.0.1:" .. conf.http_port,
        endpoint = "http://127.0.0.1:" .. conf.http_port,
        https_endpoint = "https://localhost:" .. conf.https_port,
        ca_file = dir .. "/ca.pem",
    }, Emulator)
    -- nginx binds its ports before it daemonizes, so connections queue from
    -- now on; the server is up once its pid file names a live process.
    for _ = 1, 100 do
        emu.pid = tonumber(read_file(dir .. "/nginx.pid") or "")
        if emu.pid and alive(emu.pid) then return emu end
        sleep(0.05)
    end
    local tail = error_tail(dir)
    if emu.pid then stop_pid(emu.pid, dir) end
    return fail("emulator did not start within 5 s: " .. tail)
end

return _M
