-- Hostile servers, each a real server on loopback: bad certificates, servers
-- that stall, break the connection or answer malformed HTTP, hostile error
-- bodies and headers, redirects to another host, a server echoing the token
-- back; and header injection through every value the client sends. Each
-- case checks the documented error table, and that the token appears in
-- nothing returned. The emulator plays what its faults can; a test nginx
-- (content_by_lua) plays the rest, its answer chosen by the token.
local dp = require("dataportability")
local helpers = require("spec.helpers")
local nginx = require("dataportability.emulator.nginx")

local q = helpers.quote
local TIMEOUT = 0.5 -- seconds, for the cases that must time out

-- A CA, and certificates signed by it: for localhost (valid), for another
-- name, for localhost but expired in 2020 (`openssl ca` takes explicit
-- dates); and a self-signed one for localhost.
local CERTS = [[
set -e
umask 077
cat > cnf <<'EOF'
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[localhost]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
[other]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:other.test
[signing]
database = index.txt
serial = serial
new_certs_dir = .
default_md = sha256
policy = any
unique_subject = no
[any]
commonName = supplied
EOF
: > index.txt
echo 1000 > serial
openssl ecparam -name prime256v1 -genkey -noout -out key.pem
openssl ecparam -name prime256v1 -genkey -noout -out self.key
openssl req -new -x509 -config cnf -extensions ca -key key.pem -subj '/CN=hostile test CA' -days 2 -out ca.pem
openssl req -new -config cnf -key key.pem -subj /CN=localhost -out localhost.csr
openssl req -new -config cnf -key key.pem -subj /CN=other.test -out other.csr
openssl x509 -req -in localhost.csr -CA ca.pem -CAkey key.pem -set_serial 2 -days 2 \
    -extfile cnf -extensions localhost -out good.pem
openssl x509 -req -in other.csr -CA ca.pem -CAkey key.pem -set_serial 3 -days 2 \
    -extfile cnf -extensions other -out other.pem
openssl ca -batch -config cnf -name signing -cert ca.pem -keyfile key.pem -in localhost.csr \
    -startdate 20200101000000Z -enddate 20200201000000Z -extfile cnf -extensions localhost \
    -notext -out expired.pem
openssl req -new -x509 -config cnf -extensions localhost -key self.key -subj /CN=localhost -days 2 \
    -out self.pem
chmod 644 ca.pem
]]

