-- The command line's words (docs/cli.md, "Synopsis", "Arguments that look
-- like a token"): the commands and options with their help texts, argv
-- parsed and checked before any I/O, and the rule that keeps a token
-- pasted as an argument out of every message.
local scopes = require("dataportability.scopes")
local errors = require("dataportability.errors")
local core = require("dataportability.core")

local ipairs, tonumber = ipairs, tonumber
local format, gsub, find, sub, gmatch = string.format, string.gsub, string.find, string.sub, string.gmatch
local concat = table.concat
local huge = math.huge

local _M = {}

---------------------------------------------------------------------------
-- Commands and options

-- name -> { key in opts, value placeholder (nil: a flag), commands (nil: all) }
local OPTIONS = {
    ["--json"] = { "json" },
    ["--quiet"] = { "quiet" },
    ["--help"] = { "help" },
    ["--endpoint"] = { "endpoint", "URL" },
    ["--ca-file"] = { "ca_file", "FILE" },
    ["--timeout"] = { "timeout", "SECONDS" },
    ["--quota-project"] = { "quota_project", "PROJECT" },
    ["--user-agent"] = { "user_agent", "UA" },
    ["--credentials"] = { "credentials", "FILE" },
    ["--token-file"] = { "token_file", "FILE" },
    ["--start"] = { "start", "TIME", { initiate = true, export = true } },
    ["--end"] = { "end", "TIME", { initiate = true, export = true } },
    ["--dir"] = { "dir", "DIR", { export = true } },
    ["--no-reset"] = { "no_reset", nil, { export = true } },
    ["--job"] = { "job", "JOB", { export = true } },
    ["--poll-interval"] = { "poll_interval", "SECONDS", { export = true } },
    ["--max-wait"] = { "max_wait", "SECONDS", { export = true } },
    ["--client-id"] = { "client_id", "ID", { login = true } },
    ["--client-secret-file"] = { "client_secret_file", "FILE", { login = true } },
    ["--scopes"] = { "scopes", "RESOURCE,...", { login = true } },
    ["--auth-endpoint"] = { "auth_endpoint", "URL", { login = true } },
    ["--token-endpoint"] = { "token_endpoint", "URL", { login = true } },
    ["--port"] = { "port", "PORT", { login = true } },
    ["--wait"] = { "wait", "SECONDS", { login = true } },
}
local SHORT = { ["-h"] = "--help", ["-q"] = "--quiet" }

-- Secrets are never accepted as arguments: every user can read a process's
-- argv (ps, /proc/PID/cmdline), and shells keep it in their history.
local WHY = "a secret on the command line is visible to every user of this machine (ps, /proc)"
    .. " and stays in the shell history"
local TOKEN_WAYS = "pass the token with DATAPORTABILITY_TOKEN, --token-file FILE or --credentials FILE"
local REFUSED = {
    ["--token"] = TOKEN_WAYS, ["--access-token"] = TOKEN_WAYS, ["--bearer"] = TOKEN_WAYS,
    ["--refresh-token"] = "use --credentials FILE (written by 'dataportability login')",
    ["--client-secret"] = "use --client-secret-file FILE",
}

