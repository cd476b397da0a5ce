-- Retries against the emulator: backoff with jitter, Retry-After, the
-- per-method rule of what may be sent again, attempts and maybe_applied.
local dp = require("dataportability")
local retry = require("dataportability.retry")
local helpers = require("spec.helpers")

local GROUP = "myactivity.youtube"
local RESET = "/v1/authorization:reset"

describe("Retry-After and delays", function()
    it("reads delta-seconds and HTTP-dates", function()
        assert.equals(120, retry.retry_after("120"))
        assert.equals(0, retry.retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111777))
        assert.equals(30, retry.retry_after("Sun, 06 Nov 1994 08:50:07 GMT", 784111777))
        assert.is_nil(retry.retry_after("soon"))
        assert.is_nil(retry.retry_after(nil))
    end)

    it("waits a random time under a doubling envelope, at least Retry-After", function()
        for n = 1, 6 do
            local d = retry.delay(n, {}, 30)
            assert.is_true(d >= 0 and d <= math.min(30, 2 ^ (n - 1)), n)
        end
        assert.is_true(retry.delay(1, { retry_after = "2" }, 30) >= 2)
        assert.is_nil(retry.delay(1, { retry_after = "31" }, 30)) -- longer than allowed: give up
    end)

    it("lets reads and reset send again, initiate and retry only when unsent or 429/503", function()
        local lost = { retryable = true, sent = true }
        assert.is_true(retry.allowed("authorization.reset", lost))
        assert.is_true(retry.allowed("archiveJobs.getPortabilityArchiveState", lost))
        assert.is_false(retry.allowed("portabilityArchive.initiate", lost))
        assert.is_false(retry.allowed("archiveJobs.retry", { retryable = true, http_status = 500 }))
        assert.is_true(retry.allowed("portabilityArchive.initiate", { retryable = true, sent = false }))
        assert.is_true(retry.allowed("portabilityArchive.initiate", { retryable = true, http_status = 503 }))
        assert.is_false(retry.allowed("authorization.reset", { retryable = false }))
    end)
end)

describe("retries against the emulator", function()
    local emu, seen

    lazy_setup(function() emu = helpers.start() end)
    lazy_teardown(function() helpers.stop(emu) end)
    before_each(function()
        emu:clear()
        seen = {}
    end)

    local function client(extra)
        local o = helpers.https(emu, { retries = 3, retry_max_delay = 0.05,
            on_retry = function(info) seen[#seen + 1] = info end })
        for k, v in pairs(extra or {}) do o[k] = v end
        return dp.new(o)
    end

    local function registered()
        local token = helpers.token()
        emu:add_token(token, { dp.scope_for(GROUP) })
        return token
    end

    it("gets through a burst of 503s", function()
        emu:set_fault({ action = "status", status = 503, count = 2, path = RESET })
        local c = client()
        assert.is_true(c:reset(registered()))
        c:close()
        assert.equals(2, #seen)
        assert.equals(1, seen[1].attempt)
        assert.equals(2, seen[2].attempt)
        assert.equals("authorization.reset", seen[1].method)
        assert.equals(503, seen[1].err.http_status)
        assert.equals(3, #emu:requests())
    end)

    it("gives up after `retries`, with the count of attempts", function()
        emu:set_fault({ action = "status", status = 500, count = 10, path = RESET })
        local c = client({ retries = 2 })
        local ok, err = c:reset(registered())
        c:close()
        assert.is_nil(ok)
        assert.equals(3, err.attempts)
        assert.equals(3, #emu:requests())
    end)

    it("honours Retry-After, and does not wait longer than retry_max_delay", function()
        emu:set_fault({ action = "status", status = 429, retry_after = "1", count = 1, path = RESET })
        local c = client({ retry_max_delay = 2 })
        assert.is_true(c:reset(registered()))
        assert.is_true(seen[1].delay >= 1)
        emu:set_fault({ action = "status", status = 429, retry_after = "60", count = 1, path = RESET })
        local ok, err = c:reset(registered())
        c:close()
        assert.is_nil(ok)
        assert.equals(1, err.attempts)
        assert.equals("60", err.retry_after)
    end)

    it("returns other errors at once", function()
        local c = client()
        local ok, err = c:reset(helpers.token()) -- unknown: 401
        c:close()
        assert.is_nil(ok)
        assert.equals(1, err.attempts)
        assert.equals(0, #seen)
    end)

    it("does not send initiate again after a 500 or a lost answer, but does after a 503", function()
        local c, token = client(), registered()
        emu:set_fault({ action = "status", status = 500, path = "/v1/portabilityArchive:initiate" })
        local ok, err = c:initiate(token, { GROUP })
        assert.is_nil(ok)
        assert.equals(1, err.attempts)
        emu:set_fault({ action = "cut", after_bytes = 0, path = "/v1/portabilityArchive:initiate" })
        ok, err = c:initiate(token, { GROUP })
        assert.is_nil(ok)
        assert.equals("network", err.kind)
        assert.is_true(err.sent)
        assert.equals(1, err.attempts)
        emu:set_fault({ action = "status", status = 503, path = "/v1/portabilityArchive:initiate" })
        local job = assert(c:initiate(registered(), { GROUP }))
        assert.is_string(job.archive_job_id)
        c:close()
    end)

    it("sends anything again when it surely never left: connection refused", function()
        local c = dp.new({ endpoint = "https://localhost:1", retries = 2, retry_max_delay = 0.01 })
        local ok, err = c:initiate(helpers.token(), { GROUP })
        c:close()
        assert.is_nil(ok)
        assert.equals("connect", err.kind)
        assert.is_false(err.sent)
        assert.equals(3, err.attempts)
    end)

    it("reports a reset whose lost answer probably took effect", function()
        emu:set_fault({ action = "cut", after_bytes = 0, path = RESET }) -- done, then the answer is lost
        local c = client()
        local ok, err = c:reset(registered())
        c:close()
        assert.is_nil(ok)
        assert.equals(401, err.http_status)
        assert.equals("UNAUTHENTICATED", err.status)
        assert.is_true(err.maybe_applied)
        assert.equals(2, err.attempts)
    end)
end)
