-- Every callback the module calls may do anything to the client that
-- called it: close it, start another call, raise, collect garbage. Each
-- outcome is a `closed` error table or a documented raise ("client is
-- busy", or the callback's own error as it was), never a crash: this file
-- also runs under valgrind and ASan+UBSan (scripts/run-tests).
local dp = require("dataportability")
local helpers = require("spec.helpers")

local GROUP = "myactivity.youtube"
local MiB = 1024 * 1024

describe("callbacks that call back", function()
    local emu, dir

    lazy_setup(function() emu = helpers.start() end)
    lazy_teardown(function() helpers.stop(emu) end)
    before_each(function()
        emu:clear()
        emu:configure({ job_seconds = 0, files = { { name = "big.zip", size = 3 * MiB } } })
        dir = helpers.tmpdir()
    end)
    after_each(function() os.execute("rm -rf '" .. dir .. "'") end)

    local function registered() return helpers.registered(emu, { dp.scope_for(GROUP) }) end

    -- client:export with on_progress(event) calling `act(c, event)` at the
    -- first download event; returns the client, export's results and the
    -- job's directory.
    local function export_with(act)
        local c = dp.new(helpers.https(emu))
        local acted, job_dir = false, nil
        local results = table.pack(pcall(c.export, c, registered(), { GROUP }, {
            dir = dir, poll_interval = 1, reset = false,
            on_progress = function(e)
                if e.type == "job" then job_dir = dir .. "/" .. e.job_id end
                if e.type == "download" and not acted then
                    acted = true
                    act(c, e)
                end
            end,
        }))
        assert.is_true(acted, "no download event")
        return c, results, job_dir
    end

    -- The client still works for a call that is not a callback's.
    local function still_works(c)
        assert.is_true(c:reset(helpers.registered(emu)))
    end

    describe("export's on_progress, during a download", function()
        it("close(): the download stops, export returns closed, later calls too", function()
            local c, r = export_with(function(client) client:close() end)
            assert.is_true(r[1])
            assert.is_nil(r[2])
            assert.equals("closed", r[3].kind)
            assert.matches("%(closed%)", tostring(c))
            local ok, err = c:reset(helpers.registered(emu))
            assert.is_nil(ok)
            assert.equals("closed", err.kind)
            c:close() -- still idempotent
        end)

        it("close() then another call in the same callback: closed, not busy", function()
            local seen
            local c = export_with(function(client)
                client:close()
                seen = select(2, client:state(helpers.token(), "abc"))
            end)
            assert.equals("closed", seen.kind)
            c:close()
        end)

        it("another call on the same client raises 'client is busy', out of export", function()
            local c, r = export_with(function(client) client:reset(helpers.registered(emu)) end)
            assert.is_false(r[1])
            assert.matches("client is busy", tostring(r[2]))
            still_works(c)
            c:close()
        end)

        it("a nested export raises 'client is busy' too", function()
            local c, r = export_with(function(client)
                client:export(registered(), { GROUP }, { dir = dir })
            end)
            assert.is_false(r[1])
            assert.matches("client is busy", tostring(r[2]))
            still_works(c)
            c:close()
        end)

        it("a raise comes out of export as it was, a table too; the client goes on", function()
            local thrown = setmetatable({}, { __tostring = function() return "cancelled by the user" end })
            local c, r, job_dir = export_with(function() error(thrown) end)
            assert.is_false(r[1])
            assert.equals(thrown, r[2])
            local part = helpers.size_of(job_dir .. "/.big.zip.part")
            assert.is_true(part >= MiB and part < 3 * MiB, tostring(part))
            still_works(c)
            c:close()
        end)

        it("collectgarbage() in the callback changes nothing", function()
            local c, r = export_with(function() collectgarbage(); collectgarbage() end)
            assert.is_true(r[1])
            assert.equals(3 * MiB, r[2].files[1].size)
            c:close()
        end)

        it("another client works from the callback", function()
            local other = dp.new(helpers.https(emu))
            local ok
            local c, r = export_with(function() ok = other:reset(helpers.registered(emu)) end)
            assert.is_true(ok)
            assert.is_true(r[1])
            assert.equals(3 * MiB, r[2].files[1].size)
            other:close()
            c:close()
        end)
    end)

    describe("reset_many's on_result", function()
        local function tokens(n)
            local list = {}
            for i = 1, n do list[i] = helpers.registered(emu) end
            return list
        end

        it("close(): the rest are answered closed", function()
            local c = dp.new(helpers.https(emu))
            local results, failed = c:reset_many(tokens(20), { concurrency = 2, on_result = function(i)
                if i == 1 then c:close() end
            end })
            assert.equals(20, #results)
            assert.is_true(failed > 0)
            local closed = 0
            for _, r in ipairs(results) do
                if r ~= true then
                    assert.equals("closed", r.kind)
                    closed = closed + 1
                end
            end
            assert.equals(failed, closed)
            assert.matches("%(closed%)", tostring(c))
        end)

        it("another call on the same client raises 'client is busy'", function()
            local c = dp.new(helpers.https(emu))
            local ok, err = pcall(c.reset_many, c, tokens(4), { on_result = function()
                c:reset(helpers.registered(emu))
            end })
            assert.is_false(ok)
            assert.matches("client is busy", tostring(err))
            still_works(c)
            c:close()
        end)

        it("a raise comes out as it was; the client goes on", function()
            local c, thrown = dp.new(helpers.https(emu)), {}
            local ok, err = pcall(c.reset_many, c, tokens(4), { on_result = function() error(thrown) end })
            assert.is_false(ok)
            assert.equals(thrown, err)
            still_works(c)
            c:close()
        end)

        it("collectgarbage() changes nothing", function()
            local c = dp.new(helpers.https(emu))
            local results, failed = c:reset_many(tokens(8), { concurrency = 3, on_result = function()
                collectgarbage()
            end })
            assert.equals(0, failed)
            assert.equals(8, #results)
            c:close()
        end)
    end)

    describe("on_retry, between attempts", function()
        local RESET = "/v1/authorization:reset"

        local function retrying(act)
            emu:set_fault({ action = "status", status = 503, count = 1, path = RESET })
            local c
            c = dp.new(helpers.https(emu, { retries = 2, retry_max_delay = 0.01,
                on_retry = function(info) act(c, info) end }))
            return c
        end

        it("close(): the next attempt is answered closed", function()
            local c = retrying(function(client) client:close() end)
            local ok, err = c:reset(helpers.registered(emu))
            assert.is_nil(ok)
            assert.equals("closed", err.kind)
        end)

        it("another call on the same client runs: no call is under way then", function()
            local inner
            local c = retrying(function(client) inner = client:reset(helpers.registered(emu)) end)
            assert.is_true(c:reset(helpers.registered(emu)))
            assert.is_true(inner)
            c:close()
        end)

        it("collectgarbage() changes nothing", function()
            local c = retrying(function() collectgarbage() end)
            assert.is_true(c:reset(helpers.registered(emu)))
            c:close()
        end)

        it("a raise comes out of the call", function()
            local c = retrying(function() error("stop retrying") end)
            local ok, err = pcall(c.reset, c, helpers.registered(emu))
            assert.is_false(ok)
            assert.matches("stop retrying", err)
            c:close()
        end)
    end)
end)
