-- Neovim: a real headless Neovim (LuaJIT, its own libuv loop) runs a script
-- of spec/neovim/ and the example plugin against the emulator.
local helpers = require("spec.helpers")
local cjson = require("cjson.safe")
local dp = require("dataportability")

local q = helpers.quote
local ROOT = helpers.sh("pwd"):gsub("%s+$", "")
local GROUP = "myactivity.youtube"
local MiB = 1024 * 1024

-- Runs spec/neovim/<script> in headless Neovim with the example plugin on
-- its runtimepath and `env` added; returns what the script wrote to
-- $DP_RESULT. Neovim quits by itself; `timeout` ends it (its pid: TERM, then
-- KILL) if it hangs, so none outlives the call.
local function run_neovim(script, env, seconds)
    local result_file = os.tmpname()
    local all = {
        DP_LPATH = ROOT .. "/lua/?.lua;" .. ROOT .. "/lua/?/init.lua",
        DP_CPATH = ROOT .. "/build/luajit/?.so", DP_RESULT = result_file,
    }
    for k, v in pairs(env) do all[k] = v end
    local prefix = ""
    for k, v in pairs(all) do prefix = prefix .. k .. "=" .. q(v) .. " " end
    local output = helpers.sh(prefix .. "timeout -k 5 " .. seconds .. " nvim --headless -u NONE -i NONE -n"
        .. " --cmd " .. q("set rtp^=" .. ROOT .. "/examples/neovim")
        .. " -c " .. q("luafile " .. ROOT .. "/spec/neovim/" .. script) .. " 2>&1")
    local result = cjson.decode(helpers.read(result_file) or "")
    os.remove(result_file)
    assert(type(result) == "table", "Neovim wrote no result: " .. output)
    assert(not result.error, result.error)
    return result
end

