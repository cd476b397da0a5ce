-- Asynchronous calls on a real event loop (luv, as in Neovim), against the
-- emulator over HTTPS. luv is required by this file only: busted unloads
-- modules between files, and luv cannot be loaded again once its default
-- loop was collected.
local dp = require("dataportability")
local helpers = require("spec.helpers")
local uv = require("luv")

describe("asynchronous calls on a luv loop", function()
    local emu

    lazy_setup(function() emu = helpers.start() end)
    lazy_teardown(function() helpers.stop(emu) end)
    before_each(function() emu:clear_faults(); emu:clear_requests() end)

    local driver
    before_each(function() driver = require("dataportability.async").luv_driver(uv) end)
    after_each(function()
        driver:close()
        uv.run("nowait") -- lets libuv finish closing the handles
    end)

    local function client()
        return dp.new(helpers.https(emu, { driver = driver }))
    end

    -- Runs the loop until `n` callbacks were recorded (bounded: 10 s).
    local function run_until(results, n)
        local guard = uv.new_timer()
        guard:start(10000, 0, function() uv.stop() end)
        local check = uv.new_timer()
        check:start(1, 1, function() if #results >= n then uv.stop() end end)
        uv.run()
        guard:close()
        check:close()
        uv.run("nowait")
        assert.equals(n, #results)
    end

    it("resets, then gets the same 401 error table as the blocking call", function()
        local token = helpers.registered(emu)
        local c, results = client(), {}
        c:reset_async(token, function(ok, err) results[#results + 1] = { ok = ok, err = err } end)
        assert.equals(0, #results) -- never called before reset_async returns
        run_until(results, 1)
        assert.is_true(results[1].ok)
        assert.is_nil(results[1].err)

        c:reset_async(token, function(ok, err) results[#results + 1] = { ok = ok, err = err } end)
        run_until(results, 2)
        local err = results[2].err
        assert.is_nil(results[2].ok)
        assert.is_true(dp.is_error(err))
        local _, blocking = dp.reset(token, helpers.https(emu))
        for _, field in ipairs({ "kind", "message", "method", "retryable", "http_status", "code",
                                 "status", "reason", "domain" }) do
            assert.equals(blocking[field], err[field], field)
        end
        assert.is_false(helpers.contains(err, token))
        c:close()
    end)

    it("keeps the connection alive across asynchronous calls", function()
        local c, results = client(), {}
        for _ = 1, 2 do
            c:reset_async(helpers.registered(emu), function(ok) results[#results + 1] = ok end)
            run_until(results, #results + 1)
        end
        assert.same({ true, true }, results)
        local log = emu:requests()
        assert.equals(2, #log)
        assert.equals(log[1].connection, log[2].connection)
        c:close()
    end)

    it("does not block the loop: a timer keeps firing and calls overlap", function()
        emu:set_fault({ action = "delay", seconds = 1, count = 3 })
        local results, ticks, clients = {}, 0, {}
        local ticker = uv.new_timer()
        ticker:start(10, 10, function() ticks = ticks + 1 end)
        local started = uv.hrtime()
        for i = 1, 3 do
            clients[i] = client()
            clients[i]:reset_async(helpers.registered(emu), function(ok) results[#results + 1] = ok end)
        end
        local returned_ms = (uv.hrtime() - started) / 1e6
        run_until(results, 3)
        ticker:close()
        uv.run("nowait")
        assert.same({ true, true, true }, results)
        assert.is_true(returned_ms < 500, "the calls returned after " .. returned_ms .. " ms")
        assert.is_true(ticks >= 40, "the timer fired only " .. ticks .. " times in a 1 s delay")
        local log = emu:requests()
        assert.equals(3, #log)
        -- all three reached the server before the first answer came back
        assert.is_true(log[3].time - log[1].time < 1, "the requests were serialised")
        for _, c in ipairs(clients) do c:close() end
    end)

    it("delivers invalid_token later, without I/O", function()
        local c, results = client(), {}
        c:reset_async("not a token", function(ok, err) results[#results + 1] = { ok = ok, err = err } end)
        assert.equals(0, #results)
        run_until(results, 1)
        assert.equals("invalid_token", results[1].err.kind)
        assert.equals(0, #emu:requests())
        c:close()
    end)

    it("gives `closed` to a running call whose client is closed", function()
        emu:set_fault({ action = "delay", seconds = 2 })
        local c, results = client(), {}
        c:reset_async(helpers.registered(emu), function(ok, err)
            results[#results + 1] = { ok = ok, err = err }
        end)
        local stopper = uv.new_timer()
        stopper:start(100, 0, function() c:close() end)
        run_until(results, 1)
        stopper:close()
        uv.run("nowait")
        assert.equals("closed", results[1].err.kind)
        local ok, err = c:reset(helpers.registered(emu))
        assert.is_nil(ok)
        assert.equals("closed", err.kind)
    end)

    it("raises on a busy client and on a missing callback", function()
        emu:set_fault({ action = "delay", seconds = 0.2 })
        local c, results = client(), {}
        c:reset_async(helpers.registered(emu), function(ok) results[#results + 1] = ok end)
        assert.has_error(function() c:reset(helpers.registered(emu)) end)
        assert.has_error(function() c:reset_async(helpers.registered(emu)) end,
            "bad argument #2 to 'reset_async' (the last argument must be the callback function, got nil)")
        run_until(results, 1)
        assert.same({ true }, results)
        c:close()
    end)

    it("runs the other methods asynchronously too", function()
        emu:configure({ job_seconds = 0.3 })
        local token = helpers.token()
        emu:add_token(token, { dp.scope_for("myactivity.youtube") })
        local c, got = client(), {}
        c:initiate_async(token, { "myactivity.youtube" }, function(job, err)
            got.job, got.err = job, err
            c:state_async(token, job.archive_job_id, function(st, serr)
                got[#got + 1] = true
                got.st, got.serr = st, serr
            end)
        end)
        run_until(got, 1)
        c:close()
        assert.is_nil(got.err)
        assert.is_nil(got.serr)
        assert.equals("IN_PROGRESS", got.st.state)
    end)

    it("retries on the event loop, waiting on its timer", function()
        emu:set_fault({ action = "status", status = 503, count = 2, path = "/v1/authorization:reset" })
        local seen, results = {}, {}
        local c = dp.new(helpers.https(emu, { driver = driver, retries = 3, retry_max_delay = 0.05,
            on_retry = function(info) seen[#seen + 1] = info.attempt end }))
        c:reset_async(helpers.registered(emu), function(ok) results[#results + 1] = ok end)
        run_until(results, 1)
        c:close()
        assert.is_true(results[1])
        assert.same({ 1, 2 }, seen)
    end)

    describe("callbacks that call back", function()
        it("close() in the callback: later calls are answered closed", function()
            local c, results = client(), {}
            c:reset_async(helpers.registered(emu), function(ok)
                results[#results + 1] = ok
                c:close()
                c:reset_async(helpers.registered(emu), function(_, err) results[#results + 1] = err end)
            end)
            run_until(results, 2)
            assert.is_true(results[1])
            assert.equals("closed", results[2].kind)
            assert.equals(1, #emu:requests())
        end)

        it("another call on the same client from the callback runs, blocking or not", function()
            local c, results = client(), {}
            c:reset_async(helpers.registered(emu), function(ok)
                results[#results + 1] = ok
                results[#results + 1] = c:reset(helpers.registered(emu))
                c:reset_async(helpers.registered(emu), function(again) results[#results + 1] = again end)
            end)
            run_until(results, 3)
            c:close()
            assert.same({ true, true, true }, results)
        end)

        it("a raise reaches the loop's defer; the other results are still delivered", function()
            local raised, results = {}, {}
            local host = require("dataportability.async").luv_driver(uv, function(fn)
                local ok, err = pcall(fn)
                if not ok then raised[#raised + 1] = err end
            end)
            local a = dp.new(helpers.https(emu, { driver = host }))
            local b = dp.new(helpers.https(emu, { driver = host }))
            a:reset_async(helpers.registered(emu), function() results[#results + 1] = "a"; error("in a") end)
            b:reset_async(helpers.registered(emu), function() results[#results + 1] = "b"; error("in b") end)
            run_until(results, 2)
            a:close()
            b:close()
            host:close()
            assert.equals(2, #raised)
            assert.matches("in [ab]", raised[1])
        end)

        -- A host loop that catches what driver:ready and driver:timeout raise;
        -- on_watch(fd, readable, writable) and on_timer(ms), if given, run
        -- first in the hooks.
        local function catching_driver(caught, on_watch, on_timer)
            local polls, timer, d = {}, uv.new_timer(), nil
            local function guarded(fn, ...)
                local ok, err = pcall(fn, d, ...)
                if not ok then caught[#caught + 1] = err end
            end
            d = dp.driver({
                watch = function(fd, readable, writable)
                    if on_watch then on_watch(fd, readable, writable) end
                    local poll = polls[fd]
                    if not (readable or writable) then
                        if poll then poll:stop(); poll:close(); polls[fd] = nil end
                        return
                    end
                    if not poll then poll = uv.new_socket_poll(fd); polls[fd] = poll end
                    poll:start((readable and "r" or "") .. (writable and "w" or ""), function(_, events)
                        events = events or "rw"
                        local r, w = events:find("r", 1, true) ~= nil, events:find("w", 1, true) ~= nil
                        guarded(d.ready, fd, r, w)
                    end)
                end,
                timer = function(ms)
                    if on_timer then on_timer(ms) end
                    timer:stop()
                    if ms >= 0 then timer:start(math.max(ms, 1), 0, function() guarded(d.timeout) end) end
                end,
                close = function() timer:close() end,
            })
            return d, polls
        end

        it("a hook that closes the client: the request ends closed, every socket unwatched", function()
            local c, results, caught = nil, {}, {}
            local host, polls = catching_driver(caught, function(_, readable, writable)
                if (readable or writable) and c then c:close() end
            end)
            c = dp.new(helpers.https(emu, { driver = host }))
            c:reset_async(helpers.registered(emu), function(_, err) results[#results + 1] = err end)
            run_until(results, 1)
            assert.same({}, caught)
            assert.equals("closed", results[1].kind)
            assert.is_nil(next(polls))
            host:close()
        end)

        it("a hook that closes the driver: the request ends closed, every socket unwatched", function()
            local host, results, caught = nil, {}, {}
            local polls
            host, polls = catching_driver(caught, function(_, readable, writable)
                if readable or writable then host:close() end
            end)
            local c = dp.new(helpers.https(emu, { driver = host }))
            c:reset_async(helpers.registered(emu), function(_, err) results[#results + 1] = err end)
            run_until(results, 1)
            assert.same({}, caught)
            assert.equals("closed", results[1].kind)
            assert.is_nil(next(polls))
            c:close()
        end)

        it("a hook that raises: the call raises it and did nothing; the next call runs", function()
            local raised, results = false, {}
            local host = catching_driver({}, nil, function()
                if not raised then
                    raised = true
                    error("timer hook failed")
                end
            end)
            local c = dp.new(helpers.https(emu, { driver = host }))
            local ok, err = pcall(c.reset_async, c, helpers.registered(emu), function(done)
                results[#results + 1] = "first: " .. tostring(done)
            end)
            assert.is_false(ok)
            assert.matches("timer hook failed", err)
            c:reset_async(helpers.registered(emu), function(done) results[#results + 1] = done end)
            run_until(results, 1)
            assert.same({ true }, results)
            assert.equals(1, #emu:requests())
            c:close()
            host:close()
        end)

        it("a raise straight out of driver:ready leaves the next result queued, then delivered", function()
            local caught, results = {}, {}
            local host = catching_driver(caught)
            local function answer(_, err)
                results[#results + 1] = err.kind
                error("from the callback")
            end
            local c1 = dp.new(helpers.https(emu, { driver = host }))
            local c2 = dp.new(helpers.https(emu, { driver = host }))
            -- refused before any I/O: both are delivered by one turn of the loop
            c1:reset_async("not a token", answer)
            c2:reset_async("not a token", answer)
            run_until(results, 2)
            c1:close()
            c2:close()
            host:close()
            assert.same({ "invalid_token", "invalid_token" }, results)
            assert.equals(2, #caught)
            assert.matches("from the callback", caught[1])
        end)

        it("collectgarbage() in the callback changes nothing", function()
            local results = {}
            for _ = 1, 3 do
                client():reset_async(helpers.registered(emu), function(ok)
                    collectgarbage()
                    results[#results + 1] = ok
                end)
            end
            run_until(results, 3)
            assert.same({ true, true, true }, results)
        end)

        it("close() in on_retry: the next attempt is answered closed", function()
            emu:set_fault({ action = "status", status = 503, count = 1, path = "/v1/authorization:reset" })
            local c, results
            c = dp.new(helpers.https(emu, { driver = driver, retries = 2, retry_max_delay = 0.01,
                on_retry = function() c:close() end }))
            results = {}
            c:reset_async(helpers.registered(emu), function(_, err) results[#results + 1] = err end)
            run_until(results, 1)
            assert.equals("closed", results[1].kind)
        end)
    end)

    it("checks the driver option", function()
        assert.has_error(function() dp.new({ driver = {} }) end)
        assert.has_error(function() dp.driver({ watch = print }) end)
    end)

    describe("token sources on the loop", function()
        local SECRET = "s3cret-s3cret-s3cret"

        local function source()
            emu:clear()
            emu:add_client({ client_id = "cid", client_secret = SECRET,
                             redirect_uris = { "http://127.0.0.1/cb" } })
            local refresh = "1//0g" .. require("dataportability.core").random_base64url(40)
            emu:add_token(nil, { dp.scope_for("myactivity.youtube") }, { refresh_token = refresh })
            return dp.token_source({ client_id = "cid", client_secret = SECRET, refresh_token = refresh,
                                     token_endpoint = emu.https_endpoint .. "/token", ca_file = emu.ca_file,
                                     driver = driver })
        end

        it("refresh_async: a fresh access token, later, on the loop", function()
            local s, results = source(), {}
            s:refresh_async(function(access, err) results[#results + 1] = { access = access, err = err } end)
            assert.equals(0, #results)
            run_until(results, 1)
            assert.is_string(results[1].access)
            assert.equals(results[1].access, s:token()) -- cached: no second request
            assert.equals(1, #emu:requests())
            assert.has_error(function() s:refresh_async() end)
        end)

        it("two calls that find the token expired share one refresh", function()
            local s = source()
            local a, b, results = client(), client(), {}
            local function record(ok, err) results[#results + 1] = { ok = ok, err = err } end
            a:check_access_type_async(s, record)
            b:check_access_type_async(s, record)
            run_until(results, 2)
            for _, r in ipairs(results) do assert.is_table(r.ok, tostring(r.err)) end
            local tokens = 0
            for _, r in ipairs(emu:requests()) do if r.path == "/token" then tokens = tokens + 1 end end
            assert.equals(1, tokens)
            a:close()
            b:close()
        end)

        it("an _async call refreshes without blocking: the loop ticks while /token is slow", function()
            local s = source()
            emu:set_fault({ action = "delay", seconds = 1, path = "/token", count = 1 })
            local c, results, ticks = client(), {}, 0
            local ticker = uv.new_timer()
            ticker:start(5, 5, function() ticks = ticks + 1 end)
            c:reset_async(s, function(ok, err)
                results[#results + 1] = { ok = ok, err = err, ticks = ticks }
            end)
            local returned = ticks
            run_until(results, 1)
            ticker:close()
            assert.is_true(results[1].ok, tostring(results[1].err))
            -- a blocking refresh would have held reset_async for the whole second
            assert.is_true(results[1].ticks - returned >= 20, results[1].ticks - returned)
            local paths = {}
            for i, r in ipairs(emu:requests()) do paths[i] = r.path end
            assert.same({ "/token", "/v1/authorization:reset" }, paths)
            assert.is_nil(s.access_token) -- the reset revoked it: forgotten
            c:close()
        end)
    end)

    describe("export_async", function()
        local MiB = 1024 * 1024
        local dir
        before_each(function()
            emu:clear()
            emu:configure({ job_seconds = 0.2, files = {
                { name = "big.zip", size = 8 * MiB + 3 }, { name = "small.zip", size = 1000 } } })
            dir = helpers.tmpdir()
        end)
        after_each(function() os.execute("rm -rf " .. helpers.quote(dir)) end)

        local md5_of = helpers.md5_of

        local GROUPS = { "myactivity.youtube" }

        it("exports on the loop: returns at once, progress on the loop, files checked, resets", function()
            local token = helpers.registered(emu, { dp.scope_for("myactivity.youtube") })
            local c, results, events, ticks = client(), {}, {}, 0
            local ticker = uv.new_timer()
            ticker:start(5, 5, function() ticks = ticks + 1 end)
            local busy -- a second download while one runs raises, and leaves the first alone
            c:export_async(token, GROUPS, { dir = dir, on_progress = function(e)
                events[#events + 1] = { type = e.type, done = e.done, ticks = ticks }
                if e.type == "download" and not busy then
                    busy = select(2, pcall(c.transport.download, c.transport, "https://127.0.0.2/x",
                        dir .. "/x", { if_range = '"other"', resume = true }))
                end
            end }, function(r, err) results[#results + 1] = { r = r, err = err } end)
            assert.equals(0, #results + #events) -- nothing before export_async returns
            run_until(results, 1)
            ticker:close()
            local r = assert(results[1].r, tostring(results[1].err))
            assert.matches("busy", tostring(busy))
            assert.is_true(r.reset)
            assert.equals(2, #r.files)
            for _, f in ipairs(r.files) do
                assert.equals(md5_of(f.path), f.md5)
                assert.equals(f.name == "big.zip" and 8 * MiB + 3 or 1000, helpers.size_of(f.path))
            end
            local downloads, first, last = 0, nil, nil
            for _, e in ipairs(events) do
                if e.type == "download" then
                    downloads, first, last = downloads + 1, first or e, e
                end
            end
            assert.equals("job", events[1].type)
            assert.equals("reset", events[#events].type)
            assert.is_true(downloads >= 4, downloads) -- about one per MiB
            assert.is_true(last.ticks > first.ticks) -- the loop's timer ran during the download
            local _, err = c:state(token, r.job_id) -- the reset revoked it
            assert.equals(401, err.http_status)
            c:close()
        end)

        it("close() from on_progress: the export ends `closed`, the part stays for a resume", function()
            local token = helpers.registered(emu, { dp.scope_for("myactivity.youtube") })
            local c, results = client(), {}
            c:export_async(token, GROUPS, { dir = dir, reset = false, on_progress = function(e)
                if e.type == "download" then c:close() end
            end }, function(r, err) results[#results + 1] = { r = r, err = err } end)
            run_until(results, 1)
            assert.is_nil(results[1].r)
            local err = results[1].err
            assert.equals("closed", err.kind)
            assert.is_string(err.job_id)
            assert.is_true(helpers.size_of(dir .. "/" .. err.job_id .. "/.big.zip.part") >= MiB)
            -- a new client resumes it, blocking, to the same bytes
            local blocking = dp.new(helpers.https(emu))
            local again = assert(blocking:export(token, GROUPS, { dir = dir, job_id = err.job_id }))
            assert.equals(md5_of(again.files[1].path), again.files[1].md5)
        end)

        it("streams to a sink on the loop: chunks in order, each file's end, then the callback", function()
            local token = helpers.registered(emu, { dp.scope_for("myactivity.youtube") })
            local c, results, order, sizes = client(), {}, {}, {}
            local sink = {
                write = function(_, chunk, file) sizes[file.name] = (sizes[file.name] or 0) + #chunk end,
                close = function(_, file, err) order[#order + 1] = file.name .. ":" .. tostring(err) end,
            }
            c:export_async(token, GROUPS, { sink = sink, reset = false },
                function(r, err) results[#results + 1] = { r = r, err = err, order = #order } end)
            run_until(results, 1)
            local r = assert(results[1].r, tostring(results[1].err))
            assert.same({ ["big.zip"] = 8 * MiB + 3, ["small.zip"] = 1000 }, sizes)
            assert.same({ "big.zip:nil", "small.zip:nil" }, order)
            assert.equals(2, results[1].order) -- both ends before the callback
            assert.is_string(r.files[1].md5)
            assert.is_nil(r.files[1].path)
            c:close()
        end)

        it("a sink that raises: the download stops, the error reaches the loop as it was", function()
            local token = helpers.registered(emu, { dp.scope_for("myactivity.youtube") })
            local raised, chunks = {}, 0
            local host = require("dataportability.async").luv_driver(uv, function(fn)
                local ok, err = pcall(fn)
                if not ok then raised[#raised + 1] = err end
            end)
            local boom = setmetatable({}, { __tostring = function() return "boom" end })
            local c, results = dp.new(helpers.https(emu, { driver = host })), {}
            c:export_async(token, GROUPS, { reset = false, sink = function(chunk)
                if chunk then
                    chunks = chunks + 1
                    if chunks == 2 then error(boom) end
                end
            end }, function(r, err) results[#results + 1] = { r = r, err = err } end)
            run_until(raised, 1)
            assert.equals(boom, raised[1])
            assert.equals(2, chunks) -- none after the raise
            assert.equals(0, #results) -- the export ended with the raise
            c:close()
            host:close()
        end)

        it("checks its arguments at once, before any I/O", function()
            local c, token = client(), helpers.token()
            assert.has_error(function() c:export_async(token, GROUPS, { dir = "" }, print) end)
            assert.has_error(function() c:export_async(token, GROUPS, { bogus = 1 }, print) end)
            assert.has_error(function() c:export_async(token, GROUPS, { dir = dir }) end)
            assert.has_error(function() c:export_async(42, GROUPS, { dir = dir }, print) end)
            assert.equals(0, #emu:requests())
            c:close()
        end)
    end)
end)
