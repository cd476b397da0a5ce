-- The consent-to-reset service against a local emulator, in an nginx of its
-- own (one process, a fresh prefix, stopped by its pid): how
-- `make example-openresty` (examples/openresty/run) and
-- spec/31-openresty_service_spec.lua start it. The http block is
-- nginx.conf's, with the emulator's endpoints and CA in place of Google's.
-- Plain Lua 5.1-5.4 / LuaJIT, outside nginx.
local nginx = require("dataportability.emulator.nginx")

local _M = {}

_M.CLIENT_ID = "consent-service.apps.example"
_M.RESOURCES = { "myactivity.youtube", "myactivity.search" }
-- A registered loopback redirect matches any port (RFC 8252), so the client
-- can be registered before the service's port is known.
_M.REDIRECT_URI = "http://127.0.0.1/callback"

local root = (nginx.sh("pwd"):gsub("%s+$", ""))

--- launch.start{emulator=, client_secret=, dir= [, port=, log_level=]}
--- -> server (with .url) | nil, message
--- emulator: its endpoint, https_endpoint and ca_file (an emulator object
--- has them). dir: where exports go. port: false or absent for a random one.
--- Run from the repository root, after `make luajit`.
function _M.start(o)
    if not nginx.read_file(root .. "/build/luajit/dataportability/core.so") then
        return nil, "run `make luajit` first (nginx loads the LuaJIT build of the core)"
    end
    local emu = o.emulator
    local server, err = nginx.start({
        ports = { o.port or false },
        log_level = o.log_level or "notice",
        lua_path = root .. "/examples/openresty/?.lua;;",
        lua_cpath = root .. "/build/luajit/?.so;;",
        watch = tonumber((nginx.sh("echo $PPID"):gsub("%s", ""))), -- stops itself once we are gone
        prepare = function(dir) -- the client secret, for this user's eyes only
            local _, ok = nginx.sh("umask 077 && printf '%s\\n' " .. nginx.quote(o.client_secret) .. " > "
                .. nginx.quote(dir .. "/client_secret"))
            return ok or nil, "cannot write the client secret"
        end,
        http = function(s)
            local port = s.ports[1]
            local resources = {}
            for i, r in ipairs(_M.RESOURCES) do resources[i] = ("%q"):format(r) end
            return ([[
    log_format no_secrets '$remote_addr [$time_local] "$request_method $uri" $status '
                          '$body_bytes_sent $request_time';
    access_log %q no_secrets;
    lua_ssl_trusted_certificate %q;
    lua_ssl_verify_depth 2;
    lua_shared_dict consent_service 1m;
    init_by_lua_block {
        require("consent_service").configure({
            client_id = %q, client_secret_file = %q,
            redirect_uri = "http://127.0.0.1:%d/callback",
            resources = { %s }, dir = %q,
            endpoint = %q, token_endpoint = %q,
            auth_endpoint = %q, -- plain HTTP: the browser does not trust the emulator's CA
        })
    }
    server {
        listen 127.0.0.1:%d;
        include %q;
    }]]):format(s.dir .. "/logs/access.log", emu.ca_file, _M.CLIENT_ID, s.dir .. "/client_secret", port,
                table.concat(resources, ", "), o.dir, emu.https_endpoint, emu.https_endpoint .. "/token",
                emu.endpoint .. "/o/oauth2/v2/auth", port, root .. "/examples/openresty/service.conf")
        end,
    })
    if not server then return nil, err end
    server.url = "http://127.0.0.1:" .. server.ports[1]
    return server
end

--- The emulator's data for a demo: two files, a job that takes a few seconds.
_M.FILES = {
    { name = "youtube-history.zip", size = 8 * 1024 * 1024 },
    { name = "youtube-playlists.zip", size = 4096 },
}

--- make example-openresty: the emulator named by DATAPORTABILITY_EMULATOR_*
--- (bin/dataportability-emulator start) gets an OAuth client and demo
--- files; the service runs on port $PORT until Ctrl-C.
function _M.main()
    local port = tonumber(os.getenv("PORT") or "")
    local emulator = require("dataportability.emulator")
    local emu = assert(emulator.admin())
    emu.https_endpoint = assert(os.getenv("DATAPORTABILITY_EMULATOR_HTTPS"))
    emu.ca_file = assert(os.getenv("DATAPORTABILITY_EMULATOR_CA"))
    emu:configure({ job_seconds = 3, files = _M.FILES })
    local secret = "demo-secret-" .. nginx.random_hex(16)
    emu:add_client({ client_id = _M.CLIENT_ID, client_secret = secret, redirect_uris = { _M.REDIRECT_URI } })
    local dir = (nginx.sh("mktemp -d"):gsub("%s+$", ""))
    local server, err = _M.start({ emulator = emu, client_secret = secret, dir = dir, port = port })
    if not server then
        nginx.sh("rm -rf " .. nginx.quote(dir))
        io.stderr:write("example-openresty: ", err, "\n")
        os.exit(1)
    end
    print("consent-to-reset service: " .. server.url .. "/  (open it in a browser; Ctrl-C stops)")
    print("exports: " .. dir .. "   nginx logs: " .. server.dir .. "/logs")
    io.stdout:flush()
    -- sleep(1) fails when Ctrl-C kills it (os.execute shields us from SIGINT meanwhile)
    while server:running() do
        local r = os.execute("sleep 1")
        if not (r == true or r == 0) then break end
    end
    server:stop()
    nginx.sh("rm -rf " .. nginx.quote(dir))
end

return _M
