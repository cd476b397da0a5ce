--- One nginx process (a daemon without a master) in its own prefix
-- directory, listening on loopback ports: the emulator's, and the test
-- servers of the specs. Plain Lua 5.1-5.4 / LuaJIT; no POSIX bindings, so
-- processes and files go through sh. Stopped by its own pid, never by name.
--
--   local server = assert(nginx.start({
--       ports = { false, false },                -- false: a random free port
--       http = function(s) return "server { listen 127.0.0.1:" .. s.ports[1] .. "; ... }" end,
--   }))
--   server:stop()

local _M = {}

-- Debian's libnginx-mod-http-lua; OpenResty has ngx_lua built in.
local DEFAULT_MODULES = {
    "/usr/lib/nginx/modules/ndk_http_module.so",
    "/usr/lib/nginx/modules/ngx_http_lua_module.so",
}
local OWNED_MARKER = ".dataportability-nginx-tmp" -- prefixes we created and may delete

---------------------------------------------------------------------------
-- Shell and files

local function quote(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
_M.quote = quote

--- Runs a shell command: its output (stdout and stderr) and whether it
--- exited 0 (os.execute and popen differ between 5.1 and 5.2+).
local function sh(cmd)
    local p = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"rc=$?\""))
    local out = p:read("*a")
    p:close()
    local body, rc = out:match("^(.-)rc=(%d+)%s*$")
    return body or out, rc == "0"
end
_M.sh = sh

