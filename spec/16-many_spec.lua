-- client:reset_many against the real emulator, and the caches clients of
-- one Lua state share; the emulator's request log shows the protocol and
-- the connection each request came on.
local dp = require("dataportability")
local helpers = require("spec.helpers")

local RESET = "/v1/authorization:reset"

local function registered_list(emu, n)
    local list = {}
    for i = 1, n do list[i] = helpers.registered(emu) end
    return list
end

local function connections(log)
    local seen, n = {}, 0
    for _, r in ipairs(log) do
        if not seen[r.connection] then seen[r.connection], n = true, n + 1 end
    end
    return n
end

describe("reset_many", function()
    local emu

    lazy_setup(function() emu = helpers.start() end)
    lazy_teardown(function() helpers.stop(emu) end)
    before_each(function() emu:clear_faults(); emu:clear_requests() end)

    it("resets every token over one multiplexed HTTP/2 connection", function()
        local tokens = registered_list(emu, 40)
        local c = dp.new(helpers.https(emu))
        -- a call first: its HTTP/1.1 connection must not stop the batch multiplexing
        assert.is_true(c:reset(helpers.registered(emu)))
        emu:clear_requests()
        local results, failed = c:reset_many(tokens, { concurrency = 8 })
        assert.equals(0, failed)
        assert.equals(40, #results)
        for i = 1, 40 do assert.is_true(results[i], "token " .. i) end
        local log = emu:requests()
        assert.equals(40, #log)
        for _, r in ipairs(log) do
            assert.equals("HTTP/2.0", r.protocol)
            assert.equals(RESET, r.path)
        end
        assert.equals(1, connections(log))
        -- revoked: each one now fails
        local again = c:reset_many(tokens)
        for i = 1, 40 do assert.equals(401, again[i].http_status) end
        c:close()
    end)

    it("keeps input order, reports every failure with its index, and never stops at one", function()
        local good1, good2 = helpers.registered(emu), helpers.registered(emu)
        local unknown = helpers.token()
        local tokens = { good1, unknown, "not a token", good2, "" }
        local seen = {}
        local c = dp.new(helpers.https(emu))
        local results, failed = c:reset_many(tokens, {
            concurrency = 2,
            on_result = function(i, ok, err)
                assert.is_nil(seen[i])
                seen[i] = ok and true or err
            end,
        })
        c:close()
        assert.equals(3, failed)
        assert.is_true(results[1])
        assert.is_true(results[4])
        assert.equals(401, results[2].http_status)
        assert.equals(2, results[2].index)
        assert.equals("invalid_token", results[3].kind)
        assert.equals(3, results[3].index)
        assert.equals("invalid_token", results[5].kind)
        assert.equals(5, results[5].index)
        for i = 1, 5 do assert.equals(results[i], seen[i]) end
        for _, t in ipairs({ good1, unknown, good2 }) do
            assert.is_false(helpers.contains(results, t))
        end
        assert.equals(3, #emu:requests()) -- invalid tokens were never sent
    end)

    it("has at most `concurrency` requests in flight", function()
        emu:set_fault({ action = "delay", seconds = 0.6, count = 8, path = RESET })
        local c = dp.new(helpers.https(emu))
        local results, failed = c:reset_many(registered_list(emu, 8), { concurrency = 4 })
        c:close()
        assert.equals(0, failed, tostring(results[1]))
        local at = {}
        for i, r in ipairs(emu:requests()) do at[i] = r.time end
        table.sort(at)
        assert.equals(8, #at)
        assert.is_true(at[4] - at[1] < 0.5, "the first four were sent together")
        assert.is_true(at[5] - at[1] >= 0.5, "the fifth waited for a free slot")
    end)

    it("keeps HTTP/1.1 connections alive where the server offers no HTTP/2", function()
        local c = dp.new({ endpoint = emu.endpoint, retries = 0 })
        local _, failed = c:reset_many(registered_list(emu, 30), { concurrency = 3 })
        c:close()
        assert.equals(0, failed)
        local log = emu:requests()
        assert.equals(30, #log)
        assert.equals("HTTP/1.1", log[1].protocol)
        assert.is_true(connections(log) <= 3)
    end)

    it("sends retryable failures again, after the wait they ask for", function()
        emu:set_fault({ action = "status", status = 503, count = 3, path = RESET })
        local retried = 0
        local c = dp.new(helpers.https(emu, {
            retries = 2,
            on_retry = function(info)
                retried = retried + 1
                assert.equals(503, info.err.http_status)
            end,
        }))
        local results, failed = c:reset_many(registered_list(emu, 6), { concurrency = 6 })
        c:close()
        assert.equals(0, failed)
        for i = 1, 6 do assert.is_true(results[i]) end
        assert.equals(3, retried)
        assert.equals(9, #emu:requests())
    end)

    it("gives up on a token after the client's retries, with the attempts", function()
        emu:set_fault({ action = "status", status = 503, count = 2, path = RESET })
        local c = dp.new(helpers.https(emu, { retries = 1, retry_max_delay = 0.05 }))
        local results, failed = c:reset_many({ helpers.registered(emu) })
        c:close()
        assert.equals(1, failed)
        assert.equals(503, results[1].http_status)
        assert.equals(2, results[1].attempts)
        assert.equals(1, results[1].index)
    end)

    it("marks a reset whose answer was lost and whose retry found it revoked", function()
        emu:set_fault({ action = "cut", after_bytes = 0, count = 1, path = RESET })
        local c = dp.new(helpers.https(emu, { retries = 1, retry_max_delay = 0.05 }))
        local results = c:reset_many({ helpers.registered(emu) })
        c:close()
        assert.equals(401, results[1].http_status)
        assert.is_true(results[1].maybe_applied)
    end)

    it("answers `closed` for every token of a closed client, sending nothing", function()
        local c = dp.new(helpers.https(emu))
        c:close()
        local results, failed = c:reset_many({ helpers.registered(emu), helpers.registered(emu) })
        assert.equals(2, failed)
        assert.equals("closed", results[1].kind)
        assert.equals("closed", results[2].kind)
        assert.equals(0, #emu:requests())
    end)

    it("stops when on_result closes the client, and answers `closed` for the rest", function()
        local c = dp.new(helpers.https(emu))
        local results, failed = c:reset_many(registered_list(emu, 6), {
            concurrency = 1, on_result = function(i) if i == 2 then c:close() end end,
        })
        assert.equals(4, failed)
        assert.is_true(results[1])
        assert.is_true(results[2])
        for i = 3, 6 do
            assert.equals("closed", results[i].kind)
            assert.equals(i, results[i].index)
        end
        assert.equals(2, #emu:requests())
    end)

    it("returns at once for an empty list", function()
        local c = dp.new(helpers.https(emu))
        local results, failed = c:reset_many({})
        c:close()
        assert.same({}, results)
        assert.equals(0, failed)
    end)

    it("stops the batch with on_result's error, and the client still works", function()
        local c = dp.new(helpers.https(emu))
        local ok, err = pcall(c.reset_many, c, registered_list(emu, 10), {
            concurrency = 2, on_result = function(i) if i == 1 then error("stop here") end end,
        })
        assert.is_false(ok)
        assert.matches("stop here", err)
        assert.is_true(#emu:requests() < 10)
        assert.is_true(c:reset(helpers.registered(emu)))
        c:close()
    end)

    it("raises on wrong arguments", function()
        local c = dp.new(helpers.https(emu))
        assert.has_error(function() c:reset_many("tok") end,
            "bad argument #1 to 'reset_many' (table of token strings expected, got string)")
        assert.has_error(function() c:reset_many({ "a", 7 }) end,
            "bad argument #1 to 'reset_many' (tokens[2] is a number, not a string)")
        assert.has_error(function() c:reset_many({}, 32) end,
            "bad argument #2 to 'reset_many' (options table expected, got number)")
        assert.has_error(function() c:reset_many({}, { concurency = 2 }) end,
            "reset_many: unknown option 'concurency'")
        assert.has_error(function() c:reset_many({}, { on_result = true }) end,
            "reset_many: option 'on_result' must be a function, got boolean")
        for _, n in ipairs({ 0, 1.5, 1001 }) do
            assert.has_error(function() c:reset_many({}, { concurrency = n }) end,
                "reset_many: option 'concurrency' must be a whole number in [1, 1000]")
        end
        c:close()
    end)
end)

describe("the per-call path", function()
    local emu

    lazy_setup(function() emu = helpers.start() end)
    lazy_teardown(function() helpers.stop(emu) end)

    -- With the collector stopped, the heap grows by what the calls allocate.
    local function heap_growth(f)
        collectgarbage("collect")
        collectgarbage("stop")
        local before = collectgarbage("count")
        f()
        local grown = (collectgarbage("count") - before) * 1024
        collectgarbage("restart")
        return grown
    end

    it("allocates no Lua table or closure for a successful reset", function()
        local tokens = registered_list(emu, 210)
        local c = dp.new(helpers.https(emu))
        for i = 1, 10 do assert.is_true(c:reset(tokens[i])) end
        local grown = heap_growth(function()
            for i = 11, 210 do assert(c:reset(tokens[i]) == true) end
        end)
        c:close()
        assert.is_true(grown / 200 < 32, ("%.1f bytes per call"):format(grown / 200))
    end)

    it("allocates little more than the results for reset_many", function()
        local tokens = registered_list(emu, 200)
        local c = dp.new(helpers.https(emu))
        local results
        local grown = heap_growth(function() results = c:reset_many(tokens) end)
        c:close()
        assert.equals(200, #results)
        assert.is_true(grown / 200 < 64, ("%.1f bytes per token"):format(grown / 200))
    end)
end)

describe("clients of one Lua state", function()
    local emu

    lazy_setup(function() emu = helpers.start() end)
    lazy_teardown(function() helpers.stop(emu) end)
    before_each(function() emu:clear_requests() end)

    it("share connections: a new client reuses a closed one's", function()
        for _ = 1, 3 do
            local c = dp.new(helpers.https(emu))
            assert.is_true(c:reset(helpers.registered(emu)))
            c:close()
        end
        local log = emu:requests()
        assert.equals(3, #log)
        assert.equals(1, connections(log))
        assert.equals(3, log[3].connection_requests)
    end)

    it("share TLS sessions: a new connection of another client resumes one", function()
        local a = dp.new(helpers.https(emu))
        assert.is_true(a:reset(helpers.registered(emu)))
        emu:set_fault({ action = "drop", path = RESET }) -- sent once: libcurl's resend is refused
        assert.equals("network", select(2, a:reset(helpers.registered(emu))).kind)
        a:close()
        local b = dp.new(helpers.https(emu))
        assert.is_true(b:reset(helpers.registered(emu)))
        b:close()
        local log = emu:requests()
        assert.equals(3, #log)
        assert.is_true(log[3].tls_resumed)
        assert.are_not.equal(log[2].connection, log[3].connection)
    end)

    it("share even after an asynchronous request was refused for a bad argument", function()
        local core = require("dataportability.core")
        local opts = { endpoint = emu.https_endpoint, ca_file = emu.ca_file }
        local a, m = core.new(opts), core.new_multi()
        assert.has_error(function() m:add(a, "BOGUS", RESET) end)
        m:close()
        assert.equals(200, (a:request("POST", RESET, helpers.registered(emu))))
        a:close()
        local b = core.new(opts)
        assert.equals(200, (b:request("POST", RESET, helpers.registered(emu))))
        b:close()
        assert.equals(1, connections(emu:requests()))
    end)

    it("do not share with a client that trusts another CA", function()
        local other = helpers.tmpdir() .. "/ca.pem"
        helpers.write(other, helpers.read(emu.ca_file)) -- the same CA, another file
        local a = dp.new(helpers.https(emu))
        local b = dp.new(helpers.https(emu, { ca_file = other }))
        assert.is_true(a:reset(helpers.registered(emu)))
        assert.is_true(b:reset(helpers.registered(emu)))
        a:close()
        b:close()
        assert.equals(2, connections(emu:requests()))
    end)

    it("survive the state closing with clients still open", function()
        local out, ok = helpers.run_lua({ LUA_PATH = package.path, LUA_CPATH = package.cpath }, ([[
            local dp = require("dataportability")
            local opts = { endpoint = %q, ca_file = %q }
            local kept = {}
            for i = 1, 3 do kept[i] = dp.new(opts) end
            kept[2]:close()
            print(kept[1]:reset(%q))
        ]]):format(emu.https_endpoint, emu.ca_file, helpers.registered(emu)))
        assert.is_true(ok, out)
        assert.equals("true\n", out)
    end)
end)