describe("Neovim #host", function()
    local emu, result, slow_token, plugin_token

    lazy_setup(function()
        emu = helpers.start()
        slow_token = helpers.registered(emu)
        plugin_token = helpers.registered(emu)
        emu:set_fault({ action = "delay", seconds = 1, count = 1 })
        result = run_neovim("run.lua", {
            DP_ENDPOINT = emu.https_endpoint, DP_CA = emu.ca_file,
            DP_TOKEN_SLOW = slow_token, DATAPORTABILITY_TOKEN = plugin_token,
        }, 60)
    end)
    lazy_teardown(function() helpers.stop(emu) end)

    it("returns at once and keeps the editor's loop running during a slow reset", function()
        assert.is_true(result.returned_ms < 200, "reset_async took " .. result.returned_ms .. " ms")
        assert.is_true(result.elapsed_ms >= 1000, "the reset was not slow: " .. result.elapsed_ms)
        assert.is_true(result.ticks >= 40, "a 10 ms timer fired " .. result.ticks .. " times in 1 s")
        assert.is_true(result.slow.ok)
    end)

    it("runs the callback on the main loop, where the Neovim API is allowed", function()
        assert.is_false(result.slow.fast)
        assert.is_true(result.slow.api_ok)
    end)

    it("gives the same error table as the blocking call", function()
        assert.is_nil(result.again.ok)
        assert.equals("api", result.again.err.kind)
        assert.equals("UNAUTHENTICATED", result.again.err.status)
        assert.same(result.blocking, result.again.err)
    end)

    it("runs :DataPortabilityReset from the example plugin", function()
        assert.equals(2, #result.notes)
        assert.matches("resetting", result.notes[1].message)
        assert.matches("done", result.notes[2].message)
        assert.equals(result.info_level, result.notes[2].level)
        local log = emu:requests()
        assert.equals(4, #log) -- slow, again, blocking, plugin
        for _, note in ipairs(result.notes) do
            assert.is_nil(note.message:find(plugin_token, 1, true))
        end
        assert.is_nil(result.history:find(plugin_token, 1, true))
        local ok, err = require("dataportability").reset(plugin_token, helpers.https(emu))
        assert.is_nil(ok)
        assert.equals(401, err.http_status) -- the plugin's reset revoked it
    end)
end)

-- `list` holds, in this order (others may come between), a string matching
-- each of `patterns`; returns true, or false and what is missing.
local function in_order(list, patterns)
    local at = 1
    for _, pattern in ipairs(patterns) do
        while list[at] and not list[at]:find(pattern) do at = at + 1 end
        if not list[at] then
            return false, pattern .. " is missing after what came before, in " .. cjson.encode(list)
        end
        at = at + 1
    end
    return true
end

local function messages(notes)
    local list = {}
    for i, note in ipairs(notes) do list[i] = note.message end
    return list
end

describe("Neovim: :DataPortabilityExport and export_async #host", function()
    local emu, tmp

    lazy_setup(function()
        emu = helpers.start()
        tmp = helpers.tmpdir()
    end)
    lazy_teardown(function()
        helpers.stop(emu)
        if tmp then os.execute("rm -rf " .. q(tmp)) end
    end)

    local n = 0
    local function new_dir() -- 0700, as export wants it
        n = n + 1
        local dir = tmp .. "/export-" .. n
        assert(os.execute("mkdir -m 700 " .. q(dir)))
        return dir
    end

    local function token_for_export()
        return helpers.registered(emu, { dp.scope_for(GROUP) })
    end

    local function run_export(case, env)
        env.DP_CASE, env.DP_ENDPOINT, env.DP_CA = case, emu.https_endpoint, emu.ca_file
        return run_neovim("export.lua", env, 200)
    end

    it("exports with :DataPortabilityExport: the files, each step noticed, progress in the status",
        function()
            emu:clear()
            emu:configure({ job_seconds = 0.2, files = {
                { name = "youtube-1.zip", size = 3 * MiB + 17 }, { name = "youtube-2.zip", size = 1000 } } })
            local token, dir = token_for_export(), new_dir()
            local r = run_export("plugin", { DATAPORTABILITY_TOKEN = token, DP_DIR = dir })
            assert.is_true(r.ended)

            -- the files, each checked against the emulator's x-goog-hash
            local result = assert(r.last)
            assert.is_nil(result.err)
            assert.is_true(result.reset)
            local want = { { "youtube-1.zip", 3 * MiB + 17 }, { "youtube-2.zip", 1000 } }
            assert.equals(#want, #result.files)
            for i, f in ipairs(result.files) do
                assert.equals(want[i][1], f.name)
                assert.equals(want[i][2], f.size)
                assert.equals(dir .. "/" .. result.job_id .. "/" .. f.name, f.path)
                assert.equals(f.size, helpers.size_of(f.path))
                assert.is_string(f.md5)
                assert.equals(f.md5, helpers.md5_of(f.path))
            end

            -- the notices, in order, at their levels
            local function literal(s) return (s:gsub("%p", "%%%0")) end
            local levels = r.levels
            local expected = {
                { "^DataPortabilityExport: exporting myactivity%.youtube into " .. literal(dir) .. "$",
                  levels.INFO },
                { "^DataPortabilityExport: an export is running; :DataPortabilityExportCancel stops it$",
                  levels.WARN },
                { "^DataPortabilityExport: job " .. literal(result.job_id) .. " started$", levels.INFO },
                { "^DataPortabilityExport: job IN_PROGRESS$", levels.INFO },
                { "^DataPortabilityExport: job COMPLETE$", levels.INFO },
                { "^DataPortabilityExport: youtube%-1%.zip downloaded %(3145745 bytes%)$", levels.INFO },
                { "^DataPortabilityExport: youtube%-2%.zip downloaded %(1000 bytes%)$", levels.INFO },
                { "^DataPortabilityExport: authorization reset$", levels.INFO },
                { "^DataPortabilityExport: done: 2 files: .*/youtube%-1%.zip %(3145745 bytes%), "
                  .. ".*/youtube%-2%.zip %(1000 bytes%)$", levels.INFO },
            }
            assert.equals(#expected, #r.notes, cjson.encode(r.notes))
            for i, e in ipairs(expected) do
                assert.matches(e[1], r.notes[i].message)
                assert.equals(e[2], r.notes[i].level)
            end

            -- the statusline's text, from start to end
            assert.equals("export: starting", r.statuses[1])
            assert.is_true(in_order(r.statuses, { "^export: job started$", "^export: IN_PROGRESS$",
                "^export: COMPLETE$", "^export: youtube%-1%.zip %d+%%$", "^export: youtube%-1%.zip done$",
                "^export: youtube%-2%.zip done$", "^export: reset$" }))
            assert.equals("", r.statuses[#r.statuses])
            local last = -1
            for _, status in ipairs(r.statuses) do
                local percent = tonumber(status:match("^export: youtube%-1%.zip (%d+)%%$"))
                if percent then
                    assert.is_true(percent >= last and percent <= 100, status)
                    last = percent
                end
            end

            assert.same({ GROUP }, r.completion)
            for _, text in ipairs(messages(r.notes)) do assert.is_nil(text:find(token, 1, true)) end
            local ok, err = dp.reset(token, helpers.https(emu))
            assert.is_nil(ok)
            assert.equals(401, err.http_status) -- the export's reset revoked it
        end)

    it("keeps at least 30 timer ticks a second during an export_async of 256 MiB", function()
        emu:clear()
        emu:configure({ job_seconds = 0, files = { { name = "big.zip", size = 256 * MiB } } })
        local dir = new_dir()
        local r = run_export("ticks", { DP_TOKEN = token_for_export(), DP_DIR = dir })
        assert.is_true(r.ended)
        local result = assert(r.export)
        assert.is_nil(result.err, result.err and result.err.text)
        local f = result.files[1]
        assert.equals(256 * MiB, f.size)
        assert.equals(256 * MiB, helpers.size_of(f.path))
        assert.equals(f.md5, helpers.md5_of(f.path))
        os.execute("rm -rf " .. q(dir))

        assert.is_number(r.ticks)
        local per_second = r.ticks / r.seconds
        print(("\nNeovim: %.1f ticks a second of a 10 ms timer during export_async of 256 MiB"
            .. " (%d ticks in %.2f s of download)"):format(per_second, r.ticks, r.seconds))
        assert.is_true(per_second >= 30, ("%.1f ticks a second"):format(per_second))
    end)

    it(":DataPortabilityExportCancel stops a download with a closed error; the editor keeps working",
        function()
            emu:clear()
            emu:configure({ job_seconds = 0, files = { { name = "big.zip", size = 256 * MiB } } })
            local token, dir = token_for_export(), new_dir()
            local token_file = tmp .. "/token"
            helpers.write(token_file, token .. "\n")
            local r = run_export("cancel", { DATAPORTABILITY_TOKEN = "", DP_TOKEN_FILE = token_file,
                DP_DIR = dir })
            assert.is_true(r.downloading)
            assert.matches("^export: big%.zip %d+%%$", r.cancelled_at)
            assert.is_true(r.ended)

            local err = assert(r.last.err)
            assert.equals("closed", err.kind)
            assert.is_string(err.job_id)
            -- stopped mid-file: no big.zip, and a part to resume from
            local job_dir = dir .. "/" .. err.job_id
            assert.is_nil(helpers.size_of(job_dir .. "/big.zip"))
            local part = helpers.size_of(job_dir .. "/.big.zip.part")
            assert.is_true(part ~= nil and part < 256 * MiB, tostring(part))

            local notes, levels = r.notes, r.levels
            assert.matches("^DataPortabilityExport: no export is running$", notes[1].message)
            assert.equals(levels.WARN, notes[1].level)
            assert.matches("^DataPortabilityExport: exporting ", notes[2].message)
            assert.matches("^DataPortabilityExport: cancelling...$", notes[#notes - 2].message)
            assert.matches("^DataPortabilityExport: cancelled: dataportability: export: closed: ",
                notes[#notes - 1].message)
            assert.equals(levels.WARN, notes[#notes - 1].level)
            assert.matches("^DataPortabilityExport: no export is running$", notes[#notes].message)
            assert.equals("", r.statuses[#r.statuses])

            assert.is_true(r.ticking)
            assert.is_true(r.api_ok)
            for _, text in ipairs(messages(notes)) do assert.is_nil(text:find(token, 1, true)) end
            -- the export never reached its reset: the token still works
            local client = dp.new(helpers.https(emu))
            assert.is_table(client:check_access_type(token))
            client:close()
        end)
end)
