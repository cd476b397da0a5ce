-- The export workflow as one call: initiate, poll with growing intervals
-- until the job ends, download every file to disk (streamed, resumable,
-- verified), then reset, as Google's guidance says: only once every job is
-- done and every file is downloaded.
--
-- Where files land: DIR/<job id>/NAME, a directory of the job's own (0700),
-- files 0600. A download in progress is DIR/<job id>/.NAME.part, with its
-- identity (the server's size, ETag and MD5) in .NAME.json: a server's file
-- name is never hidden, so neither can be one. A .part is resumed only for
-- the same job, file and identity (If-Range with its ETag; a 206 of another
-- size starts over), and the whole file's MD5 is checked after a resume.
local core = require("dataportability.core")
local errors = require("dataportability.errors")
local options = require("dataportability.options")
local transport = require("dataportability.transport")
local json = require("cjson.safe")

local tostring, error, type = tostring, error, type
local format, gsub, char, tonumber, min, find = string.format, string.gsub, string.char, tonumber, math.min,
    string.find
local remove = os.remove

local METHOD = "export"
local RESUMES = 5 -- a download cut mid-file is resumed this many times
local DAY = 86400

local function at_least(n, what)
    return function(v)
        if not (v >= n and v < math.huge) then return format("must be %s >= %g", what, n) end
    end
end

local OPTIONS = options.spec({
    dir = { "string", check = function(v) if v == "" then return "must not be empty" end end },
    sink = { "function|table", check = function(v)
        if type(v) == "table" and (type(v.write) ~= "function" or type(v.close) ~= "function") then
            return "must be a function, or an object with write and close methods"
        end
    end },
    reset = "boolean", on_progress = "function", job_id = "string",
    start_time = "string|number", end_time = "string|number",
    -- Google's guidance: poll a job no more often than about once a second
    poll_interval = { "number", check = at_least(1, "a number of seconds") },
    poll_max_interval = { "number", check = at_least(1, "a number of seconds") },
    max_wait = { "number", check = function(v)
        if not (v > 0 and v <= 30 * DAY) then return "must be a number of seconds in (0, 30 days]" end
    end },
    low_speed_limit = { "number", check = at_least(1, "a number of bytes a second") },
    low_speed_time = { "number", check = function(v)
        if not (v >= 1 and v <= 3600) then return "must be a number of seconds in [1, 3600]" end
    end },
    download_timeout = { "number", check = function(v)
        if not (v > 0 and v <= 30 * DAY) then return "must be a number of seconds in (0, 30 days]" end
    end },
})

-- A download slower than this for this long ends, and is resumed.
local LOW_SPEED_LIMIT, LOW_SPEED_TIME = 1024, 60

local now = os.time
local select, unpack, yield = select, table.unpack or unpack, coroutine.yield -- luacheck: ignore 143
local file_size = core.file_size

--- A safe local name for a signed URL's file: its last path segment,
--- decoded, kept to letters, digits and ._- (so no path can escape `dir`),
--- never hidden or empty, unique within one export.
local function file_name(url, taken)
    local segment = url:match("^[^?#]*"):match("([^/]*)$") or ""
    segment = gsub(segment, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end)
    local name = gsub(gsub(segment, "[^%w._-]", "_"), "^[._]+", ""):sub(1, 200)
    if name == "" then name = "archive" end
    local base, ext = name:match("^(.-)(%.[^.]*)$")
    if not base or base == "" then base, ext = name, "" end
    local candidate, n = name, 1
    while taken[candidate] do
        n = n + 1
        candidate = format("%s-%d%s", base, n, ext)
    end
    taken[candidate] = true
    return candidate
end

local function download_error(kind, message, fields)
    return errors.new(METHOD, kind, message, fields)
end

-- A job id ("ID" or "archiveJobs/ID") as a directory name: as Google mints
-- them, letters, digits, - and _.
local function job_dir(dir, job_id)
    job_id = gsub(job_id, "^archiveJobs/", "")
    if not find(job_id, "^[%w_-]+$") or #job_id > 128 then
        return nil, format("job id %q cannot name a directory", job_id:sub(1, 40))
    end
    return dir .. "/" .. job_id
end

local function read_identity(path)
    if not file_size(path) then return nil end
    local f = io.open(path, "rb")
    local doc = f and json.decode(f:read("*a") or "")
    if f then f:close() end
    return type(doc) == "table" and doc or nil
end

-- What fetch and stream share: each attempt's options (the bounds, the
-- time left, progress events for `name`), and what an answer that is not
-- the file means: nil, err, expired (the signed URL needs renewing).
local function attempt_options(bounds, name, progress)
    local left = bounds.deadline and bounds.deadline - core.now()
    if left and left <= 0 then
        return nil, download_error("timeout", name .. ": download_timeout ran out")
    end
    return {
        low_speed_limit = bounds.low_speed_limit, low_speed_time = bounds.low_speed_time, timeout = left,
        progress = progress and function(done, total)
            progress({ type = "download", file = name, done = done, total = total })
        end,
    }
