-- client:export against the emulator: initiate, poll, streamed downloads
-- from signed URLs on another host (without the token), resume after a cut,
-- then reset.
local dp = require("dataportability")
local export = require("dataportability.export")
local helpers = require("spec.helpers")

local GROUP = "myactivity.youtube"
local MiB = 1024 * 1024

local tmpdir = helpers.tmpdir
local size_of = helpers.size_of
local md5_of = helpers.md5_of
local rss_kib = helpers.rss_kib
local sh = helpers.sh

-- A path's permission bits in octal ("600"), never through a link.
local function mode(path)
    return (sh("stat -c %a '" .. path .. "'"):gsub("%s+$", ""))
end

describe("file names from signed URLs", function()
    it("keeps them inside the directory, safe and unique", function()
        local taken = {}
        assert.equals("archive.zip", export.file_name("https://h/b/j/archive.zip?X-Goog-Signature=1", taken))
        assert.equals("archive-2.zip", export.file_name("https://h/b/j/archive.zip", taken))
        assert.equals("etc_passwd", export.file_name("https://h/b/j/..%2F..%2Fetc%2Fpasswd", taken))
        assert.equals("hidden", export.file_name("https://h/b/j/.hidden", taken))
        assert.equals("a_b_c.zip", export.file_name("https://h/b/j/a%20b%00c.zip", taken))
        assert.equals("archive", export.file_name("https://h/b/j/", taken))
        assert.equals("archive-2", export.file_name("https://h/b/j/..", taken))
    end)
end)

