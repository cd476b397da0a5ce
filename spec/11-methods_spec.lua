-- Every v1 method against the emulator over HTTPS: results in Lua's
-- snake_case, Google's errors as error tables, token sources.
local dp = require("dataportability")
local core = require("dataportability.core")
local helpers = require("spec.helpers")
local cjson = require("cjson")

local GROUP = "myactivity.youtube"

describe("the API's methods against the emulator", function()
    local emu, c

    lazy_setup(function() emu = helpers.start() end)
    lazy_teardown(function() helpers.stop(emu) end)
    before_each(function()
        emu:clear()
        emu:configure({ job_seconds = 0.3 })
        c = dp.new(helpers.https(emu))
    end)
    after_each(function() c:close() end)

    local function token_for(groups, opts)
        local token, list = helpers.token(), {}
        for i, g in ipairs(groups or { GROUP }) do list[i] = dp.scope_for(g) end
        emu:add_token(token, list, opts)
        return token
    end

    local function api_error(http_status, status, ok, err)
        assert.is_nil(ok)
        assert.equals("api", err.kind)
        assert.equals(http_status, err.http_status)
        assert.equals(status, err.status)
        return err
    end

    it("initiates, polls and completes a job", function()
        local token = token_for()
        local range = { start_time = 0, end_time = "2024-10-02T15:01:23Z" }
        local job = assert(c:initiate(token, { GROUP }, range))
        assert.matches("^[%w%-_]+$", job.archive_job_id)
        assert.equals("ACCESS_TYPE_ONE_TIME", job.access_type)
        local sent = cjson.decode(emu:requests()[1].body)
        assert.same({ GROUP }, sent.resources)
        assert.equals("1970-01-01T00:00:00Z", sent.startTime)
        assert.equals("2024-10-02T15:01:23Z", sent.endTime)

        local st = assert(c:state(token, job.archive_job_id))
        assert.equals("IN_PROGRESS", st.state)
        assert.same({}, st.urls)
        core.sleep(0.5)
        st = assert(c:state(token, "archiveJobs/" .. job.archive_job_id))
        assert.equals("COMPLETE", st.state)
        assert.equals(1, #st.urls)
        assert.matches("^https://127%.0%.0%.2:%d+/", st.urls[1])
        assert.equals("2024-10-02T15:01:23Z", st.export_time)
        assert.equals("archiveJobs/" .. job.archive_job_id .. "/portabilityArchiveState", st.name)
    end)

    it("refuses an exhausted one-time group until a reset and a new consent", function()
        local token = token_for(nil, { user = "alice" })
        assert(c:initiate(token, { GROUP }))
        local err = api_error(403, "PERMISSION_DENIED", c:initiate(token, { GROUP }))
        assert.equals("ONE_TIME_ACCESS_EXHAUSTED", err.reason)
        assert.is_true(c:reset(token))
        local again = token_for(nil, { user = "alice" })
        assert(c:initiate(again, { GROUP }))
    end)

    it("refuses a group the token has no scope for", function()
        local err = api_error(403, "PERMISSION_DENIED", c:initiate(token_for(), { "myactivity.search" }))
        assert.equals("RESOURCES_NOT_AUTHORIZED", err.reason)
    end)

    it("retries only a failed job, cancels only a running one", function()
        local token = token_for()
        local job = assert(c:initiate(token, { GROUP }))
        api_error(400, "FAILED_PRECONDITION", c:retry(token, job.archive_job_id))
        assert.is_true(c:cancel(token, job.archive_job_id))
        assert.equals("CANCELLED", assert(c:state(token, job.archive_job_id)).state)
        api_error(400, "FAILED_PRECONDITION", c:cancel(token, job.archive_job_id))

        emu:set_job(job.archive_job_id, { state = "FAILED" })
        local retried = assert(c:retry(token, job.archive_job_id))
        assert.are_not.equal(job.archive_job_id, retried.archive_job_id)
        assert.equals("IN_PROGRESS", assert(c:state(token, retried.archive_job_id)).state)
    end)

    it("answers 404 for an unknown job", function()
        api_error(404, "NOT_FOUND", c:state(token_for(), "no-such-job"))
    end)

    it("checks the access type of the token's groups", function()
        local token = token_for({ GROUP, "myactivity.search" },
            { access_type = { [GROUP] = "TIME_BASED", ["myactivity.search"] = "ONE_TIME" } })
        local access = assert(c:check_access_type(token))
        assert.same({ GROUP }, access.time_based_resources)
        assert.same({ "myactivity.search" }, access.one_time_resources)
    end)

    describe("with a token source", function()
        it("refreshes and sends again once when the server answers 401", function()
            local refresh = "1//refresh-" .. helpers.token():sub(6)
            emu:add_token(nil, { dp.scope_for(GROUP) }, { refresh_token = refresh })
            local source = dp.token_source({ client_id = "cid", client_secret = "secret-x",
                refresh_token = refresh, access_token = "ya29.stale", expires_at = os.time() + 3600,
                token_endpoint = emu.endpoint .. "/token", revoke_endpoint = emu.endpoint .. "/revoke" })
            local access = assert(c:check_access_type(source))
            assert.same({ GROUP }, access.one_time_resources)
            local paths = {}
            for _, r in ipairs(emu:requests()) do paths[#paths + 1] = r.path end
            assert.same({ "/v1/accessType:check", "/token", "/v1/accessType:check" }, paths)
            assert.is_nil(tostring(source):find(refresh, 1, true))
            assert.is_nil(tostring(source):find("secret-x", 1, true))
            -- a reset revokes the access token: the source forgets it
            assert.is_true(c:reset(source))
            local ok, err = source:refresh()
            assert.is_nil(ok)
            assert.equals("invalid_grant", err.status)
            assert.is_false(helpers.contains(err, refresh))
        end)

        it("refuses malformed secrets before any I/O, without quoting them", function()
            local ok, err = pcall(dp.token_source, { client_id = "cid", client_secret = "bad secret\r\n" })
            assert.is_false(ok)
            assert.matches("option 'client_secret' is not a valid token", err)
            assert.is_nil(err:find("bad secret", 1, true))
        end)
    end)
end)
