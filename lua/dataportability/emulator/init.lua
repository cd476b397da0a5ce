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

local nginx = require("dataportability.emulator.nginx")
local quote, sh, write_file = nginx.quote, nginx.sh, nginx.write_file

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

-- One admin round trip; failures raise (they are test set-up errors). A
-- write always has a JSON body, "{}" if nothing else: the emulator refuses
-- a write without Content-Type: application/json, and the transport sends
-- that type only with a body.
function Admin:call(method, path, tbl)
    local cjson = require("cjson")
    self._transport = self._transport or transport(self.endpoint)
    local sent = tbl and cjson.encode(tbl) or (method ~= "GET" and "{}" or nil)
    local status, body, msg = self._transport(method, "/emulator/v1" .. path, sent)
    if status ~= 200 then
        local why = status and (status .. " " .. (tostring(body):gsub("%s+$", "")))
            or (tostring(body) .. ": " .. tostring(msg))
        error(("emulator admin %s %s failed: %s"):format(method, path, why), 3)
    end
    return cjson.decode(body)
end

-- cjson gives 5.3+ floats: 3.0 for 3; admin answers hold counts and sizes.
local function integers(v)
    if type(v) == "number" and math.tointeger then return math.tointeger(v) or v end
    if type(v) == "table" then
        for k, x in pairs(v) do v[k] = integers(x) end
    end
    return v
end

--- Registers (or re-enables) an access token with its granted scopes.
-- opts (all optional): user, client_id, access_type ("ONE_TIME" | "TIME_BASED"
-- | {group = type}), expires_in (seconds), refresh_token (registered too,
-- minting access tokens for the same user and scopes). Also
-- add_token({ token = ..., scopes = ..., <opts> }); token may then be absent
-- when refresh_token is given.
function Admin:add_token(token, scopes, opts)
    local t = {}
    if type(token) == "table" then
        for k, v in pairs(token) do t[k] = v end
    elseif type(token) == "string" or (token == nil and type(opts) == "table" and opts.refresh_token) then
        for k, v in pairs(opts or {}) do t[k] = v end
        t.token, t.scopes = token, scopes
    else
        error("arg #1 to add_token, expected string or table, got " .. type(token), 2)
    end
    if type(t.scopes) == "string" then t.scopes = { t.scopes } end
    t.scopes = t.scopes or {}
    self:call("POST", "/tokens", t)
    return true
end

--- Merges fields into the emulator's configuration (job_seconds, outcome,
-- files, url_seconds, time_based_seconds, md5_max_bytes, bucket; a field
-- set to cjson.null goes back to its default); returns the effective one.
function Admin:configure(t)
    if type(t) ~= "table" then error("arg #1 to configure, expected table, got " .. type(t), 2) end
    return integers(self:call("PUT", "/config", t))
end

function Admin:config() return integers(self:call("GET", "/config")) end

--- Registers an OAuth client: client_id, client_secret, redirect_uris, and
-- optional access_type, user, expires_in, consent ("grant" | "deny").
function Admin:add_client(t)
    if type(t) ~= "table" then error("arg #1 to add_client, expected table, got " .. type(t), 2) end
    return integers(self:call("POST", "/clients", t))
end

local function job_path(id)
    if type(id) ~= "string" then error("arg #1, expected a job id string, got " .. type(id), 3) end
    return "/jobs/" .. id:gsub("[^%w._~-]", function(c) return ("%%%02X"):format(c:byte()) end)
end

--- Forces a job's state: { state = "COMPLETE" | "FAILED" | "CANCELLED" |
-- "IN_PROGRESS", outcome = ..., seconds = ... }; returns the job.
function Admin:set_job(id, t)
    if type(t) ~= "table" then error("arg #2 to set_job, expected table, got " .. type(t), 2) end
    return integers(self:call("POST", job_path(id), t))
end

--- A job as the emulator holds it (raises if unknown); jobs(): all, oldest first.
function Admin:job(id) return integers(self:call("GET", job_path(id))) end
function Admin:jobs() return integers(self:call("GET", "/jobs").jobs) end

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