end

local function refused(status, r)
    return nil, errors.from_response(METHOD, status, r.error_body or "", nil, nil),
        status == 400 or status == 401 or status == 403
end

local function incomplete(name)
    return nil, download_error("network", format("%s: still incomplete after %d resumes", name, RESUMES))
end

-- Downloads url into DIR/<job>/NAME through .NAME.part (published when whole
-- and verified). Returns size, md5; or nil, err, expired (the signed URL
-- needs renewing).
local function fetch(host, url, jdir, name, progress, bounds)
    local final, part, id_path = jdir .. "/" .. name, jdir .. "/." .. name .. ".part",
        jdir .. "/." .. name .. ".json"
    local id = read_identity(id_path) -- what the part was made from
    if not (id and file_size(part)) then
        remove(part)
        remove(id_path)
        id = nil
    end
    for _ = 0, RESUMES do
        local o, err = attempt_options(bounds, name, progress)
        if not o then return nil, err end
        o.resume, o.if_range = id ~= nil, id and id.etag
        local r = host.download(url, part, o)
        local status, answered = r.status, r.status or r.answered -- answered: cut short too
        if answered == 206 and id and (r.total ~= id.total or (r.etag and r.etag ~= id.etag)) then
            -- the part is of another object: it starts over
            remove(part)
            remove(id_path)
            id = nil
        elseif answered == 200 or (answered == 206 and not id) then -- a whole answer: its identity
            id = { total = r.total, etag = r.etag, md5 = r.md5 }
            local ok, why = core.write_private(id_path, json.encode(id))
            if not ok then return nil, download_error("io", why) end
        end
        if not status then
            if not errors.new(METHOD, r.kind, r.message).retryable then
                return nil, download_error(r.kind, r.message)
            end
            if not id then remove(part) end -- nothing says what its bytes are of
        elseif (status == 200 or status == 206) and id then
            if not r.total or r.size == r.total then
                -- r.digest: of the whole file, a resumed prefix too
                if id.md5 and r.digest ~= id.md5 then
                    remove(part)
                    remove(id_path)
                    return nil, download_error("integrity", format(
                        "%s: MD5 %s does not match the server's %s", name, tostring(r.digest), id.md5))
                end
                local ok, why = core.publish(part, final)
                if not ok then return nil, download_error("io", why) end
                return r.size, id.md5
            end
        elseif status == 416 then -- the part is already whole, or longer than the file
            remove(part)
            remove(id_path)
            id = nil
        elseif status ~= 206 then
            return refused(status, r)
        end
    end
    return incomplete(name)
end

-- A file on its way to the user's sink: sink(chunk, file) or
-- sink:write(chunk, file) for each chunk, then once at the end
-- sink(nil, file, err) or sink:close(file, err), err nil when it came
-- whole and verified. Its hash and identity outlive one signed URL.
local function new_stream(sink, file)
    local object = type(sink) == "table"
    local s = { file = file, hash = core.part_file(nil) }
    function s.give(chunk)
        if object then sink:write(chunk, file) else sink(chunk, file) end
        s.hash:write(chunk) -- once the sink has it
    end
    function s.finish(err)
        s.hash:close()
        if object then sink:close(file, err) else sink(nil, file, err) end
    end
    return s