-- Inside the test nginx (content_by_lua_file): the answer of each case,
-- named by the token "ya29.<case>.<random>".
local HANDLERS = [==[
local rep, format, concat = string.rep, string.format, table.concat

local function bearer()
    return (ngx.var.http_authorization or ""):match("^Bearer (%S+)$") or ""
end

-- Exactly these bytes on the connection, then (after `stall` seconds) close.
-- A complete answer among them says "Connection: close": the connection is
-- not left to the next case half-closed (a stale connection, which the
-- client never sends on twice: that is spec/18's).
local function raw(bytes, stall)
    local sock = assert(ngx.req.socket(true))
    sock:send(bytes)
    if stall then ngx.sleep(stall) end
    return ngx.exit(444)
end

local function send(status, body, content_type, headers)
    ngx.status = status
    ngx.header["Content-Type"] = content_type or "application/json; charset=UTF-8"
    for k, v in pairs(headers or {}) do ngx.header[k] = v end
    ngx.print(body)
    return ngx.exit(ngx.OK)
end

local function google(code, status, message)
    return format('{"error": {"code": %d, "message": "%s", "status": "%s"}}', code, message, status)
end

local function stream(status, total, headers)
    ngx.status = status
    for k, v in pairs(headers) do ngx.header[k] = v end
    local chunk = rep("<p>x</p>", 8192)
    for _ = 1, total / #chunk do
        if not ngx.print(chunk) or not ngx.flush(true) then return ngx.exit(444) end
    end
    return ngx.exit(ngx.OK)
end

-- Every byte of s as a JSON \u escape.
local function escaped(s)
    return (s:gsub(".", function(c) return format("\\u%04x", c:byte()) end))
end

local C = {}

function C.ok() return send(200, "{}") end

-- a success that echoes the token in every field
function C.echo_success()
    local t = bearer()
    return send(200, format('{"name": "archiveJobs/%s/portabilityArchiveState", "state": "%s",'
        .. ' "urls": ["https://127.0.0.2:9/b/%s.zip"], "exportTime": "%s"}', t, t, t, t))
end

-- accepts, reads the request, never answers
function C.silent() ngx.sleep(5) end

function C.stall_headers() return raw("HTTP/1.1 200 OK\r\nContent-Ty", 5) end

function C.stall_body()
    return raw("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        .. '{"error": ', 5)
end

function C.close_headers() return raw("HTTP/1.1 503 Service Unavailable\r\nContent-Le") end
function C.close_headers_200() return raw("HTTP/1.1 200 OK\r\n") end

function C.close_body()
    return raw("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        .. '{"error": ')
end

-- The request body is left unread and lingering_close is off: closing sends
-- a TCP RST after part of the answer.
function C.reset()
    ngx.status = 200
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Content-Length"] = 100
    ngx.print('{"archiveJobId": ')
    ngx.flush(true)
    return ngx.exit(444)
end

-- HTTP/1.0 without a length: the body ends when the connection does, early
function C.http10_200()
    return raw('HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"archiveJobId": "ab')
end

function C.http10_503()
    return raw("HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/html\r\n\r\n"
        .. "<html><body><h1>Service Unavailable</h1><p>The server is overlo")
end

function C.continue_200()
    return raw("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        .. "Connection: close\r\nContent-Length: 2\r\n\r\n{}")
end

-- the Retry-After of the 100 must not stick to the final answer
function C.continue_429()
    local body = google(429, "RESOURCE_EXHAUSTED", "Quota exceeded.")
    return raw("HTTP/1.1 100 Continue\r\nRetry-After: 99\r\n\r\nHTTP/1.1 429 Too Many Requests\r\n"
        .. "Connection: close\r\nContent-Type: application/json\r\nContent-Length: " .. #body .. "\r\n\r\n"
        .. body)
end

local MiB = 1024 * 1024

function C.oversize_length()
    return stream(503, 2 * MiB, { ["Content-Type"] = "text/html", ["Content-Length"] = 2 * MiB })
end

function C.oversize_chunked() return stream(500, 2 * MiB, { ["Content-Type"] = "text/html" }) end

-- Google's error shape with the token in every string
function C.echo_json()
    local t = bearer()
    return send(401, format('{"error": {"code": 401, "message": "Invalid token %s", "status": "%s",'
        .. ' "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "%s",'
        .. ' "domain": "%s", "metadata": {"%s": "%s"}}]}}', t, t, t, t, t, t))
end

-- the same, the token written with JSON escapes: "\/", "\u003d", "\u0079..."
function C.echo_json_escaped()
    local t = bearer()
    local slashed = t:gsub("/", "\\/"):gsub("=", "\\u003d")
    return send(401, format('{"error": {"code": 401, "message": "Invalid token %s", "status":'
        .. ' "UNAUTHENTICATED", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",'
        .. ' "reason": "%s", "domain": "googleapis.com"}]}}', slashed, escaped(t)))
end

function C.echo_oauth()
    local t = bearer()
    return send(400, format('{"error": "%s", "error_description": "Token %s is invalid."}', t, t))
end

function C.echo_html()
    return send(502, "<html><body>Bad token " .. bearer() .. "</body></html>", "text/html")
end

-- the token in the headers the client keeps: Retry-After and Content-Type
function C.echo_headers()
    local t = bearer()
    return send(503, "<p>busy</p>", "text/html; token=" .. t, { ["Retry-After"] = t })
end

function C.long_header()
    ngx.header["X-Long"] = rep("a", 200 * 1024)
    return send(200, "{}")
end

function C.long_values()
    local body = google(429, "RESOURCE_EXHAUSTED", "Quota exceeded.")
    return raw("HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nRetry-After: " .. rep("9", 90000)
        .. "\r\nContent-Type: "
        .. rep("t", 5000) .. "\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body)
end

function C.many_headers()
    for i = 1, 5000 do ngx.header["X-Filler-" .. i] = "v" .. i end
    return send(503, google(503, "UNAVAILABLE", "The service is currently unavailable."))
end

function C.many_raw_headers()
    local lines = { "HTTP/1.1 502 Bad Gateway\r\n" }
    for i = 1, 20000 do lines[#lines + 1] = "X-Same: " .. i .. "\r\n" end
    lines[#lines + 1] = "Content-Type: text/html\r\nContent-Length: 12\r\n\r\n<p>proxy</p>"
    return raw(concat(lines))
end

function C.status_text() return raw("HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\n{}") end
function C.status_huge() return raw("HTTP/1.1 99999999999999999999 Huge\r\nContent-Length: 2\r\n\r\n{}") end
function C.status_999()
    return raw("HTTP/1.1 999 Weird\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
end
function C.http09() return raw("SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n") end

function C.header_nul()
    return raw("HTTP/1.1 200 OK\r\nX-Nul: a\0b\r\nContent-Type: application/json\r\n"
        .. "Connection: close\r\nContent-Length: 2\r\n\r\n{}")
end

-- export: a job, COMPLETE at once, whose signed URLs are these
local function export(urls)
    if ngx.var.uri == "/v1/portabilityArchive:initiate" then
        return send(200, '{"archiveJobId": "j1", "accessType": "ACCESS_TYPE_ONE_TIME"}')
    end
    local quoted = {}
    for i, u in ipairs(urls) do quoted[i] = '"' .. u .. '"' end
    return send(200, '{"state": "COMPLETE", "urls": [' .. concat(quoted, ", ") .. "]}")
end

function C.export_names()
    -- deep enough that nginx, which decodes %2F, finds no path above its root
    local here = "http://127.0.0.1:" .. ngx.var.server_port .. "/dl/a/b/c/d/"
    local names = { "..%2F..%2Fescape.txt", "%2e%2e%2f%2e%2e%2fescape2.txt", ".bashrc", "..", "",
                    "a%0D%0Ab.zip", rep("n", 300) .. ".zip", "same.zip", "same.zip", "%2Fetc%2Fpasswd",
                    "%C3%A9t%C3%A9" }
    for i, name in ipairs(names) do names[i] = here .. name end
    return export(names)
end

function C.export_integrity()
    return export({ "http://127.0.0.1:" .. ngx.var.server_port .. "/dl/wrong-md5.zip" })
end

function C.export_http() return export({ "http://example.com/a.zip" }) end
function C.export_credentials()
    return export({ "https://user:pw@127.0.0.1:" .. ngx.var.server_port .. "/dl/a.zip" })
end
function C.export_scheme() return export({ "file:///etc/passwd" }) end

-- the files of the exports: no token may come with them
if ngx.var.uri:sub(1, 4) == "/dl/" then
    if ngx.var.http_authorization then return send(400, google(400, "INVALID_ARGUMENT", "token sent")) end
    local md5 = ngx.encode_base64(ngx.md5_bin(ngx.var.uri:find("wrong-md5", 1, true) and "other" or "file "
        .. ngx.var.uri))
    return send(200, "file " .. ngx.var.uri, "application/zip", { ["x-goog-hash"] = "md5=" .. md5 })
end

local handler = C[bearer():match("^ya29%.([%w_]+)%.") or "ok"]
if not handler then return send(404, google(404, "NOT_FOUND", "no such case")) end
return handler()
]==]

-- Options with retries off: each case checks the shape of one failure.
local function no_retry(extra)
    local opts = { retries = 0 }
    for k, v in pairs(extra or {}) do opts[k] = v end
    return opts
end

-- Kinds and fields: `want` has kind, retryable, http_status (nil: the
-- server gave no answer) and method (default authorization.reset).
local function shape(err, want, token, label)
    label = label or want.kind
    assert.is_true(dp.is_error(err), label)
    assert.equals(want.kind, err.kind, label .. ": " .. tostring(err))
    assert.equals(want.method or "authorization.reset", err.method, label)
    assert.equals(want.retryable, err.retryable, label)
    assert.equals(want.http_status, err.http_status, label)
    assert.is_string(err.message, label)
    local line = tostring(err)
    assert.is_nil(line:find("%c"), label .. ": one line")
    assert.is_nil(err.message:find("%c"), label .. ": one line")
    assert.is_true(#line < 4096, label)
    if token then
        assert.is_false(helpers.contains(err, token), label .. ": the token is in the error table")
    end
end

describe("hostile servers", function()
    local emu, server, dir, ca
    local P = {} -- ports: plain, other, good, other_name, expired, self, tls_stall

    lazy_setup(function()
        emu = helpers.start()
        server = assert(nginx.start({
            ports = { false, false, false, false, false, false, false },
            watch = tonumber((nginx.sh("echo $PPID"):gsub("%s", ""))), -- nothing left if we crash
            prepare = function(d)
                local out, ok = nginx.sh("cd " .. q(d) .. " && sh -c " .. q(CERTS))
                if not ok then return nil, "openssl failed: " .. out end
                return nginx.write_file(d .. "/hostile.lua", HANDLERS)
            end,
            http = function(s)
                local d, p = s.dir, s.ports
                local function tls(port, cert, key, extra)
                    return ([[
    server {
        listen 127.0.0.1:%d ssl;
        ssl_certificate %s/%s;
        ssl_certificate_key %s/%s;
        %s
        location / { content_by_lua_file %s/hostile.lua; }
    }
]]):format(port, d, cert, d, key, extra or "", d)
                end
                return ([[
    log_format hits '$server_port $request_method $request_uri $status "$request"';
    access_log %s/logs/hits.log hits;
    lua_socket_log_errors off;
    server {
        listen 127.0.0.1:%d;
        lingering_close off;
        client_header_buffer_size 1k;
        location / { content_by_lua_file %s/hostile.lua; }
    }
    server {
        listen 127.0.0.1:%d;
        default_type application/json;
        location / { return 200 '{}'; }
    }
]]):format(d, p[1], d, p[2])
                    .. tls(p[3], "good.pem", "key.pem")
                    .. tls(p[4], "other.pem", "key.pem")
                    .. tls(p[5], "expired.pem", "key.pem")
                    .. tls(p[6], "self.pem", "self.key")
                    .. tls(p[7], "good.pem", "key.pem", "ssl_certificate_by_lua_block { ngx.sleep(5) }")
            end,
        }))
        dir = server.dir
        ca = dir .. "/ca.pem"
        local names = { "plain", "other", "good", "other_name", "expired", "self", "tls_stall" }
        for i, name in ipairs(names) do P[name] = server.ports[i] end
    end)

    lazy_teardown(function()
        if server then assert(server:stop()) end
        helpers.stop(emu)
    end)

    before_each(function()
        emu:clear_faults()
        emu:clear_requests()
    end)

    -- The access log lines of the test nginx for `port`, whose URI contains
    -- `path`.
    local function lines(port, path)
        local found = {}
        for line in (helpers.read(dir .. "/logs/hits.log") or ""):gmatch("[^\n]+") do
            if line:find("^" .. port .. " ") and (not path or line:find(path, 1, true)) then
                found[#found + 1] = line
            end
        end
        return found
    end

    local function hits(port, path)
        return #lines(port, path)
    end

    -- A token naming the test nginx's case.
    local function case_token(case)
        return "ya29." .. case .. "." .. helpers.token():gsub("^ya29%.", "")
    end

    -- nginx (one process) logs a request just after answering it: once a
    -- request sent now is in the log, every earlier one is too.
    local function settle()
        local marker = "settle-" .. nginx.random_hex(8)
        local c = dp.new(no_retry({ endpoint = "http://127.0.0.1:" .. P.plain }))
        c:state(case_token("ok"), marker)
        c:close()
        for _ = 1, 100 do
            if hits(P.plain, marker) > 0 then return end
            nginx.sh("sleep 0.02")
        end
        error("settle: its request never reached the log")
    end

    -- client:METHOD(token, ...) (default reset) on a fresh client with
    -- options `opts` and the token of `case`: the result, the error, the
    -- token and the seconds it took. Nothing returned may hold the token.
    local function call(case, opts, method, ...)
        local token = case_token(case)
        local c = dp.new(no_retry(opts))
        local started = os.time()
        local r, err = c[method or "reset"](c, token, ...)
        c:close()
        assert.is_false(helpers.contains({ r, err }, token), case .. ": the token came back")
        return r, err, token, os.time() - started
    end

    local function plain(extra)
        local opts = { endpoint = "http://127.0.0.1:" .. P.plain, timeout = 5 }
        for k, v in pairs(extra or {}) do opts[k] = v end
        return opts
    end

    -- The same against the plain HTTP test nginx.
    local function hostile(case, extra, method, ...)
        return call(case, plain(extra), method, ...)
    end

    describe("TLS", function()
        local function https(port, extra)
            local opts = { endpoint = "https://localhost:" .. port, timeout = 5 }
            for k, v in pairs(extra or {}) do opts[k] = v end
            return opts
        end

        -- Fails with kind tls, and nothing reached the server.
        local function refused(port, extra, why)
            local before = hits(port)
            local ok, err, token = call("ok", https(port, extra))
            assert.is_nil(ok)
            shape(err, { kind = "tls", retryable = false }, token)
            assert.matches(why, err.message:lower())
            settle()
            assert.equals(before, hits(port), "a request reached the server")
        end

        it("the control: a valid certificate from the given CA, by name and by address", function()
            assert.is_true((call("ok", https(P.good, { ca_file = ca }))))
            assert.is_true((call("ok", { endpoint = "https://127.0.0.1:" .. P.good, ca_file = ca })))
        end)

        it("tls: an unknown CA (no ca_file: the system's CAs)", function()
            refused(P.good, nil, "issuer")
        end)

        it("tls: a certificate for another name, from the trusted CA", function()
            refused(P.other_name, { ca_file = ca }, "name")
            refused(P.other_name, nil, "issuer")
        end)

        it("tls: an expired certificate from the trusted CA", function()
            refused(P.expired, { ca_file = ca }, "expired")
        end)

        it("tls: a self-signed certificate", function()
            refused(P.self, { ca_file = ca }, "self.signed")
            refused(P.self, nil, "self.signed")
        end)

        it("tls: an https:// endpoint answered in plain HTTP; nothing is sent in clear", function()
            local before = hits(P.plain, "/v1/authorization:reset")
            local ok, err, token = call("ok", https(P.plain))
            assert.is_nil(ok)
            shape(err, { kind = "tls", retryable = false }, token)
            settle()
            assert.equals(before, hits(P.plain, "/v1/authorization:reset"))
        end)

        it("timeout: a handshake that never completes; connect_timeout is honoured", function()
            local opts = https(P.tls_stall, { ca_file = ca, connect_timeout = TIMEOUT })
            local ok, err, token, took = call("ok", opts)
            assert.is_nil(ok)
            shape(err, { kind = "timeout", retryable = true }, token)
            assert.is_true(took < 3, "took " .. took .. " s")
            settle()
            assert.equals(0, hits(P.tls_stall))
        end)
    end)

    describe("a proxy", function()
        it("only ever sees a CONNECT tunnel, never a request: also for a plain http:// endpoint", function()
            for _, endpoint in ipairs({ "https://localhost:" .. P.good, "http://127.0.0.1:" .. P.plain }) do
                local before = lines(P.other)
                local ok, err, token = call("ok", { endpoint = endpoint, ca_file = ca, timeout = 5,
                                                    proxy = "http://127.0.0.1:" .. P.other })
                assert.is_nil(ok)
                -- the test proxy (nginx) refuses CONNECT with a 400
                shape(err, { kind = "network", retryable = true }, token, endpoint)
                settle()
                local seen = lines(P.other)
                assert.equals(#before + 1, #seen, endpoint)
                local host_port = endpoint:match("//(.*)$")
                local want = ('%d - - 400 "CONNECT %s HTTP/1.1"'):format(P.other, host_port)
                assert.equals(want, seen[#before + 1])
            end
        end)
    end)

    describe("stalls and broken connections", function()
        local function times_out(case)
            local ok, err, token, took = hostile(case, { timeout = TIMEOUT })
            assert.is_nil(ok)
            shape(err, { kind = "timeout", retryable = true }, token, case)
            assert.is_true(took < 3, case .. " took " .. took .. " s")
        end

        it("timeout: a server that accepts and never answers", function()
            times_out("silent")
        end)

        it("timeout: a server that stalls in the middle of its headers", function()
            times_out("stall_headers")
        end)

        it("timeout: a server that stalls mid-body (Content-Length promised more)", function()
            times_out("stall_body")
        end)

        it("network: the connection closed before the headers ended", function()
            -- an incomplete answer (RFC 9112, section 8), neither a 503 nor a success
            for _, case in ipairs({ "close_headers", "close_headers_200" }) do
                local ok, err, token = hostile(case)
                assert.is_nil(ok, case)
                shape(err, { kind = "network", retryable = true }, token, case)
            end
        end)

        it("network: the connection closed mid-body", function()
            local ok, err, token = hostile("close_body")
            assert.is_nil(ok)
            shape(err, { kind = "network", retryable = true }, token)
        end)

        it("network: the connection reset (TCP RST) mid-answer", function()
            -- a request body larger than nginx reads at once stays unread
            local resources = {}
            for i = 1, 200 do resources[i] = "myactivity.youtube" end
            local job, err, token = hostile("reset", nil, "initiate", resources)
            assert.is_nil(job)
            shape(err, { kind = "network", retryable = true, method = "portabilityArchive.initiate" }, token)
        end)

        it("http: an HTTP/1.0 answer without a length, closed early", function()
            local ok, err, token = hostile("http10_200")
            assert.is_nil(ok)
            shape(err, { kind = "http", retryable = false, http_status = 200 }, token)
            ok, err, token = hostile("http10_503")
            assert.is_nil(ok)
            shape(err, { kind = "http", retryable = true, http_status = 503 }, token)
            assert.matches("Service Unavailable", err.excerpt)
        end)

        it("a 100 Continue, then the answer", function()
            assert.is_true((hostile("continue_200")))
            local ok, err, token = hostile("continue_429")
            assert.is_nil(ok)
            shape(err, { kind = "api", retryable = true, http_status = 429 }, token)
            assert.equals("RESOURCE_EXHAUSTED", err.status)
            assert.is_nil(err.retry_after) -- the 100's header is not the answer's
        end)
    end)

    describe("error answers", function()
        local function faulted(fault, method)
            emu:set_fault(fault)
            local token = helpers.registered(emu)
            local c = dp.new(helpers.https(emu, no_retry()))
            local ok, err = c[method or "reset"](c, token)
            c:close()
            assert.is_nil(ok)
            return err, token
        end

        it("api: 429 without Retry-After", function()
            local err, token = faulted({ action = "status", status = 429 })
            shape(err, { kind = "api", retryable = true, http_status = 429 }, token)
            assert.equals("RESOURCE_EXHAUSTED", err.status)
            assert.is_nil(err.retry_after)
        end)

        it("api: 429 with Retry-After in seconds and as an HTTP-date, kept as sent", function()
            for _, value in ipairs({ "120", "Wed, 21 Oct 2015 07:28:00 GMT" }) do
                local err, token = faulted({ action = "status", status = 429, retry_after = value })
                shape(err, { kind = "api", retryable = true, http_status = 429 }, token)
                assert.equals(value, err.retry_after)
            end
        end)

        it("api: 5xx with Google's body; retryable as documented", function()
            for status, retryable in pairs({ [500] = true, [501] = false, [502] = true, [503] = true,
                                              [504] = true, [505] = false }) do
                local err, token = faulted({ action = "status", status = status })
                shape(err, { kind = "api", retryable = retryable, http_status = status }, token, status)
            end
        end)

        it("http: malformed JSON, an HTML page and an empty body", function()
            local cases = {
                { { action = "malformed", status = 500 }, 500, true },
                { { action = "malformed", status = 400 }, 400, false },
                { { action = "html", status = 502 }, 502, true },
                { { action = "html", status = 404 }, 404, false },
                { { action = "empty", status = 500 }, 500, true },
                { { action = "empty", status = 403 }, 403, false },
            }
            for _, case in ipairs(cases) do
                local err, token = faulted(case[1])
                local label = case[1].action .. " " .. case[2]
                shape(err, { kind = "http", retryable = case[3], http_status = case[2] }, token, label)
                assert.is_string(err.excerpt, label)
                assert.is_nil(err.excerpt:find("[<>%c]"), label)
            end
        end)

        it("too_large: an error body over 1 MiB, with Content-Length or chunked", function()
            for _, case in ipairs({ "oversize_length", "oversize_chunked" }) do
                local ok, err, token = hostile(case)
                assert.is_nil(ok)
                -- the transfer is cut; the status of the answer is not kept
                shape(err, { kind = "too_large", retryable = false }, token, case)
            end
        end)

        it("redirect: to another host, never followed; the other host sees nothing", function()
            local targets = { "http://127.0.0.1:" .. P.other .. "/steal",
                              "https://localhost:" .. P.good .. "/steal" }
            for _, status in ipairs({ 301, 302, 303, 307, 308 }) do
                for _, location in ipairs(targets) do
                    local err, token = faulted({ action = "redirect", status = status, location = location })
                    local want = { kind = "redirect", retryable = false, http_status = status }
                    shape(err, want, token, location)
                end
            end
            assert.equals(10, #emu:requests())
            settle()
            assert.equals(0, hits(P.other, "/steal"))
            assert.equals(0, hits(P.good, "/steal"))
        end)
    end)

    describe("a server that echoes the token", function()
        it("cannot put it into an error table: Google's JSON shape", function()
            local ok, err, token = hostile("echo_json")
            assert.is_nil(ok)
            shape(err, { kind = "api", retryable = false, http_status = 401 }, token)
            assert.matches("<redacted>", err.message, 1, true)
        end)

        it("cannot put it into an error table: OAuth's JSON shape", function()
            local ok, err, token = hostile("echo_oauth")
            assert.is_nil(ok)
            shape(err, { kind = "api", retryable = false, http_status = 400 }, token)
        end)

        it("cannot put it into an error table: an HTML page", function()
            local ok, err, token = hostile("echo_html")
            assert.is_nil(ok)
            shape(err, { kind = "http", retryable = true, http_status = 502 }, token)
        end)

        it("cannot put it into an error table: written with JSON escapes", function()
            -- "/" and "=" occur in b64tokens; Google's JSON writes "=" as \u003d
            local token = "ya29.echo_json_escaped." .. helpers.token():gsub("^ya29%.", "") .. "/x+y=="
            local c = dp.new(no_retry(plain()))
            local ok, err = c:reset(token)
            c:close()
            assert.is_nil(ok)
            shape(err, { kind = "api", retryable = false, http_status = 401 }, token)
        end)

        it("cannot put it into an error table: the Retry-After and Content-Type headers", function()
            local ok, err, token = hostile("echo_headers")
            assert.is_nil(ok)
            shape(err, { kind = "http", retryable = true, http_status = 503 }, token)
        end)

        it("cannot put it into a result", function()
            local st, err, token = hostile("echo_success", nil, "state", "abc")
            assert.is_nil(err)
            assert.is_table(st)
            assert.is_false(helpers.contains(st, token))
        end)
    end)

    describe("malformed HTTP", function()
        it("a header line of 200 KiB: no crash", function()
            local ok, err, token = hostile("long_header")
            assert.is_nil(ok)
            shape(err, { kind = "network", retryable = true }, token) -- libcurl refuses it
        end)

        it("a 90 kB Retry-After and a 5 kB Content-Type: kept short", function()
            local ok, err, token = hostile("long_values")
            assert.is_nil(ok)
            shape(err, { kind = "api", retryable = true, http_status = 429 }, token)
            assert.is_true(#err.retry_after < 100)
            assert.matches("^9+$", err.retry_after)
        end)

        it("thousands of headers: over limits.header_lines_max is not an API answer", function()
            assert.equals(200, require("dataportability.core").limits.header_lines_max)
            for _, case in ipairs({ "many_headers", "many_raw_headers" }) do
                local ok, err, token = hostile(case)
                assert.is_nil(ok)
                shape(err, { kind = "network", retryable = true }, token, case)
                assert.matches("too many response header lines", err.message, 1, true)
            end
        end)

        it("a status line that is not a number, too long, or not HTTP at all; a NUL in a header", function()
            for _, case in ipairs({ "status_text", "status_huge", "http09", "header_nul" }) do
                local ok, err, token = hostile(case)
                assert.is_nil(ok)
                shape(err, { kind = "network", retryable = true }, token, case)
            end
        end)

        it("an unknown three-digit status", function()
            local ok, err, token = hostile("status_999")
            assert.is_nil(ok)
            shape(err, { kind = "http", retryable = false, http_status = 999 }, token)
        end)

        it("one client survives every hostile answer in turn, then succeeds", function()
            local c = dp.new(no_retry(plain()))
            local cases = { "close_headers", "close_body", "http10_200", "continue_429", "oversize_length",
                            "echo_json", "long_header", "many_raw_headers", "status_text", "http09",
                            "header_nul", "status_999" }
            for _, case in ipairs(cases) do
                local ok, err = c:reset(case_token(case))
                assert.is_nil(ok, case)
                assert.is_true(dp.is_error(err), case)
            end
            assert.is_true(c:reset(case_token("ok")))
            c:close()
        end)
    end)

    describe("export", function()
        it("keeps hostile file names inside dir, safe and unique; fetches files without the token", function()
            local parent = helpers.tmpdir()
            local into = parent .. "/into"
            assert(nginx.sh("mkdir " .. q(into)))
            local result, err, token = hostile("export_names", nil, "export", { "myactivity.youtube" },
                { dir = into, reset = false })
            assert.is_nil(err)
            local seen = {}
            for _, f in ipairs(result.files) do
                assert.matches("^[%w%-][%w._-]*$", f.name)
                assert.is_true(#f.name <= 200)
                assert.equals(into .. "/" .. result.job_id .. "/" .. f.name, f.path)
                assert.is_nil(seen[f.name])
                seen[f.name] = true
                assert.matches("^file /", helpers.read(f.path))
            end
            assert.equals(11, #result.files)
            assert.equals("into\n", helpers.sh("ls -A " .. q(parent)))
            assert.equals(result.job_id .. "\n", helpers.sh("ls -A " .. q(into)))
            assert.equals("11\n", helpers.sh("ls " .. q(into .. "/" .. result.job_id) .. " | wc -l"))
            assert.is_false(helpers.contains(result, token))
            nginx.sh("rm -rf " .. q(parent))
        end)

        it("integrity: a file whose MD5 is not the server's x-goog-hash is not kept", function()
            local into = helpers.tmpdir()
            local result, err, token = hostile("export_integrity", nil, "export", { "myactivity.youtube" },
                { dir = into, reset = false })
            assert.is_nil(result)
            shape(err, { kind = "integrity", retryable = false, method = "export" }, token)
            assert.equals(err.job_id .. "\n", helpers.sh("ls -A " .. q(into)))
            assert.equals("", helpers.sh("ls -A " .. q(into .. "/" .. err.job_id))) -- nothing kept
            nginx.sh("rm -rf " .. q(into))
        end)

        it("refuses signed URLs: plain http to another host, with credentials, another scheme", function()
            for _, case in ipairs({ "export_http", "export_credentials", "export_scheme" }) do
                local into = helpers.tmpdir()
                -- a server's answer, not a programming error: nil, err, never a raise
                local ok, result, err = pcall(hostile, case, nil, "export", { "myactivity.youtube" },
                    { dir = into, reset = false })
                -- nothing fetched or written: the job's directory stays empty
                assert.equals("", helpers.sh("ls -A " .. q(into) .. "/*"), case)
                nginx.sh("rm -rf " .. q(into))
                assert.is_true(ok, case .. " raised: " .. tostring(result))
                assert.is_nil(result, case)
                shape(err, { kind = "http", retryable = false, method = "export" }, nil, case)
            end
        end)
    end)

    describe("header injection", function()
        local BAD_TOKENS = {
            "ya29.a\r\nX-Injected: 1", "ya29.a\nX-Injected: 1", "ya29.a\rX-Injected: 1", "ya29.a\0b",
            "ya29.a b", "ya29.a\tb", "Bearer ya29.a", "ya29.a\r\n\r\nGET /steal HTTP/1.1",
        }

        it("through the token: invalid_token, nothing sent, whatever the method", function()
            local c = dp.new(helpers.https(emu, no_retry()))
            local calls = {
                reset = {}, state = { "abc" }, cancel = { "abc" }, retry = { "abc" }, check_access_type = {},
                initiate = { { "myactivity.youtube" } },
            }
            for _, bad in ipairs(BAD_TOKENS) do
                for method, args in pairs(calls) do
                    local r, err = c[method](c, bad, args[1])
                    assert.is_nil(r)
                    assert.equals("invalid_token", err.kind, method)
                    assert.is_false(err.retryable)
                    assert.is_nil(err.http_status)
                    assert.is_false(helpers.contains(err, bad), method)
                end
                local ok, err = dp.reset(bad, helpers.https(emu, no_retry()))
                assert.is_nil(ok)
                assert.equals("invalid_token", err.kind)
            end
            c:close()
            assert.equals(0, #emu:requests())
        end)

        it("through the user agent or the quota project: dp.new and dp.reset raise", function()
            local bad = { "a\r\nX-Injected: 1", "a\nX-Injected: 1", "a\rb", "a\0b", "a\tb", "a\127b",
                          "caf\195\169" }
            for _, value in ipairs(bad) do
                for _, option in ipairs({ "user_agent", "quota_project" }) do
                    local opts = helpers.https(emu, { [option] = value })
                    assert.has_error(function() dp.new(opts) end)
                    local ok, why = pcall(dp.new, opts)
                    assert.is_false(ok)
                    assert.matches("option '" .. option .. "'", why, 1, true)
                    assert.is_false(pcall(dp.reset, helpers.registered(emu), opts))
                end
            end
            assert.is_false(pcall(dp.new, { endpoint = "https://localhost\r\nX-Injected: 1" }))
            assert.equals(0, #emu:requests())
        end)

        it("through a job id: refused, or percent-encoded into one path segment", function()
            local token = helpers.registered(emu)
            local c = dp.new(helpers.https(emu, no_retry()))
            local ids = {
                "a\r\nX-Injected: 1", "a\nX-Injected: 1", "a b", "a?x=1", "a#f", "a%2F..%2Fb", "a:cancel",
                "archiveJobs/a\r\nb", "../authorization:reset", "a/../../authorization:reset",
                "archiveJobs/../x", "%2e%2e", "...", "caf\195\169", "..", ".", "archiveJobs/..",
            }
            for _, id in ipairs(ids) do
                for _, method in ipairs({ "state", "cancel" }) do
                    emu:clear_requests()
                    local r, err = c[method](c, token, id)
                    assert.is_nil(r)
                    local log = emu:requests()
                    local label = ("%s(%q)"):format(method, id)
                    if err.kind == "invalid_argument" then
                        assert.equals(0, #log, label)
                    else
                        shape(err, { kind = "api", retryable = false, http_status = 404,
                                     method = method == "state" and "archiveJobs.getPortabilityArchiveState"
                                         or "archiveJobs.cancel" }, token, label)
                        assert.equals(1, #log, label)
                        local path = log[1].path
                        local segment = path:match(method == "state"
                            and "^/v1/archiveJobs/([^/]+)/portabilityArchiveState$"
                            or "^/v1/archiveJobs/([^/]+):cancel$")
                        assert.is_string(segment, label .. " went to " .. path)
                        assert.is_nil(segment:find("[^%w%-._~%%]"), label)
                        local decoded = segment:gsub("%%(%x%x)", function(h)
                            return string.char(tonumber(h, 16))
                        end)
                        assert.equals((id:gsub("^archiveJobs/", "")), decoded, label)
                        assert.equals("", log[1].query, label)
                        assert.is_nil(log[1].headers["x-injected"], label)
                    end
                end
            end
            c:close()
        end)
    end)
end)
