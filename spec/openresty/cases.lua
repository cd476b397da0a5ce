-- Test-only handlers, run inside the spec's nginx (see spec/openresty/nginx.lua).
-- The token always comes in the Authorization header, never in the URL, so
-- that nginx's request line in its logs cannot carry it.
-- luacheck: globals ngx
local dp = require("dataportability")
local cjson = require("cjson.safe")

local _M = {}

local function token()
    return (ngx.var.http_authorization or ""):match("^Bearer (.*)$")
end

-- dp options from the query string.
local function options()
    local args, opts = ngx.req.get_uri_args(), {}
    for _, k in ipairs({ "endpoint", "ca_file", "proxy", "user_agent", "quota_project" }) do
        opts[k] = args[k]
    end
    opts.timeout, opts.connect_timeout = tonumber(args.timeout), tonumber(args.connect_timeout)
    opts.retries = tonumber(args.retries) or 0 -- one failure at a time, as in spec/10
    return opts
end

-- The fields a spec looks at, nothing that could hold the token by mistake.
local function result(ok, err)
    if ok then return { ok = true } end
    if type(err) ~= "table" then return { ok = false, raised = tostring(err) } end
    return { ok = false, kind = err.kind, status = err.status, reason = err.reason,
             message = err.message, http_status = err.http_status, retryable = err.retryable,
             retry_after = err.retry_after }
end

local function reply(tbl)
    ngx.header["Content-Type"] = "application/json"
    ngx.say(cjson.encode(tbl))
end

-- A call from a phase without cosockets: pcall'd and timed.
local function attempt(opts, tok)
    ngx.update_time()
    local started = ngx.now()
    local ran, ok, err = pcall(dp.reset, tok, opts)
    ngx.update_time()
    local r = ran and result(ok, err) or { ok = false, raised = tostring(ok) }
    r.elapsed, r.phase = ngx.now() - started, ngx.get_phase()
    return r
end

local CASES = {}

-- One reset with a one-off client.
function CASES.reset()
    return result(dp.reset(token(), options()))
end

-- Two resets on one client: the second must reuse the connection.
function CASES.two()
    local c = dp.new(options())
    local first = result(c:reset(token()))
    local second = result(c:reset(token()))
    local before = tostring(c)
    c:close()
    c:close()
    local third = result(c:reset(token()))
    return { first = first, second = second, third = third, tostring = before, closed = tostring(c) }
end

-- reset_many on light threads: the tokens come comma-separated in the one
-- Authorization header, and one that is not a token is added.
function CASES.many()
    local tokens = {}
    for t in token():gmatch("[^,]+") do tokens[#tokens + 1] = t end
    tokens[#tokens + 1] = "not a token"
    local c = dp.new(options())
    local results, failed = c:reset_many(tokens, { concurrency = 3 })
    c:close()
    local out = {}
    for i, r in ipairs(results) do
        out[i] = result(r == true, r)
        out[i].index = r ~= true and r.index or nil
    end
    return { results = out, failed = failed }
end

-- Two light threads share one client (two connections, both pooled); then
-- the emulator drops the next request: the resend skips the other idle
-- connection and opens a new one.
function CASES.threads()
    local c, tok = dp.new(options()), token()
    local a = ngx.thread.spawn(function() return result(c:reset(tok)) end)
    local b = ngx.thread.spawn(function() return result(c:reset(tok)) end)
    local _, ra = ngx.thread.wait(a)
    local _, rb = ngx.thread.wait(b)
    local admin = require("dataportability.transport.ngx").new({ endpoint = ngx.req.get_uri_args().admin })
    local status = admin:request("POST", "/emulator/v1/faults", nil, '{"action":"drop"}')
    return { a = ra, b = rb, fault = status, third = result(c:reset(tok)) }
end

-- dp.new with options cosockets cannot honour.
function CASES.new()
    local ok, err = pcall(dp.new, options())
    return { ok = ok, raised = not ok and tostring(err) or nil }
end

-- The transport itself, for a GET and a bad method.
function CASES.transport()
    local t = require("dataportability.transport.ngx").new(options())
    local status, body = t:request("GET", "/emulator/v1/health")
    local bad = select(2, pcall(t.request, t, "HEAD", "/"))
    local bad_path = select(2, pcall(t.request, t, "GET", "/a b"))
    return { status = status, body = body, bad = bad, bad_path = bad_path, name = getmetatable(t).__name }
end

-- A GET of `path` through the transport, for bodies the emulator cannot shape.
function CASES.raw()
    local t = require("dataportability.transport.ngx").new({ endpoint = options().endpoint })
    local status, body, content_type, retry_after = t:request("GET", ngx.req.get_uri_args().path)
    if not status then return { kind = body, message = content_type } end
    return { status = status, length = #body, content_type = content_type, retry_after = retry_after }
end

-- From a timer: the way out of phases without cosockets.
function CASES.timer()
    local opts, tok, done = options(), token(), nil
    assert(ngx.timer.at(0, function() done = result(dp.reset(tok, opts)) end))
    for _ = 1, 100 do
        if done then break end
        ngx.sleep(0.02)
    end
    return done or { ok = false, message = "timer did not finish" }
end

--- content_by_lua entry: /t/<case>
function _M.run()
    local case = CASES[ngx.var.uri:match("^/t/(%w+)$")]
    if not case then return ngx.exit(404) end
    return reply(case())
end

--- For header_filter_by_lua, set_by_lua, log_by_lua: tries a reset and
--- keeps what happened in the dp_test shared dict under the phase's name.
function _M.in_phase()
    local r = attempt(options(), token())
    ngx.shared.dp_test:set(r.phase, cjson.encode(r))
    return r
end

--- init_worker_by_lua: the same at start-up.
function _M.init_worker(endpoint)
    ngx.shared.dp_test:set("init_worker", cjson.encode(attempt({ endpoint = endpoint }, "ya29.init")))
end

--- /phase/result?phase=<name>: what in_phase or init_worker recorded.
function _M.recorded()
    reply({ result = cjson.decode(ngx.shared.dp_test:get(ngx.var.arg_phase) or "null") })
end

return _M