end

-- Streams url's bytes to the stream s (new_stream). A transfer cut short
-- resumes with Range from what the sink has (If-Range: the first answer's
-- ETag); a server that sends the whole file again ends it. Returns size,
-- md5; or nil, err, expired (the signed URL needs renewing).
local function stream(host, url, s, progress, bounds)
    local name = s.file.name
    for _ = 0, RESUMES do
        local o, err = attempt_options(bounds, name, progress)
        if not o then return nil, err end
        local offset, id = s.hash:size(), s.id
        o.sink, o.offset, o.if_range = s.give, offset, id and id.etag
        local r = host.download(url, nil, o)
        local status, answered = r.status, r.status or r.answered
        if (answered == 200 and offset == 0) or (answered == 206 and not id) then
            s.id = { total = r.total, etag = r.etag, md5 = r.md5 }
            id = s.id
        elseif answered == 206 and (r.total ~= id.total or (r.etag and r.etag ~= id.etag)) then
            return nil, download_error("http", name .. ": the file changed while it came")
        end
        if not status then -- a retryable failure goes on from what the sink has
            err = download_error(r.kind, r.message)
            if not err.retryable then return nil, err end
        elseif (status == 200 or status == 206) and (not id.total or s.hash:size() == id.total) then
            local md5 = s.hash:digest()
            if id.md5 and md5 ~= id.md5 then
                return nil, download_error("integrity", format("%s: MD5 %s does not match the server's %s",
                    name, md5, id.md5))
            end
            return s.hash:size(), id.md5
        elseif status ~= 206 then
            return refused(status, r)
        end
    end
    return incomplete(name)
end

-- Polls until the job ends: its COMPLETE state, or nil, err.
local function wait(host, token, job_id, opts, progress)
    local delay = opts.poll_interval or 1
    local max_delay = opts.poll_max_interval or math.max(30, delay)
    local deadline = now() + (opts.max_wait or 7 * DAY)
    local last
    while true do
        local st, err = host.call("state", token, job_id)
        if not st and not err.retryable then
            return nil, err
        end
        if st and st.state ~= last then
            last = st.state
            if progress then progress({ type = "state", job_id = job_id, state = st.state }) end
        end
        if st and st.state == "COMPLETE" then
            return st
        end
        if st and (st.state == "FAILED" or st.state == "CANCELLED") then
            return nil, errors.new(METHOD, "job", format("archive job %s ended %s", job_id, st.state),
                { state = st.state, job_id = job_id })
        end
        if now() + delay > deadline then
            return nil, errors.new(METHOD, "timeout", format("archive job %s still %s after max_wait",
                job_id, tostring(last)), { job_id = job_id })
        end
        host.sleep(delay)
        delay = min(delay * 1.5, max_delay)
    end
end

local _M = { file_name = file_name }

--- export.check(opts, fname): raises on bad options, blaming the caller
--- of client:fname.
function _M.check(opts, fname)
    if opts == nil then -- dir or sink is needed: nil is no empty table here
        error(format("bad argument #3 to '%s' (options table expected, got nil)", fname), 3)
    end
    opts = options.check(opts, OPTIONS, fname, 3, 3)
    if (opts.dir == nil) == (opts.sink == nil) then
        error(fname .. ": give option 'dir' (files on disk) or option 'sink', one of them", 3)
    end
    if opts.poll_max_interval and opts.poll_max_interval < (opts.poll_interval or 1) then
        error(fname .. ": option 'poll_max_interval' must be >= poll_interval", 3)
    end
end

--- How the workflow's steps run, blocking (in nginx on cosockets, which
--- yield to its loop): call(name, ...) a client method, download(url,
--- path, opts) as the transport's, sleep(seconds).
function _M.blocking(client)
    return {
        call = function(name, ...) return client[name](client, ...) end,
        download = function(...) return client.transport:download(...) end,
        sleep = transport.sleep,
    }
