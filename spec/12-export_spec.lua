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
local rss_kib = helpers.rss_kib

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

    local function registered()
        local token = helpers.token()
        emu:add_token(token, { dp.scope_for(GROUP) })
        return token
    end

    it("exports a whole archive, without the token at the storage host, then resets", function()
        local token, events = registered(), {}
        local result = assert(c:export(token, { GROUP }, { dir = dir, poll_interval = 0.1,
            on_progress = function(e) events[#events + 1] = e.type end }))
        assert.is_true(result.reset)
        assert.equals("COMPLETE", result.state)
        assert.equals(3, #result.files)
        local want = { ["youtube-1.zip"] = 3 * MiB + 17, ["youtube-2.zip"] = 1000, ["empty.zip"] = 0 }
        for _, f in ipairs(result.files) do
            assert.equals(want[f.name], f.size)
            assert.equals(want[f.name], size_of(dir .. "/" .. f.name))
            assert.equals(dir .. "/" .. f.name, f.path)
            assert.is_string(f.md5) -- verified against the server's x-goog-hash
            assert.is_nil(size_of(f.path .. ".part"))
        end
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
        local result = assert(c:export(registered(), { GROUP }, { dir = dir, poll_interval = 0.1 }))
        assert.equals(3 * MiB + 17, size_of(dir .. "/youtube-1.zip"))
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
        local ok, err = c:export(token, { GROUP }, { dir = dir, poll_interval = 0.1 })
        assert.is_nil(ok)
        assert.is_string(err.job_id)
        assert.is_true(size_of(dir .. "/youtube-1.zip.part") > 0)
        emu:clear_faults()
        local result = assert(c:export(token, { GROUP }, { dir = dir, job_id = err.job_id, reset = false }))
        assert.is_false(result.reset)
        assert.equals(3 * MiB + 17, size_of(dir .. "/youtube-1.zip"))
        assert.is_true(c:reset(token))
    end)

    it("reports a failed job with kind job, and keeps the token", function()
        emu:configure({ outcome = "FAILED" })
        local token = registered()
        local ok, err = c:export(token, { GROUP }, { dir = dir, poll_interval = 0.1 })
        assert.is_nil(ok)
        assert.equals("job", err.kind)
        assert.equals("FAILED", err.state)
        assert.is_table(c:check_access_type(token))
    end)

    it("keeps memory flat for a large file #large", function()
        emu:configure({ files = { { name = "big.zip", size = 300 * MiB } } })
        collectgarbage()
        local before = rss_kib()
        local result = assert(c:export(registered(), { GROUP }, { dir = dir, poll_interval = 0.1 }))
        local grown = rss_kib() - before
        assert.equals(300 * MiB, result.files[1].size)
        assert.equals(300 * MiB, size_of(dir .. "/big.zip"))
        assert.is_true(grown < 16 * 1024, "RSS grew by " .. grown .. " KiB")
    end)
end)
