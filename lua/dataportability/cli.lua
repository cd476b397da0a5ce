-- The command line (bin/dataportability; docs/cli.md): parses argv, finds
-- the token (never on the command line), calls the client and prints the
-- outcome, for people or, with --json, for programs.
--
--   local code = require("dataportability.cli").main(arg)
local dp = require("dataportability")
local errors = require("dataportability.errors")
local scopes = require("dataportability.scopes")
local core = require("dataportability.core")
local json = require("cjson.safe")

local type, pairs, ipairs, tostring, tonumber, pcall = type, pairs, ipairs, tostring, tonumber, pcall
local setmetatable, getmetatable, next = setmetatable, getmetatable, next
local format, rep, byte, gsub = string.format, string.rep, string.byte, string.gsub
local concat, sort = table.concat, table.sort
local floor, min, huge = math.floor, math.min, math.huge

local _M = {}

local PROG = "dataportability"
local DEFAULT_CREDENTIALS = "./dataportability-credentials.json"
local DEFAULT_WAIT = 300
local REDACT_MIN = 6 -- shorter strings are not real secrets, and would garble every line

-- Exit codes, by error kind (docs/cli.md).
local EXIT = {
    api = 1, http = 1, redirect = 1, job = 1, integrity = 1, too_large = 1, closed = 1,
    usage = 2,
    timeout = 3, connect = 3, dns = 3, tls = 3, network = 3,
    io = 4, invalid_token = 4, invalid_argument = 4,
}

---------------------------------------------------------------------------
-- JSON output: our own small encoder, because Debian's lua-cjson 2.1.0 has
-- no array marker (an empty list would come out as {}) and escapes every /.

local ARRAY = {}

local function list(t)
    return setmetatable(t or {}, ARRAY)
end

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n",
                  ["\r"] = "\\r", ["\t"] = "\\t" }

local function quote(s)
    return '"' .. gsub(s, '[%c"\\]', function(c)
        return ESCAPES[c] or format("\\u%04x", byte(c))
    end) .. '"'
end

local function is_list(t)
    if getmetatable(t) == ARRAY then return true end
    local n = 0
    for _ in pairs(t) do n = n + 1 end
    return n > 0 and n == #t
end

