-- The export workflow as one call: initiate, poll with growing intervals
-- until the job ends, download every file to disk (streamed, resumable,
-- verified), then reset, as Google's guidance says: only once every job is
-- done and every file is downloaded.
local core = require("dataportability.core")
local errors = require("dataportability.errors")
local options = require("dataportability.options")

local tostring, error = tostring, error
local format, gsub, char, tonumber, min = string.format, string.gsub, string.char, tonumber, math.min
local open, rename, remove = io.open, os.rename, os.remove

local METHOD = "export"
local RESUMES = 5 -- a download cut mid-file is resumed this many times

local OPTIONS = options.spec({
    dir = "string!", reset = "boolean", on_progress = "function", job_id = "string",
    start_time = "string|number", end_time = "string|number", poll_interval = "number",
    poll_max_interval = "number", max_wait = "number",
})

local sleep, now = core.sleep, os.time

local function file_size(path)
    local f = open(path, "rb")
    if not f then return nil end
    local size = f:seek("end")
    f:close()
    return size
end

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

-- Downloads url into final (through final .. ".part", renamed when whole
-- and verified). Returns size, md5; or nil, err, expired (the signed URL
-- needs renewing).
local function fetch(client, url, final, name, progress)
    local part = final .. ".part"
    local md5
    local report = progress and function(done, total)
        progress({ type = "download", file = name, done = done, total = total })
    end
    for _ = 0, RESUMES do
        local r = client.transport:download(url, part, report)
        local status = r.status
        md5 = r.md5 or md5 -- a cut transfer resumes from what it wrote
        if not status then
            if not errors.new(METHOD, r.kind, r.message).retryable then
                return nil, download_error(r.kind, r.message)
            end
        elseif status == 200 or status == 206 then
            if not r.total or r.size == r.total then
                if md5 then
                    local got, why = core.md5_file(part)
                    if got ~= md5 then
                        remove(part)
                        return nil, download_error("integrity", format(
                            "%s: MD5 %s does not match the server's %s", name, tostring(got or why), md5))
                    end
                end
                local ok, why = rename(part, final)
                if not ok then return nil, download_error("io", tostring(why)) end
                return r.size, md5
            end
        elseif status == 416 then -- the part is already whole, or longer than the file
            remove(part)
        elseif status == 400 or status == 401 or status == 403 then
            return nil, errors.from_response(METHOD, status, r.error_body or "", nil, nil), true
        else
            return nil, errors.from_response(METHOD, status, r.error_body or "", nil, nil)
        end
    end
    return nil, download_error("network", format("%s: still incomplete after %d resumes", name, RESUMES))
end

-- Polls until the job ends: its COMPLETE state, or nil, err.
local function wait(client, token, job_id, opts, progress)
    local delay, max_delay = opts.poll_interval or 1, opts.poll_max_interval or 30
    local deadline = now() + (opts.max_wait or 7 * 86400)
    local last
    while true do
        local st, err = client:state(token, job_id)
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
        sleep(delay)
        delay = min(delay * 1.5, max_delay)
    end
end

local _M = { file_name = file_name }

--- client:export(token, resources, opts) -> result | nil, err; called by
--- client:export only: what it raises blames the caller of that.
function _M.run(client, token, resources, opts)
    if client.cosockets then
        error("export downloads files with the C core, which would block nginx's worker: run it outside"
            .. " nginx (a script, a job queue), or use the single methods here", 3)
    end
    options.check(opts, OPTIONS, "export", 3, 3)
    local progress = opts.on_progress
    local job_id = opts.job_id
    if not job_id then
        local job, err = client:initiate(token, resources,
            { start_time = opts.start_time, end_time = opts.end_time })
        if not job then return nil, err end
        job_id = job.archive_job_id
        if progress then progress({ type = "job", job_id = job_id, access_type = job.access_type }) end
    end

    local st, err = wait(client, token, job_id, opts, progress)
    if not st then
        err.job_id = job_id
        return nil, err
    end
    local files, taken = {}, {}
    for i = 1, #st.urls do
        local name = file_name(st.urls[i], taken)
        local final = opts.dir .. "/" .. name
        local size, md5 = file_size(final), nil -- a file finished by an earlier run stays
        if not size or file_size(final .. ".part") then
            local expired
            size, md5, expired = fetch(client, st.urls[i], final, name, progress)
            if not size and expired then -- signed URLs expire: renew once
                local fresh, serr = client:state(token, job_id)
                if fresh then
                    size, md5 = fetch(client, fresh.urls[i] or st.urls[i], final, name, progress)
                else
                    md5 = serr
                end
            end
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
        local ok, rerr = client:reset(token)
        if not ok then
            rerr.job_id, rerr.files = job_id, files
            return nil, rerr
        end
        if progress then progress({ type = "reset" }) end
    end
    return { job_id = job_id, state = st.state, files = files, reset = reset }
end

return _M
