-- The API's methods before any I/O: resource groups, argument checks, and
-- values refused with invalid_argument. The endpoint listens nowhere, so
-- any request that were sent would end with a connect error instead.
local dp = require("dataportability")

local NOWHERE = { endpoint = "http://127.0.0.1:1" }
local TOKEN = "ya29.args"

describe("resource groups and scopes", function()
    it("knows the 73 groups, each with its scope", function()
        local n = 0
        for resource, scope in pairs(dp.scopes) do
            n = n + 1
            assert.equals("https://www.googleapis.com/auth/dataportability." .. resource, scope)
        end
        assert.equals(73, n)
        assert.equals("https://www.googleapis.com/auth/dataportability.myactivity.youtube",
            dp.scope_for("myactivity.youtube"))
        assert.is_nil(dp.scope_for("myactivity.youtub"))
    end)

    it("finds the group of any dataportability scope by its prefix", function()
        local prefix = "https://www.googleapis.com/auth/dataportability."
        assert.equals("nest.user", dp.resource_for(prefix .. "nest.user"))
        assert.equals("future.group", dp.resource_for(prefix .. "future.group"))
        assert.is_nil(dp.resource_for("https://www.googleapis.com/auth/drive"))
        assert.is_nil(dp.resource_for("https://www.googleapis.com/auth/dataportability."))
    end)

    it("learns a new group with add_resource", function()
        assert.equals("https://www.googleapis.com/auth/dataportability.newthing.items",
            dp.add_resource("newthing.items"))
        assert.equals(dp.scopes["newthing.items"], dp.scope_for("newthing.items"))
        assert.has_error(function() dp.add_resource("Not a group") end)
        assert.has_error(function() dp.add_resource(42) end)
    end)
end)

describe("method arguments", function()
    local c
    before_each(function() c = dp.new(NOWHERE) end)
    after_each(function() c:close() end)

    local function refused(ok, err)
        assert.is_nil(ok)
        assert.equals("invalid_argument", err.kind)
        assert.is_string(err.method)
        assert.is_false(err.retryable)
        return err
    end

    it("refuses an unknown or empty resource list before any I/O", function()
        local ok, e = c:initiate(TOKEN, { "myactivity.youtube", "myactivity.youtub" })
        local err = refused(ok, e, "portabilityArchive.initiate")
        assert.matches("unknown resource group 'myactivity.youtub'", err.message, 1, true)
        refused(c:initiate(TOKEN, {}))
        refused(c:initiate(TOKEN, { 7 }))
    end)

    it("checks time ranges", function()
        refused(c:initiate(TOKEN, { "myactivity.youtube" }, { start_time = "yesterday" }))
        refused(c:initiate(TOKEN, { "myactivity.youtube" }, { begin = 0 }))
        refused(c:initiate(TOKEN, { "myactivity.youtube" }, { end_time = -5 }))
        -- valid values pass the checks and reach the (absent) server
        for _, range in ipairs({ { start_time = 0, end_time = 1700000000.25 },
                                 { start_time = "2024-10-02T15:01:23Z" },
                                 { end_time = "2024-10-02T15:01:23.123+02:00" } }) do
            local ok, err = c:initiate(TOKEN, { "myactivity.youtube" }, range)
            assert.is_nil(ok)
            assert.equals("connect", err.kind)
        end
    end)

    it("accepts a job id with or without archiveJobs/ and refuses other slashes", function()
        for _, id in ipairs({ "abc", "archiveJobs/abc", "a b?c" }) do
            local ok, err = c:state(TOKEN, id)
            assert.is_nil(ok)
            assert.equals("connect", err.kind)
        end
        refused(c:state(TOKEN, "a/b"))
        refused(c:retry(TOKEN, "archiveJobs/"))
        refused(c:cancel(TOKEN, ""))
    end)

    it("raises on wrong argument types, naming the argument", function()
        assert.has_error(function() c:initiate(TOKEN, "myactivity.youtube") end,
            "bad argument #2 to 'initiate' (table expected, got string)")
        assert.has_error(function() c:initiate(TOKEN, {}, 5) end,
            "bad argument #3 to 'initiate' (table expected, got number)")
        assert.has_error(function() c:state(TOKEN, 5) end,
            "bad argument #2 to 'state' (string expected, got number)")
        assert.has_error(function() c:check_access_type(nil) end,
            "bad argument #1 to 'check_access_type' (token string or token source expected, got nil)")
    end)

    it("blames the line that called the method", function()
        for _, f in ipairs({
            function() c:state(TOKEN, 5) end,
            function() c:initiate(TOKEN, {}, 5) end,
            function() c:reset(nil) end,
            function() c:export(nil, {}, {}) end,
        }) do
            local ok, err = pcall(f)
            assert.is_false(ok)
            local line = debug.getinfo(f, "S").linedefined
            assert.matches("04%-methods_args_spec%.lua:" .. line .. ": bad argument", err)
        end
    end)

    it("has an asynchronous form of every method", function()
        for _, name in ipairs({ "reset", "initiate", "state", "retry", "cancel", "check_access_type" }) do
            assert.is_function(c[name])
            assert.is_function(c[name .. "_async"])
        end
        assert.has_error(function() c:state_async(TOKEN, "abc") end,
            "bad argument #2 to 'state_async' (the last argument must be the callback function, got string)")
    end)
end)