-- A CA and a certificate for localhost, 127.0.0.1, ::1 and the storage host
-- 127.0.0.2 signed by it; the CA's key is deleted once it has signed.
local function make_certs(dir)
    local cnf, c = dir .. "/conf/openssl.cnf", dir .. "/conf/"
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
# DNS:127.0.0.2 too: ngx_lua's cosockets check a certificate's names only,
# even when they connect to an address (the storage host)
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1, IP:127.0.0.2, DNS:127.0.0.2
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
]])
    local out, ok = sh(table.concat({
        "umask 077",
        "openssl ecparam -name prime256v1 -genkey -noout -out " .. quote(c .. "ca.key"),
        "openssl req -new -x509 -config " .. quote(cnf) .. " -extensions ca -key " .. quote(c .. "ca.key")
            .. " -subj '/CN=dataportability emulator test CA' -days 3650 -sha256 -set_serial 0x"
            .. nginx.random_hex(8) .. " -out " .. quote(dir .. "/ca.pem"),
        "openssl ecparam -name prime256v1 -genkey -noout -out " .. quote(c .. "server.key"),
        "openssl req -new -config " .. quote(cnf) .. " -key " .. quote(c .. "server.key")
            .. " -subj /CN=localhost -out " .. quote(c .. "server.csr"),
        "openssl x509 -req -in " .. quote(c .. "server.csr") .. " -CA " .. quote(dir .. "/ca.pem")
            .. " -CAkey " .. quote(c .. "ca.key") .. " -set_serial 0x" .. nginx.random_hex(8)
            .. " -days 825 -sha256 -extfile " .. quote(cnf) .. " -extensions server"
            .. " -out " .. quote(c .. "server.pem"),
        "chmod 644 " .. quote(dir .. "/ca.pem"),
    }, " && "))
    os.remove(c .. "ca.key")
    os.remove(c .. "server.csr")
    if not ok then return nil, "openssl failed: " .. out end
    return true
end
_M.make_certs = make_certs

-- The emulator's http block: the API (and OAuth, and admin) on 127.0.0.1,
-- plain HTTP on the first port, HTTPS with HTTP/2 on the second; the archive
-- downloads on 127.0.0.2, HTTPS on the second port.
local function http_block(server)
    local d = server.dir
    return ([[
    # no $request, no headers: neither the query nor Authorization may be logged
    log_format emulator '$time_iso8601 $connection/$connection_requests $scheme $server_protocol '
                        '"$request_method $uri" $status $bytes_sent $request_time';
    access_log %q emulator;
    client_max_body_size 1m;
    client_body_buffer_size 1m;
    client_body_in_single_buffer on;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    merge_slashes off;
    server_tokens off;
    lua_shared_dict dp_tokens 16m;
    lua_shared_dict dp_state 4m;
    lua_shared_dict dp_jobs 16m;
    lua_shared_dict dp_log 64m;
    init_by_lua_block { require("dataportability.emulator.server").init({ https_port = %d }) }
    # never nginx's Server header, never its own error pages: Google's
    header_filter_by_lua_block { require("dataportability.emulator.server").header_filter() }
    error_page 400 404 405 408 411 413 414 494 497 500 /emulator-error;
    ssl_certificate %q;
    ssl_certificate_key %q;
    ssl_protocols TLSv1.2 TLSv1.3;
    server {
        listen 127.0.0.1:%d;
        listen 127.0.0.1:%d ssl http2;
        server_name localhost;
        location / { content_by_lua_block { require("dataportability.emulator.server").handle() } }
        location = /emulator-batch-part {
            internal;
            content_by_lua_block { require("dataportability.emulator.server").handle() }
        }
        location = /emulator-error {
            internal;
            content_by_lua_block { require("dataportability.emulator.server").error_page() }
        }
    }
    server {
        listen 127.0.0.2:%d ssl http2;
        server_name 127.0.0.2;
        location / { content_by_lua_block { require("dataportability.emulator.server").handle_storage() } }
        location = /emulator-error {
            internal;
            content_by_lua_block { require("dataportability.emulator.server").error_page() }
        }
    }]]):format(d .. "/logs/access.log", server.ports[2], d .. "/conf/server.pem", d .. "/conf/server.key",
        server.ports[1], server.ports[2], server.ports[2])
end

-- An emulator is its nginx server with the admin methods.
local Emulator = setmetatable({}, { __index = function(_, k) return Admin[k] or nginx.Server[k] end })
Emulator.__index = Emulator

--- Stops the emulator whose prefix is dir (as printed by the CLI).
_M.stop_dir = nginx.stop_dir

--- Starts an emulator. opts (all optional): dir, http_port, https_port,
-- nginx (binary; default $DATAPORTABILITY_EMULATOR_NGINX, else nginx on PATH
-- or in /usr/sbin), modules (load_module paths; default Debian's if present),
-- watch (default true: the server stops itself once this Lua process is gone).
-- Returns the emulator object, or nil and a message.
function _M.start(opts)
    opts = opts or {}
    if opts.http_port and opts.http_port == opts.https_port then
        return nil, "http_port and https_port must differ"
    end
    local server, err = nginx.start({
        dir = opts.dir, nginx = opts.nginx, modules = opts.modules,
        ports = { opts.http_port or false, opts.https_port or false },
        prepare = make_certs,
        http = http_block,
        -- the shell's parent is this process
        watch = opts.watch ~= false and tonumber((sh("echo $PPID"):gsub("%s", ""))) or nil,
    })
    if not server then return nil, err end
    local http_port, https_port = server.ports[1], server.ports[2]
    server.http_port, server.https_port = http_port, https_port
    server.host = "127.0.0.1:" .. http_port
    server.endpoint = "http://127.0.0.1:" .. http_port
    server.https_endpoint = "https://localhost:" .. https_port
    server.ca_file = server.dir .. "/ca.pem"
    return setmetatable(server, Emulator)
end

return _M
