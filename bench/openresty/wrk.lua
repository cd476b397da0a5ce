--- wrk's script for the OpenResty figure: every request is the reset's POST
-- (no body, "Authorization: Bearer bench-token-1"), and at the end one JSON
-- line in the shape bench/run reads:
--   {"client":"wrk","calls":N,"ok":K,"seconds":S,"p50_ms":M,"p99_ms":M99}
-- ok counts the 2xx answers (wrk counts the others as status errors).
-- luacheck: globals wrk done
wrk.method = "POST"
wrk.body = "" -- Content-Length: 0
wrk.headers["Authorization"] = "Bearer bench-token-1"

function done(summary, latency)
    local e = summary.errors
    local failed = e.connect + e.read + e.write + e.status + e.timeout
    io.write(('{"client":"wrk","calls":%d,"ok":%d,"seconds":%.6f,"p50_ms":%.3f,"p99_ms":%.3f}\n'):format(
        summary.requests, math.max(summary.requests - failed, 0), summary.duration / 1e6,
        latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
