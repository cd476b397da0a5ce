-- client:export inside a real nginx + ngx_lua (spec/openresty/), against the
-- real emulator: every step on cosockets, in the content phase and in a
-- timer, files streamed to disk and checked as outside nginx; and the worker
-- keeps serving while a timer downloads a large file.
local helpers = require("spec.helpers")
local openresty = require("spec.openresty.nginx")
local cjson = require("cjson.safe")

local MiB = 1024 * 1024
local dp_scope = require("dataportability").scope_for("myactivity.youtube")
local q = helpers.quote

local function escape(s)
    return (tostring(s):gsub("[^%w%-%._~/]", function(c) return ("%%%02X"):format(c:byte()) end))
end

-- A path's permission bits in octal ("600").
local function mode(path)
    return (helpers.sh("stat -c %a " .. q(path)):gsub("%s+$", ""))
end

local md5_of = helpers.md5_of

describe("OpenResty: client:export on cosockets #host", function()
    local emu, server, dir

    lazy_setup(function()
        emu = helpers.start()
        server = openresty.start(emu)
    end)
    lazy_teardown(function()
        if server then server:stop() end
        helpers.stop(emu)
    end)
    before_each(function()
        emu:clear()
        emu:configure({ job_seconds = 0.2, files = {
            { name = "youtube-1.zip", size = 3 * MiB + 17 }, { name = "youtube-2.zip", size = 1000 },
            { name = "empty.zip", size = 0 } } })
        dir = helpers.tmpdir()
    end)
    after_each(function() os.execute("rm -rf " .. q(dir)) end)

    local function registered()
        return helpers.registered(emu, { dp_scope })
    end

    -- GET /t/<name> of spec/openresty/cases.lua, the token in the header:
    -- the decoded answer, and how long it took.
    local function case(name, token, args)
        local query = { "endpoint=" .. escape(emu.https_endpoint) }
        for k, v in pairs(args or {}) do query[#query + 1] = k .. "=" .. escape(v) end
        local p = assert(io.popen("curl -s -m 120 -w '\\n%{time_total}' "
            .. (token and ("-H " .. q("Authorization: Bearer " .. token) .. " ") or "")
            .. q(server.url .. "/t/" .. name .. "?" .. table.concat(query, "&"))))
        local out = p:read("*a")
        p:close()
        local body, seconds = out:match("^(.*)\n([%d.]+)$")
        return assert(cjson.decode(body or out), out), tonumber(seconds)
    end

    it("exports a whole archive in the content phase, then resets", function()
        local token = registered()
        local r = case("export", token, { dir = dir })
        assert.is_true(r.ok, cjson.encode(r))
        assert.is_true(r.reset)
        assert.equals(3, #r.files)
        local want = { ["youtube-1.zip"] = 3 * MiB + 17, ["youtube-2.zip"] = 1000, ["empty.zip"] = 0 }
        local job_dir = dir .. "/" .. r.job_id
        for _, f in ipairs(r.files) do
            assert.equals(job_dir .. "/" .. f.name, f.path)
            assert.equals(want[f.name], f.size)
            assert.equals(want[f.name], helpers.size_of(f.path))
            assert.equals(md5_of(f.path), f.md5) -- the server's x-goog-hash, checked
            assert.equals("600", mode(f.path))
        end
        assert.equals("700", mode(job_dir))
        local types, done = {}, 0
        for _, e in ipairs(r.events) do
            types[e.type] = (types[e.type] or 0) + 1
            if e.type == "download" then -- at most once per MiB, growing, of the whole file
                assert.is_true(e.done >= done + MiB and e.done <= e.total, cjson.encode(e))
                assert.equals(3 * MiB + 17, e.total)
                done = e.done
            end
        end
        assert.equals(1, types.job)
        assert.equals(3, types.file)
        assert.equals(1, types.reset)
        assert.is_true(types.download >= 2, cjson.encode(r.events))
        local downloads = 0
        for _, req in ipairs(emu:requests()) do
            if req.path:find("^/dataportability%-emulator/") then
                downloads = downloads + 1
                assert.is_nil(req.headers.authorization)
            end
        end
        assert.equals(3, downloads)
        local again = case("export", token, { dir = dir }) -- the reset revoked the token
        assert.is_false(again.ok)
        assert.equals(401, again.http_status)
    end)

    it("resumes a download cut mid-file with Range and If-Range, and checks the whole file", function()
        emu:set_fault({ action = "cut", path_prefix = "/dataportability-emulator/", after_bytes = MiB,
                        count = 1 })
        local r = case("export", registered(), { dir = dir })
        assert.is_true(r.ok, cjson.encode(r))
        local f = r.files[1]
        assert.equals(3 * MiB + 17, helpers.size_of(f.path))
        assert.equals(md5_of(f.path), f.md5)
        local ranged
        for _, req in ipairs(emu:requests()) do
            local resumed = req.headers.range == "bytes=" .. MiB .. "-"
            ranged = ranged or (resumed and req.headers["if-range"] ~= nil)
        end
        assert.is_true(ranged)
    end)

    it("a download that stalls ends after low_speed_time, with the job id to resume", function()
        emu:set_fault({ action = "delay", seconds = 30, path_prefix = "/dataportability-emulator/",
                        count = 100 })
        local r = case("export", registered(), { dir = dir, low_speed_time = 1 })
        assert.is_false(r.ok)
        assert.equals("network", r.kind)
        assert.matches("still incomplete after 5 resumes", r.message)
        assert.is_string(r.job_id)
    end)

    it("streams an archive into the HTTP response through a sink, resuming a cut, never on disk", function()
        emu:configure({ job_seconds = 0.2, files = { { name = "one.zip", size = 3 * MiB + 17 } } })
        emu:set_fault({ action = "cut", path_prefix = "/dataportability-emulator/", after_bytes = MiB,
                        count = 1 })
        local body = dir .. "/body"
        helpers.sh("curl -s -m 120 -o " .. q(body) .. " -H " .. q("Authorization: Bearer " .. registered())
            .. " " .. q(server.url .. "/t/stream?endpoint=" .. escape(emu.https_endpoint)))
        local r = case("streamed")
        assert.is_true(r.ok, cjson.encode(r))
        assert.equals(3 * MiB + 17, helpers.size_of(body))
        assert.equals(md5_of(body), r.files[1].md5)
        assert.is_nil(r.files[1].path)
        local ranged
        for _, req in ipairs(emu:requests()) do
            ranged = ranged or req.headers.range == "bytes=" .. MiB .. "-"
        end
        assert.is_true(ranged)
    end)

    it("token sources refresh and revoke over cosockets", function()
        emu:add_client({ client_id = "cid", client_secret = "spec-secret-0123",
                         redirect_uris = { "http://127.0.0.1/cb" } })
        local refresh = "1//0g" .. require("dataportability.core").random_base64url(40)
        emu:add_token(nil, { dp_scope }, { refresh_token = refresh })
        local r = case("source", refresh)
        assert.is_true(r.refreshed, cjson.encode(r))
        assert.is_true(r.call.ok, cjson.encode(r.call))
        assert.is_true(r.revoked.ok, cjson.encode(r.revoked))
        assert.equals("invalid_grant", r.after_revoke, cjson.encode(r))
        local paths = {}
        for i, req in ipairs(emu:requests()) do paths[i] = req.path end
        assert.same({ "/token", "/v1/accessType:check", "/revoke", "/token" }, paths)
    end)

    it("a timer exports a large file while the worker keeps answering", function()
        emu:configure({ job_seconds = 0.2, files = { { name = "big.zip", size = 256 * MiB } } })
        local started = case("exportlater", registered(), { dir = dir })
        assert.is_true(started.started)
        -- ping between progress reads: pings answered while the export was
        -- running and had moved on since the previous ping
        local latencies, overlapped, last_done = {}, 0, -1
        local state
        repeat
            local pong, seconds = case("ping")
            assert.is_true(pong.pong)
            latencies[#latencies + 1] = seconds * 1000
            state = case("exported")
            if state.running and state.done > last_done and last_done > 0 then overlapped = overlapped + 1 end
            if state.running then last_done = state.done end
        until not state.running or #latencies > 20000
        assert.is_true(state.result.ok, cjson.encode(state.result))
        assert.equals(256 * MiB, state.result.files[1].size)
        assert.is_true(overlapped >= 3, ("only %d of %d pings while the download moved"):format(overlapped,
            #latencies))
        table.sort(latencies)
        print(("\n  OpenResty: %d pings during a 256 MiB export in a timer (%d while it moved):"
            .. " median %.1f ms, slowest %.1f ms"):format(#latencies, overlapped,
            latencies[math.ceil(#latencies / 2)], latencies[#latencies]))
    end)
end)
