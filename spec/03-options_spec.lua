local dp = require("dataportability")
local core = require("dataportability.core")

local NOWHERE = { endpoint = "http://127.0.0.1:1" }

describe("dp.new options", function()
    local function raises(opts, pattern)
        local ok, err = pcall(dp.new, opts)
        assert.is_false(ok)
        assert.matches(pattern, err)
    end

    it("raises on an unknown option, naming it", function()
        raises({ endpont = "https://x" }, "unknown option 'endpont'")
    end)

    it("raises on a wrong type, naming the option", function()
        raises({ timeout = "10" }, "option 'timeout' must be a number, got string")
        raises({ endpoint = 5 }, "option 'endpoint' must be a string")
        raises({ quota_project = true }, "option 'quota_project' must be a string")
        raises("https://x", "options table expected")
    end)

    it("blames the caller's line", function()
        local ok, err = pcall(function() dp.new({ nope = 1 }) end)
        assert.is_false(ok)
        assert.matches("03%-options_spec.lua:%d+:", err)
    end)

    it("checks retries, retry_max_delay and driver", function()
        raises({ retries = -1 }, "option 'retries' must be a whole number >= 0")
        raises({ retries = 1.5 }, "option 'retries' must be a whole number >= 0")
        raises({ retry_max_delay = -1 }, "option 'retry_max_delay' must be a number of seconds >= 0")
        raises({ retry_max_delay = 0 / 0 }, "option 'retry_max_delay' must be a number of seconds >= 0")
        raises({ driver = {} }, "option 'driver' must come from dp.driver%(%)")
        dp.new({ endpoint = "http://127.0.0.1:1", retries = 0, retry_max_delay = 0 }):close()
    end)

    it("raises on a timeout that is not a positive number of seconds", function()
        raises({ timeout = 0 }, "option 'timeout'")
        raises({ connect_timeout = -1 }, "option 'connect_timeout'")
        raises({ timeout = 0 / 0 }, "option 'timeout'")
    end)

    it("refuses http:// to any host but loopback", function()
        raises({ endpoint = "http://dataportability.googleapis.com" }, "https://")
        raises({ endpoint = "http://10.0.0.1:8080" }, "https://")
        raises({ endpoint = "http://127.0.0.1.example.com" }, "https://")
        raises({ endpoint = "ftp://127.0.0.1" }, "https://")
        for _, ok in ipairs({ "http://127.0.0.1:1", "http://127.9.9.9", "http://localhost:8080",
                              "http://[::1]:8080", "https://example.com", "https://[2001:db8::1]" }) do
            local c = dp.new({ endpoint = ok })
            c:close()
        end
    end)

    it("refuses credentials, paths and queries in the endpoint", function()
        raises({ endpoint = "https://user:pw@example.com" }, "without credentials")
        raises({ endpoint = "https://example.com/v1" }, "without credentials, path")
        raises({ endpoint = "https://example.com/?x=1" }, "query")
        raises({ endpoint = "not a url" }, "is not a URL")
    end)

    it("refuses header values that could inject headers", function()
        raises({ user_agent = "app\r\nX-Evil: 1" }, "option 'user_agent' must be printable ASCII")
        raises({ quota_project = "p\nX-Evil: 1" }, "option 'quota_project' must be printable ASCII")
    end)

    it("raises when the token is not a string", function()
        local c = dp.new({ endpoint = "http://127.0.0.1:1" })
        assert.has_error(function() c:reset(nil) end,
            "bad argument #1 to 'reset' (token string or token source expected, got nil)")
        assert.has_error(function() dp.reset({}) end,
            "bad argument #1 to 'reset' (token string or token source expected, got table)")
        c:close()
    end)
end)