local function encode(v, out)
    local t = type(v)
    if t == "string" then
        out[#out + 1] = quote(v)
    elseif t == "number" then
        if v ~= v or v == huge or v == -huge then
            out[#out + 1] = "null"
        elseif v % 1 == 0 and v > -2 ^ 53 and v < 2 ^ 53 then
            out[#out + 1] = format("%d", v)
        else
            out[#out + 1] = format("%.17g", v)
        end
    elseif t == "boolean" then
        out[#out + 1] = tostring(v)
    elseif t == "table" and v ~= json.null then
        if is_list(v) then
            out[#out + 1] = "["
            for i = 1, #v do
                if i > 1 then out[#out + 1] = "," end
                encode(v[i], out)
            end
            out[#out + 1] = "]"
        else
            local keys = {}
            for k in pairs(v) do keys[#keys + 1] = tostring(k) end
            sort(keys)
            out[#out + 1] = "{"
            for i, k in ipairs(keys) do
                if i > 1 then out[#out + 1] = "," end
                out[#out + 1] = quote(k) .. ":"
                local value = v[k]
                if value == nil then value = v[tonumber(k)] end
                encode(value, out)
            end
            out[#out + 1] = "}"
        end
    else
        out[#out + 1] = "null"
    end
    return out
end

local function to_json(v)
    return concat(encode(v, {}))
end

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
  --credentials FILE     credentials written by 'dataportability login' (mode 0600; refused
                         when group or others may access it); access tokens refreshed as needed
  --token-file FILE      an access token: the file's first line
  DATAPORTABILITY_TOKEN  an access token

Exit status:
  0  success
  1  the API or the server refused (error kinds api, http, redirect, job, integrity,
     too_large)
  2  usage error: unknown command or option, missing argument, a token on the command line
  3  network (timeout, connect, dns, tls, network)
  4  local problem (io, invalid_token, invalid_argument): a missing or unreadable token
     file, no token at all, a malformed token or argument
]]

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
        min = 1, max = 1, token = true,
        usage = "state JOB",
        summary = "show a job's state and, once COMPLETE, its download URLs",
        text = [[
Shows the state of an archive job (archiveJobs.getPortabilityArchiveState):
"state: IN_PROGRESS|COMPLETE|FAILED|CANCELLED", the export time, then once COMPLETE
the signed download URLs, one per line.
]],
    },
    retry = {
        min = 1, max = 1, token = true,
        usage = "retry JOB",
        summary = "retry a FAILED job; prints the new job's id",
        text = [[
Retries a FAILED archive job (archiveJobs.retry). The retry is a new job: prints
"job NEW started (retry of JOB)"; poll the new id.
]],
    },
    cancel = {
        min = 1, max = 1, token = true,
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
until it is COMPLETE, downloads every file into DIR (created, mode 0700, when
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
  --poll-interval SECONDS  first wait between polls (default 1; it grows to 30)
  --max-wait SECONDS     give up when the job is not COMPLETE by then (default 7 days)
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
local ORDER = { "reset", "initiate", "state", "retry", "cancel", "access-type", "export", "login",
                "scopes", "help" }

local function general_help()
    local lines = {
        "Usage: dataportability [OPTIONS] COMMAND [ARGS]", "",
        "Google's Data Portability API from the command line.", "",
        "Commands:",
    }
    for _, name in ipairs(ORDER) do
        local c = COMMANDS[name]
        local usage = c.usage:match("^(%S+%s*[%u.]*)") or name
        lines[#lines + 1] = format("  %-20s %s", usage, c.summary)
    end
    lines[#lines + 1] = ""
    return concat(lines, "\n") .. "\n" .. COMMON
end

local function command_help(name)
    local c = COMMANDS[name]
    if name == "help" then return general_help() end
    return format("Usage: dataportability %s [OPTIONS]\n\n%s\n%s", c.usage, c.text, COMMON)
end

---------------------------------------------------------------------------
-- The context: options, output streams (every line redacted), errors

local Ctx = {}
Ctx.__index = Ctx

local function redact(self, s)
    local secrets = self.secrets
    local source = self.source
    if source then -- a token source's secrets change as it refreshes
        secrets = { source.access_token, source.refresh_token, source.client_secret }
        for _, v in ipairs(self.secrets) do secrets[#secrets + 1] = v end
    end
    for _, secret in pairs(secrets) do
        if type(secret) == "string" and #secret >= REDACT_MIN then s = errors.redact(s, secret) end
    end
    return s
end

-- Flushed at once: an export runs for long, maybe into a pipe.
function Ctx:out(...)
    self.stdout:write(redact(self, concat({ ... })))
    self.stdout:flush()
end

function Ctx:err(...)
    self.stderr:write(redact(self, concat({ ... })))
    self.stderr:flush()
end

function Ctx:secret(s)
    if type(s) == "string" then self.secrets[#self.secrets + 1] = s end
end

function Ctx:error(kind, message, fields)
    return errors.new(self.command or PROG, kind, message, fields)
end

function Ctx:fail(kind, message, fields)
    return nil, self:error(kind, message, fields)
end

-- A raised error's text without its "file.lua:12: " positions and the
-- library function's name.
local function clean(msg)
    msg = gsub(tostring(msg), "[%w_./-]+%.lua:%d+: ", "")
    return (gsub(msg, "^[%w_]+: ", ""))
end

-- The error table as plain JSON-able data.
local function plain(v, seen)
    seen = seen or {}
    if type(v) ~= "table" then return v end
    if seen[v] then return nil end
    seen[v] = true
    local out = {}
    for k, x in pairs(v) do
        if type(k) == "string" or type(k) == "number" then out[k] = plain(x, seen) end
    end
    if next(out) == nil and getmetatable(v) == ARRAY then return list() end
    return out
end

-- Prints err and returns its exit code.
function Ctx:report(err)
    local code = EXIT[err.kind] or 1
    if self.opts.json then
        local e = plain(err)
        if type(e.files) == "table" then e.files = list(e.files) end -- export's, maybe none
        self:out(to_json({ error = e }), "\n")
        return code
    end
    if err.kind == "usage" then
        self:err(PROG, ": ", err.message, "\n")
        local c = COMMANDS[self.command or ""]
        if c then
            self:err("usage: dataportability ", c.usage, "\n",
                "run 'dataportability ", self.command, " --help' for details\n")
        else
            self:err("run 'dataportability --help' for the commands\n")
        end
        return code
    end
    self:err(tostring(err), "\n")
    if err.retry_after then self:err("  the server asks to retry after ", tostring(err.retry_after), "\n") end
    return code
end

---------------------------------------------------------------------------
-- Files

local function has_luv()
    local ok, uv = pcall(require, "luv")
    return ok and uv or nil
end

local function sh_quote(s)
    return "'" .. gsub(s, "'", "'\\''") .. "'"
end

-- os.execute: true on 5.2+, 0 on 5.1 and LuaJIT.
local function execute_ok(cmd)
    local r = os.execute(cmd)
    return r == true or r == 0
end

-- The permission bits of a file (a number), or nil when they cannot be read.
local function file_mode(path)
    local uv = has_luv()
    if uv then
        local st = uv.fs_stat(path)
        return st and st.mode % 4096
    end
    local p = io.popen("stat -c %a -- " .. sh_quote(path) .. " 2>/dev/null")
    local out = p and p:read("*l")
    if p then p:close() end
    return out and tonumber(out, 8)
end

local function read_file(ctx, path, what)
    local f, err = io.open(path, "rb")
    local data
    if f then
        data, err = f:read("*a")
        f:close()
    end
    if not data then -- io's messages start with the path, or not
        local why = tostring(err)
        if why:sub(1, #path + 2) == path .. ": " then why = why:sub(#path + 3) end
        return ctx:fail("io", format("cannot read the %s %s: %s", what, path, why))
    end
    return data
end

-- DIR exists as a directory, or is made (0700: archives hold personal data).
local function ensure_dir(ctx, dir)
    local uv = has_luv()
    if uv then
        local st = uv.fs_stat(dir)
        if not st then
            local ok, err = uv.fs_mkdir(dir, 448)
            if not ok then return ctx:fail("io", format("cannot create %s: %s", dir, tostring(err))) end
            return true
        end
        if st.type ~= "directory" then return ctx:fail("io", dir .. " is not a directory") end
        return true
    end
    if execute_ok("test -d " .. sh_quote(dir)) or execute_ok("mkdir -m 700 -- " .. sh_quote(dir)) then
        return true
    end
    return ctx:fail("io", "cannot create the directory " .. dir)
end

-- Writes data to path, mode 0600, through a temporary file renamed over it.
local function write_private(ctx, path, data)
    local uv = has_luv()
    local tmp = format("%s.tmp%d", path, uv.os_getpid())
    uv.fs_unlink(tmp)
    local fd, err = uv.fs_open(tmp, "wx", 384) -- O_EXCL: never through a planted symlink
    if not fd then return ctx:fail("io", format("cannot write %s: %s", path, tostring(err))) end
    local ok, werr = uv.fs_fchmod(fd, 384) -- whatever the umask
    if ok then ok, werr = uv.fs_write(fd, data, 0) end
    if ok then ok, werr = uv.fs_fsync(fd) end
    uv.fs_close(fd)
    if ok then ok, werr = uv.fs_rename(tmp, path) end
    if not ok then
        uv.fs_unlink(tmp)
        return ctx:fail("io", format("cannot write %s: %s", path, tostring(werr)))
    end
    return true
end

---------------------------------------------------------------------------
-- The token: from --credentials, --token-file or DATAPORTABILITY_TOKEN

local CREDENTIAL_FIELDS = { client_id = true, client_secret = true, refresh_token = true,
                            token_endpoint = true, revoke_endpoint = true }

local function from_credentials(ctx, path)
    local mode = file_mode(path)
    if mode and mode % 64 ~= 0 then
        return ctx:fail("io", format("the credentials file %s may be accessed by group or others (mode %03o):"
            .. " it holds a refresh token; chmod 600 %s", path, mode, path))
    end
    local data, err = read_file(ctx, path, "credentials file")
    if not data then return nil, err end
    local doc = json.decode(data)
    if type(doc) ~= "table" then
        return ctx:fail("invalid_token", "the credentials file " .. path .. " is not a JSON object")
    end
    local o = { ca_file = ctx.opts.ca_file, timeout = ctx.opts.timeout, user_agent = ctx.user_agent }
    for k, v in pairs(doc) do
        if CREDENTIAL_FIELDS[k] then
            if type(v) ~= "string" then
                return ctx:fail("invalid_token", format("the credentials file %s: %s must be a string",
                    path, k))
            end
            o[k] = v
            if k == "client_secret" or k == "refresh_token" then ctx:secret(v) end
        end
    end
    if not o.client_id or not o.refresh_token then
        return ctx:fail("invalid_token", format("the credentials file %s needs client_id and refresh_token",
            path))
    end
    local ok, source = pcall(dp.token_source, o)
    if not ok then
        return ctx:fail("invalid_token", "the credentials file " .. path .. ": " .. clean(source))
    end
    ctx.source = source
    return source
end

local function from_token_file(ctx, path)
    local data, err = read_file(ctx, path, "token file")
    if not data then return nil, err end
    local token = data:match("^[^\r\n]*"):match("^%s*(.-)%s*$")
    if token == "" then return ctx:fail("invalid_token", "the token file " .. path .. " is empty") end
    ctx:secret(token)
    return token
end

local function find_token(ctx)
    if ctx.opts.credentials then return from_credentials(ctx, ctx.opts.credentials) end
    if ctx.opts.token_file then return from_token_file(ctx, ctx.opts.token_file) end
    local token = ctx.getenv("DATAPORTABILITY_TOKEN")
    if token and token ~= "" then
        ctx:secret(token)
        return token
    end
    return ctx:fail("invalid_token", "no token: set DATAPORTABILITY_TOKEN, or use --token-file FILE or"
        .. " --credentials FILE (see 'dataportability login')")
end

---------------------------------------------------------------------------
-- Argument parsing

local function usage(ctx, message)
    return ctx:fail("usage", message)
end

-- A word from argv in a message: only when it cannot be a pasted secret.
local function shown(word, pattern, max)
    if #word <= (max or 40) and word:find(pattern) then return word end
    return "(not shown)"
end

local function parse(ctx, argv)
    local opts, args = ctx.opts, {}
    local seen = {}
    local i, n = 1, #argv
    local only_args = false
    while i <= n do
        local a = argv[i]
        if only_args or a == "-" or a:sub(1, 1) ~= "-" then
            args[#args + 1] = a
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
                return nil, nil, ctx:error("usage", "unknown option " .. shown(name, "^%-%-?%a[%w-]*$"))
            end
            if spec[2] then
                if not value then
                    i = i + 1
                    value = argv[i]
                    if value == nil then
                        return nil, nil, ctx:error("usage", name .. " needs a value (" .. spec[2] .. ")")
                    end
                end
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

local function number_option(ctx, name, key, integer)
    local v = ctx.opts[key]
    if v == nil then return true end
    local x = tonumber(v)
    if not x or x <= 0 or x ~= x or x == huge or (integer and x % 1 ~= 0) then
        return usage(ctx, format("%s needs a %s, got '%s'", name,
            integer and "whole number" or "number of seconds > 0", shown(v, "^[%w.+-]*$", 16)))
    end
    ctx.opts[key] = x
    return true
end

-- RFC 3339 as is; a date is its midnight UTC; digits are Unix seconds.
local function time_value(v)
    if v == nil then return nil end
    if v:find("^%d+$") then return tonumber(v) end
    if v:find("^%d%d%d%d%-%d%d%-%d%d$") then return v .. "T00:00:00Z" end
    return v
end

-- Resource groups from arguments: commas separate; a scope URL becomes its group.
local function resources_of(args)
    local out = {}
    for _, a in ipairs(args) do
        for r in a:gmatch("[^,%s]+") do
            out[#out + 1] = scopes.resource_for(r) or r
        end
    end
    return out
end

---------------------------------------------------------------------------
-- Output helpers

local function human_size(n)
    if n < 1024 then return format("%d B", n) end
    local units = { "KiB", "MiB", "GiB", "TiB" }
    local u = 0
    repeat
        n = n / 1024
        u = u + 1
    until n < 1024 or u == #units
    return format("%.1f %s", n, units[u])
end

local function is_tty(ctx)
    if ctx.stderr_tty == nil then
        ctx.stderr_tty = execute_ok("test -t 2")
    end
    return ctx.stderr_tty
end

-- The progress bar of one download, on stderr: one line, redrawn with \r,
-- only when its text changes.
local function progress_bar(ctx)
    local visible, last = false, nil
    local self = {}
    function self.update(name, done, total)
        local label = #name > 28 and (name:sub(1, 25) .. "...") or name
        local text
        if total and total > 0 then
            local frac = min(done / total, 1)
            local width = 24
            local filled = floor(frac * width)
            text = format("%-28s [%s%s] %3d%% %s / %s", label, rep("#", filled), rep("-", width - filled),
                floor(frac * 100), human_size(done), human_size(total))
        else
            text = format("%-28s %s", label, human_size(done))
        end
        if text ~= last then
            ctx:err("\r", text, "\27[K")
            last, visible = text, true
        end
    end
    function self.clear()
        if visible then ctx:err("\r\27[K") end
        visible, last = false, nil
    end
    return self
end

---------------------------------------------------------------------------
-- The commands

local RUN = {}

function RUN.reset(ctx, client, token)
    local ok, err = client:reset(token)
    if not ok then return nil, err end
    if ctx.opts.json then
        ctx:out(to_json({ reset = true }), "\n")
    else
        ctx:out("reset: done\n")
        if ctx.opts.credentials then
            ctx:out("the credentials in ", ctx.opts.credentials, " are revoked now:"
                .. " run 'dataportability login' before the next export\n")
        end
    end
    return true
end

local function job_line(id, access_type, extra)
    return format("job %s started%s%s\n", id, extra or "", access_type and (" (" .. access_type .. ")") or "")
end

function RUN.initiate(ctx, client, token, args)
    local job, err = client:initiate(token, resources_of(args),
        { start_time = time_value(ctx.opts.start), end_time = time_value(ctx.opts["end"]) })
    if not job then return nil, err end
    if ctx.opts.json then
        ctx:out(to_json({ archive_job_id = job.archive_job_id, access_type = job.access_type }), "\n")
    else
        ctx:out(job_line(job.archive_job_id, job.access_type))
    end
    return true
end

function RUN.state(ctx, client, token, args)
    local st, err = client:state(token, args[1])
    if not st then return nil, err end
    if ctx.opts.json then
        st.urls = list(st.urls)
        ctx:out(to_json(st), "\n")
        return true
    end
    ctx:out("state: ", st.state, "\n")
    if st.start_time then ctx:out("start time: ", st.start_time, "\n") end
    if st.export_time then ctx:out("export time: ", st.export_time, "\n") end
    for _, url in ipairs(st.urls) do ctx:out(url, "\n") end
    return true
end

function RUN.retry(ctx, client, token, args)
    local job, err = client:retry(token, args[1])
    if not job then return nil, err end
    local old = (gsub(args[1], "^archiveJobs/", ""))
    if ctx.opts.json then
        ctx:out(to_json({ archive_job_id = job.archive_job_id, access_type = job.access_type,
                          retry_of = old }), "\n")
    else
        ctx:out(job_line(job.archive_job_id, job.access_type, " (retry of " .. old .. ")"))
    end
    return true
end

function RUN.cancel(ctx, client, token, args)
    local ok, err = client:cancel(token, args[1])
    if not ok then return nil, err end
    local id = (gsub(args[1], "^archiveJobs/", ""))
    if ctx.opts.json then
        ctx:out(to_json({ archive_job_id = id, cancelled = true }), "\n")
    else
        ctx:out("job ", id, " cancelled\n")
    end
    return true
end

RUN["access-type"] = function(ctx, client, token)
    local r, err = client:check_access_type(token)
    if not r then return nil, err end
    if ctx.opts.json then
        ctx:out(to_json({ one_time_resources = list(r.one_time_resources),
                          time_based_resources = list(r.time_based_resources) }), "\n")
    else
        local function line(t) return #t > 0 and concat(t, " ") or "(none)" end
        ctx:out("one-time: ", line(r.one_time_resources), "\n")
        ctx:out("time-based: ", line(r.time_based_resources), "\n")
    end
    return true
end

function RUN.export(ctx, client, token, args)
    local o = ctx.opts
    local resources = resources_of(args)
    if not o.dir then return usage(ctx, "export needs --dir DIR") end
    if not o.job and #resources == 0 then return usage(ctx, "export needs RESOURCE... (or --job JOB)") end
    local ok, err = ensure_dir(ctx, o.dir)
    if not ok then return nil, err end
    local human = not o.json
    local bar = not o.quiet and is_tty(ctx) and progress_bar(ctx)
    local job_id = o.job and (gsub(o.job, "^archiveJobs/", ""))
    ctx.job_id = job_id
    if human and job_id then ctx:out("job ", job_id, " resumed\n") end
    local result
    result, err = client:export(token, resources, {
        dir = o.dir, reset = not o.no_reset, job_id = job_id,
        start_time = time_value(o.start), end_time = time_value(o["end"]),
        poll_interval = o.poll_interval, max_wait = o.max_wait,
        on_progress = function(ev)
            if ev.type == "download" then
                if bar then bar.update(ev.file, ev.done, ev.total) end
                return
            end
            if bar then bar.clear() end
            if ev.type == "job" then
                job_id = ev.job_id
                ctx.job_id = job_id
                if human then ctx:out(job_line(ev.job_id, ev.access_type)) end
            elseif human and ev.type == "state" then
                ctx:out("state: ", ev.state, "\n")
            elseif human and ev.type == "file" then
                ctx:out("file: ", ev.path, " (", human_size(ev.size), ")\n")
            end
        end,
    })
    if bar then bar.clear() end
    if not result then
        if human and err.job_id then
            ctx:report(err)
            if err.kind == "job" then
                ctx:err("to run it again: dataportability retry ", err.job_id, "\n")
            else
                ctx:err("the job is kept: to resume, run the same command with --job ", err.job_id, "\n")
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
        ctx:out(to_json({ job_id = result.job_id, state = result.state, files = files,
                          reset = result.reset }), "\n")
    else
        ctx:out(format("export: %d file%s in %s\n", #result.files, #result.files == 1 and "" or "s", o.dir))
        ctx:out(result.reset and "reset: done\n" or "reset: skipped (--no-reset)\n")
    end
    return true
end

function RUN.scopes(ctx)
    local names = {}
    for name in pairs(dp.scopes) do names[#names + 1] = name end
    sort(names)
    if ctx.opts.json then
        local out = list()
        for i, name in ipairs(names) do out[i] = { resource = name, scope = dp.scopes[name] } end
        ctx:out(to_json({ scopes = out }), "\n")
        return true
    end
    for _, name in ipairs(names) do ctx:out(format("%-42s %s\n", name, dp.scopes[name])) end
    return true
end

---------------------------------------------------------------------------
-- login: RFC 8252 loopback redirect, PKCE

local function url_decode(s)
    s = gsub(s, "+", " ")
    return (gsub(s, "%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function parse_query(q)
    local out = {}
    for pair in q:gmatch("[^&]+") do
        local k, v = pair:match("^([^=]*)=?(.*)$")
        k = url_decode(k)
        if out[k] == nil then out[k] = url_decode(v) end
    end
    return out
end

local function html_escape(s)
    return (gsub(s, "[<>&\"']", { ["<"] = "&lt;", [">"] = "&gt;", ["&"] = "&amp;", ['"'] = "&quot;",
                                  ["'"] = "&#39;" }))
end

local function page(status, title, text)
    local body = format('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>%s</title></head>\n'
        .. "<body><h1>%s</h1><p>%s</p></body></html>\n", html_escape(title), html_escape(title),
        html_escape(text))
    local reason = ({ [200] = "OK", [400] = "Bad Request", [404] = "Not Found" })[status]
    return format("HTTP/1.1 %d %s\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: %d\r\n"
        .. "Cache-Control: no-store\r\nReferrer-Policy: no-referrer\r\nConnection: close\r\n\r\n%s",
        status, reason, #body, body)
end

-- The client secret from a file: Google's client_secret_*.json (which
-- also names the client), or the file's first line.
local function read_client_secret(ctx, path)
    local data, err = read_file(ctx, path, "client secret file")
    if not data then return nil, nil, err end
    local doc = json.decode(data)
    if type(doc) == "table" then
        local c = type(doc.installed) == "table" and doc.installed
            or type(doc.web) == "table" and doc.web or doc
        if type(c.client_secret) ~= "string" then
            return nil, nil, ctx:error("invalid_token", "the client secret file " .. path
                .. " has no client_secret")
        end
        return c.client_secret, type(c.client_id) == "string" and c.client_id or nil
    end
    local secret = data:match("^[^\r\n]*"):match("^%s*(.-)%s*$")
    if secret == "" then
        return nil, nil, ctx:error("invalid_token", "the client secret file " .. path .. " is empty")
    end
    return secret
end

-- Waits for the browser's redirect: the connection and the query of the
-- first request for "/", or nil, err. Other requests (a favicon, a probe)
-- get a 404; connections that send nothing are closed at the end.
local function await_redirect(ctx, uv, server, seconds)
    local got, failure
    local conns = {}
    local timer = uv.new_timer()
    timer:start(floor(seconds * 1000), 0, function()
        failure = ctx:error("timeout", format("no redirect from the browser within %g seconds", seconds))
        uv.stop()
    end)
    server:listen(16, function(lerr)
        if lerr or got then return end
        local conn = uv.new_tcp()
        if not server:accept(conn) then conn:close() return end
        conns[conn] = true
        local buf = ""
        local function drop()
            conns[conn] = nil
            if not conn:is_closing() then conn:close() end
        end
        conn:read_start(function(rerr, chunk)
            if rerr or not chunk then return drop() end
            buf = buf .. chunk
            local head = buf:match("^(.-)\r?\n\r?\n")
            if not head then
                if #buf > 16384 then drop() end
                return
            end
            conn:read_stop()
            local method, target = head:match("^(%u+) (%S+) HTTP/1%.%d")
            local path, query = (target or ""):match("^([^?#]*)%??([^#]*)")
            if got or method ~= "GET" or path ~= "/" then
                conn:write(page(404, "Not found", "Nothing here."), drop)
                return
            end
            conns[conn] = nil
            got = { conn = conn, params = parse_query(query) }
            uv.stop()
        end)
    end)
    uv.run("default")
    timer:close()
    server:close()
    for conn in pairs(conns) do
        if not conn:is_closing() then conn:close() end
    end
    if not got then return nil, failure end
    return got
end

-- Answers the redirect with a small page, then closes the connection.
local function answer(uv, conn, status, title, text)
    local timer = uv.new_timer()
    local function done()
        if not conn:is_closing() then conn:close() end
        if not timer:is_closing() then timer:close() end
        uv.stop()
    end
    timer:start(5000, 0, done) -- a browser that does not read is not waited for
    conn:write(page(status, title, text), function()
        conn:shutdown(done)
    end)
    uv.run("default")
end

local function credentials_json(t)
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = k end
    sort(keys)
    local lines = {}
    for i, k in ipairs(keys) do lines[i] = format("  %s: %s", quote(k), quote(t[k])) end
    return "{\n" .. concat(lines, ",\n") .. "\n}\n"
end

function RUN.login(ctx, _, _, args)
    local o = ctx.opts
    local uv = has_luv()
    if not uv then return ctx:fail("io", "login needs luv (Debian: lua-luv; LuaRocks: luv)") end
    local secret, file_client_id, err
    if o.client_secret_file then
        secret, file_client_id, err = read_client_secret(ctx, o.client_secret_file)
        if not secret then return nil, err end
        ctx:secret(secret)
        local valid, why = core.check_token(secret)
        if not valid then
            return ctx:fail("invalid_token", format("the client secret in %s is malformed: %s",
                o.client_secret_file, why))
        end
    end
    local client_id = o.client_id or file_client_id
    if not client_id then return usage(ctx, "login needs --client-id ID") end
    local wanted = resources_of(args)
    for _, r in ipairs(resources_of({ o.scopes or "" })) do wanted[#wanted + 1] = r end
    if #wanted == 0 then
        return usage(ctx, "login needs --scopes RESOURCE,... (see 'dataportability scopes')")
    end
    for _, r in ipairs(wanted) do
        if not dp.scope_for(r) then
            return ctx:fail("invalid_argument", format("unknown resource group '%s'"
                .. " (see 'dataportability scopes')", shown(r, "^[%w_.]+$")))
        end
    end
    local path = o.credentials or DEFAULT_CREDENTIALS

    local server = uv.new_tcp()
    local ok, berr = server:bind("127.0.0.1", o.port or 0)
    if not ok then
        server:close()
        return ctx:fail("io", format("cannot listen on 127.0.0.1:%d: %s", o.port or 0, tostring(berr)))
    end
    local port = server:getsockname().port
    local redirect_uri = format("http://127.0.0.1:%d/", port)
    local url, pkce
    ok, url, pkce = pcall(dp.authorization_url, { client_id = client_id, redirect_uri = redirect_uri,
        scopes = wanted, endpoint = o.auth_endpoint })
    if not ok then
        server:close()
        return usage(ctx, clean(url))
    end
    ctx:err("Open this URL in a browser on this machine and consent:\n\n", url, "\n\n",
        format("Waiting for the browser on %s (%g s)...\n", redirect_uri, o.wait or DEFAULT_WAIT))

    local got
    got, err = await_redirect(ctx, uv, server, o.wait or DEFAULT_WAIT)
    if not got then return nil, err end
    local p, conn = got.params, got.conn
    local function refuse(e) -- the browser is told too
        answer(uv, conn, 400, "dataportability: login failed", e.message)
        return nil, e
    end
    if p.state ~= pkce.state then
        return refuse(ctx:error("http", "the redirect's state does not match this login's: ignored"
            .. " (a forged request?)"))
    end
    if p.error then
        return refuse(ctx:error("api", format("consent refused: %s%s", shown(p.error, "^[%w_]+$"),
            p.error_description and (": " .. p.error_description:sub(1, 300)) or ""), { status = p.error }))
    end
    if not p.code or p.code == "" then return refuse(ctx:error("http", "the redirect has no code")) end
    ctx:secret(p.code)
    local source
    ok, source, err = pcall(dp.exchange_code, {
        client_id = client_id, client_secret = secret, code = p.code, redirect_uri = redirect_uri,
        code_verifier = pkce.code_verifier, token_endpoint = o.token_endpoint, ca_file = o.ca_file,
        timeout = o.timeout, user_agent = ctx.user_agent,
    })
    if not ok then return refuse(ctx:error("invalid_argument", clean(source))) end
    if not source then return refuse(err) end
    ctx.source = source
    if not source.refresh_token then
        return refuse(ctx:error("http", "the token endpoint gave no refresh token"))
    end
    local creds = { client_id = client_id, client_secret = secret, refresh_token = source.refresh_token,
                    token_endpoint = o.token_endpoint }
    ok, err = write_private(ctx, path, credentials_json(creds))
    if not ok then return refuse(err) end
    answer(uv, conn, 200, "dataportability: login done",
        "The credentials are saved. You can close this window.")
    if o.json then
        ctx:out(to_json({ credentials = path, client_id = client_id, scopes = list(wanted) }), "\n")
    else
        ctx:out("login: credentials written to ", path, " (mode 0600)\n")
    end
    return true
end

---------------------------------------------------------------------------
-- main

local function run(ctx, argv)
    local args, seen, err = parse(ctx, argv)
    if not args then return nil, err end
    local o = ctx.opts
    local name = table.remove(args, 1)
    if name == "help" and not o.help then
        name, o.help = args[1], true
        args = {}
    end
    if name and not COMMANDS[name] then return usage(ctx, "unknown command " .. shown(name, "^%a[%w-]*$")) end
    ctx.command = name
    if o.help then
        ctx:out(name and command_help(name) or general_help())
        return true
    end
    if not name then return usage(ctx, "missing command") end
    local c = COMMANDS[name]
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
    for _, spec in ipairs({ { "--timeout", "timeout" }, { "--poll-interval", "poll_interval" },
                            { "--max-wait", "max_wait" }, { "--wait", "wait" } }) do
        local ok, nerr = number_option(ctx, spec[1], spec[2])
        if not ok then return nil, nerr end
    end
    local ok, perr = number_option(ctx, "--port", "port", true)
    if not ok then return nil, perr end
    if o.port and o.port > 65535 then return usage(ctx, "--port needs a port number") end
    if o.ca_file then -- libcurl would only say that TLS failed
        local pem, ferr = read_file(ctx, o.ca_file, "CA file")
        if not pem then return nil, ferr end
    end
    ctx.user_agent = "dataportability-cli/" .. dp._VERSION .. (o.user_agent and (" " .. o.user_agent) or "")

    if not c.token then return RUN[name](ctx, nil, nil, args) end
    local token
    token, err = find_token(ctx)
    if not token then return nil, err end
    local created, client = pcall(dp.new, { endpoint = o.endpoint, ca_file = o.ca_file, timeout = o.timeout,
        quota_project = o.quota_project, user_agent = ctx.user_agent })
    if not created then return usage(ctx, clean(client)) end
    local done
    done, err = RUN[name](ctx, client, token, args)
    client:close()
    return done, err
end

--- main(argv [, sys]) -> exit code. sys (for tests): stdout, stderr (file
--- handles), getenv (function), stderr_tty (boolean).
function _M.main(argv, sys)
    sys = sys or {}
    local ctx = setmetatable({
        opts = {}, secrets = {},
        stdout = sys.stdout or io.stdout, stderr = sys.stderr or io.stderr,
        getenv = sys.getenv or os.getenv, stderr_tty = sys.stderr_tty,
    }, Ctx)
    -- redacted from the start, so that even a usage error cannot show it
    ctx:secret(ctx.getenv("DATAPORTABILITY_TOKEN"))
    local ok, done, err = pcall(run, ctx, argv or {})
    if not ok and tostring(done):find("interrupted!$") then -- Ctrl-C, through lua.c's hook
        ctx:err("\n", PROG, ": interrupted\n")
        if ctx.command == "export" and ctx.job_id then
            ctx:err("the job is kept: to resume, run the same command with --job ", ctx.job_id, "\n")
        end
        return 130
    end
    if not ok then -- a bug of ours: say so, without a traceback that could hold anything
        ctx:err(PROG, ": internal error: ", clean(done), "\n")
        return 4
    end
    local code = 0
    if not done then
        code = EXIT[err.kind] or 1
        if not err.reported then ctx:report(err) end
    end
    return code
end

_M.EXIT = EXIT
_M.to_json = to_json

return _M
