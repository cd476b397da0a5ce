-- Lua 5.4 only (to-be-closed variables); the LuaJIT suite excludes it.
local dp = require("dataportability")

describe("to-be-closed clients (Lua 5.4)", function()
    it("closes a client when its <close> variable goes out of scope", function()
        local outside
        do
            local c <close> = dp.new({ endpoint = "http://127.0.0.1:1" })
            outside = c
            assert.is_nil(tostring(outside):find("closed", 1, true))
        end
        assert.matches("%(closed%)", tostring(outside))
        local ok, err = outside:reset("abc")
        assert.is_nil(ok)
        assert.equals("closed", err.kind)
    end)

    it("closes it when the scope is left by an error", function()
        local outside
        local ok = pcall(function()
            local c <close> = dp.new({ endpoint = "http://127.0.0.1:1" })
            outside = c
            error("boom")
        end)
        assert.is_false(ok)
        assert.matches("%(closed%)", tostring(outside))
    end)
end)
