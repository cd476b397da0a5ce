-- The ngx transport (lua/dataportability/transport/ngx.lua) inside a real
-- nginx + ngx_lua, driven with the curl command line, against the real
-- emulator: the example handler, every error kind, keep-alive, pools and
-- trust, what a transport says it sent, and that calls never block the worker.
local helpers = require("spec.helpers")
local openresty = require("spec.openresty.nginx")
local cjson = require("cjson.safe")

local N = 5        -- concurrent requests in the non-blocking test
local DELAY = 1    -- seconds the emulator holds each of them

local q = helpers.quote

local function escape(s)
    return (tostring(s):gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

local function query(opts)
    local parts = {}
    for k, v in pairs(opts or {}) do parts[#parts + 1] = k .. "=" .. escape(v) end
    return #parts > 0 and ("?" .. table.concat(parts, "&")) or ""
end

describe("OpenResty: the ngx transport #host", function()
    local emu, server
    local used = {} -- every token sent, to scan nginx's logs for at the end

    lazy_setup(function()
        emu = helpers.start()
        server = openresty.start(emu)
    end)
    lazy_teardown(function()
        if server then server:stop() end
        helpers.stop(emu)
    end)
    before_each(function() emu:clear_faults(); emu:clear_requests() end)

    local function registered(scopes)
        local token = helpers.registered(emu, scopes)
        used[#used + 1] = token
        return token
    end

    -- curl: returns the HTTP status, the decoded JSON body (or the raw one)
    -- and the lowercased headers.
    local function curl(path, token, method)
        local auth = token and (" -H " .. q("Authorization: Bearer " .. token)) or ""
        local p = assert(io.popen("curl -s -i -m 20 -X " .. (method or "POST") .. auth .. " "
            .. q(server.url .. path)))
        local out = p:read("*a")
        p:close()
        local head, body = out:match("^(.-)\r\n\r\n(.*)$")
        assert(head, "no HTTP answer from nginx: " .. out)
        local headers = {}
        for name, value in head:gmatch("\n([%w-]+): ([^\r\n]*)") do headers[name:lower()] = value end
        return tonumber(head:match("^HTTP/[%d.]+ (%d+)")), cjson.decode(body) or body, headers
    end

    -- A test-only case of spec/openresty/cases.lua, against the HTTPS emulator;
    -- under `prefix` (/untrusting) for a location with another trust store.
    local function case(name, token, opts, prefix)
        opts = opts or {}
        opts.endpoint = opts.endpoint or emu.https_endpoint
        local status, body = curl((prefix or "") .. "/t/" .. name .. query(opts), token)
        assert.equals(200, status)
        return body
    end

    -- A pool name no earlier test used: its idle connections are this test's.
    local pools = 0
    local function new_pool()
        pools = pools + 1
        return "spec-" .. pools
    end

    -- The emulator's request log's connection ids.
    local function connections()
        local ids = {}
        for i, r in ipairs(emu:requests()) do ids[i] = r.connection end
        return ids
    end

    describe("the example handler", function()
        it("resets a token, then answers the revoked token's 401 error table", function()
            local token = registered()
            local status, body = curl("/reset", token)
            assert.equals(200, status)
            assert.same({ ok = true }, body)
            status, body = curl("/reset", token)
            assert.equals(401, status)
            assert.is_false(body.ok)
            assert.equals("api", body.kind)
            assert.equals("UNAUTHENTICATED", body.status)
            assert.equals(401, body.http_status)
            assert.equals("ACCESS_TOKEN_TYPE_UNSUPPORTED", body.reason)
            assert.is_false(helpers.contains(body, token))
        end)

        it("answers 403 PERMISSION_DENIED without a dataportability scope", function()
            local status, body = curl("/reset", registered({ helpers.OTHER_SCOPE }))
            assert.equals(403, status)
            assert.equals("api", body.kind)
            assert.equals("PERMISSION_DENIED", body.status)
            assert.equals("ACCESS_TOKEN_SCOPE_INSUFFICIENT", body.reason)
        end)

        it("refuses an invalid or missing token; nothing reaches the emulator", function()
            for _, bad in ipairs({ "QZ b", "QZ\195\169", "QZ,x", string.rep("t", 4097) }) do
                local status, body = curl("/reset", bad)
                assert.equals(400, status, bad)
                assert.equals("invalid_token", body.kind)
                assert.is_false(helpers.contains(body, bad))
            end
            local status, body = curl("/reset", nil)
            assert.equals(401, status)
            assert.equals("invalid_token", body.kind)
            assert.equals(405, (curl("/reset", registered(), "GET")))
            assert.equals(0, #emu:requests())
        end)

        it("sends a bodiless POST with the documented headers", function()
            assert.equals(200, (curl("/reset", registered())))
            local log = emu:requests()
            assert.equals(1, #log)
            local r = log[1]
            assert.equals("POST", r.method)
            assert.equals("/v1/authorization:reset", r.path)
            assert.equals("https", r.scheme)
            assert.equals("HTTP/1.1", r.protocol)
            assert.equals("localhost:" .. emu.https_port, r.headers["host"])
            assert.equals("dataportability-lua/0.1.0 spec/1.0", r.headers["user-agent"])
            assert.equals("spec-project", r.headers["x-goog-user-project"])
            assert.equals("application/json", r.headers["accept"])
            assert.equals("0", r.headers["content-length"])
            assert.equals(0, r.body_length)
            assert.is_nil(r.headers["content-type"])
            assert.is_nil(r.headers["transfer-encoding"])
            assert.equals("Bearer <redacted>", r.headers["authorization"])
        end)
    end)

    describe("keep-alive", function()
        it("reuses the connection for two calls in one request; close is idempotent", function()
            local r = case("two", registered())
            assert.is_true(r.first.ok)
            assert.equals(401, r.second.http_status) -- the same token, revoked by the first call
            assert.equals("closed", r.third.kind)
            assert.matches("^dataportability%.cosocket_client: 0x%x+$", r.tostring)
            assert.matches("^dataportability%.cosocket_client: 0x%x+ %(closed%)$", r.closed)
            local log = emu:requests()
            assert.equals(2, #log)
            assert.equals(log[1].connection, log[2].connection)
            assert.is_true(log[2].connection_requests > log[1].connection_requests)
        end)

        it("reuses the connection across requests to nginx", function()
            assert.equals(200, (curl("/reset", registered())))
            assert.equals(200, (curl("/reset", registered())))
            local log = emu:requests()
            assert.equals(2, #log)
            assert.equals(log[1].connection, log[2].connection)
        end)

        it("never sends again after a dead pooled connection: network, sent 'stale'", function()
            local pool, token = new_pool(), registered()
            assert.equals(200, case("call", registered(), { pool = pool }).status)
            emu:set_fault({ action = "drop" })
            local r = case("call", token, { pool = pool })
            assert.same({ n = 7, kind = "network", sent = "stale", pool = r.pool,
                message = "the kept-alive connection closed without answering; "
                    .. "the request may have reached the server" }, r)
            local ids = connections()
            assert.equals(2, #ids) -- sent once, on the connection the first call left
            assert.equals(ids[1], ids[2])
        end)

        it("client:reset with retries = 0 answers the dead pooled connection: one send", function()
            local pool = new_pool()
            assert.is_true(case("reset", registered(), { pool = pool }).ok)
            emu:set_fault({ action = "drop" })
            local r = case("reset", registered(), { pool = pool, retries = 0 })
            assert.equals("network", r.kind)
            assert.equals(2, #emu:requests())
        end)

        it("reset_many runs `concurrency` light threads and keeps input order", function()
            local tokens = {}
            for i = 1, 6 do tokens[i] = registered() end
            local unknown = helpers.token()
            used[#used + 1] = unknown
            tokens[7] = unknown
            emu:set_fault({ action = "delay", seconds = 0.6, count = 7 })
            local r = case("many", table.concat(tokens, ","))
            assert.equals(2, r.failed)
            for i = 1, 6 do assert.is_true(r.results[i].ok) end
            assert.equals(401, r.results[7].http_status)
            assert.equals(7, r.results[7].index)
            assert.equals("invalid_token", r.results[8].kind)
            local at = {}
            for i, req in ipairs(emu:requests()) do at[i] = req.time end
            table.sort(at)
            assert.equals(7, #at)
            assert.is_true(at[3] - at[1] < 0.5, "three were sent together")
            assert.is_true(at[4] - at[1] >= 0.5, "the fourth waited for a thread")
        end)

        it("light threads share a client; a dropped pooled connection is not sent again", function()
            local r = case("threads", registered(), { admin = emu.endpoint, pool = new_pool() })
            assert.equals(200, r.fault)
            local oks = (r.a.ok and 1 or 0) + (r.b.ok and 1 or 0)
            assert.equals(1, oks) -- one resets, the other finds the token revoked
            assert.equals("network", r.third.kind)
            assert.equals("stale", r.third.sent)
            local ids = connections()
            assert.equals(3, #ids)
            assert.are_not.equal(ids[1], ids[2])
            assert.is_true(ids[3] == ids[1] or ids[3] == ids[2]) -- reused, dropped, not sent again
        end)
    end)

    describe("error kinds", function()
        local function faulted(fault, opts)
            emu:set_fault(fault)
            local token = registered()
            local r = case("reset", token, opts)
            assert.is_false(r.ok)
            assert.is_false(helpers.contains(r, token))
            return r
        end

        it("api: 429 keeps Retry-After", function()
            local r = faulted({ action = "status", status = 429, retry_after = "7" })
            assert.equals("api", r.kind)
            assert.equals("7", r.retry_after)
            assert.is_true(r.retryable)
        end)

        it("http: an HTML page from a proxy", function()
            local r = faulted({ action = "html", status = 502 })
            assert.equals("http", r.kind)
            assert.equals(502, r.http_status)
        end)

        it("redirect: a 3xx is never followed", function()
            assert.equals("redirect", faulted({ action = "redirect", status = 302 }).kind)
            assert.equals(1, #emu:requests())
        end)

        it("too_large: a streamed (chunked) body and a Content-Length over 1 MiB", function()
            assert.equals("too_large", faulted({ action = "oversize", bytes = 2 * 1024 * 1024 }).kind)
            local r = faulted({ action = "oversize", bytes = 2 * 1024 * 1024, content_length = true })
            assert.equals("too_large", r.kind)
            assert.equals("response body is larger than 1 MiB", r.message)
        end)

        it("a body of exactly 1 MiB is accepted, chunked or with Content-Length", function()
            for _, with_length in ipairs({ false, true }) do
                emu:set_fault({ action = "oversize", bytes = 1048576, content_length = with_length })
                assert.is_true(case("reset", registered()).ok)
            end
        end)

        it("a body delimited by the connection's close: read, cut at 1 MiB", function()
            local raw = { endpoint = server.url, method = "GET", path = "/raw/close?bytes=1000" }
            local r = case("call", nil, raw)
            assert.equals(200, r.status)
            assert.equals(1000, r.length)
            assert.equals(string.rep("9", 63), r.retry_after) -- limits.retry_after_max, as in C
            raw.path = "/raw/close?bytes=2097152"
            r = case("call", nil, raw)
            assert.equals("too_large", r.kind)
            assert.equals("yes", r.sent)
        end)

        it("timeout: the timeout option bounds the whole call", function()
            local started = os.time()
            local r = faulted({ action = "delay", seconds = 2 }, { timeout = 0.3 })
            assert.equals("timeout", r.kind)
            assert.is_true(r.retryable)
            assert.is_true(os.time() - started <= 2)
        end)

        it("network: the server drops the connection", function()
            local r = faulted({ action = "drop" }, { retries = 0 })
            assert.equals("network", r.kind)
            assert.is_true(r.retryable)
            assert.equals(1, #emu:requests())
            emu:clear_requests()
            r = faulted({ action = "truncate", bytes = 4096 }, { retries = 0 })
            assert.equals("network", r.kind)
            assert.equals(1, #emu:requests())
        end)

        it("tls: the CA is not trusted, or the name does not match", function()
            local r = case("reset", registered(), { endpoint = server.self_signed })
            assert.equals("tls", r.kind)
            assert.is_false(r.retryable)
            -- nginx checks the peer's DNS names only, so an IP address never matches
            r = case("reset", registered(), { endpoint = "https://127.0.0.1:" .. emu.https_port })
            assert.equals("tls", r.kind)
            assert.equals(0, #emu:requests())
        end)

        it("connect and dns", function()
            assert.equals("connect", case("reset", registered(), { endpoint = "https://localhost:1" }).kind)
            -- cosockets resolve through `resolver` only, and there is none here
            local r = case("reset", registered(), { endpoint = "https://dataportability.invalid" })
            assert.equals("dns", r.kind)
            assert.is_true(r.retryable)
        end)

        it("plain HTTP to the loopback emulator", function()
            assert.is_true(case("reset", registered(), { endpoint = emu.endpoint }).ok)
        end)
    end)

    describe("options and misuse", function()
        it("raises for ca_file and proxy, naming what to do instead", function()
            local r = case("new", nil, { ca_file = emu.ca_file })
            assert.is_false(r.ok)
            assert.matches("ca_file", r.raised)
            assert.matches("lua_ssl_trusted_certificate", r.raised)
            r = case("new", nil, { proxy = "http://127.0.0.1:3128" })
            assert.matches("proxy", r.raised)
            r = case("new", nil, { endpoint = "http://example.com" })
            assert.matches("endpoint", r.raised)
        end)

        it("the transport: a GET, bad arguments raise, its type is named", function()
            local r = case("transport", nil, { endpoint = emu.endpoint })
            assert.equals(200, r.status)
            assert.matches('"ok"', r.body)
            assert.matches("method must be GET", r.bad)
            assert.matches("path must start with /", r.bad_path)
            assert.equals("dataportability.cosocket_client", r.name)
            assert.matches("^dataportability%.cosocket_client: 0x%x+$", r.tostring)
            assert.matches("^dataportability%.cosocket_client: 0x%x+ %(closed%)$", r.closed_tostring)
            assert.same({ n = 7, kind = "closed", message = "client is closed", sent = "no" }, r.closed)
        end)

        it("works from a timer, where cosockets are allowed", function()
            assert.is_true(case("timer", registered()).ok)
        end)

        local function assert_refused(r, phase)
            assert.is_table(r, phase)
            assert.equals(phase, r.phase)
            assert.matches("cosockets are not available in the '" .. phase .. "' phase", r.raised)
            assert.matches("content_by_lua", r.raised)
            assert.is_true(r.elapsed < 0.1, phase)
        end

        it("raises, without blocking, where cosockets are not allowed", function()
            local token = registered()
            local q_ = query({ endpoint = emu.https_endpoint })
            local status, _, headers = curl("/phase/header_filter" .. q_, token, "GET")
            assert.equals(200, status)
            assert.matches("header_filter", headers["x-dp-raised"])
            local body
            status, body = curl("/phase/set" .. q_, token, "GET")
            assert.equals(200, status)
            assert.matches("'set' phase", body)
            assert.equals(200, (curl("/phase/log" .. q_, token, "GET")))
            for _, phase in ipairs({ "header_filter", "set", "log", "init_worker" }) do
                assert_refused(select(2, curl("/phase/result?phase=" .. phase, nil, "GET")).result, phase)
            end
            assert.equals(0, #emu:requests())
        end)
    end)

    describe("what the transport says it sent", function()
        -- One call through the transport after `fault`: its seven positions.
        local function sent(fault, opts, token)
            if fault then emu:set_fault(fault) end
            token = token or registered()
            local r = case("call", token, opts)
            assert.equals(7, r.n)
            assert.is_nil(r.status)
            assert.is_false(helpers.contains(r, token))
            return r.kind, r.sent
        end

        it("'no' when it surely never left: connect, dns, tls, a refused token", function()
            assert.same({ "connect", "no" }, { sent(nil, { endpoint = "https://localhost:1" }) })
            assert.same({ "dns", "no" }, { sent(nil, { endpoint = "https://dataportability.invalid" }) })
            assert.same({ "tls", "no" }, { sent(nil, { endpoint = server.self_signed }) })
            assert.same({ "invalid_token", "no" }, { sent(nil, nil, "QZ b") })
            assert.equals(0, #emu:requests())
        end)

        it("'yes' once it went out: dropped on a new connection, cut short, too large, timed out", function()
            assert.same({ "network", "yes" }, { sent({ action = "drop" }, { pool = new_pool() }) })
            assert.same({ "network", "yes" }, { sent({ action = "truncate", bytes = 4096 }) })
            assert.same({ "too_large", "yes" }, { sent({ action = "oversize", bytes = 2 * 1024 * 1024 }) })
            assert.same({ "timeout", "yes" }, { sent({ action = "delay", seconds = 2 }, { timeout = 0.3 }) })
            assert.equals(4, #emu:requests()) -- each sent once
        end)

        it("many: on_done gets the seven values of request, in input order", function()
            local tokens = { registered(), registered() }
            local r = case("batch", table.concat(tokens, ","))
            assert.equals(3, #r.results)
            assert.equals(200, r.results[1].status)
            assert.equals(200, r.results[2].status)
            assert.is_nil(r.results[1].kind)
            local bad = r.results[3]
            assert.equals(7, bad.n)
            assert.equals("invalid_token", bad.kind)
            assert.equals("no", bad.sent)
            assert.equals(2, #emu:requests())
        end)
    end)

    describe("pools and trust", function()
        -- /untrusting trusts a fresh CA that did not sign the emulator's certificate
        local UNTRUSTING = "/untrusting"

        it("a location with its own `pool` verifies its own connections, after a call elsewhere succeeded",
            function()
                local a, b = new_pool(), new_pool()
                assert.equals(200, case("call", registered(), { pool = a }).status)
                local r = case("call", registered(), { pool = b }, UNTRUSTING)
                assert.equals("tls", r.kind)
                assert.equals("no", r.sent)
                assert.matches("TLS handshake with localhost:%d+ failed", r.message)
                assert.equals(1, #emu:requests()) -- never on a's verified connection
                -- and a's connection is still there for a
                assert.equals(200, case("call", registered(), { pool = a }).status)
                local ids = connections()
                assert.equals(2, #ids)
                assert.equals(ids[1], ids[2])
            end)

        it("one pool name shares a verified connection whatever nginx.conf trusts: why `pool` exists",
            function()
                -- the untrusting location's own call fails on a new connection...
                local pool = new_pool()
                assert.equals("tls", case("call", registered(), { pool = pool }, UNTRUSTING).kind)
                -- ...but takes one that another location verified under the same name
                assert.equals(200, case("call", registered(), { pool = pool }).status)
                assert.equals(200, case("call", registered(), { pool = pool }, UNTRUSTING).status)
                local ids = connections()
                assert.equals(2, #ids)
                assert.equals(ids[1], ids[2])
            end)

        it("the default pool name covers the endpoint, the TLS server name and verification", function()
            local port = emu.https_port
            local r = case("new", nil, {})
            assert.is_true(r.ok)
            assert.equals(("dataportability https://localhost:%d sni=localhost verify=on"):format(port),
                r.pool)
            r = case("new", nil, { endpoint = "https://127.0.0.1:" .. port })
            assert.equals(("dataportability https://127.0.0.1:%d sni=127.0.0.1 verify=on"):format(port),
                r.pool)
            r = case("new", nil, { endpoint = emu.endpoint })
            assert.equals("dataportability " .. emu.endpoint .. " tls=off", r.pool)
            r = case("new", nil, { pool = "location b" })
            assert.equals(("dataportability https://localhost:%d sni=localhost verify=on pool=location b")
                :format(port), r.pool)
            -- the same emulator under another name: verified anew, so refused (nginx checks DNS names only)
            assert.equals(200, case("call", registered()).status)
            assert.equals("tls", case("call", registered(), { endpoint = "https://127.0.0.1:" .. port }).kind)
            assert.equals(1, #emu:requests())
        end)

        it("`pool` must be 1 to 128 printable ASCII bytes", function()
            assert.is_true(case("new", nil, { pool = string.rep("p", 128) }).ok)
            for _, bad in ipairs({ "", string.rep("p", 129), "a\tb", "caf\195\169" }) do
                local r = case("new", nil, { pool = bad })
                assert.is_false(r.ok, bad)
                assert.matches("option 'pool' must be a string of 1 to 128 printable ASCII bytes", r.raised)
            end
        end)
    end)

    describe("non-blocking", function()
        it("one worker serves " .. N .. " slow resets at once", function()
            emu:set_fault({ action = "delay", seconds = DELAY, count = N })
            local cmd = { "start=$(date +%s.%N)" }
            for i = 1, N do
                cmd[#cmd + 1] = ("curl -s -m 20 -o /dev/null -w '%%{http_code}\\n' -X POST -H %s %s"
                    .. " > %s/c%d &"):format(q("Authorization: Bearer " .. registered()),
                    q(server.url .. "/reset"), server.dir, i)
            end
            cmd[#cmd + 1] = "wait; echo \"$start $(date +%s.%N)\""
            for i = 1, N do cmd[#cmd + 1] = "cat " .. server.dir .. "/c" .. i end
            local p = assert(io.popen(table.concat(cmd, "\n")))
            local out = p:read("*a")
            p:close()
            local t0, t1 = out:match("^([%d.]+) ([%d.]+)\n")
            local codes = select(2, out:gsub("200\n", ""))
            assert.equals(N, codes, out)
            local log = emu:requests()
            assert.equals(N, #log)
            local first, last = math.huge, -math.huge
            for _, r in ipairs(log) do
                first, last = math.min(first, r.time), math.max(last, r.time)
            end
            -- a blocking worker would have let them in one delay apart
            assert.is_true(last - first < DELAY / 2, "arrivals spread over " .. (last - first) .. " s")
            assert.is_true(tonumber(t1) - tonumber(t0) < DELAY * 2.5, "took " .. (t1 - t0) .. " s")
        end)
    end)

    describe("the token", function()
        it("never appears in nginx's error.log or access.log", function()
            assert.equals(200, (curl("/reset", registered()))) -- also when run alone
            local logs = server:logs()
            assert.is_true(#logs > 0)
            for _, token in ipairs(used) do
                assert.is_nil(logs:find(token, 1, true), token)
            end
            assert.is_nil(logs:find("ya29.init", 1, true))
        end)
    end)
end)
