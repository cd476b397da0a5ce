local core = require("dataportability.core")

describe("token checks (C core)", function()
    local function accepted(t) return core.check_token(t) == true end

    it("accepts RFC 6750 b64tokens", function()
        assert.is_true(accepted("ya29.a0AfH6SMBx-_~+/9"))
        assert.is_true(accepted("abc=="))
        assert.is_true(accepted("A"))
        assert.is_true(accepted(string.rep("a", 4096)))
    end)

    it("rejects an empty token", function()
        local ok, why = core.check_token("")
        assert.is_nil(ok)
        assert.matches("empty", why)
    end)

    it("rejects a token over 4096 bytes", function()
        local ok, why = core.check_token(string.rep("a", 4097))
        assert.is_nil(ok)
        assert.matches("4096", why)
    end)

    it("rejects every byte outside the alphabet", function()
        for _, t in ipairs({ "QZ b", "QZ\r\nX-Evil: 1", "QZ\n", "QZ\0b", "QZ\195\169", "QZ\t",
                             "QZ,b", "QZ;b", "QZ\"b", "=QZ", "==", "QZ=b", "QZ==b=c", "QZ%41" }) do
            local ok, why = core.check_token(t)
            assert.is_nil(ok, t)
            assert.is_string(why)
            assert.is_nil(why:find(t, 1, true), "the reason must not quote the token")
        end
    end)

    it("checks every single byte value", function()
        local allowed = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
        for b = 0, 255 do
            local c = string.char(b)
            assert.equals(allowed:find(c, 1, true) ~= nil, accepted("x" .. c .. "y"), "byte " .. b)
        end
    end)
end)
