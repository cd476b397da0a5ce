-- The command line (bin/dataportability; docs/cli.md): parses argv, finds
-- the token (never on the command line; never from a file that others may
-- read), calls the client and prints the outcome, for people (escaped: a
-- server cannot write to the terminal) or, with --json, for programs.
--
--   local code = require("dataportability.cli").main(arg)
local dp = require("dataportability")
local errors = require("dataportability.errors")
local scopes = require("dataportability.scopes")
local core = require("dataportability.core")
local json = require("cjson.safe")

local type, pairs, ipairs, tostring, tonumber, pcall = type, pairs, ipairs, tostring, tonumber, pcall
local setmetatable, getmetatable, next = setmetatable, getmetatable, next
local format, rep, byte, gsub, find, sub = string.format, string.rep, string.byte, string.gsub, string.find,
    string.sub
local concat, sort = table.concat, table.sort
local gmatch = string.gmatch
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
-- Text from elsewhere (the server above all, but also argv and files) in
-- what we print. A terminal obeys the bytes it is given: a server string
-- could paint the screen, move the cursor, retitle the window or forge a
-- line of ours ("\rstate: COMPLETE"). So in human output, every part of a
-- line is shown escaped (docs/cli.md, "Output"):
--   C0 controls and DEL: \n \r \t, else \xHH; the backslash itself: \\
--   C1 controls (U+0080..U+009F), the bidirectional controls (U+061C,
--   U+200E, U+200F, U+202A..U+202E, U+2066..U+2069) and the line and
--   paragraph separators (U+2028, U+2029): \u{HHHH}
--   each byte that is not part of valid UTF-8 (RFC 3629): \xHH
-- The JSON output escapes the same code points as \uHHHH (the same string
-- to a JSON parser) and, JSON text being UTF-8, writes U+FFFD for a byte
-- that is not UTF-8.

-- The code point of the UTF-8 sequence at s[i] and its length, or nil:
-- no overlong forms, no surrogates, nothing above U+10FFFF.
local function utf8_at(s, i)
    local c = byte(s, i)
    local n, cp, least
    if c >= 0xC2 and c <= 0xDF then
        n, cp, least = 1, c - 0xC0, 0x80
    elseif c >= 0xE0 and c <= 0xEF then
        n, cp, least = 2, c - 0xE0, 0x800
    elseif c >= 0xF0 and c <= 0xF4 then
        n, cp, least = 3, c - 0xF0, 0x10000
    else
        return nil
    end
    for k = 1, n do
        local d = byte(s, i + k)
        if not d or d < 0x80 or d > 0xBF then return nil end
        cp = cp * 64 + (d - 0x80)
    end
    if cp < least or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return nil end
    return cp, n + 1
end

local function unsafe_code_point(cp)
    return cp < 0xA0 or cp == 0x061C or cp == 0x200E or cp == 0x200F or (cp >= 0x2028 and cp <= 0x202E)
        or (cp >= 0x2066 and cp <= 0x2069)
end