describe("client:export against the emulator", function()
    local emu, c, dir

    lazy_setup(function() emu = helpers.start() end)
    lazy_teardown(function() helpers.stop(emu) end)
    before_each(function()
        emu:clear()
        emu:configure({ job_seconds = 0.2, files = {
            { name = "youtube-1.zip", size = 3 * MiB + 17 }, { name = "youtube-2.zip", size = 1000 },
            { name = "empty.zip", size = 0 } } })
        c = dp.new(helpers.https(emu))
        dir = tmpdir()
    end)
    after_each(function()
        c:close()
        os.execute("rm -rf '" .. dir .. "'")
    end)

    local function registered() return helpers.registered(emu, { dp.scope_for(GROUP) }) end

    it("exports a whole archive, without the token at the storage host, then resets", function()
        local token, events = registered(), {}
        local result = assert(c:export(token, { GROUP }, { dir = dir, poll_interval = 1,
            on_progress = function(e) events[#events + 1] = e.type end }))
        assert.is_true(result.reset)
        assert.equals("COMPLETE", result.state)
        assert.equals(3, #result.files)
        local want = { ["youtube-1.zip"] = 3 * MiB + 17, ["youtube-2.zip"] = 1000, ["empty.zip"] = 0 }
        local job_dir = dir .. "/" .. result.job_id
        for _, f in ipairs(result.files) do
            assert.equals(want[f.name], f.size)
            assert.equals(want[f.name], size_of(job_dir .. "/" .. f.name))
            assert.equals(job_dir .. "/" .. f.name, f.path)
            assert.is_string(f.md5) -- verified against the server's x-goog-hash
            assert.is_nil(size_of(job_dir .. "/." .. f.name .. ".part"))
            assert.equals("600", mode(f.path))
        end
        assert.equals("700", mode(job_dir))
        assert.same("job", events[1])
        assert.same("reset", events[#events])
        local downloads = 0
        for _, r in ipairs(emu:requests()) do
            if r.host and r.host:find("^127%.0%.0%.2") then
                downloads = downloads + 1
                assert.is_nil(r.headers.authorization)
                assert.is_nil(r.headers["x-goog-user-project"])
            end
        end
        assert.equals(3, downloads)
        local ok, err = c:state(token, result.job_id) -- the reset revoked the token
        assert.is_nil(ok)
        assert.equals(401, err.http_status)
    end)

    it("resumes a download cut mid-file with Range", function()
        emu:set_fault({ action = "cut", path_prefix = "/dataportability-emulator/", after_bytes = MiB,
                        count = 1 })
        local result = assert(c:export(registered(), { GROUP }, { dir = dir, poll_interval = 1 }))
        assert.equals(3 * MiB + 17, size_of(dir .. "/" .. result.job_id .. "/youtube-1.zip"))
        assert.equals(3, #result.files)
        local ranged
        for _, r in ipairs(emu:requests()) do
            ranged = ranged or (r.headers.range == "bytes=" .. MiB .. "-")
        end
        assert.is_true(ranged)
    end)

    it("fails with the job id when downloads keep failing, and finishes on the next run", function()
        emu:set_fault({ action = "cut", path_prefix = "/dataportability-emulator/", after_bytes = 1000,
                        count = 100 })
        local token = registered()
        local ok, err = c:export(token, { GROUP }, { dir = dir, poll_interval = 1 })
        assert.is_nil(ok)
        assert.is_string(err.job_id)
        assert.is_true(size_of(dir .. "/" .. err.job_id .. "/.youtube-1.zip.part") > 0)
        emu:clear_faults()
        -- either form of the id finds the same directory
        local result = assert(c:export(token, { GROUP }, { dir = dir, job_id = "archiveJobs/" .. err.job_id,
            reset = false }))
        assert.is_false(result.reset)
        assert.equals(3 * MiB + 17, size_of(dir .. "/" .. err.job_id .. "/youtube-1.zip"))
        assert.is_true(c:reset(token))
    end)

    it("reports a failed job with kind job, and keeps the token", function()
        emu:configure({ outcome = "FAILED" })
        local token = registered()
        local ok, err = c:export(token, { GROUP }, { dir = dir, poll_interval = 1 })
        assert.is_nil(ok)
        assert.equals("job", err.kind)
        assert.equals("FAILED", err.state)
        assert.is_table(c:check_access_type(token))
    end)

    it("keeps memory flat for a large file #large", function()
        emu:configure({ files = { { name = "big.zip", size = 300 * MiB } } })
        collectgarbage()
        local before = rss_kib()
        local result = assert(c:export(registered(), { GROUP }, { dir = dir, poll_interval = 1 }))
        local grown = rss_kib() - before
        assert.equals(300 * MiB, result.files[1].size)
        assert.equals(300 * MiB, size_of(dir .. "/" .. result.job_id .. "/big.zip"))
        assert.is_true(grown < 16 * 1024, "RSS grew by " .. grown .. " KiB")
    end)
end)

describe("client:export keeps each job's files its own, private and bounded", function()
    local emu, c, dir

    lazy_setup(function() emu = helpers.start() end)
    lazy_teardown(function() helpers.stop(emu) end)
    before_each(function()
        emu:clear()
        emu:configure({ job_seconds = 0, files = { { name = "a.zip", size = 2 * MiB + 5 },
            { name = "a.zip.part", size = 1000 } } })
        c = dp.new(helpers.https(emu))
        dir = tmpdir()
    end)
    after_each(function()
        c:close()
        os.execute("rm -rf '" .. dir .. "'")
    end)

    local function registered() return helpers.registered(emu, { dp.scope_for(GROUP) }) end

    -- An export with reset off (the token stays usable), as `token` or a new user.
    local function run(extra, token)
        local opts = { dir = dir, poll_interval = 1, reset = false }
        for k, v in pairs(extra or {}) do opts[k] = v end
        return c:export(token or registered(), { GROUP }, opts)
    end


    it("a second job in a directory used before downloads its own files, each with its MD5", function()
        local first = assert(run())
        local second = assert(run())
        assert.are_not.equal(first.job_id, second.job_id)
        for i, f in ipairs(second.files) do
            assert.equals(dir .. "/" .. second.job_id .. "/" .. f.name, f.path)
            assert.is_string(f.md5)
            assert.equals(f.md5, md5_of(f.path))
            assert.are_not.equal(md5_of(first.files[i].path), f.md5) -- another job's bytes
        end
    end)

    it("a file named like another's temporary file: both arrive, none vanishes", function()
        local result = assert(run())
        assert.equals(2, #result.files)
        for _, f in ipairs(result.files) do
            assert.equals(f.size, size_of(f.path))
            assert.equals(f.md5, md5_of(f.path))
        end
    end)

    it("a .part of another object is not resumed: the file starts over, and its MD5 is checked", function()
        local token = registered()
        local first = assert(run(nil, token))
        local job_dir = dir .. "/" .. first.job_id
        local whole = job_dir .. "/a.zip"
        -- as an interrupted export of another object would leave it: bytes, and their identity
        os.remove(whole)
        helpers.write(job_dir .. "/.a.zip.part", string.rep("X", MiB))
        helpers.write(job_dir .. "/.a.zip.json", '{"total": 9999999, "etag": "\\"other\\""}')
        local again = assert(run({ job_id = first.job_id }, token))
        assert.equals(2 * MiB + 5, size_of(whole))
        assert.equals(again.files[1].md5, md5_of(whole))
        assert.equals(first.files[1].md5, again.files[1].md5)
    end)

    it("a resumed .part of the same object is checked whole, by MD5", function()
        emu:set_fault({ action = "cut", path_prefix = "/dataportability-emulator/", after_bytes = MiB,
                        count = 1 })
        local result = assert(run())
        local f = result.files[1]
        assert.equals(2 * MiB + 5, size_of(f.path))
        assert.equals(f.md5, md5_of(f.path))
        local ranged
        for _, r in ipairs(emu:requests()) do ranged = ranged or r.headers["if-range"] ~= nil end
        assert.is_true(ranged) -- the resume asked for the same object
    end)

    it("never writes through a planted link, nor replaces a file it did not make", function()
        local token = registered()
        local first = assert(run(nil, token))
        local job_dir = dir .. "/" .. first.job_id
        local outside = tmpdir() .. "/precious"
        helpers.write(outside, "keep me")
        os.remove(job_dir .. "/a.zip")
        sh("ln -s '" .. outside .. "' '" .. job_dir .. "/.a.zip.part'")
        assert(run({ job_id = first.job_id }, token)) -- the link is removed, not followed
        assert.equals("keep me", helpers.read(outside))
        os.remove(job_dir .. "/a.zip")
        sh("ln -s '" .. outside .. "' '" .. job_dir .. "/a.zip'") -- someone else's final name
        os.remove(job_dir .. "/.a.zip.json")
        local _, err = run({ job_id = first.job_id }, token)
        -- a link in the final name is not a finished file: the download cannot publish over it
        assert.equals("io", err.kind)
        assert.equals("keep me", helpers.read(outside))
    end)

    it("refuses a directory that others can write, and makes its own 0700", function()
        sh("chmod 777 '" .. dir .. "'")
        local ok, err = run()
        assert.is_nil(ok)
        assert.equals("io", err.kind)
        assert.matches("writable by group or others", err.message)
        sh("chmod 755 '" .. dir .. "'")
        local fresh = dir .. "/new/sub"
        sh("mkdir '" .. dir .. "/new'")
        local result = assert(c:export(registered(), { GROUP }, { dir = fresh, poll_interval = 1,
            reset = false }))
        assert.equals("700", mode(fresh))
        assert.equals("700", mode(fresh .. "/" .. result.job_id))
    end)

    it("checks its bounds: a non-empty dir, polls at most once a second, a positive max_wait", function()
        local token = registered()
        for _, bad in ipairs({ { dir = "" }, { dir = dir, poll_interval = 0 },
                                { dir = dir, poll_interval = 0.5 },
                                { dir = dir, max_wait = 0 }, { dir = dir, max_wait = 0 / 0 },
                                { dir = dir, poll_interval = 5, poll_max_interval = 2 },
                                { dir = dir, low_speed_time = 0 }, { dir = dir, download_timeout = -1 } }) do
            assert.has_error(function() c:export(token, { GROUP }, bad) end)
        end
        assert.equals(0, #emu:requests())
    end)

    it("a download that stalls ends: low_speed_time, then download_timeout", function()
        emu:set_fault({ action = "delay", seconds = 30, path_prefix = "/dataportability-emulator/",
                        count = 100 })
        -- each attempt ends after a second without a byte: the first download
        -- and its five resumes, no more; then the overall deadline, at once
        local function downloads()
            local n = 0
            for _, r in ipairs(emu:requests()) do
                if r.path:find("^/dataportability%-emulator/") then n = n + 1 end
            end
            emu:clear_requests()
            return n
        end
        local ok, err = run({ low_speed_time = 1, low_speed_limit = 1000 })
        assert.is_nil(ok)
        assert.equals("network", err.kind)
        assert.matches("still incomplete after 5 resumes", err.message)
        assert.equals(6, downloads())
        ok, err = run({ download_timeout = 1 })
        assert.is_nil(ok)
        assert.equals("timeout", err.kind)
        assert.equals(1, downloads())
    end)
end)

describe("client:export to a sink", function()
    local emu, c
    local TOTAL = 3 * MiB + 17

    lazy_setup(function() emu = helpers.start() end)
    lazy_teardown(function() helpers.stop(emu) end)
    before_each(function()
        emu:clear()
        emu:configure({ job_seconds = 0.2, files = { { name = "one.zip", size = TOTAL },
                                                     { name = "two.zip", size = 1000 } } })
        c = dp.new(helpers.https(emu))
    end)
    after_each(function() c:close() end)

    local function registered() return helpers.registered(emu, { dp.scope_for(GROUP) }) end

    -- A sink that keeps what it is given, per file, and how each file ended.
    local function recorder()
        local got = {}
        return got, function(chunk, file, err)
            local f = got[file.name] or { parts = {}, index = file.index }
            got[file.name] = f
            if chunk then f.parts[#f.parts + 1] = chunk else f.ended, f.err = true, err end
        end
    end

    -- The MD5 of bytes, as the server's x-goog-hash gives it.
    local function md5(bytes)
        local path = os.tmpname()
        helpers.write(path, bytes)
        local out = helpers.md5_of(path)
        os.remove(path)
        return out
    end

    it("gives every chunk, in order, then the end of each file; resumes a cut", function()
        emu:set_fault({ action = "cut", path_prefix = "/dataportability-emulator/", after_bytes = MiB,
                        count = 1 })
        local got, sink = recorder()
        local result = assert(c:export(registered(), { GROUP }, { sink = sink, reset = false }))
        assert.equals(2, #result.files)
        for i, f in ipairs(result.files) do
            local bytes = table.concat(got[f.name].parts)
            assert.equals(f.name == "one.zip" and TOTAL or 1000, #bytes)
            assert.equals(f.size, #bytes)
            assert.equals(md5(bytes), f.md5) -- the server's hash, checked on the stream
            assert.is_nil(f.path)
            assert.is_true(got[f.name].ended)
            assert.is_nil(got[f.name].err)
            assert.equals(i, got[f.name].index)
        end
        assert.is_true(#got["one.zip"].parts > 3) -- chunks, not one string
        local ranged
        for _, r in ipairs(emu:requests()) do ranged = ranged or r.headers.range == "bytes=" .. MiB .. "-" end
        assert.is_true(ranged)
    end)

    it("takes an object with write and close", function()
        local sizes, closed = {}, {}
        local sink = {
            write = function(self, chunk, file)
                assert.is_table(self)
                sizes[file.name] = (sizes[file.name] or 0) + #chunk
            end,
            close = function(_, file, err) closed[#closed + 1] = file.name .. ":" .. tostring(err) end,
        }
        local result = assert(c:export(registered(), { GROUP }, { sink = sink, reset = false }))
        assert.same({ ["one.zip"] = TOTAL, ["two.zip"] = 1000 }, sizes)
        assert.same({ "one.zip:nil", "two.zip:nil" }, closed)
        assert.equals(2, #result.files)
    end)

    it("ends a file with its error when it cannot come whole, and fails the export", function()
        emu:set_fault({ action = "cut", path_prefix = "/dataportability-emulator/", after_bytes = 1000,
                        count = 100 })
        local got, sink = recorder()
        local ok, err = c:export(registered(), { GROUP }, { sink = sink, reset = false })
        assert.is_nil(ok)
        assert.equals("network", err.kind)
        assert.is_string(err.job_id)
        assert.is_true(got["one.zip"].ended)
        assert.equals(err.message, got["one.zip"].err.message)
    end)

    it("a sink that raises: export raises it, as it was", function()
        local boom = setmetatable({}, { __tostring = function() return "boom" end })
        local ok, raised = pcall(c.export, c, registered(), { GROUP }, { reset = false,
            sink = function(chunk) if chunk then error(boom) end end })
        assert.is_false(ok)
        assert.equals(boom, raised)
        assert.is_true(c:reset(registered())) -- the client goes on
    end)

    it("a sink that closes the client: the export ends `closed`, and the file's end says so", function()
        local got, record = recorder()
        local function sink(chunk, file, ferr)
            record(chunk, file, ferr)
            if chunk then c:close() end
        end
        local result, err = c:export(registered(), { GROUP }, { reset = false, sink = sink })
        assert.is_nil(result)
        assert.equals("closed", err.kind)
        assert.is_true(got["one.zip"].ended)
        assert.equals("closed", got["one.zip"].err.kind)
        assert.is_nil(got["two.zip"])
    end)

    it("takes dir or sink, one of them; a sink must be callable", function()
        local token = registered()
        for _, bad in ipairs({ {}, { dir = "/tmp", sink = print }, { sink = {} },
                               { sink = { write = print } }, { sink = 42 } }) do
            assert.has_error(function() c:export(token, { GROUP }, bad) end)
        end
        assert.equals(0, #emu:requests())
    end)
end)
