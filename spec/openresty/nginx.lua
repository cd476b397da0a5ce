-- A real nginx + ngx_lua for spec/30-openresty_spec.lua (one process, random
-- loopback ports, its own temp prefix, stopped by its own pid). It serves
-- examples/openresty/reset_handler.lua and the test-only handlers of
-- spec/openresty/cases.lua (also under /untrusting/, which trusts another
-- CA than the emulator's), and HTTPS with a self-signed certificate.
local nginx = require("dataportability.emulator.nginx")

local _M = {}

--- Starts nginx for the emulator `emu`; raises on failure.
function _M.start(emu)
    local root = (nginx.sh("pwd"):gsub("%s+$", ""))
    assert(nginx.read_file(root .. "/build/luajit/dataportability/core.so"), "run `make luajit` first")
    local server = assert(nginx.start({
        ports = { false, false },
        log_level = "info",
        lua_path = ("%s/examples/openresty/?.lua;%s/spec/openresty/?.lua;;"):format(root, root),
        lua_cpath = root .. "/build/luajit/?.so;;",
        init_worker = ("require('cases').init_worker(%q)"):format(emu.https_endpoint),
        watch = tonumber((nginx.sh("echo $PPID"):gsub("%s", ""))), -- this process
        prepare = function(dir)
            local function self_signed(name, subject, ext)
                local _, ok = nginx.sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
                    .. " -nodes -days 2 -subj " .. subject .. " -addext " .. ext
                    .. " -keyout " .. nginx.quote(dir .. "/" .. name .. ".key")
                    .. " -out " .. nginx.quote(dir .. "/" .. name .. ".pem"))
                return ok
            end
            -- a server certificate nobody trusts, and a CA that signed nothing here
            local ok = self_signed("self", "/CN=localhost", "subjectAltName=DNS:localhost")
                and self_signed("other-ca", "/CN=spec-other-ca", "basicConstraints=critical,CA:TRUE")
            return ok or nil, "openssl failed"
        end,
        http = function(s)
            return ([[
    access_log %s/logs/access.log;
    lua_ssl_trusted_certificate %s;
    lua_ssl_verify_depth 2;
    lua_shared_dict dp_test 1m;
    server {
        listen 127.0.0.1:%d;
        location = /reset {
            content_by_lua_block {
                require("reset_handler").handle({ endpoint = %q, timeout = 5, retries = 0,
                    user_agent = "spec/1.0", quota_project = "spec-project" })
            }
        }
        location /t/ { content_by_lua_block { require("cases").run() } }
        location /untrusting/t/ {
            lua_ssl_trusted_certificate %s/other-ca.pem;
            content_by_lua_block { require("cases").run() }
        }
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
    }]]):format(s.dir, emu.ca_file, s.ports[1], emu.https_endpoint, s.dir, s.ports[2], s.dir, s.dir)
        end,
    }))
    server.url = "http://127.0.0.1:" .. server.ports[1]
    server.self_signed = "https://localhost:" .. server.ports[2]
    return server
end

return _M
