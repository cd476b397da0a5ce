-- The commands (docs/cli.md): each is command(ctx, client, token, args)
-- -> true | nil, err, and prints its result through ctx: ctx:say and
-- ctx:tell for people (each line escaped), ctx:json with --json.
local scopes = require("dataportability.scopes")
local core = require("dataportability.core")
local arguments = require("dataportability.cli.arguments")
local output = require("dataportability.cli.output")
local login = require("dataportability.cli.login")

local pairs, ipairs = pairs, ipairs
local format = string.format
local concat, sort = table.concat, table.sort

local list, human_size = output.list, output.human_size

local COMMANDS = {}

-- A command of one API call: c.call(ctx, client, token) -> result | nil,
-- err; then c.json(ctx, result), the table printed with --json, or
-- c.say(ctx, result), which prints the lines for people.
local function one_call(c)
    return function(ctx, client, token)
        local result, err = c.call(ctx, client, token)
        if not result then return nil, err end
        if ctx.opts.json then
            ctx:json(c.json(ctx, result))
        else
            c.say(ctx, result)
        end
        return true
    end
end

COMMANDS.reset = one_call({
    call = function(_, client, token) return client:reset(token) end,
    json = function() return { reset = true } end,
    say = function(ctx)
        ctx:say("reset: done")
        if ctx.opts.credentials then
            ctx:say("the credentials in ", arguments.path_shown(ctx, ctx.opts.credentials), " are revoked"
                .. " now: run 'dataportability login' before the next export")
        end
    end,
})

local function job_line(id, access_type, extra)
    return format("job %s started%s%s", id, extra or "", access_type and (" (" .. access_type .. ")") or "")
end

COMMANDS.initiate = one_call({
    call = function(ctx, client, token)
        return client:initiate(token, ctx.resources, { start_time = ctx.start_time, end_time = ctx.end_time })
    end,
    json = function(_, job) return { archive_job_id = job.archive_job_id, access_type = job.access_type } end,
    say = function(ctx, job) ctx:say(job_line(job.archive_job_id, job.access_type)) end,
})

COMMANDS.state = one_call({
    call = function(ctx, client, token) return client:state(token, ctx.job) end,
    json = function(_, st)
        st.urls = list(st.urls)
        return st
    end,
    say = function(ctx, st)
        ctx:say("state: ", st.state)
        if st.start_time then ctx:say("start time: ", st.start_time) end
        if st.export_time then ctx:say("export time: ", st.export_time) end
        for _, url in ipairs(st.urls) do ctx:say(url) end
    end,
})

COMMANDS.retry = one_call({ -- the retry is a new job
    call = function(ctx, client, token) return client:retry(token, ctx.job) end,
    json = function(ctx, job)
        return { archive_job_id = job.archive_job_id, access_type = job.access_type, retry_of = ctx.job }
    end,
    say = function(ctx, job)
        ctx:say(job_line(job.archive_job_id, job.access_type, " (retry of " .. ctx.job .. ")"))
    end,
})

COMMANDS.cancel = one_call({
    call = function(ctx, client, token) return client:cancel(token, ctx.job) end,
    json = function(ctx) return { archive_job_id = ctx.job, cancelled = true } end,
    say = function(ctx) ctx:say("job ", ctx.job, " cancelled") end,
})

COMMANDS["access-type"] = one_call({
    call = function(_, client, token) return client:check_access_type(token) end,
    json = function(_, r)
        return { one_time_resources = list(r.one_time_resources),
                 time_based_resources = list(r.time_based_resources) }
    end,
    say = function(ctx, r)
        local function line(t) return #t > 0 and concat(t, " ") or "(none)" end
        ctx:say("one-time: ", line(r.one_time_resources))
        ctx:say("time-based: ", line(r.time_based_resources))
    end,
})

-- DIR, made 0700 when missing (archives hold personal data) and checked
-- as client:export will; the message does not show a DIR that looks like
-- a token.
local function private_dir(ctx, dir)
    local fine, err = arguments.refused_token(ctx, "--dir", dir) -- it would be in every file's path
    if not fine then return nil, err end
    local ok, why = core.private_dir(dir, true)
    if not ok then return ctx:fail("io", arguments.about_file(ctx, why, dir)) end
    return true
end

function COMMANDS.export(ctx, client, token)
    local o = ctx.opts
    local ok, err = private_dir(ctx, o.dir)
    if not ok then return nil, err end
    local human = not o.json
    local bar = ctx:progress_bar()
    -- ctx.job_id: a job the server has named or answered for, the only one
    -- a message suggests to resume (a --job the server does not know is not)
    local result
    result, err = client:export(token, ctx.resources or {}, {
        dir = o.dir, reset = not o.no_reset, job_id = ctx.job,
        start_time = ctx.start_time, end_time = ctx.end_time,
        poll_interval = o.poll_interval, max_wait = o.max_wait,
        on_progress = function(ev)
            if ev.type == "download" then
                if bar then bar.update(ev.file, ev.done, ev.total) end
                return
            end
            if bar then bar.clear() end
            if ev.type == "job" then
                ctx.job_id = ev.job_id
                if human then ctx:say(job_line(ev.job_id, ev.access_type)) end
            elseif ev.type == "state" then
                if not ctx.job_id then -- --job: announced once the server answers for it
                    ctx.job_id = ev.job_id
                    if human then ctx:say("job ", ev.job_id, " resumed") end
                end
                if human then ctx:say("state: ", ev.state) end
            elseif human and ev.type == "file" then
                ctx:say("file: ", ev.path, " (", human_size(ev.size), ")")
            end
        end,
    })
    if bar then bar.clear() end
    if not result then
        if human and err.job_id and ctx.job_id then
            ctx:report(err)
            if err.kind == "job" then
                ctx:tell("to run it again: dataportability retry ", err.job_id)
            else
                ctx:tell("the job is kept: to resume, run the same command with --job ", err.job_id)
            end
            err.reported = true
        end
        return nil, err
    end
    if o.json then
        local files = list()
        for i, f in ipairs(result.files) do
            files[i] = { name = f.name, path = f.path, size = f.size, md5 = f.md5 }
        end
        ctx:json({ job_id = result.job_id, state = result.state, files = files, reset = result.reset })
    else
        ctx:say(format("export: %d file%s in %s", #result.files, #result.files == 1 and "" or "s", o.dir))
        ctx:say(result.reset and "reset: done" or "reset: skipped (--no-reset)")
    end
    return true
end

function COMMANDS.scopes(ctx)
    local names = {}
    for name in pairs(scopes.scopes) do names[#names + 1] = name end
    sort(names)
    if ctx.opts.json then
        local out = list()
        for i, name in ipairs(names) do out[i] = { resource = name, scope = scopes.scopes[name] } end
        ctx:json({ scopes = out })
        return true
    end
    for _, name in ipairs(names) do ctx:say(format("%-42s %s", name, scopes.scopes[name])) end
    return true
end

COMMANDS.login = login.command

return COMMANDS
