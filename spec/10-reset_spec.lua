-- authorization.reset against the real emulator, over real HTTPS with the
-- emulator's generated CA, and over plain HTTP on loopback.
local dp = require("dataportability")
local helpers = require("spec.helpers")

local RESET = "/v1/authorization:reset"

describe("reset against the emulator", function()
    local emu

    lazy_setup(function() emu = helpers.start() end)
    lazy_teardown(function() helpers.stop(emu) end)
    before_each(function() emu:clear_faults(); emu:clear_requests() end)

    local function client(extra)
        return dp.new(helpers.https(emu, extra))
    end

    -- A reset whose answer comes from an injected fault.
    local function faulted(fault, extra)
        emu:set_fault(fault)
        local c = client(extra)
        local token = helpers.registered(emu)
        local ok, err = c:reset(token)
        c:close()
        assert.is_nil(ok)
        assert.is_true(dp.is_error(err))
        assert.equals("authorization.reset", err.method)
        return err, token
    end

    describe("success", function()
        it("resets a token over HTTPS, and the token is revoked", function()
            local token = helpers.registered(emu)
            local c = client()
            assert.is_true(c:reset(token))
            local ok, err = c:reset(token)
            assert.is_nil(ok)
            assert.equals("api", err.kind)
            assert.equals(401, err.http_status)
            assert.equals(401, err.code)
            assert.equals("UNAUTHENTICATED", err.status)
            assert.equals("ACCESS_TOKEN_TYPE_UNSUPPORTED", err.reason)
            assert.equals("googleapis.com", err.domain)
            assert.is_table(err.details)
            assert.is_false(err.retryable)
            assert.is_false(helpers.contains(err, token))
            c:close()
        end)

        it("resets with the one-off dp.reset(token, opts)", function()
            assert.is_true(dp.reset(helpers.registered(emu), helpers.https(emu)))
        end)

        it("resets over plain HTTP to the loopback emulator", function()
            assert.is_true(dp.reset(helpers.registered(emu), { endpoint = emu.endpoint }))
        end)

        it("uses DATAPORTABILITY_EMULATOR_HOST when no endpoint is given", function()
            local out, ok = helpers.run_lua({ DATAPORTABILITY_EMULATOR_HOST = emu.host,
                                              LUA_PATH = package.path, LUA_CPATH = package.cpath },
                ('print(require("dataportability").reset(%q))'):format(helpers.registered(emu)))
            assert.is_true(ok, out)
            assert.equals("true\n", out)
            local log = emu:requests()
            assert.equals(1, #log)
            assert.equals("http", log[1].scheme)
        end)
    end)

    describe("what is sent", function()
        it("sends a bodiless POST with the documented headers", function()
            local c = client({ user_agent = "myapp/1.2", quota_project = "my-project" })
            assert.is_true(c:reset(helpers.registered(emu)))
            c:close()
            local log = emu:requests()
            assert.equals(1, #log)
            local r = log[1]
            assert.equals("POST", r.method)
            assert.equals(RESET, r.path)
            assert.equals("https", r.scheme)
            assert.equals("dataportability-lua/" .. dp._VERSION .. " myapp/1.2", r.headers["user-agent"])
            assert.equals("my-project", r.headers["x-goog-user-project"])
            assert.equals("0", r.headers["content-length"])
            assert.equals(0, r.body_length)
            assert.is_nil(r.headers["content-type"])
            assert.is_nil(r.headers["expect"])
            assert.equals("application/json", r.headers["accept"])
            assert.equals("Bearer <redacted>", r.headers["authorization"])
        end)

        it("keeps the connection alive across calls and clients (spec/16: shared caches)", function()
            local c = client()
            for _ = 1, 3 do assert.is_true(c:reset(helpers.registered(emu))) end
            c:close()
            local c2 = client()
            assert.is_true(c2:reset(helpers.registered(emu)))
            c2:close()
            local log = emu:requests()
            assert.equals(4, #log)
            for i = 2, 4 do
                assert.equals(log[1].connection, log[i].connection)
                assert.equals(log[1].connection_requests + i - 1, log[i].connection_requests)
            end
        end)

        it("sends nothing for an invalid token", function()
            local c = client()
            local bad_tokens = { "", "QZ b", "QZ\r\nX-Injected: 1", string.rep("t", 4097), "QZ\195\169" }
            for _, bad in ipairs(bad_tokens) do
                local ok, err = c:reset(bad)
                assert.is_nil(ok)
                assert.equals("invalid_token", err.kind)
                assert.is_false(err.retryable)
                assert.is_nil(err.http_status)
                if #bad > 0 then assert.is_false(helpers.contains(err, bad)) end
            end
            c:close()
            assert.equals(0, #emu:requests())
        end)
    end)

    describe("error kinds", function()
        it("api: 401 for an unknown token", function()
            local ok, err = dp.reset(helpers.token(), helpers.https(emu))
            assert.is_nil(ok)
            assert.equals("api", err.kind)
            assert.equals("UNAUTHENTICATED", err.status)
        end)

        it("api: 403 PERMISSION_DENIED without a dataportability scope", function()
            local token = helpers.registered(emu, { helpers.OTHER_SCOPE })
            local ok, err = dp.reset(token, helpers.https(emu))
            assert.is_nil(ok)
            assert.equals("api", err.kind)
            assert.equals(403, err.http_status)
            assert.equals("PERMISSION_DENIED", err.status)
            assert.equals("ACCESS_TOKEN_SCOPE_INSUFFICIENT", err.reason)
            assert.is_false(err.retryable)
        end)

        it("api: 429 with Retry-After is retryable and keeps the header", function()
            local err = faulted({ action = "status", status = 429, retry_after = "7" })
            assert.equals("api", err.kind)
            assert.equals("RESOURCE_EXHAUSTED", err.status)
            assert.equals("7", err.retry_after)
            assert.is_true(err.retryable)
        end)

        it("api: 503 is retryable", function()
            local err = faulted({ action = "status", status = 503 })
            assert.equals(503, err.http_status)
            assert.equals("UNAVAILABLE", err.status)
            assert.is_true(err.retryable)
        end)

        it("http: an HTML page from a proxy", function()
            local err = faulted({ action = "html", status = 502 })
            assert.equals("http", err.kind)
            assert.equals(502, err.http_status)
            assert.is_true(err.retryable)
            assert.is_string(err.excerpt)
            assert.is_nil(err.excerpt:find("[<>%c]"))
        end)

        it("http: a malformed JSON body and an empty body", function()
            assert.equals("http", faulted({ action = "malformed" }).kind)
            assert.equals("http", faulted({ action = "empty", status = 500 }).kind)
        end)

        it("http: a 2xx whose body is not JSON is not a success", function()
            local err = faulted({ action = "html", status = 200 })
            assert.equals("http", err.kind)
            assert.equals(200, err.http_status)
            assert.is_false(err.retryable)
        end)

        it("redirect: a 3xx is an error, never followed", function()
            local err = faulted({ action = "redirect", status = 302,
                                  location = "https://127.0.0.2:9" .. RESET })
            assert.equals("redirect", err.kind)
            assert.equals(302, err.http_status)
            assert.equals(1, #emu:requests())
        end)

        it("too_large: a streamed body over 1 MiB is cut", function()
            local err = faulted({ action = "oversize", bytes = 2 * 1024 * 1024 })
            assert.equals("too_large", err.kind)
            assert.is_false(err.retryable)
        end)

        it("too_large: a Content-Length over 1 MiB is refused", function()
            assert.equals("too_large",
                faulted({ action = "oversize", bytes = 2 * 1024 * 1024, content_length = true }).kind)
        end)

        it("timeout: the timeout option is honoured", function()
            local started = os.time()
            local err = faulted({ action = "delay", seconds = 5 }, { timeout = 0.5 })
            assert.equals("timeout", err.kind)
            assert.is_true(err.retryable)
            assert.is_true(os.time() - started < 4)
        end)

        it("network: the server drops the connection", function()
            local err = faulted({ action = "drop" })
            assert.equals("network", err.kind)
            assert.is_true(err.retryable)
        end)

        it("a reused connection found closed: one send, no silent resend (retries = 0)", function()
            local c = client()
            assert.is_true(c:reset(helpers.registered(emu)))
            emu:set_fault({ action = "drop" })
            local ok, err = c:reset(helpers.registered(emu))
            c:close()
            assert.is_nil(ok)
            assert.equals("network", err.kind)
            assert.is_true(err.sent)
            assert.is_true(err.stale_connection)
            local log = emu:requests()
            assert.equals(2, #log)
            assert.equals(log[1].connection, log[2].connection)
        end)

        it("a reused connection found closed: a reset goes out again at once, on a new one", function()
            local delays = {}
            local c = client({ retries = 1, on_retry = function(r) delays[#delays + 1] = r.delay end })
            assert.is_true(c:reset(helpers.registered(emu)))
            emu:set_fault({ action = "drop" })
            assert.is_true(c:reset(helpers.registered(emu)))
            c:close()
            assert.same({ 0 }, delays)
            local log = emu:requests()
            assert.equals(3, #log)
            assert.equals(log[1].connection, log[2].connection)
            assert.are_not.equal(log[2].connection, log[3].connection)
        end)

        it("tls: the emulator's CA is not trusted without ca_file", function()
            local ok, err = dp.reset(helpers.registered(emu), { endpoint = emu.https_endpoint })
            assert.is_nil(ok)
            assert.equals("tls", err.kind)
            assert.is_false(err.retryable)
        end)

        it("connect: nothing listens on the port", function()
            local ok, err = dp.reset(helpers.token(), { endpoint = "https://localhost:1" })
            assert.is_nil(ok)
            assert.equals("connect", err.kind)
            assert.is_true(err.retryable)
        end)

        it("dns: the host name does not resolve", function()
            local ok, err = dp.reset(helpers.token(), { endpoint = "https://dataportability.invalid" })
            assert.is_nil(ok)
            assert.equals("dns", err.kind)
            assert.is_true(err.retryable)
        end)

        it("closed: a call on a closed client", function()
            local c = client()
            c:close()
            c:close() -- idempotent
            assert.matches("%(closed%)", tostring(c))
            local ok, err = c:reset(helpers.registered(emu))
            assert.is_nil(ok)
            assert.equals("closed", err.kind)
            assert.is_false(err.retryable)
            assert.equals(0, #emu:requests())
        end)
    end)

    describe("the token", function()
        it("never appears in an error table or its tostring", function()
            local faults = {
                { action = "status", status = 401 }, { action = "status", status = 429, retry_after = "1" },
                { action = "html" }, { action = "malformed" }, { action = "redirect" },
                -- twice: libcurl sends again when a reused connection is dropped
                { action = "drop", count = 2 }, { action = "oversize" },
            }
            for _, f in ipairs(faults) do
                local err, token = faulted(f)
                assert.is_false(helpers.contains(err, token), f.action)
                assert.is_nil(tostring(err):find(token, 1, true))
            end
        end)

        it("is never in anything the process prints: results, errors, retries, raised errors", function()
            local token, revoked = helpers.registered(emu), helpers.token()
            local out, ok = helpers.run_lua({ LUA_PATH = package.path, LUA_CPATH = package.cpath }, ([[
                local dp = require("dataportability")
                local opts = { endpoint = %q, ca_file = %q, retries = 1, retry_max_delay = 0.01,
                               on_retry = function(info) print(tostring(info.err)) end }
                local c = dp.new(opts)
                print(c, c:reset(%q))
                local r, err = c:reset(%q)
                print(r, err, err.message, err.kind)
                print(pcall(error, err))
            ]]):format(emu.https_endpoint, emu.ca_file, token, revoked))
            assert.is_true(ok, out)
            assert.matches("UNAUTHENTICATED", out)
            assert.is_nil(out:find(token, 1, true))
            assert.is_nil(out:find(revoked, 1, true))
        end)

        it("is never written to the emulator's logs", function()
            local token = helpers.registered(emu)
            assert.is_true(dp.reset(token, helpers.https(emu)))
            for _, name in ipairs({ "logs/error.log", "logs/access.log" }) do
                local f = io.open(emu.dir .. "/" .. name)
                if f then
                    local text = f:read("*a")
                    f:close()
                    assert.is_nil(text:find(token, 1, true), name)
                end
            end
        end)
    end)

    describe("lifetime", function()
        it("frees clients through the garbage collector", function()
            for _ = 1, 50 do
                local c = client()
                assert.is_true(c:reset(helpers.registered(emu)))
            end
            collectgarbage()
            collectgarbage()
            assert.is_true(dp.reset(helpers.registered(emu), helpers.https(emu)))
        end)
    end)
end)