local COMMON = [[
Options (every command):
  --json                 print the result, or {"error": {...}}, as JSON on stdout
  --endpoint URL         API endpoint (default https://dataportability.googleapis.com,
                         or http://$DATAPORTABILITY_EMULATOR_HOST when that is set)
  --ca-file FILE         PEM file of a private CA, for every HTTPS connection
  --timeout SECONDS      for each API call (default 60)
  --quota-project P      bill quota to project P (x-goog-user-project)
  --user-agent UA        appended to the User-Agent header
  --quiet, -q            no progress bar
  --help, -h             help on a command: dataportability COMMAND --help

Token (never on the command line; the first of):
  --credentials FILE     credentials written by 'dataportability login'; access tokens
                         refreshed as needed
  --token-file FILE      an access token: the file's first line
  DATAPORTABILITY_TOKEN  an access token
A file that holds a secret (--credentials, --token-file, --client-secret-file) is refused
when group or others may access it: chmod 600 FILE. An argument that looks like a token is
never printed back.

Human output shows control bytes from the server escaped (\x1b, \r, \n); --json is exact.

Exit status:
  0  success
  1  the API or the server refused (error kinds api, http, redirect, job, integrity,
     too_large)
  2  usage error: unknown command or option, missing argument, a token on the command line
  3  network (timeout, connect, dns, tls, network)
  4  local problem (io, invalid_token, invalid_argument): a missing or unreadable token
     file, one that group or others may read, no token at all, a malformed token or
     argument
]]

-- min, max: how many arguments; token: needs one; job: its argument is a JOB.
local COMMANDS = {
    reset = {
        min = 0, max = 0, token = true,
        usage = "reset",
        summary = "revoke the tokens and reset exhausted scopes (after every export is done)",
        text = [[
Resets the authorization of the token's user and project (authorization.reset):
revokes its OAuth tokens and clears exhausted one-time scopes, so that a new export
can start after a new consent. Call it once every job is finished and every file
downloaded. Prints "reset: done".
]],
    },
    initiate = {
        min = 1, max = huge, token = true,
        usage = "initiate RESOURCE... [--start TIME] [--end TIME]",
        summary = "start an archive job for resource groups",
        text = [[
Starts an archive job (portabilityArchive.initiate) for the resource groups
(e.g. myactivity.youtube; 'dataportability scopes' lists them; commas also separate).
Prints "job ID started (ACCESS_TYPE)".

  --start TIME  --end TIME   the data window: RFC 3339 (2024-10-02T15:01:23Z),
                             a date (2024-10-02, midnight UTC) or Unix seconds
]],
    },
    state = {
        min = 1, max = 1, token = true, job = true,
        usage = "state JOB",
        summary = "show a job's state and, once COMPLETE, its download URLs",
        text = [[
Shows the state of an archive job (archiveJobs.getPortabilityArchiveState):
"state: IN_PROGRESS|COMPLETE|FAILED|CANCELLED", the export time, then once COMPLETE
the signed download URLs, one per line.
]],
    },
    retry = {
        min = 1, max = 1, token = true, job = true,
        usage = "retry JOB",
        summary = "retry a FAILED job; prints the new job's id",
        text = [[
Retries a FAILED archive job (archiveJobs.retry). The retry is a new job: prints
"job NEW started (retry of JOB)"; poll the new id.
]],
    },
    cancel = {
        min = 1, max = 1, token = true, job = true,
        usage = "cancel JOB",
        summary = "cancel an IN_PROGRESS job",
        text = [[
Cancels an IN_PROGRESS archive job (archiveJobs.cancel). Prints "job JOB cancelled".
]],
    },
    ["access-type"] = {
        min = 0, max = 0, token = true,
        usage = "access-type",
        summary = "which of the token's resource groups are one-time or time-based",
        text = [[
Shows which of the token's resource groups were granted one-time and which
time-based access (accessType.check).
]],
    },
    export = {
        min = 0, max = huge, token = true,
        usage = "export RESOURCE... --dir DIR [--no-reset] [--job JOB] [--start TIME] [--end TIME]",
        summary = "initiate, wait, download every file into DIR, then reset",
        text = [[
The whole export: initiates a job for the resource groups (or resumes JOB), polls
until it is COMPLETE, downloads every file into DIR/JOB/ (DIR created, mode 0700, when
missing; verified; a file cut short is resumed), then resets the authorization.
Prints the job, its states and each file as they come; on a terminal a progress
bar on stderr for each download. When it fails after the job started, run the same
command with --job JOB to resume: files already downloaded are kept.

  --dir DIR              where the files go (required)
  --no-reset             keep the authorization (for more exports under the same consent)
  --job JOB              resume this job instead of initiating one (RESOURCEs, --start
                         and --end are then ignored)
  --start TIME  --end TIME
                         the data window, as for 'initiate'
  --poll-interval SECONDS  first wait between polls (>= 1, default 1; it grows to 30)
  --max-wait SECONDS     give up when the job is not COMPLETE by then (default 7 days,
                         at most 30 days)
]],
    },
    login = {
        min = 0, max = huge, token = false,
        usage = "login --client-id ID [--client-secret-file FILE] --scopes RESOURCE,... "
            .. "[--credentials FILE]",
        summary = "get credentials through the browser consent (OAuth loopback flow)",
        text = [[
Gets credentials for the other commands with Google's consent screen (RFC 8252,
loopback redirect, PKCE). Listens on 127.0.0.1, prints the consent URL on stderr:
open it in a browser on this machine and consent; the browser is sent back to the
listener, the code is exchanged and the credentials file is written (mode 0600).
Nothing is opened for you.

  --client-id ID            the OAuth client (a "Desktop app" client)
  --client-secret-file FILE its secret: the first line, or Google's downloaded
                            client_secret_*.json (which also gives the client id)
  --scopes RESOURCE,...     resource groups to ask for (or give them as arguments)
  --credentials FILE        where to write (default ./dataportability-credentials.json)
  --auth-endpoint URL       the consent page (default Google's, or the emulator's)
  --token-endpoint URL      the token endpoint (default Google's, or the emulator's);
                            written to the credentials file when given
  --port PORT               listen on this port (default: a random free one)
  --wait SECONDS            give up after this long without the redirect (default 300)
]],
    },
    scopes = {
        min = 0, max = 0, token = false,
        usage = "scopes",
        summary = "list the resource groups and their OAuth scopes (no token needed)",
        text = [[
Lists every resource group this version knows and its OAuth scope URL.
]],
    },
    help = {
        min = 0, max = 1, token = false,
        usage = "help [COMMAND]",
        summary = "this help, or a command's",
        text = "",
    },
}
_M.COMMANDS = COMMANDS
local ORDER = { "reset", "initiate", "state", "retry", "cancel", "access-type", "export", "login",
                "scopes", "help" }

