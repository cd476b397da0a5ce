-- fork(): a client, and the caches every client of a Lua state shares, used
-- in a process other than the one that filled them never reuse that
-- process's connections, DNS answers or TLS sessions. The child starts
-- clean, and the parent's connections are left as they were. A real fork,
-- through Debian's lua-posix, or where it has no build (Lua 5.4, so the
-- valgrind and ASan+UBSan runs too) through spec/fork/forkhelper.c (make
-- spec-helpers), against the emulator over HTTP and HTTPS; the emulator's
-- request log tells connections apart.
local dp = require("dataportability")
local helpers = require("spec.helpers")

-- The calls the spec makes, by lua-posix's names, with its conventions:
-- lua-posix where it is installed, spec/fork/forkhelper.c otherwise.
local function posix()
    local has_posix, unistd = pcall(require, "posix.unistd")
    if has_posix then
        local signal = require("posix.signal")
        return {
            fork = unistd.fork, _exit = unistd._exit, pipe = unistd.pipe, read = unistd.read,
            write = unistd.write, close = unistd.close, rpoll = require("posix.poll").rpoll,
            wait = require("posix.sys.wait").wait, kill = signal.kill, SIGKILL = signal.SIGKILL,
        }
    end
    local has_helper, helper = pcall(require, "forkhelper")
    if has_helper then return helper end
    error("needs lua-posix (posix.unistd) or spec/fork/forkhelper.c built for " .. _VERSION
        .. " (make spec-helpers) on busted's --cpath:\n" .. tostring(helper), 0)
end
local px = posix()

local CHECK = "/v1/accessType:check"
local CALLS = 30         -- calls on each side, and on each of the child's two clients
local WRONG_MAX = 3      -- a side stops after this many wrong answers: enough to show
local CHILD_SECONDS = 60 -- the longest the parent waits for the child

-- The child's pid until it is reaped, so that teardown can stop it.
local child

-- What a call answered, in one line: "true", "a result" or "401 UNAUTHENTICATED",
-- or the kind of a failure that had no answer.
local function answer(result, err)
    if result == true then return "true" end
    if result then return "a result" end
    if err.http_status then return err.http_status .. " " .. tostring(err.status) end
    return err.kind .. ": " .. tostring(err.message)
end

-- Runs fn() in a forked child, which reports fn's string through a pipe
-- and _exits (never returning into busted): status 0 when fn returned, 1
-- when it raised. Returns the read end of the pipe.
local function fork(fn)
    local r, w = assert(px.pipe())
    local pid = assert(px.fork())
    if pid == 0 then
        px.close(r)
        local ok, report = pcall(fn)
        if not ok then report = "error\t" .. tostring(report):gsub("\n", " ") .. "\n" end
        local at = 1
        while at <= #report do
            local n = px.write(w, report:sub(at))
            if not n then break end
            at = at + n
        end
        px._exit(ok and 0 or 1)
    end
    child = pid
    px.close(w)
    return r
end

