-- Neovim: a real headless Neovim (LuaJIT, its own libuv loop) runs
-- spec/neovim/run.lua and the example plugin against the emulator.
local helpers = require("spec.helpers")
local cjson = require("cjson")

describe("Neovim #host", function()
    local emu, result, slow_token, plugin_token

    lazy_setup(function()
        emu = helpers.start()
        slow_token = helpers.registered(emu)
        plugin_token = helpers.registered(emu)
        emu:set_fault({ action = "delay", seconds = 1, count = 1 })
        local root = io.popen("pwd"):read("*l")
        local result_file = os.tmpname()
        local env = {
            DP_LPATH = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua",
            DP_CPATH = root .. "/build/luajit/?.so",
            DP_ENDPOINT = emu.https_endpoint, DP_CA = emu.ca_file,
            DP_TOKEN_SLOW = slow_token, DATAPORTABILITY_TOKEN = plugin_token, DP_RESULT = result_file,
        }
        local prefix = ""
        for k, v in pairs(env) do prefix = prefix .. k .. "='" .. v .. "' " end
        local nvim = io.popen(prefix .. "timeout 60 nvim --headless -u NONE -i NONE -n"
            .. " --cmd 'set rtp^=" .. root .. "/examples/neovim'"
            .. " -c 'luafile " .. root .. "/spec/neovim/run.lua' 2>&1")
        local output = nvim:read("*a")
        nvim:close()
        local f = io.open(result_file)
        result = f and cjson.decode(f:read("*a"))
        if f then f:close() end
        os.remove(result_file)
        assert(result, "Neovim wrote no result: " .. output)
        assert(not result.error, result.error)
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