end

--- The same steps on the client's event loop, from inside a coroutine:
--- each step starts its asynchronous form and suspends the coroutine until
--- it ends; resume(...) resumes it with the step's results.
function _M.on_loop(client, driver, resume)
    local function await(start)
        local results, waiting
        start(function(...)
            if waiting then return resume(...) end
            results = { n = select("#", ...), ... } -- ended at once: co never suspended
        end)
        if results then return unpack(results, 1, results.n) end
        waiting = true
        return yield()
    end
    return {
        call = function(name, ...)
            local args = { n = select("#", ...), ... }
            return await(function(done)
                args[args.n + 1] = done
                client[name .. "_async"](client, unpack(args, 1, args.n + 1))
            end)
        end,
        download = function(url, path, o)
            local r = await(function(done) driver:download(client.transport, url, path, o, done) end)
            if r.raised then error(r.raised[1], 0) end -- the sink's error, as it was
            return r
        end,
        sleep = function(seconds)
            return await(function(done) driver:after(seconds, done) end)
        end,
    }
end

--- export.run(host, token, resources, opts) -> result | nil, err: the
--- workflow, its steps run by host (checked opts).
function _M.run(host, token, resources, opts)
    local sink = opts.sink
    if not sink then
        local ok, why = core.private_dir(opts.dir, true)
        if not ok then return nil, download_error("io", why) end
    end
    local progress = opts.on_progress
    local job_id = opts.job_id
    if not job_id then
        local job, err = host.call("initiate", token, resources,
            { start_time = opts.start_time, end_time = opts.end_time })
        if not job then return nil, err end
        job_id = job.archive_job_id
        if progress then progress({ type = "job", job_id = job_id, access_type = job.access_type }) end
    end

    local st, err = wait(host, token, job_id, opts, progress)
    if not st then
        err.job_id = job_id
        return nil, err
    end
    local jdir
    if not sink then
        local why
        jdir, why = job_dir(opts.dir, job_id)
        if not jdir then return nil, download_error("http", why, { job_id = job_id }) end
        local ok
        ok, why = core.private_dir(jdir, true)
        if not ok then return nil, download_error("io", why, { job_id = job_id }) end
    end
    local bounds = {
        low_speed_limit = opts.low_speed_limit or LOW_SPEED_LIMIT,
        low_speed_time = opts.low_speed_time or LOW_SPEED_TIME,
        deadline = opts.download_timeout and core.now() + opts.download_timeout,
    }
    local files, taken = {}, {}
    for i = 1, #st.urls do
        local name = file_name(st.urls[i], taken)
        local final = jdir and jdir .. "/" .. name
        local streaming = sink and new_stream(sink, { name = name, index = i })
        local function get(url)
            if streaming then return stream(host, url, streaming, progress, bounds) end
            return fetch(host, url, jdir, name, progress, bounds)
        end
        -- finished by an earlier run of this job: published only once verified
        local size = final and file_size(final)
        local md5
        if size then
            local id = read_identity(jdir .. "/." .. name .. ".json")
            md5 = id and id.md5
        else
            local expired
            size, md5, expired = get(st.urls[i])
            if not size and expired then -- signed URLs expire: renew once
                local fresh, serr = host.call("state", token, job_id)
                if fresh then
                    size, md5 = get(fresh.urls[i] or st.urls[i])
                else
                    md5 = serr
                end
            end
            if streaming then streaming.finish(not size and md5 or nil) end
            if not size then -- md5 is the error
                md5.job_id, md5.files = job_id, files
                return nil, md5
            end
        end
        files[#files + 1] = { name = name, path = final, size = size, md5 = md5 }
        if progress then progress({ type = "file", file = name, path = final, size = size }) end
    end

    local reset = opts.reset ~= false
    if reset then
        local done, rerr = host.call("reset", token)
        if not done then
            rerr.job_id, rerr.files = job_id, files
            return nil, rerr
        end
        if progress then progress({ type = "reset" }) end
    end
    return { job_id = job_id, state = st.state, files = files, reset = reset }
end

return _M