-- The child's report, once it closes the pipe; nil after `seconds`.
local function read_report(fd, seconds)
    local parts, deadline = {}, os.time() + seconds
    while os.time() <= deadline do
        if px.rpoll(fd, 100) > 0 then
            local chunk = px.read(fd, 4096)
            if not chunk or chunk == "" then return table.concat(parts) end
            parts[#parts + 1] = chunk
        end
    end
end

-- Reaps the child, killing it first unless it is known to have finished.
local function stop_child(finished)
    if not child then return nil end
    if not finished then px.kill(child, px.SIGKILL) end
    local _, how, code = px.wait(child)
    child = nil
    return how, code
end

for _, scheme in ipairs({ "http", "https" }) do
    describe("a client used across fork(), over " .. scheme, function()
        local emu, run

        -- Over HTTP the clients name the emulator "localhost": the admin
        -- client (127.0.0.1, same cache) then never shares their connections.
        local function options(user_agent)
            local opts = scheme == "https"
                and { endpoint = emu.https_endpoint, ca_file = emu.ca_file }
                or { endpoint = "http://localhost:" .. emu.http_port }
            opts.user_agent, opts.retries, opts.timeout = user_agent, 0, 3
            return opts
        end

        -- The parent warms a connection, then forks. The child calls
        -- accessType.check on the parent's client and reset on a client of
        -- its own, with an unknown token (401 each time); the parent resets
        -- registered tokens (true each time) meanwhile, and once more after
        -- the child is done.
        lazy_setup(function()
            emu = helpers.start()
            local tokens = {}
            for i = 1, CALLS + 2 do tokens[i] = helpers.registered(emu) end
            local unknown = helpers.token()
            local parent = dp.new(options("fork-spec-parent"))
            assert.is_true(parent:reset(tokens[CALLS + 1]))
            local before = emu:requests()

            local fd = fork(function()
                local own = dp.new(options("fork-spec-child"))
                local lines, wrong = {}, 0
                local function expect(what, got)
                    if got ~= "401 UNAUTHENTICATED" then
                        wrong = wrong + 1
                        lines[#lines + 1] = "wrong\t" .. what .. ": " .. got .. "\n"
                    end
                end
                for i = 1, CALLS do
                    expect("check " .. i .. " on the parent's client",
                        answer(parent:check_access_type(unknown)))
                    expect("reset " .. i .. " on its own client", answer(own:reset(unknown)))
                    if wrong >= WRONG_MAX then break end
                end
                return table.concat(lines) .. "done\n"
            end)

            local ok, err = pcall(function()
                local wrong = {}
                for i = 1, CALLS do
                    local got = answer(parent:reset(tokens[i]))
                    if got ~= "true" then wrong[#wrong + 1] = "reset " .. i .. ": " .. got end
                    if #wrong >= WRONG_MAX then break end
                end
                local report = read_report(fd, CHILD_SECONDS)
                local how, code = stop_child(report ~= nil)
                local after = answer(parent:reset(tokens[CALLS + 2]))
                if after ~= "true" then wrong[#wrong + 1] = "the reset after the child: " .. after end
                run = { parent_wrong = wrong, report = report or "(no report: killed)",
                        exit = how .. " " .. code, before = before, log = emu:requests() }
            end)
            px.close(fd)
            stop_child(false)
            parent:close()
            if not ok then error(err, 0) end
        end)

        lazy_teardown(function()
            stop_child(false)
            helpers.stop(emu)
        end)

        -- The requests logged since the fork: the child's (its user agent, or
        -- accessType.check, which only the child calls) and the parent's.
        local function split()
            local ours, theirs = {}, {}
            for i = #run.before + 1, #run.log do
                local r = run.log[i]
                if r.path == CHECK or r.headers["user-agent"]:find("fork-spec-child", 1, true) then
                    theirs[#theirs + 1] = r
                else
                    ours[#ours + 1] = r
                end
            end
            return ours, theirs
        end

        it("the child finishes and reports", function()
            assert.equals("exited 0", run.exit)
            assert.matches("done\n$", run.report)
        end)

        it("every answer is the answer to that process's own request", function()
            local child_wrong = {}
            for line in run.report:gmatch("wrong\t([^\n]*)") do child_wrong[#child_wrong + 1] = line end
            assert.same({ parent = {}, child = {} }, { parent = run.parent_wrong, child = child_wrong })
        end)

        it("the child's requests never go out on a connection the parent opened", function()
            local opened = {}
            for _, r in ipairs(run.before) do opened[r.connection] = true end
            local _, theirs = split()
            local on_parents = {} -- "path on connection" = how many
            for _, r in ipairs(theirs) do
                if opened[r.connection] then
                    local key = r.path .. " on " .. r.connection
                    on_parents[key] = (on_parents[key] or 0) + 1
                end
            end
            assert.same({}, on_parents)
            assert.equals(2 * CALLS, #theirs) -- each sent, once
        end)

        it("the parent's calls, during the child's and after, all reuse its connection", function()
            local per_connection = {} -- connection = how many of the parent's calls
            for _, r in ipairs((split())) do
                per_connection[r.connection] = (per_connection[r.connection] or 0) + 1
            end
            local warm = run.before[#run.before].connection
            assert.same({ [warm] = CALLS + 1 }, per_connection) -- each sent once, on the warm one
        end)

        if scheme == "https" then
            it("the child's first connection does not resume the parent's TLS session", function()
                local _, theirs = split()
                local first
                for _, r in ipairs(theirs) do
                    if r.connection_requests == 1 then first = r; break end
                end
                assert.is_table(first) -- the child opened a connection of its own
                assert.is_nil(first.tls_resumed)
            end)
        end
    end)
end

describe("fork() inside a callback of a running call", function()
    local emu

    lazy_setup(function() emu = helpers.start() end)
    lazy_teardown(function()
        stop_child(false)
        helpers.stop(emu)
    end)

    it("the call goes on in the parent; in the child it raises, touching nothing", function()
        local tokens = {}
        for i = 1, 6 do tokens[i] = helpers.registered(emu) end
        local c = dp.new(helpers.https(emu))
        local r, w = assert(px.pipe())
        local forked, in_child = false, false
        local ok, results = pcall(c.reset_many, c, tokens, { concurrency = 2, on_result = function()
            if forked then return end
            forked = true
            local pid = assert(px.fork())
            if pid == 0 then in_child = true else child = pid end
        end })
        if in_child then -- the child reports how reset_many ended, and leaves
            px.close(r)
            px.write(w, (ok and "returned" or "raised\t" .. tostring(results):gsub("\n", " ")) .. "\n")
            px._exit(0)
        end
        px.close(w)
        local report = read_report(r, CHILD_SECONDS)
        px.close(r)
        local how, code = stop_child(report ~= nil)
        c:close()
        assert.is_true(ok, tostring(results))
        for i = 1, #tokens do assert.is_true(results[i], "token " .. i) end
        assert.equals("exited 0", how .. " " .. code)
        assert.matches("^raised\t.*the process forked inside a callback", report)
    end)
end)
