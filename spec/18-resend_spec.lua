-- A request is never sent twice by the transport (docs/transport.md): when
-- a reused keep-alive connection closes without a byte of answer (a stale
-- connection), the call fails with kind "network", sent = true and
-- stale_connection = true, and each method's retry policy decides
-- (lua/dataportability/retry.lua): reads, reset, check and cancel are sent
-- again at once, initiate and archiveJobs.retry never. Against the emulator,
-- over plain HTTP and over HTTPS; its `drop` fault closes the connection.
local dp = require("dataportability")
local helpers = require("spec.helpers")

local GROUP = "myactivity.youtube"
local RESET = "/v1/authorization:reset"
local INITIATE = "/v1/portabilityArchive:initiate"
local CHECK = "/v1/accessType:check"

local function state_path(id) return "/v1/archiveJobs/" .. id .. "/portabilityArchiveState" end

for _, scheme in ipairs({ "http", "https" }) do
    describe("a stale keep-alive connection, over " .. scheme, function()
        local emu, seen

        lazy_setup(function() emu = helpers.start() end)
        lazy_teardown(function() helpers.stop(emu) end)
        before_each(function()
            emu:clear()
            seen = {}
        end)

        -- A client that records what on_retry announces. Over HTTP it names
        -- the emulator "localhost", so that it never shares a connection
        -- with the admin client (127.0.0.1, same cache): the connection it
        -- warms is its own.
        local function client(extra)
            local opts = scheme == "https"
                and { endpoint = emu.https_endpoint, ca_file = emu.ca_file }
                or { endpoint = "http://localhost:" .. emu.http_port }
            opts.on_retry = function(info) seen[#seen + 1] = info end
            for k, v in pairs(extra or {}) do opts[k] = v end
            return dp.new(opts)
        end

        local function registered() return helpers.registered(emu, { dp.scope_for(GROUP) }) end

        -- The logged requests to `path`, oldest first.
        local function sends(path)
            local out = {}
            for _, r in ipairs(emu:requests()) do
                if r.path == path then out[#out + 1] = r end
            end
            return out
        end

        -- Warms a kept-alive connection with one successful call to another
        -- method; returns the connection's id (the emulator's).
        local function warm(c)
            assert.is_table(c:check_access_type(registered()))
            local log = sends(CHECK)
            return log[#log].connection
        end

        -- The first send of a faulted call went out on the warmed connection
        -- (reused, so the failure is a stale connection to the client).
        local function assert_reused(log, connection)
            assert.equals(connection, log[1].connection)
            assert.is_true(log[1].connection_requests > 1)
        end

        local function assert_stale(err)
            assert.is_true(dp.is_error(err))
            assert.equals("network", err.kind)
            assert.is_true(err.sent)
            assert.is_true(err.stale_connection)
        end

        describe("methods that must not run twice", function()
            for _, retries in ipairs({ 0, 3 }) do
                it("initiate with retries = " .. retries .. " is sent once, and fails as a stale connection",
                    function()
                        local c = client({ retries = retries, retry_max_delay = 0.05 })
                        local connection = warm(c)
                        emu:set_fault({ action = "drop", count = 1, path = INITIATE })
                        local job, err = c:initiate(registered(), { GROUP })
                        c:close()
                        local log = sends(INITIATE)
                        assert.equals(1, #log)
                        assert_reused(log, connection)
                        assert.is_nil(job)
                        assert_stale(err)
                        assert.equals(1, err.attempts)
                        assert.equals(0, #seen)
                        assert.equals(0, #emu:jobs()) -- the one send was dropped before it ran
                    end)
            end

            it("initiate applied and its answer lost is not sent again: one job, no 403 for it", function()
                local c = client({ retries = 3, retry_max_delay = 0.05 })
                local connection = warm(c)
                emu:set_fault({ action = "drop", after = true, count = 1, path = INITIATE })
                local job, err = c:initiate(registered(), { GROUP })
                c:close()
                local log = sends(INITIATE)
                assert.equals(1, #log)
                assert_reused(log, connection)
                assert.is_nil(job)
                assert_stale(err) -- not ONE_TIME_ACCESS_EXHAUSTED from a second send
                assert.equals(1, err.attempts)
                assert.equals(1, #emu:jobs())
            end)

            it("archiveJobs.retry is sent once, and fails as a stale connection", function()
                local c = client({ retries = 3, retry_max_delay = 0.05 })
                local token = registered()
                local job = assert(c:initiate(token, { GROUP })) -- also warms the connection
                local connection = sends(INITIATE)[1].connection
                emu:set_job(job.archive_job_id, { state = "FAILED" })
                local path = "/v1/archiveJobs/" .. job.archive_job_id .. ":retry"
                emu:set_fault({ action = "drop", count = 1, path = path })
                local new, err = c:retry(token, job.archive_job_id)
                c:close()
                local log = sends(path)
                assert.equals(1, #log)
                assert_reused(log, connection)
                assert.is_nil(new)
                assert_stale(err)
                assert.equals(1, err.attempts)
                assert.equals(1, #emu:jobs()) -- the first job only
            end)
        end)

        describe("methods that may run twice", function()
            it("reset is sent again at once, without waiting, and succeeds", function()
                local c = client() -- the default retries and delays
                local connection = warm(c)
                emu:set_fault({ action = "drop", count = 1, path = RESET })
                assert.is_true(c:reset(registered()))
                c:close()
                local log = sends(RESET)
                assert.equals(2, #log)
                assert_reused(log, connection)
                assert.are_not.equal(connection, log[2].connection)
                assert.equals(1, #seen)
                assert.equals("authorization.reset", seen[1].method)
                assert.equals(1, seen[1].attempt)
                assert.equals(0, seen[1].delay)
                assert_stale(seen[1].err)
            end)

            it("reset with retries = 2 is sent at most 3 times, the stale send counting as one", function()
                local c = client({ retries = 2, retry_max_delay = 0.05 })
                local connection = warm(c)
                emu:set_fault({ action = "drop", count = 10, path = RESET })
                local ok, err = c:reset(registered())
                c:close()
                local log = sends(RESET)
                assert.equals(3, #log)
                assert_reused(log, connection)
                assert.is_nil(ok)
                assert.equals("network", err.kind)
                assert.equals(3, err.attempts)
                assert.equals(2, #seen)
                assert.equals(0, seen[1].delay) -- after the stale connection
                assert.is_true(seen[1].err.stale_connection)
            end)

            it("reset applied and its answer lost: the retry's 401 says it maybe applied", function()
                local c = client({ retry_max_delay = 0.05 })
                local connection = warm(c)
                emu:set_fault({ action = "drop", after = true, count = 1, path = RESET })
                local ok, err = c:reset(registered())
                c:close()
                local log = sends(RESET)
                assert.equals(2, #log)
                assert_reused(log, connection)
                assert.is_nil(ok)
                assert.equals("api", err.kind)
                assert.equals(401, err.http_status)
                assert.equals("UNAUTHENTICATED", err.status)
                assert.is_true(err.maybe_applied)
                assert.equals(2, err.attempts)
                assert.equals(1, #seen)
                assert.equals(0, seen[1].delay)
            end)

            it("getPortabilityArchiveState, check and cancel are sent again at once, and succeed", function()
                local c = client()
                local token = registered()
                emu:configure({ job_seconds = 60 }) -- in progress, so that cancel applies
                local id = assert(c:initiate(token, { GROUP })).archive_job_id -- also warms the connection
                local calls = {
                    { path = state_path(id), method = "archiveJobs.getPortabilityArchiveState",
                      run = function() return c:state(token, id) end },
                    { path = CHECK, method = "accessType.check",
                      run = function() return c:check_access_type(token) end },
                    { path = "/v1/archiveJobs/" .. id .. ":cancel", method = "archiveJobs.cancel",
                      run = function() return c:cancel(token, id) end },
                }
                for _, call in ipairs(calls) do
                    seen = {}
                    emu:clear_requests()
                    emu:set_fault({ action = "drop", count = 1, path = call.path })
                    local result, err = call.run()
                    assert.is_truthy(result, call.method .. ": " .. tostring(err))
                    local log = sends(call.path)
                    assert.equals(2, #log, call.method)
                    assert.is_true(log[1].connection_requests > 1, call.method) -- on a reused connection
                    assert.equals(1, #seen, call.method)
                    assert.equals(call.method, seen[1].method)
                    assert.equals(0, seen[1].delay, call.method)
                    assert.is_true(seen[1].err.stale_connection, call.method)
                end
                c:close()
                assert.equals("CANCELLED", emu:job(id).state)
            end)
        end)
    end)
end
