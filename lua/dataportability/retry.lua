-- When and how long to wait before sending a failed call again: full
-- jitter over an exponential envelope (1 s, doubling, capped), at least
-- what Retry-After asks, and only for the failures each method can safely
-- send again (README, Retries).
local floor, min, max, random, tonumber = math.floor, math.min, math.max, math.random, tonumber

local _M = {
    RETRIES = 3,       -- default number of retries
    INITIAL = 1,       -- seconds: the first envelope
    MAX_DELAY = 30,    -- seconds: the largest wait, and the largest Retry-After honoured
    MAX_TOTAL = 120,   -- seconds: no retry starts later than this after the first attempt
}

-- "any": every retryable failure. "unsent": only when the request surely
-- never reached the server, or the server answered 429 or 503 (it did not
-- process it): sending it again could start a duplicate job.
local POLICY = {
    ["authorization.reset"] = "any",
    ["archiveJobs.getPortabilityArchiveState"] = "any",
    ["accessType.check"] = "any",
    ["archiveJobs.cancel"] = "any",
    ["portabilityArchive.initiate"] = "unsent",
    ["archiveJobs.retry"] = "unsent",
}
_M.POLICY = POLICY

function _M.allowed(method, err)
    if not err.retryable then return false end
    if POLICY[method] == "any" then return true end
    return err.sent == false or err.http_status == 429 or err.http_status == 503
end

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8, Sep = 9, Oct = 10,
                 Nov = 11, Dec = 12 }

-- Days since 1970-01-01 of a civil date (proleptic Gregorian).
local function days(y, m, d)
    if m <= 2 then y = y - 1 end
    local era = floor(y / 400)
    local yoe = y - era * 400
    local doy = floor((153 * (m + (m > 2 and -3 or 9)) + 2) / 5) + d - 1
    local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
    return era * 146097 + doe - 719468
end

--- Retry-After as seconds from now: delta-seconds or an HTTP-date
--- (IMF-fixdate); nil when absent or unreadable.
function _M.retry_after(value, now)
    if type(value) ~= "string" then return nil end
    local n = tonumber(value:match("^%s*(%d+)%s*$"))
    if n then return n end
    local d, mon, y, h, mi, s = value:match("^%a%a%a, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
    if not d or not MONTHS[mon] then return nil end
    local at = days(tonumber(y), MONTHS[mon], tonumber(d)) * 86400 + h * 3600 + mi * 60 + s
    return max(0, at - (now or os.time()))
end

--- The wait before retry n (1 for the first), or nil when Retry-After asks
--- for more than max_delay.
function _M.delay(n, err, max_delay)
    local wait = random() * min(max_delay, _M.INITIAL * 2 ^ (n - 1))
    local asked = _M.retry_after(err.retry_after)
    if asked then
        if asked > max_delay then return nil end
        wait = max(wait, asked)
    end
    return wait
end

return _M
