local dp = require("dataportability")

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
