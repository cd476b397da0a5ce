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
    for _, k in ipairs({ "endpoint", "ca_file", "proxy", "user_agent", "quota_project", "pool" }) do
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

-- The seven positions of a transport's answer (docs/transport.md), and
-- how many values there were.
local function answer(...)
    local status, body, content_type, retry_after, kind, message, sent = ...
    return { n = select("#", ...), status = status, length = body and #body, content_type = content_type,
             retry_after = retry_after, kind = kind, message = message, sent = sent }
end

-- Two light threads share one client (two connections, both pooled); then
-- the emulator drops the next request, sent on one of them through the
-- client's transport: it is not sent again.
function CASES.threads()
    local c, tok = dp.new(options()), token()
    local a = ngx.thread.spawn(function() return result(c:reset(tok)) end)
    local b = ngx.thread.spawn(function() return result(c:reset(tok)) end)
    local _, ra = ngx.thread.wait(a)
    local _, rb = ngx.thread.wait(b)
    local admin = require("dataportability.transport.ngx").new({ endpoint = ngx.req.get_uri_args().admin })
    local status = admin:request("POST", "/emulator/v1/faults", nil, '{"action":"drop"}')
    local third = answer(c.transport:request("POST", "/v1/authorization:reset", tok))
    return { a = ra, b = rb, fault = status, third = third }
end

-- dp.new with options cosockets cannot honour, or a bad pool; the pool
-- name its transport got.
function CASES.new()
    local ok, c = pcall(dp.new, options())
    return { ok = ok, raised = not ok and tostring(c) or nil, pool = ok and c.transport.pool or nil }
end

-- The transport itself, for a GET, a bad method, and once closed.
function CASES.transport()
    local t = require("dataportability.transport.ngx").new(options())
    local status, body = t:request("GET", "/emulator/v1/health")
    local bad = select(2, pcall(t.request, t, "HEAD", "/"))
    local bad_path = select(2, pcall(t.request, t, "GET", "/a b"))
    local open = tostring(t)
    t:close()
    return { status = status, body = body, bad = bad, bad_path = bad_path, name = getmetatable(t).__name,
             tostring = open, closed_tostring = tostring(t), closed = answer(t:request("GET", "/")) }
end

-- One request through a one-off transport (method, default POST, and path,
-- default a reset, from the query string; the token from the header): every
-- position of its answer, and its pool's name.
function CASES.call()
    local args, o = ngx.req.get_uri_args(), options()
    local t = require("dataportability.transport.ngx").new({ endpoint = o.endpoint, timeout = o.timeout,
                                                             pool = o.pool })
    local r = answer(t:request(args.method or "POST", args.path or "/v1/authorization:reset", token()))
    r.pool = t.pool
    return r
end

-- t:many with concurrency 2 over the header's comma-separated tokens and
-- one that is not a token: what each on_done call was given.
function CASES.batch()
    local tokens = {}
    for t in token():gmatch("[^,]+") do tokens[#tokens + 1] = t end
    tokens[#tokens + 1] = "not a token"
    local t = require("dataportability.transport.ngx").new({ endpoint = options().endpoint })
    local out = {}
    t:many("POST", "/v1/authorization:reset", tokens, 2, function(i, ...) out[i] = answer(...) end)
    return { results = out }
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

-- client:export of the token, options from the query string: what it
-- returns, minus anything that could hold the token.
local function export(args, opts, tok, on_progress)
    local c = dp.new(opts)
    local r, err = c:export(tok, { "myactivity.youtube" }, { dir = args.dir, poll_interval = 1,
        low_speed_time = tonumber(args.low_speed_time), on_progress = on_progress })
    c:close()
    if not r then
        local out = result(nil, err)
        out.job_id = err.job_id
        return out
    end
    local files = {}
    for i, f in ipairs(r.files) do
        files[i] = { name = f.name, size = f.size, md5 = f.md5, path = f.path }
    end
    return { ok = true, job_id = r.job_id, state = r.state, files = files, reset = r.reset }
end

-- In the content phase, with its progress events.
function CASES.export()
    local events = {}
    local r = export(ngx.req.get_uri_args(), options(), token(), function(e)
        events[#events + 1] = { type = e.type, state = e.state, file = e.file, done = e.done,
                                total = e.total }
    end)
    r.events = events
    return r
end

-- In a timer: answers at once; /t/exported tells how far it got.
function CASES.exportlater()
    local args, opts, tok, dict = ngx.req.get_uri_args(), options(), token(), ngx.shared.dp_test
    dict:set("exported", cjson.encode({ running = true, done = 0 }))
    local ok, err = ngx.timer.at(0, function()
        local ran, r = pcall(export, args, opts, tok, function(e)
            if e.type == "download" then
                dict:set("exported", cjson.encode({ running = true, done = e.done }))
            end
        end)
        local final = ran and r or { raised = tostring(r) }
        dict:set("exported", cjson.encode({ running = false, result = final }))
    end)
    return { started = ok ~= nil, err = err }
end

-- The archive streamed into this response through a sink, never to disk;
-- what export returned goes to /t/streamed.
function CASES.stream()
    local c = dp.new(options())
    ngx.header["Content-Type"] = "application/zip"
    local r, err = c:export(token(), { "myactivity.youtube" }, { reset = false, poll_interval = 1,
        sink = function(chunk)
            if chunk then
                ngx.print(chunk)
                ngx.flush(true) -- waits for the client: memory stays flat
            end
        end })
    c:close()
    local out = r and { ok = true, files = r.files } or result(nil, err)
    ngx.shared.dp_test:set("streamed", cjson.encode(out))
end

-- A token source over cosockets: the refresh token in the header, the
-- client registered by the spec as "cid"/"spec-secret-0123": refresh, a
-- call with the source, revoke, then a refresh that must fail.
function CASES.source()
    local args = ngx.req.get_uri_args()
    local function source()
        return dp.token_source({ client_id = "cid", client_secret = "spec-secret-0123",
            refresh_token = token(), token_endpoint = args.endpoint .. "/token",
            revoke_endpoint = args.endpoint .. "/revoke" })
    end
    local s = source()
    local access, err = s:refresh()
    local out = { refreshed = access ~= nil and access ~= token(), refresh_error = err and err.kind }
    local c = dp.new(options())
    out.call = result(c:check_access_type(s))
    c:close()
    out.revoked = result(s:revoke())
    local again, aerr = source():refresh() -- the revoked refresh token, anew
    out.after_revoke = again == nil and aerr and aerr.status
    return out
end

function CASES.streamed()
    return cjson.decode(ngx.shared.dp_test:get("streamed") or "null")
end

function CASES.exported()
    return cjson.decode(ngx.shared.dp_test:get("exported") or "null") or { running = false }
end

function CASES.ping()
    return { pong = true }
end

--- content_by_lua entry: /t/<case> or /untrusting/t/<case>
function _M.run()
    local case = CASES[ngx.var.uri:match("/t/(%w+)$")]
    if not case then return ngx.exit(404) end
    local out = case()
    if out then reply(out) end -- else the case answered itself
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
