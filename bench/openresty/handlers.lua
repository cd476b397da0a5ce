--- Inside the benchmark's nginx under test (bench/openresty/server.lua): one
-- client per worker, made once at start-up, serving every request.
--
--   POST /module   client:reset(<the Authorization header's token>): 200 {}
--   GET  /export?job_id=ID&dir=DIR   client:export of that job, reset=false:
--        {"client":"ngx-export","calls":1,"ok":1,"seconds":S,"bytes":N},
--        S the download alone (from the job's state to its file's event)
--
-- Failures answer 502 with the error's kind and message, never the token.
-- luacheck: globals ngx
local dp = require("dataportability")
local core = require("dataportability.core")

local _M = {}

local client -- this worker's

--- init_worker: the client, for the endpoint the server hands out.
function _M.init(endpoint)
    client = dp.new({ endpoint = endpoint, retries = 0 })
end

local function token()
    return (ngx.var.http_authorization or ""):match("^Bearer (.+)$")
end

local function fail(err)
    ngx.status = 502
    ngx.header["Content-Type"] = "text/plain"
    ngx.say(tostring(err.kind), ": ", tostring(err.message))
    return ngx.exit(ngx.HTTP_OK)
end

function _M.reset()
    local ok, err = client:reset(token())
    if not ok then return fail(err) end
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Content-Length"] = 2 -- as the upstream's answer, not chunked
    ngx.print("{}")
end

function _M.export()
    local args = ngx.req.get_uri_args()
    local started, ended
    local result, err = client:export(token(), { "myactivity.youtube" }, {
        dir = args.dir, job_id = args.job_id, reset = false, poll_interval = 1,
        on_progress = function(e)
            if e.type == "state" and e.state == "COMPLETE" then
                started = core.now()
            elseif e.type == "file" then
                ended = core.now()
            end
        end,
    })
    if not result then return fail(err) end
    if not (started and ended) then return fail({ kind = "bench", message = "no state or file event" }) end
    local bytes = 0
    for _, f in ipairs(result.files) do bytes = bytes + f.size end
    ngx.header["Content-Type"] = "application/json"
    ngx.say(('{"client":"ngx-export","calls":1,"ok":1,"seconds":%.6f,"bytes":%d}')
        :format(ended - started, bytes))
end

return _M