--- The help of a command, or the general help (name nil or "help").
function _M.help(name)
    if name and name ~= "help" then
        local c = COMMANDS[name]
        return format("Usage: dataportability %s [OPTIONS]\n\n%s\n%s", c.usage, c.text, COMMON)
    end
    local lines = {
        "Usage: dataportability [OPTIONS] COMMAND [ARGS]", "",
        "Google's Data Portability API from the command line.", "",
        "Commands:",
    }
    for _, command in ipairs(ORDER) do
        local c = COMMANDS[command]
        local usage = c.usage:match("^(%S+%s*[%u.]*)") or command
        lines[#lines + 1] = format("  %-20s %s", usage, c.summary)
    end
    lines[#lines + 1] = ""
    return concat(lines, "\n") .. "\n" .. COMMON
end

---------------------------------------------------------------------------
-- Words from argv in messages. A token pasted where a resource group, a
-- job id or a file name belongs must not come back in a message (on a
-- terminal, in a CI log). So a word the CLI rejects is quoted only when it
-- does not look like a token. A word looks like a token when:
--   1. it holds a secret the CLI knows (DATAPORTABILITY_TOKEN, ...), or
--   2. it holds "ya29." or "GOCSPX-", or starts with "1//", "4/0", "eyJ" or
--      "Bearer " (Google's access tokens, client secrets, refresh tokens,
--      authorization codes; a JWT; a pasted header), or
--   3. it has a run of 20 bytes or more of letters, digits and -_~+= with
--      both letters and digits in it, or it is a valid bearer token
--      (core.check_token) longer than 40 bytes. For a file name, only when
--      the whole name is such a run (no / and no .): paths are long words.

local LOOKS = "an argument that looks like a token (not shown)"
_M.LOOKS = LOOKS
local TOKEN_HINT = "a token is never an argument: set DATAPORTABILITY_TOKEN, or put it in a file that"
    .. " only you can read (chmod 600) and give --token-file FILE"
local TOKEN_ANYWHERE = { "ya29.", "GOCSPX-" }
local TOKEN_STARTS = { "1//", "4/0", "eyJ", "Bearer ", "bearer " }

--- Rules 1 and 2: words refused even where they would be valid.
local function surely_token(ctx, word)
    for _, secret in ipairs(ctx:secrets()) do -- whole: a valid word may share a few bytes with one
        if find(word, secret, 1, true) then return true end
    end
    for _, p in ipairs(TOKEN_ANYWHERE) do
        if find(word, p, 1, true) then return true end
    end
    for _, p in ipairs(TOKEN_STARTS) do
        if sub(word, 1, #p) == p then return true end
    end
    return false
end

local function mixed_run(run)
    return #run >= 20 and find(run, "%a") ~= nil and find(run, "%d") ~= nil
end

--- Rules 1 to 3; path: word is a file name.
local function looks_like_token(ctx, word, path)
    if surely_token(ctx, word) then return true end
    if path then return find(word, "^[%w%-_~+]+=*$") ~= nil and mixed_run(word) end
    for run in gmatch(word, "[%w%-_~+=]+") do
        if mixed_run(run) then return true end
    end
    return #word > 40 and core.check_token(word) == true
end
_M.looks_like_token = looks_like_token

--- true, or nil, err when word is surely a token (rules 1 and 2): a job
--- id, --dir or --client-id that would go into a URL or a file's name.
function _M.refused_token(ctx, what, word)
    if not surely_token(ctx, word) then return true end
    return ctx:fail("invalid_argument", what .. ": " .. LOOKS .. "; " .. TOKEN_HINT)
end

--- A message about a word from argv that the CLI rejects: `what`, the word
--- (quoted when how.quoted; "(not shown)" when longer than how.max or not
--- of the shape how.pattern), then `tail`. A word that looks like a token
--- (how.path: a file name) is not shown, and the message says how to give
--- a token.
local function about(ctx, what, word, how, tail)
    how, tail = how or {}, tail or ""
    if looks_like_token(ctx, word, how.path) then -- the tail may be a system's message naming it
        return what .. ": " .. LOOKS .. errors.redact(tail, word) .. "; " .. TOKEN_HINT
    end
    if how.pattern and (#word > (how.max or 40) or not find(word, how.pattern)) then
        return what .. " (not shown)" .. tail
    end
    if how.quoted then word = "'" .. word .. "'" end
    return what .. " " .. word .. tail
end
_M.about = about

--- A file name in a message about a file that exists.
function _M.path_shown(ctx, path)
    return looks_like_token(ctx, path, true) and LOOKS or path
end

--- A system's message naming a file from argv: as it is, or with the name
--- hidden when it looks like a token.
function _M.about_file(ctx, message, path)
    if not looks_like_token(ctx, path, true) then return message end
    return LOOKS .. ": " .. errors.redact(message, path) .. "; " .. TOKEN_HINT
end

---------------------------------------------------------------------------
-- Parsing and checks

local function usage(ctx, message)
    return ctx:fail("usage", message)
end

-- argv -> the words that are not options, and the options seen (in
-- ctx.opts), or nil, nil, err.
local function parse(ctx, argv)
    local opts, args = ctx.opts, {}
    local seen = {}
    local i, n = 1, #argv
    local only_args = false
    -- a word that is surely a token is redacted from everything printed,
    -- whatever the library or the server does with it; not a file name,
    -- which would take its directory with it (errors.redact hides any run
    -- of 8 bytes of a secret): those are never given to the library, and
    -- never quoted when they look like a token
    local function guard(word, placeholder)
        if placeholder ~= "FILE" and placeholder ~= "DIR" and surely_token(ctx, word) then
            ctx:secret(word)
        end
    end
    while i <= n do
        local a = argv[i]
        if only_args or a == "-" or a:sub(1, 1) ~= "-" then
            args[#args + 1] = a
            guard(a)
        elseif a == "--" then
            only_args = true
        else
            local name, value = a:match("^(%-%-[^=]+)=(.*)$")
            name = name or a
            name = SHORT[name] or name
            if REFUSED[name] then -- never echo what follows: it is a secret
                return nil, nil, ctx:error("usage", format("%s is refused: %s; %s", name, WHY, REFUSED[name]))
            end
            local spec = OPTIONS[name]
            if not spec then
                return nil, nil, ctx:error("usage", about(ctx, "unknown option", name,
                    { pattern = "^%-%-?%a[%w-]*$" }))
            end
            if spec[2] then
                if not value then
                    i = i + 1
                    value = argv[i]
                    if value == nil then
                        return nil, nil, ctx:error("usage", name .. " needs a value (" .. spec[2] .. ")")
                    end
                end
                guard(value, spec[2])
                if name == "--scopes" and opts.scopes then value = opts.scopes .. "," .. value end
                opts[spec[1]] = value
            else
                if value then return nil, nil, ctx:error("usage", name .. " takes no value") end
                opts[spec[1]] = true
            end
            seen[#seen + 1] = name
        end
        i = i + 1
    end
    return args, seen
end

-- A number option: a number > 0 (integer: a whole number), at least least
-- and at most most when given.
local function number_option(ctx, name, key, integer, least, most)
    local v = ctx.opts[key]
    if v == nil then return true end
    local x = tonumber(v)
    if not x or x <= 0 or x ~= x or x == huge or (integer and x % 1 ~= 0) or (least and x < least)
        or (most and x > most) then
        local what = integer and "a whole number" or least and format("a number of seconds >= %g", least)
            or "a number of seconds > 0"
        if most then what = what .. format(" and <= %g", most) end
        return usage(ctx, about(ctx, format("%s needs %s, got", name, what), v,
            { pattern = "^[%w.+-]*$", max = 16, quoted = true }))
    end
    ctx.opts[key] = x
    return true
end

-- --start and --end: RFC 3339 as is; a date is its midnight UTC; digits
-- are Unix seconds. Anything else is refused here, before the library
-- could quote it back.
local RFC3339 = { "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.?%d*Z$",
                  "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.?%d*[+-]%d%d:%d%d$" }

local function time_value(ctx, name, v)
    if v == nil then return true, nil end
    if v:find("^%d+$") then return true, tonumber(v) end
    if v:find("^%d%d%d%d%-%d%d%-%d%d$") then return true, v .. "T00:00:00Z" end
    for _, pattern in ipairs(RFC3339) do
        if v:find(pattern) then return true, v end
    end
    return nil, ctx:error("invalid_argument", about(ctx, name .. " needs an RFC 3339 time"
        .. " (2024-10-02T15:01:23Z), a date (2024-10-02) or Unix seconds, got", v,
        { pattern = "^[%w.:+-]+$", quoted = true }))
end

--- Resource groups from arguments: commas separate; a scope URL becomes its group.
function _M.resources_of(args)
    local out = {}
    for _, a in ipairs(args) do
        for r in a:gmatch("[^,%s]+") do
            out[#out + 1] = scopes.resource_for(r) or r
        end
    end
    return out
end

--- Resource groups this version knows, or nil, err (exit 4) before any request.
function _M.check_resources(ctx, resources)
    for _, r in ipairs(resources) do
        if not scopes.scope_for(r) then
            return ctx:fail("invalid_argument", about(ctx, "unknown resource group", r,
                { pattern = "^[%w_.]+$", quoted = true }, " (see 'dataportability scopes')"))
        end
    end
    return true
end

-- JOB from argv ("ID" or "archiveJobs/ID") -> ID, or nil, err before any
-- request. One that looks surely like a token is refused even when it
-- would be a valid id: it would go into the request's URL, and be printed.
local function job_arg(ctx, word, name)
    local ok, err = _M.refused_token(ctx, name, word)
    if not ok then return nil, err end
    local id = gsub(word, "^archiveJobs/", "")
    if id == "" or id == "." or id == ".." or find(id, "/", 1, true) then
        return ctx:fail("invalid_argument", about(ctx, name .. " must be ID or archiveJobs/ID, got", word,
            { pattern = "^[%w%-._~/]+$", quoted = true }))
    end
    return id
end

-- Each number option: its name, key in opts, whole number?, least, most.
-- export's poll interval: Google asks for a poll at most about once a second.
local NUMBERS = { { "--timeout", "timeout" }, { "--poll-interval", "poll_interval", false, 1 },
                  { "--max-wait", "max_wait", false, nil, 30 * 86400 }, { "--wait", "wait" },
                  { "--port", "port", true, nil, 65535 } }

--- argv -> the command's name and its arguments, everything checked that
--- can be without I/O: ctx.opts (numbers made numbers), ctx.command,
--- ctx.usage, and what the command works on: ctx.job, ctx.resources,
--- ctx.start_time, ctx.end_time. Or nil, err. With --help, the name of the
--- command whose help is asked for ("help": the general help), unchecked.
function _M.read(ctx, argv)
    local args, seen, err = parse(ctx, argv)
    if not args then return nil, err end
    local o = ctx.opts
    local name = table.remove(args, 1)
    if name == "help" and not o.help then
        name, o.help = args[1], true
        args = {}
    end
    if name and not COMMANDS[name] then
        return usage(ctx, about(ctx, "unknown command", name, { pattern = "^%a[%w-]*$" }))
    end
    ctx.command = name
    if o.help then return name or "help", args end
    if not name then return usage(ctx, "missing command") end
    local c = COMMANDS[name]
    ctx.usage = c.usage
    for _, opt in ipairs(seen) do
        local allowed = OPTIONS[opt][3]
        if allowed and not allowed[name] then return usage(ctx, format("%s does not take %s", name, opt)) end
    end
    if #args < c.min then
        return usage(ctx, format("%s needs %s", name, c.usage:match("^%S+ (%S+)") or "an argument"))
    end
    if #args > c.max then -- never quote the extra words: one may be a pasted secret
        return usage(ctx, c.max == 0 and format("%s takes no argument", name)
            or format("%s takes one argument, got %d", name, #args))
    end
    for _, spec in ipairs(NUMBERS) do
        local ok, nerr = number_option(ctx, spec[1], spec[2], spec[3], spec[4], spec[5])
        if not ok then return nil, nerr end
    end
    for _, spec in ipairs({ { "--start", "start", "start_time" }, { "--end", "end", "end_time" } }) do
        local ok, t = time_value(ctx, spec[1], o[spec[2]])
        if not ok then return nil, t end
        ctx[spec[3]] = t
    end
    -- the arguments, checked before any I/O: the library would quote them
    if c.job then
        ctx.job, err = job_arg(ctx, args[1], "JOB")
        if not ctx.job then return nil, err end
    elseif name == "export" then
        if not o.dir then return usage(ctx, "export needs --dir DIR") end
        if o.job then
            ctx.job, err = job_arg(ctx, o.job, "--job")
            if not ctx.job then return nil, err end
        else
            ctx.resources = _M.resources_of(args)
            if #ctx.resources == 0 then return usage(ctx, "export needs RESOURCE... (or --job JOB)") end
        end
    elseif name == "initiate" then
        ctx.resources = _M.resources_of(args)
    end
    if ctx.resources then
        local ok, rerr = _M.check_resources(ctx, ctx.resources)
        if not ok then return nil, rerr end
    end
    return name, args
end

return _M