local function read_file(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    return s
end
_M.read_file = read_file

local function write_file(path, data)
    local f, err = io.open(path, "wb")
    if not f then return nil, err end
    f:write(data)
    f:close()
    return true
end
_M.write_file = write_file

local function trim(s)
    return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

local function sleep(seconds)
    sh("sleep " .. seconds)
end

local function absolute(path)
    if path:sub(1, 1) == "/" then return path end
    return trim(sh("pwd")) .. "/" .. path:gsub("^%./", "")
end

--- n random bytes as hex, from /dev/urandom (never reseeds math.random).
function _M.random_hex(n)
    local f = assert(io.open("/dev/urandom", "rb"))
    local b = f:read(n)
    f:close()
    return (b:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function random_port()
    return 20000 + tonumber(_M.random_hex(3), 16) % 40000
end

-- A zombie counts as gone: a daemon is reaped by init, not by us.
local function alive(pid)
    local stat = read_file("/proc/" .. pid .. "/stat")
    if stat == nil and read_file("/proc/self/stat") == nil then -- no /proc here
        local _, exists = sh("kill -0 " .. pid)
        return exists
    end
    return stat ~= nil and stat:match(".*%)%s+(%a)") ~= "Z"
end

-- Guards against a recycled pid: ours was started with "-p <dir>/".
local function is_ours(pid, dir)
    local cmdline = read_file("/proc/" .. pid .. "/cmdline")
    return cmdline == nil or cmdline:find(dir, 1, true) ~= nil
end

---------------------------------------------------------------------------
-- Configuration

-- The load_module lines unless ngx_lua is built in, and the temp paths of
-- the modules this nginx has (their defaults point at /var).
local function needs(nginx, modules)
    local v = sh(quote(nginx) .. " -V")
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

-- The directory holding the dataportability modules, for lua_package_path.
local function lua_dir()
    local name = "dataportability/emulator/nginx.lua"
    for template in package.path:gmatch("[^;]+") do
        local file = template:gsub("%?", "dataportability/emulator/nginx")
        if file:sub(-#name) == name and read_file(file) then
            return absolute(file:sub(1, -#name - 1))
        end
    end
end

local function conf(server, o)
    local d = server.dir
    local L = {}
    for _, m in ipairs(o.modules) do L[#L + 1] = "load_module " .. m .. ";" end
    -- one process: stoppable by one pid, no user switch, atomic shared-dict updates
    L[#L + 1] = ("daemon on;\nmaster_process off;\npid %q;\nlock_file %q;\nerror_log %q %s;")
        :format(d .. "/nginx.pid", d .. "/logs/nginx.lock", d .. "/logs/error.log", o.log_level or "warn")
    L[#L + 1] = "events { worker_connections 1024; }\nhttp {"
    for _, t in ipairs(o.temp_paths) do
        L[#L + 1] = ("    %s_temp_path %q;"):format(t, d .. "/tmp/" .. t)
    end
    L[#L + 1] = ('    lua_package_path "%s?.lua;%s?/init.lua;%s";'):format(server.lua_dir, server.lua_dir,
        o.lua_path or ";")
    if o.lua_cpath then L[#L + 1] = ('    lua_package_cpath "%s";'):format(o.lua_cpath) end
    local init = o.init_worker or ""
    if o.watch then
        init = ("require(%q).watchdog(%d, %s) %s"):format("dataportability.emulator.nginx", o.watch,
            server.owns_dir and ("%q"):format(d) or "nil", init)
    end
    if init ~= "" then L[#L + 1] = "    init_worker_by_lua_block { " .. init .. " }" end
    L[#L + 1] = o.http(server)
    L[#L + 1] = "}\n"
    return table.concat(L, "\n")
end

---------------------------------------------------------------------------
-- Servers

local Server = {}
Server.__index = Server
_M.Server = Server

local function stop_pid(pid, dir)
    if not pid or not alive(pid) then return true end
    if not is_ours(pid, dir) then return nil, "pid " .. pid .. " is not the nginx in " .. dir end
    sh("kill -TERM " .. pid)
    for i = 1, 120 do
        if not alive(pid) then return true end
        if i == 100 then sh("kill -KILL " .. pid) end -- after ~5 s
        sleep(0.05)
    end
    return nil, "nginx pid " .. pid .. " did not exit"
end

--- Stops nginx (TERM, then KILL after ~5 s) and removes a prefix it
--- created. Idempotent. Returns true, or nil and a message.
function Server:stop()
    if self.stopped then return true end
    local ok, err = stop_pid(self.pid, self.dir)
    if not ok then return nil, err end
    self.stopped = true
    if self.owns_dir then sh("rm -rf " .. quote(self.dir)) end
    return true
end

--- True while the nginx process exists.
function Server:running()
    return not self.stopped and self.pid ~= nil and alive(self.pid)
end

--- The error log and the access log, for checks.
function Server:logs()
    local logs = self.dir .. "/logs/"
    return (read_file(logs .. "error.log") or "") .. (read_file(logs .. "access.log") or "")
end

--- Stops the nginx whose prefix is dir; removes dir if start created it.
function _M.stop_dir(dir)
    dir = absolute(dir)
    local ok, err = stop_pid(tonumber(read_file(dir .. "/nginx.pid") or ""), dir)
    if not ok then return nil, err end
    if read_file(dir .. "/" .. OWNED_MARKER) then sh("rm -rf " .. quote(dir)) end
    return true
end

--- nginx.start(opts) -> server | nil, message
--   opts.http(server) -> the text inside http { }: server.dir, server.ports,
--     server.lua_dir are set (required)
--   opts.ports: a list, false for a random free loopback port (default {false})
--   opts.dir: the prefix (default: a new temporary directory, removed by stop)
--   opts.prepare(dir) -> true | nil, message: once, before nginx starts
--   opts.watch: a pid; once that process is gone, nginx stops itself and
--     removes a prefix it owns, so a crashed test run leaves nothing behind
--   opts.init_worker: Lua code for init_worker_by_lua_block
--   opts.lua_path, opts.lua_cpath: appended to the package paths
--   opts.nginx (default $DATAPORTABILITY_EMULATOR_NGINX or nginx), opts.modules
--   opts.log_level (default "warn")
function _M.start(opts)
    -- /usr/sbin is often missing from a non-root PATH; OpenResty lives elsewhere
    local nginx = opts.nginx or os.getenv("DATAPORTABILITY_EMULATOR_NGINX")
        or trim(sh("command -v nginx || command -v /usr/sbin/nginx || command -v /usr/local/sbin/nginx"
            .. " || command -v /usr/local/openresty/nginx/sbin/nginx || echo nginx"))
    local server = setmetatable({ lua_dir = lua_dir() }, Server)
    if not server.lua_dir then return nil, "cannot find dataportability.emulator.nginx on package.path" end
    if opts.dir then
        server.dir = absolute(opts.dir)
    else
        local out, ok = sh('mktemp -d "${TMPDIR:-/tmp}/dataportability-nginx.XXXXXX"')
        if not ok then return nil, "mktemp failed: " .. out end
        server.dir, server.owns_dir = trim(out), true
    end
    local function fail(message)
        if server.owns_dir then sh("rm -rf " .. quote(server.dir)) end
        return nil, message
    end
    local d = server.dir
    local _, ok = sh("mkdir -p " .. quote(d .. "/logs") .. " " .. quote(d .. "/conf") .. " "
        .. quote(d .. "/tmp"))
    if not ok then return fail("cannot create " .. d) end
    if server.owns_dir then write_file(d .. "/" .. OWNED_MARKER, "") end
    if opts.prepare then
        local prepared, err = opts.prepare(d)
        if not prepared then return fail(err) end
    end
    local o = setmetatable({}, { __index = opts })
    o.modules, o.temp_paths = needs(nginx, opts.modules)

    local wanted, out = opts.ports or { false }, nil
    for _ = 1, 10 do
        server.ports = {}
        for i, p in ipairs(wanted) do server.ports[i] = p or random_port() end
        write_file(d .. "/conf/nginx.conf", conf(server, o))
        out, ok = sh(quote(nginx) .. " -p " .. quote(d .. "/") .. " -c " .. quote(d .. "/conf/nginx.conf"))
        if ok then break end
        -- try fresh random ports only when a random one was taken
        local taken = tonumber(out:match("bind%(%) to [%d.]+:(%d+) failed %(%d+: Address already in use"))
        local fixed = false
        for _, p in ipairs(wanted) do fixed = fixed or p == taken end
        if not taken or fixed then break end
    end
    if not ok then
        local log = read_file(d .. "/logs/error.log") or ""
        return fail("nginx failed to start: " .. (out:find("%S") and trim(out) or log:sub(-2000)))
    end
    -- nginx binds its ports before it daemonizes, so connections queue from
    -- now on; it is up once its pid file names a live process.
    for _ = 1, 100 do
        server.pid = tonumber(read_file(d .. "/nginx.pid") or "")
        if server.pid and alive(server.pid) then return server end
        sleep(0.05)
    end
    local log = read_file(d .. "/logs/error.log") or ""
    if server.pid then stop_pid(server.pid, d) end
    return fail("nginx did not start within 5 s: " .. log:sub(-2000))
end

---------------------------------------------------------------------------
-- Inside nginx

--- init_worker: stops this nginx (and removes `cleanup_dir`) once the
--- process `owner_pid` is gone.
function _M.watchdog(owner_pid, cleanup_dir)
    local ngx = rawget(_G, "ngx")
    local function check(premature)
        local f = not premature and io.open("/proc/" .. owner_pid .. "/stat")
        local stat = f and f:read("*l")
        if f then f:close() end
        if premature or (stat and stat:match(".*%)%s+(%a)") ~= "Z") then return end
        ngx.log(ngx.WARN, "owner process ", owner_pid, " is gone, stopping")
        if cleanup_dir then os.execute("rm -rf " .. quote(cleanup_dir)) end
        os.execute("kill -TERM " .. ngx.worker.pid()) -- a normal nginx shutdown
    end
    assert(ngx.timer.every(0.5, check))
end

return _M