-- Every public function that takes options raises with one wording, and
-- blames the line that called it: each case's function is one line, the
-- call, and the message must start with this file and that line.
describe("option errors of every public function", function()
    local TOKEN, GROUPS = "ya29.options", { "myactivity.youtube" }
    local REDIRECT = "http://127.0.0.1:1/callback"
    local VERIFIER = ("v"):rep(43)

    -- The message of f's error after its position, which must be f's line.
    local function raised_by(f)
        local ok, err = pcall(f)
        assert.is_false(ok, "no error")
        assert.is_string(err)
        local info = debug.getinfo(f, "S")
        assert.matches("03%-options_spec%.lua:" .. info.linedefined .. ": ", err, 1)
        local where = info.short_src .. ":" .. info.linedefined .. ": "
        assert.equals(where, err:sub(1, #where))
        return err:sub(#where + 1)
    end

    -- cases: { f, message } (the whole message), or { f, start, prefix = true }.
    local function check(cases)
        for _, case in ipairs(cases) do
            local message = raised_by(case[1])
            if case.prefix then
                assert.equals(case[2], message:sub(1, #case[2]))
            else
                assert.equals(case[2], message)
            end
        end
    end

    local c
    before_each(function() c = dp.new(NOWHERE) end)
    after_each(function() c:close() end)

    it("dp.new", function()
        check({
            { function() dp.new(5) end, "bad argument #1 to 'new' (options table expected, got number)" },
            { function() dp.new({ bogus = 1 }) end, "new: unknown option 'bogus'" },
            { function() dp.new({ timeout = "10" }) end,
              "new: option 'timeout' must be a number, got string" },
            { function() dp.new({ retries = -1 }) end, "new: option 'retries' must be a whole number >= 0" },
            { function() dp.new({ driver = {} }) end, "new: option 'driver' must come from dp.driver()" },
            -- the transport's checks (in C)
            { function() dp.new({ timeout = 0 }) end, "new: option 'timeout' ", prefix = true },
            { function() dp.new({ endpoint = "http://example.com" }) end,
              "new: option 'endpoint' ", prefix = true },
            { function() dp.new({ user_agent = "a\r\nX: 1" }) end,
              "new: option 'user_agent' ", prefix = true },
        })
    end)

    it("dp.reset", function()
        check({
            { function() dp.reset(TOKEN, 7) end,
              "bad argument #2 to 'reset' (options table expected, got number)" },
            { function() dp.reset(TOKEN, { bogus = 1 }) end, "reset: unknown option 'bogus'" },
            { function() dp.reset(TOKEN, { on_retry = 1 }) end,
              "reset: option 'on_retry' must be a function, got number" },
            { function() dp.reset(TOKEN, { retry_max_delay = -1 }) end,
              "reset: option 'retry_max_delay' must be a number of seconds >= 0" },
            { function() dp.reset(TOKEN, { timeout = -1 }) end, "reset: option 'timeout' ", prefix = true },
            { function() dp.reset(nil) end,
              "bad argument #1 to 'reset' (token string or token source expected, got nil)" },
        })
    end)

    it("client:reset_many", function()
        check({
            { function() c:reset_many({}, 32) end,
              "bad argument #2 to 'reset_many' (options table expected, got number)" },
            { function() c:reset_many({}, { concurency = 2 }) end,
              "reset_many: unknown option 'concurency'" },
            { function() c:reset_many({}, { on_result = true }) end,
              "reset_many: option 'on_result' must be a function, got boolean" },
            { function() c:reset_many({}, { concurrency = 0 }) end,
              "reset_many: option 'concurrency' must be a whole number in [1, " .. core.limits.concurrency_max
              .. "]" },
        })
    end)

    it("client:export", function()
        check({
            { function() c:export(TOKEN, GROUPS) end,
              "bad argument #3 to 'export' (options table expected, got nil)" },
            { function() c:export(TOKEN, GROUPS, {}) end,
              "export: give option 'dir' (files on disk) or option 'sink', one of them" },
            { function() c:export(TOKEN, GROUPS, { dir = "/tmp", sink = print }) end,
              "export: give option 'dir' (files on disk) or option 'sink', one of them" },
            { function() c:export(TOKEN, GROUPS, { sink = { write = print } }) end,
              "export: option 'sink' must be a function, or an object with write and close methods" },
            { function() c:export(TOKEN, GROUPS, { dir = 5 }) end,
              "export: option 'dir' must be a string, got number" },
            { function() c:export(TOKEN, GROUPS, { dir = "/tmp", bogus = 1 }) end,
              "export: unknown option 'bogus'" },
            { function() c:export(TOKEN, GROUPS, { dir = "/tmp", start_time = true }) end,
              "export: option 'start_time' must be a string or number, got boolean" },
            { function() c:export(TOKEN, GROUPS, { dir = "/tmp", end_time = {} }) end,
              "export: option 'end_time' must be a string or number, got table" },
            { function() c:export(TOKEN, GROUPS, { dir = "/tmp", reset = "no" }) end,
              "export: option 'reset' must be a boolean, got string" },
        })
    end)

    it("dp.token_source, without quoting a secret", function()
        check({
            { function() dp.token_source() end,
              "bad argument #1 to 'token_source' (options table expected, got nil)" },
            { function() dp.token_source({}) end, "token_source: option 'client_id' is required" },
            { function() dp.token_source({ client_id = 1 }) end,
              "token_source: option 'client_id' must be a string, got number" },
            { function() dp.token_source({ client_id = "cid", nope = 1 }) end,
              "token_source: unknown option 'nope'" },
            { function() dp.token_source({ client_id = "cid", refresh_token = "bad secret" }) end,
              "token_source: option 'refresh_token' is not a valid token: ", prefix = true },
            { function() dp.token_source({ client_id = "cid", token_endpoint = "/token" }) end,
              "token_source: option 'token_endpoint' must be an absolute http(s) URL with a path,"
              .. " got '/token'" },
            { function() dp.token_source({ client_id = "cid", revoke_endpoint = "http://example.com/r" }) end,
              "token_source: option 'revoke_endpoint' ", prefix = true },
            { function() dp.token_source({ client_id = "cid", timeout = 0 }) end,
              "token_source: option 'timeout' ", prefix = true },
        })
        local _, err = pcall(dp.token_source, { client_id = "cid", client_secret = "bad secret" })
        assert.is_nil(err:find("bad secret", 1, true))
    end)

    it("dp.authorization_url", function()
        local o = { client_id = "cid", redirect_uri = REDIRECT }
        local function with(k, v)
            local t = { scopes = GROUPS }
            for key, value in pairs(o) do t[key] = value end
            t[k] = v
            return t
        end
        check({
            { function() dp.authorization_url("cid") end,
              "bad argument #1 to 'authorization_url' (options table expected, got string)" },
            { function() dp.authorization_url(with("client_id", nil)) end,
              "authorization_url: option 'client_id' is required" },
            { function() dp.authorization_url(with("scopes", "x")) end,
              "authorization_url: option 'scopes' must be a table, got string" },
            { function() dp.authorization_url(with("scopes", {})) end,
              "authorization_url: option 'scopes' must not be empty" },
            { function() dp.authorization_url(with("scopes", { "drive" })) end,
              "authorization_url: option 'scopes' must list dataportability resource groups or scope URLs;"
              .. " [1] is 'drive'" },
            { function() dp.authorization_url(with("code_verifier", "short")) end,
              "authorization_url: option 'code_verifier' must be 43 to 128 characters", prefix = true },
            { function() dp.authorization_url(with("bogus", 1)) end,
              "authorization_url: unknown option 'bogus'" },
        })
    end)

    it("a malformed DATAPORTABILITY_EMULATOR_HOST, for each function that reads it", function()
        local helpers = require("spec.helpers")
        local out, ok = helpers.run_lua({ DATAPORTABILITY_EMULATOR_HOST = "a/b", LUA_PATH = package.path,
                                          LUA_CPATH = package.cpath }, table.concat({
            'local dp = require("dataportability")',
            'print(select(2, pcall(function() dp.new() end)))',
            'print(select(2, pcall(function() dp.token_source({ client_id = "cid" }) end)))',
            'print(select(2, pcall(function() dp.authorization_url({ client_id = "cid", redirect_uri = "r",'
                .. ' scopes = { "myactivity.youtube" } }) end)))',
        }, "\n"))
        assert.is_true(ok, out)
        local lines = {}
        for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
        assert.equals(3, #lines, out)
        for i, fname in ipairs({ "new", "token_source", "authorization_url" }) do
            local want = fname .. ": DATAPORTABILITY_EMULATOR_HOST must be host:port, got 'a/b'"
            assert.equals(":" .. (i + 1) .. ": " .. want, lines[i]:sub(-#want - #tostring(i + 1) - 3))
        end
    end)

    it("dp.exchange_code, without quoting a secret", function()
        local function o(k, v)
            local t = { client_id = "cid", client_secret = "s", code = "c0de", redirect_uri = REDIRECT,
                        code_verifier = VERIFIER, token_endpoint = "http://127.0.0.1:1/token" }
            t[k] = v
            return t
        end
        check({
            { function() dp.exchange_code() end,
              "bad argument #1 to 'exchange_code' (options table expected, got nil)" },
            { function() dp.exchange_code(o("code", nil)) end, "exchange_code: option 'code' is required" },
            { function() dp.exchange_code(o("redirect_uri", 5)) end,
              "exchange_code: option 'redirect_uri' must be a string, got number" },
            { function() dp.exchange_code(o("code", "bad code")) end,
              "exchange_code: option 'code' is not a valid token: ", prefix = true },
            { function() dp.exchange_code(o("bogus", 1)) end, "exchange_code: unknown option 'bogus'" },
            { function() dp.exchange_code(o("token_endpoint", "https://x")) end,
              "exchange_code: option 'token_endpoint' must be an absolute http(s) URL"
              .. " with a path", prefix = true },
        })
        local _, err = pcall(dp.exchange_code, o("code", "bad code"))
        assert.is_nil(err:find("bad code", 1, true))
    end)
end)