-- s with what `pattern` finds rewritten by esc(kind, value): kind "byte"
-- (an ASCII byte), "cp" (an unsafe code point) or "bad" (a byte that is
-- not UTF-8). Other UTF-8 sequences stay as they are.
local function rewrite(s, pattern, esc)
    if not find(s, pattern) then return s end
    local out, i, n = {}, 1, #s
    while i <= n do
        local j = find(s, pattern, i)
        if not j then
            out[#out + 1] = sub(s, i)
            break
        end
        if j > i then out[#out + 1] = sub(s, i, j - 1) end
        local c, len = byte(s, j), 1
        if c < 0x80 then
            out[#out + 1] = esc("byte", c)
        else
            local cp
            cp, len = utf8_at(s, j)
            if not cp then
                out[#out + 1], len = esc("bad", c), 1
            elseif unsafe_code_point(cp) then
                out[#out + 1] = esc("cp", cp)
            else
                out[#out + 1] = sub(s, j, j + len - 1)
            end
        end
        i = j + len
    end
    return concat(out)
end

local HUMAN_ESCAPES = { [9] = "\\t", [10] = "\\n", [13] = "\\r", [92] = "\\\\" }

local function human_escape(kind, v)
    if kind == "cp" then return format("\\u{%x}", v) end
    return HUMAN_ESCAPES[v] or format("\\x%02x", v)
end

--- s as one line that is safe on a terminal (the rules above).
local function escape(s)
    return rewrite(s, "[%z\1-\31\127-\255\\]", human_escape)
end

---------------------------------------------------------------------------
-- JSON output: our own small encoder, because Debian's lua-cjson 2.1.0 has
-- no array marker (an empty list would come out as {}) and escapes every /.

local ARRAY = {}

local function list(t)
    return setmetatable(t or {}, ARRAY)
end

local JSON_ESCAPES = { [34] = '\\"', [92] = "\\\\", [8] = "\\b", [12] = "\\f", [10] = "\\n",
                       [13] = "\\r", [9] = "\\t" }

local function json_escape(kind, v)
    if kind == "bad" then return "\\ufffd" end
    return JSON_ESCAPES[v] or format("\\u%04x", v)
end

local function quote(s)
    return '"' .. rewrite(s, '[%z\1-\31\127-\255\\"]', json_escape) .. '"'
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

-- Every secret known now, each a string of REDACT_MIN bytes or more.
local function secrets_of(self)
    local all = {}
    local source = self.source
    local function add(secret)
        if type(secret) == "string" and #secret >= REDACT_MIN then all[#all + 1] = secret end
    end
    if source then -- a token source's secrets change as it refreshes
        add(source.access_token)
        add(source.refresh_token)
        add(source.client_secret)
    end
    for _, secret in ipairs(self.secrets) do add(secret) end
    return all
end

-- s with every secret the CLI knows replaced, whole and (through
-- errors.redact) in the partial and encoded forms it recognises.
local function redact(self, s)
    for _, secret in ipairs(secrets_of(self)) do s = errors.redact(s, secret) end
    return s
end

function Ctx:redact(s)
    return redact(self, s)
end

-- At most max bytes of s, redacted before the cut: a secret cut in two
-- would no longer be found whole.
function Ctx:cut(s, max)
    s = redact(self, s)
    if #s > max then s = sub(s, 1, max) .. "..." end
    return s
end

-- Our own text (help, JSON, the progress bar's controls), redacted.
-- Flushed at once: an export runs for long, maybe into a pipe.
function Ctx:out(...)
    self.stdout:write(redact(self, concat({ ... })))
    self.stdout:flush()
end

function Ctx:err(...)
    self.stderr:write(redact(self, concat({ ... })))
    self.stderr:flush()
end

-- One line of human output, on stdout (say) or stderr (tell): its parts
-- may hold anything a server sent, so the line is redacted, then escaped
-- (control bytes and the like shown as \x1b, \r, \n), then ended.
function Ctx:say(...)
    self.stdout:write(escape(redact(self, concat({ ... }))), "\n")
    self.stdout:flush()
end

function Ctx:tell(...)
    self.stderr:write(escape(redact(self, concat({ ... }))), "\n")
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

-- The error table as plain JSON-able data, each string (key or value)
-- redacted whole, before anything else is done to it.
local function plain(ctx, v, seen)
    seen = seen or {}
    if type(v) == "string" then return redact(ctx, v) end
    if type(v) ~= "table" then return v end
    if seen[v] then return nil end
    seen[v] = true
    local out = {}
    for k, x in pairs(v) do
        if type(k) == "string" then
            out[redact(ctx, k)] = plain(ctx, x, seen)
        elseif type(k) == "number" then
            out[k] = plain(ctx, x, seen)
        end
    end
    if next(out) == nil and getmetatable(v) == ARRAY then return list() end
    return out
end

-- Prints err and returns its exit code.
function Ctx:report(err)
    local code = EXIT[err.kind] or 1
    -- the fields a server chose (message, excerpt, ...) were cut by the
    -- library: each is redacted whole here, before it is printed
    for _, secret in ipairs(secrets_of(self)) do errors.scrub(err, secret) end
    if self.opts.json then
        local e = plain(self, err)
        if type(e.files) == "table" then e.files = list(e.files) end -- export's, maybe none
        self:out(to_json({ error = e }), "\n")
        return code
    end
    if err.kind == "usage" then
        self:tell(PROG, ": ", err.message)
        local c = COMMANDS[self.command or ""]
        if c then
            self:tell("usage: dataportability ", c.usage)
            self:tell("run 'dataportability ", self.command, " --help' for details")
        else
            self:tell("run 'dataportability --help' for the commands")
        end
        return code
    end
    self:tell(tostring(err))
    if err.retry_after then self:tell("  the server asks to retry after ", tostring(err.retry_after)) end
    return code
end

---------------------------------------------------------------------------
-- Words from argv in messages. A token pasted where a resource group, a
-- job id or a file name belongs must not come back in a message (on a
-- terminal, in a CI log). So a word the CLI rejects is quoted only when it
-- does not look like a token (docs/cli.md, "Arguments that look like a
-- token"). A word looks like a token when:
--   1. it holds a secret the CLI knows (DATAPORTABILITY_TOKEN, ...), or
--   2. it holds "ya29." or "GOCSPX-", or starts with "1//", "4/0", "eyJ" or
--      "Bearer " (Google's access tokens, client secrets, refresh tokens,
--      authorization codes; a JWT; a pasted header), or
--   3. it has a run of 20 bytes or more of letters, digits and -_~+= with
--      both letters and digits in it, or it is a valid bearer token
--      (core.check_token) longer than 40 bytes. For a file name, only when
--      the whole name is such a run (no / and no .): paths are long words.

local LOOKS = "an argument that looks like a token (not shown)"
local TOKEN_HINT = "a token is never an argument: set DATAPORTABILITY_TOKEN, or put it in a file that"
    .. " only you can read (chmod 600) and give --token-file FILE"
local TOKEN_ANYWHERE = { "ya29.", "GOCSPX-" }
local TOKEN_STARTS = { "1//", "4/0", "eyJ", "Bearer ", "bearer " }

-- Rules 1 and 2: words refused even where they would be valid.
local function surely_token(ctx, word)
    for _, secret in ipairs(secrets_of(ctx)) do -- whole: a valid word may share a few bytes with one
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

local function looks_like_token(ctx, word, path)
    if surely_token(ctx, word) then return true end
    if path then return find(word, "^[%w%-_~+]+=*$") ~= nil and mixed_run(word) end
    for run in gmatch(word, "[%w%-_~+=]+") do
        if mixed_run(run) then return true end
    end
    return #word > 40 and core.check_token(word) == true
end

-- A message about a word from argv that the CLI rejects: `what`, the word
-- (quoted when how.quoted; "(not shown)" when longer than how.max or not
-- of the shape how.pattern), then `tail`. A word that looks like a token
-- (how.path: a file name) is not shown, and the message says how to give
-- a token.
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

-- A file name in a message about a file that exists.
local function path_shown(ctx, path)
    return looks_like_token(ctx, path, true) and LOOKS or path
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

-- s as one word for the shell, quoted only when it needs to be.
local function shell_word(s)
    if find(s, "^[%w@%%+=:,./_-]+$") then return s end
    return sh_quote(s)
end

-- os.execute: true on 5.2+, 0 on 5.1 and LuaJIT.
local function execute_ok(cmd)
    local r = os.execute(cmd)
    return r == true or r == 0
end

-- The permission bits of a file, following symbolic links as open does,
-- and whether it is a regular file; nil when it cannot be read. Through
-- luv when it is there (every Lua the CLI runs under has lua-luv on
-- Debian); else stat(1): the C core reads no modes, and Debian's lua-posix
-- has no build for Lua 5.4.
local function file_mode(path)
    local uv = has_luv()
    if uv then
        local st = uv.fs_stat(path)
        if not st then return nil end
        return st.mode % 4096, st.type == "file"
    end
    local p = io.popen("stat -L -c %f -- " .. sh_quote(path) .. " 2>/dev/null")
    local out = p and p:read("*l")
    if p then p:close() end
    local raw = out and tonumber(out, 16)
    if not raw then return nil end
    return raw % 4096, floor(raw / 4096) == 8
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
        return ctx:fail("io", about(ctx, "cannot read the " .. what, path, { path = true }, ": " .. why))
    end
    return data
end

-- The contents of a file that holds a secret (--token-file, --credentials,
-- --client-secret-file), refused as ssh refuses such a private key when
-- group or others may read, write or execute it: one check for all. Only
-- regular files: the mode of a pipe (--token-file <(pass show token)) or a
-- device says nothing of who could read what went through it.
local function read_secret(ctx, path, what)
    local mode, regular = file_mode(path)
    if mode and regular and mode % 64 ~= 0 then
        local hidden = looks_like_token(ctx, path, true)
        return ctx:fail("io", format("permissions %04o for %s are too open: the %s holds a secret that"
            .. " group and others must have no access to; run: %s", mode,
            hidden and LOOKS or ("'" .. path .. "'"), what,
            hidden and "chmod 600 on that file" or ("chmod 600 " .. shell_word(path))))
    end
    return read_file(ctx, path, what)
end

-- DIR exists as a directory, or is made (0700: archives hold personal data).
local function ensure_dir(ctx, dir)
    if surely_token(ctx, dir) then -- it would be made, and printed in every file's path
        return ctx:fail("invalid_argument", "--dir: " .. LOOKS .. "; " .. TOKEN_HINT)
    end
    local uv = has_luv()
    if uv then
        local st = uv.fs_stat(dir)
        if not st then
            local ok, err = uv.fs_mkdir(dir, 448)
            if not ok then
                return ctx:fail("io", about(ctx, "cannot create", dir, { path = true },
                    ": " .. tostring(err)))
            end
            return true
        end
        if st.type ~= "directory" then
            return ctx:fail("io", about(ctx, "--dir", dir, { path = true }, " is not a directory"))
        end
        return true
    end
    if execute_ok("test -d " .. sh_quote(dir)) or execute_ok("mkdir -m 700 -- " .. sh_quote(dir)) then
        return true
    end
    return ctx:fail("io", about(ctx, "cannot create the directory", dir, { path = true }))
end

-- Writes data to path, mode 0600, through a temporary file renamed over it.
local function write_private(ctx, path, data)
    local uv = has_luv()
    local tmp = format("%s.tmp%d", path, uv.os_getpid())
    uv.fs_unlink(tmp)
    local fd, err = uv.fs_open(tmp, "wx", 384) -- O_EXCL: never through a planted symlink
    if not fd then
        return ctx:fail("io", about(ctx, "cannot write", path, { path = true }, ": " .. tostring(err)))
    end
    local ok, werr = uv.fs_fchmod(fd, 384) -- whatever the umask
    if ok then ok, werr = uv.fs_write(fd, data, 0) end
    if ok then ok, werr = uv.fs_fsync(fd) end
    uv.fs_close(fd)
    if ok then ok, werr = uv.fs_rename(tmp, path) end
    if not ok then
        uv.fs_unlink(tmp)
        return ctx:fail("io", about(ctx, "cannot write", path, { path = true }, ": " .. tostring(werr)))
    end
    return true
end

---------------------------------------------------------------------------
-- The token: from --credentials, --token-file or DATAPORTABILITY_TOKEN

local CREDENTIAL_FIELDS = { client_id = true, client_secret = true, refresh_token = true,
                            token_endpoint = true, revoke_endpoint = true }

local function from_credentials(ctx, path)
    local data, err = read_secret(ctx, path, "credentials file")
    if not data then return nil, err end
    local doc = json.decode(data)
    local shown = path_shown(ctx, path)
    if type(doc) ~= "table" then
        return ctx:fail("invalid_token", "the credentials file " .. shown .. " is not a JSON object")
    end
    local o = { ca_file = ctx.opts.ca_file, timeout = ctx.opts.timeout, user_agent = ctx.user_agent }
    for k, v in pairs(doc) do
        if CREDENTIAL_FIELDS[k] then
            if type(v) ~= "string" then
                return ctx:fail("invalid_token", format("the credentials file %s: %s must be a string",
                    shown, k))
            end
            o[k] = v
            if k == "client_secret" or k == "refresh_token" then ctx:secret(v) end
        end
    end
    if not o.client_id or not o.refresh_token then
        return ctx:fail("invalid_token", format("the credentials file %s needs client_id and refresh_token",
            shown))
    end
    local ok, source = pcall(dp.token_source, o)
    if not ok then
        return ctx:fail("invalid_token", "the credentials file " .. shown .. ": " .. clean(source))
    end
    ctx.source = source
    return source
end

local function from_token_file(ctx, path)
    local data, err = read_secret(ctx, path, "token file")
    if not data then return nil, err end
    local token = data:match("^[^\r\n]*"):match("^%s*(.-)%s*$")
    if token == "" then
        return ctx:fail("invalid_token", "the token file " .. path_shown(ctx, path) .. " is empty")
    end
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

-- Resource groups this version knows, or nil, err (exit 4) before any request.
local function check_resources(ctx, resources)
    for _, r in ipairs(resources) do
        if not dp.scope_for(r) then
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
    if surely_token(ctx, word) then
        return ctx:fail("invalid_argument", name .. ": " .. LOOKS .. "; " .. TOKEN_HINT)
    end
    local id = gsub(word, "^archiveJobs/", "")
    if id == "" or id == "." or id == ".." or find(id, "/", 1, true) then
        return ctx:fail("invalid_argument", about(ctx, name .. " must be ID or archiveJobs/ID, got", word,
            { pattern = "^[%w%-._~/]+$", quoted = true }))
    end
    return id
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
-- only when its text changes. The file's name is redacted, cut, then
-- escaped: the bar's own \r and ESC [K are the only controls it writes.
local function progress_bar(ctx)
    local visible, last = false, nil
    local self = {}
    function self.update(name, done, total)
        name = ctx:redact(name)
        local label = escape(#name > 28 and (sub(name, 1, 25) .. "...") or name)
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
-- The commands. Human output goes through ctx:say and ctx:tell, which
-- escape whatever the server put in a line; --json through to_json.

local RUN = {}

function RUN.reset(ctx, client, token)
    local ok, err = client:reset(token)
    if not ok then return nil, err end
    if ctx.opts.json then
        ctx:out(to_json({ reset = true }), "\n")
    else
        ctx:say("reset: done")
        if ctx.opts.credentials then
            ctx:say("the credentials in ", path_shown(ctx, ctx.opts.credentials), " are revoked now:"
                .. " run 'dataportability login' before the next export")
        end
    end
    return true
end

local function job_line(id, access_type, extra)
    return format("job %s started%s%s", id, extra or "", access_type and (" (" .. access_type .. ")") or "")
end

function RUN.initiate(ctx, client, token)
    local job, err = client:initiate(token, ctx.resources, { start_time = ctx.start_time,
                                                             end_time = ctx.end_time })
    if not job then return nil, err end
    if ctx.opts.json then
        ctx:out(to_json({ archive_job_id = job.archive_job_id, access_type = job.access_type }), "\n")
    else
        ctx:say(job_line(job.archive_job_id, job.access_type))
    end
    return true
end

function RUN.state(ctx, client, token)
    local st, err = client:state(token, ctx.job)
    if not st then return nil, err end
    if ctx.opts.json then
        st.urls = list(st.urls)
        ctx:out(to_json(st), "\n")
        return true
    end
    ctx:say("state: ", st.state)
    if st.start_time then ctx:say("start time: ", st.start_time) end
    if st.export_time then ctx:say("export time: ", st.export_time) end
    for _, url in ipairs(st.urls) do ctx:say(url) end
    return true
end

function RUN.retry(ctx, client, token)
    local old = ctx.job
    local job, err = client:retry(token, old)
    if not job then return nil, err end
    if ctx.opts.json then
        ctx:out(to_json({ archive_job_id = job.archive_job_id, access_type = job.access_type,
                          retry_of = old }), "\n")
    else
        ctx:say(job_line(job.archive_job_id, job.access_type, " (retry of " .. old .. ")"))
    end
    return true
end

function RUN.cancel(ctx, client, token)
    local id = ctx.job
    local ok, err = client:cancel(token, id)
    if not ok then return nil, err end
    if ctx.opts.json then
        ctx:out(to_json({ archive_job_id = id, cancelled = true }), "\n")
    else
        ctx:say("job ", id, " cancelled")
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
        ctx:say("one-time: ", line(r.one_time_resources))
        ctx:say("time-based: ", line(r.time_based_resources))
    end
    return true
end

function RUN.export(ctx, client, token)
    local o = ctx.opts
    local ok, err = ensure_dir(ctx, o.dir)
    if not ok then return nil, err end
    local human = not o.json
    local bar = not o.quiet and is_tty(ctx) and progress_bar(ctx)
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
        ctx:out(to_json({ job_id = result.job_id, state = result.state, files = files,
                          reset = result.reset }), "\n")
    else
        ctx:say(format("export: %d file%s in %s", #result.files, #result.files == 1 and "" or "s", o.dir))
        ctx:say(result.reset and "reset: done" or "reset: skipped (--no-reset)")
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
    for _, name in ipairs(names) do ctx:say(format("%-42s %s", name, dp.scopes[name])) end
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
    local data, err = read_secret(ctx, path, "client secret file")
    if not data then return nil, nil, err end
    local doc = json.decode(data)
    if type(doc) == "table" then
        local c = type(doc.installed) == "table" and doc.installed
            or type(doc.web) == "table" and doc.web or doc
        if type(c.client_secret) ~= "string" then
            return nil, nil, ctx:error("invalid_token", "the client secret file " .. path_shown(ctx, path)
                .. " has no client_secret")
        end
        return c.client_secret, type(c.client_id) == "string" and c.client_id or nil
    end
    local secret = data:match("^[^\r\n]*"):match("^%s*(.-)%s*$")
    if secret == "" then
        return nil, nil, ctx:error("invalid_token", "the client secret file " .. path_shown(ctx, path)
            .. " is empty")
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
                path_shown(ctx, o.client_secret_file), why))
        end
    end
    local client_id = o.client_id or file_client_id
    if not client_id then return usage(ctx, "login needs --client-id ID") end
    if surely_token(ctx, client_id) then -- it would be in the consent URL printed below
        return ctx:fail("invalid_argument", "--client-id: " .. LOOKS .. "; " .. TOKEN_HINT)
    end
    local wanted = resources_of(args)
    for _, r in ipairs(resources_of({ o.scopes or "" })) do wanted[#wanted + 1] = r end
    if #wanted == 0 then
        return usage(ctx, "login needs --scopes RESOURCE,... (see 'dataportability scopes')")
    end
    local checked, cerr = check_resources(ctx, wanted)
    if not checked then return nil, cerr end
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
    ctx:tell("Open this URL in a browser on this machine and consent:")
    ctx:tell("")
    ctx:tell(url)
    ctx:tell("")
    ctx:tell(format("Waiting for the browser on %s (%g s)...", redirect_uri, o.wait or DEFAULT_WAIT))

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
        -- what the redirect says is anyone's text: shown only when of OAuth's
        -- shape, and cut only once redacted
        local code = find(p.error, "^[%w_]+$") and #p.error <= 40 and p.error or "(not shown)"
        return refuse(ctx:error("api", format("consent refused: %s%s", code,
            p.error_description and (": " .. ctx:cut(p.error_description, 300)) or ""), { status = p.error }))
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
        ctx:say("login: credentials written to ", path, " (mode 0600)")
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
    if name and not COMMANDS[name] then
        return usage(ctx, about(ctx, "unknown command", name, { pattern = "^%a[%w-]*$" }))
    end
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
    -- export's bounds: Google asks for a poll at most about once a second
    for _, spec in ipairs({ { "--timeout", "timeout" }, { "--poll-interval", "poll_interval", false, 1 },
                            { "--max-wait", "max_wait", false, nil, 30 * 86400 }, { "--wait", "wait" },
                            { "--port", "port", true, nil, 65535 } }) do
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
            ctx.resources = resources_of(args)
            if #ctx.resources == 0 then return usage(ctx, "export needs RESOURCE... (or --job JOB)") end
        end
    elseif name == "initiate" then
        ctx.resources = resources_of(args)
    end
    if ctx.resources then
        local ok, rerr = check_resources(ctx, ctx.resources)
        if not ok then return nil, rerr end
    end
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
        ctx:err("\n")
        ctx:tell(PROG, ": interrupted")
        if ctx.command == "export" and ctx.job_id then
            ctx:tell("the job is kept: to resume, run the same command with --job ", ctx.job_id)
        end
        return 130
    end
    if not ok then -- a bug of ours: say so, without a traceback that could hold anything
        ctx:tell(PROG, ": internal error: ", clean(done))
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
