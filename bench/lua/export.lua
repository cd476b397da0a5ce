--- One export's download, timed: client:export of a finished archive job
-- (opts.job_id, reset = false) into DIR, on one client. The time is the
-- download alone: from the job's state event (polled once: it is COMPLETE)
-- to its file's event (whole, MD5 checked, published).
--   DP_BENCH_TOKEN=TOKEN lua5.4 bench/lua/export.lua URL CA JOB_ID DIR
--   -> {"client":"lua-export","calls":1,"ok":1,"seconds":S,"bytes":N}
-- The token comes in the environment, not on the command line.
local dp = require("dataportability")
local core = require("dataportability.core")

local url, ca, job_id, dir = arg[1], arg[2], arg[3], arg[4]
local token = os.getenv("DP_BENCH_TOKEN")
if not (url and ca and job_id and dir and token) then
    io.stderr:write("usage: DP_BENCH_TOKEN=TOKEN export.lua URL CA JOB_ID DIR\n")
    os.exit(2)
end

local client = dp.new({ endpoint = url, ca_file = ca, retries = 0 })
local started, ended
local result, err = client:export(token, { "myactivity.youtube" }, {
    dir = dir, job_id = job_id, reset = false, poll_interval = 1,
    on_progress = function(e)
        if e.type == "state" and e.state == "COMPLETE" then
            started = core.now()
        elseif e.type == "file" then
            ended = core.now()
        end
    end,
})
client:close()
if not result then
    io.stderr:write("export.lua: ", tostring(err), "\n")
    os.exit(1)
end
local bytes = 0
for _, f in ipairs(result.files) do bytes = bytes + f.size end
print(('{"client":"lua-export","calls":1,"ok":1,"seconds":%.6f,"bytes":%d}'):format(ended - started, bytes))
