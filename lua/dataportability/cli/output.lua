-- What the command line prints (docs/cli.md, "Output"): human lines,
-- escaped so that a server cannot write to the terminal; --json through
-- cjson; the progress bar; and the context every command prints through,
-- which redacts each secret the CLI knows from whatever it writes.
local errors = require("dataportability.errors")
local core = require("dataportability.core")
local cjson = require("cjson.safe")

local type, pairs, ipairs, tostring, setmetatable, getmetatable, next = type, pairs, ipairs, tostring,
    setmetatable, getmetatable, next
local format, rep, byte, gsub, find, sub = string.format, string.rep, string.byte, string.gsub, string.find,
    string.sub
local concat = table.concat
local floor, min = math.floor, math.min

local _M = {}

local PROG = "dataportability"
_M.PROG = PROG
local REDACT_MIN = 6 -- shorter strings are not real secrets, and would garble every line

---------------------------------------------------------------------------
-- Text from elsewhere (the server above all, but also argv and files) in
-- what we print. A terminal obeys the bytes it is given: a server string
-- could paint the screen, move the cursor, retitle the window or forge a
-- line of ours ("\rstate: COMPLETE"). So in human output, every part of a
-- line is shown escaped:
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

-- s with what `pattern` finds rewritten by esc(kind, value, raw): kind
-- "byte" (an ASCII byte), "cp" (an unsafe code point) or "bad" (a byte
-- that is not UTF-8); raw is what s holds there. Other UTF-8 sequences
-- stay as they are.
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
            out[#out + 1] = esc("byte", c, sub(s, j, j))
        else
            local cp
            cp, len = utf8_at(s, j)
            if not cp then
                out[#out + 1], len = esc("bad", c, sub(s, j, j)), 1
            elseif unsafe_code_point(cp) then
                out[#out + 1] = esc("cp", cp, sub(s, j, j + len - 1))
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
_M.escape = escape

---------------------------------------------------------------------------
-- JSON: lua-cjson, in an instance of our own (cjson.new) so that its
-- settings are not the library's: a sparse list becomes an object, NaN and
-- the infinities null.

local json = cjson.new()
json.encode_sparse_array(true)
json.encode_invalid_numbers("null")

-- A list stays a list when empty. The marker is cjson's own array
-- metatable, as client.lua uses, where cjson has one; Debian's lua-cjson
-- 2.1.0 has none and writes {} for any empty table, so to_json writes the
-- [] of a marked list itself.
local ARRAY = cjson.array_mt or {}

local function list(t)
    return setmetatable(t or {}, ARRAY)
end
_M.list = list

local EMPTY_LIST = "\255" -- not UTF-8: no string holds it once made UTF-8
local REPLACEMENT = "\239\191\189" -- U+FFFD

local function utf8_only(kind, _, raw)
    return kind == "bad" and REPLACEMENT or raw
end

-- v as data for cjson: each string (key or value) passed through map,
-- then made UTF-8; an empty list as EMPTY_LIST; a table met before (a
-- cycle), functions and the like left out.
local function prepare(v, map, seen)
    local t = type(v)
    if t == "string" then return rewrite(map and map(v) or v, "[\128-\255]", utf8_only) end
    if t == "number" or t == "boolean" or v == cjson.null then return v end
    if t ~= "table" or seen[v] then return nil end
    if next(v) == nil and getmetatable(v) == ARRAY then return EMPTY_LIST end
    seen[v] = true
    local out = {}
    for k, x in pairs(v) do
        if type(k) == "string" or type(k) == "number" then
            out[prepare(k, map, seen)] = prepare(x, map, seen)
        end
    end
    return out
end

local function json_escape(kind, v)
    if kind == "bad" then return "\\ufffd" end
    return format("\\u%04x", v)
end

--- v as one line of JSON (docs/cli.md, "--json"); map, when given, is
--- applied to every string first (the redaction).
local function to_json(v, map)
    local text = assert(json.encode(prepare(v, map, {})))
    text = gsub(text, '"' .. EMPTY_LIST .. '"', "[]")
    -- cjson 2.1.0 writes every / as \/: the same string, but URLs unreadable
    text = gsub(text, "\\/", "/")
    return (rewrite(text, "[\128-\255]", json_escape))
end
_M.to_json = to_json

---------------------------------------------------------------------------
-- Sizes and the progress bar

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
_M.human_size = human_size

--- A raised error's text without its "file.lua:12: " positions and the
--- library function's name.
function _M.clean(msg)
    msg = gsub(tostring(msg), "[%w_./-]+%.lua:%d+: ", "")
    return (gsub(msg, "^[%w_]+: ", ""))
end

---------------------------------------------------------------------------
-- The context: options, output streams (every line redacted), errors

local Ctx = {}
Ctx.__index = Ctx

--- A context for one run. sys (for tests): stdout, stderr (file handles),
--- getenv (function), stderr_tty (boolean).
function _M.context(sys)
    return setmetatable({
        opts = {}, known_secrets = {},
        stdout = sys.stdout or io.stdout, stderr = sys.stderr or io.stderr,
        getenv = sys.getenv or os.getenv, stderr_tty = sys.stderr_tty,
    }, Ctx)
end

--- Every secret known now, each a string of REDACT_MIN bytes or more.
function Ctx:secrets()
    local all = {}
    local function add(secret)
        if type(secret) == "string" and #secret >= REDACT_MIN then all[#all + 1] = secret end
    end
    local source = self.source
    if source then -- a token source's secrets change as it refreshes
        add(source.access_token)
        add(source.refresh_token)
        add(source.client_secret)
    end
    for _, secret in ipairs(self.known_secrets) do add(secret) end
    return all
end

--- s with every secret the CLI knows replaced, whole and (through
--- errors.redact) in the partial and encoded forms it recognises.
function Ctx:redact(s)
    for _, secret in ipairs(self:secrets()) do s = errors.redact(s, secret) end
    return s
end

function Ctx:secret(s)
    if type(s) == "string" then self.known_secrets[#self.known_secrets + 1] = s end
end

--- At most max bytes of s, redacted before the cut: a secret cut in two
--- would no longer be found whole.
function Ctx:cut(s, max)
    s = self:redact(s)
    if #s > max then s = sub(s, 1, max) .. "..." end
    return s
end

-- Our own text (help, JSON, the progress bar's controls), redacted.
-- Flushed at once: an export runs for long, maybe into a pipe.
function Ctx:out(...)
    self.stdout:write(self:redact(concat({ ... })))
    self.stdout:flush()
end

function Ctx:err(...)
    self.stderr:write(self:redact(concat({ ... })))
    self.stderr:flush()
end

-- One line of human output, on stdout (say) or stderr (tell): its parts
-- may hold anything a server sent, so the line is redacted, then escaped
-- (control bytes and the like shown as \x1b, \r, \n), then ended.
function Ctx:say(...)
    self.stdout:write(escape(self:redact(concat({ ... }))), "\n")
    self.stdout:flush()
end

function Ctx:tell(...)
    self.stderr:write(escape(self:redact(concat({ ... }))), "\n")
    self.stderr:flush()
end

--- The result of a --json run: each string redacted whole before it is
--- encoded (an escaped secret would no longer be found in the text).
function Ctx:json(v)
    self:out(to_json(v, function(s) return self:redact(s) end), "\n")
end

function Ctx:error(kind, message, fields)
    return errors.new(self.command or PROG, kind, message, fields)
end

function Ctx:fail(kind, message, fields)
    return nil, self:error(kind, message, fields)
end

--- Prints err: {"error": ...} with --json, else on stderr.
function Ctx:report(err)
    -- the fields a server chose (message, excerpt, ...) were cut by the
    -- library: each is redacted whole here, before it is printed
    for _, secret in ipairs(self:secrets()) do errors.scrub(err, secret) end
    if self.opts.json then
        if type(err.files) == "table" then list(err.files) end -- export's, maybe none
        return self:json({ error = err })
    end
    if err.kind == "usage" then
        self:tell(PROG, ": ", err.message)
        if self.usage then
            self:tell("usage: dataportability ", self.usage)
            self:tell("run 'dataportability ", self.command, " --help' for details")
        else
            self:tell("run 'dataportability --help' for the commands")
        end
        return
    end
    self:tell(tostring(err))
    if err.retry_after then self:tell("  the server asks to retry after ", tostring(err.retry_after)) end
end

-- The progress bar of one download, on stderr when it is a terminal (nil
-- otherwise): one line, redrawn with \r, only when its text changes. The
-- file's name is redacted, cut, then escaped: the bar's own \r and ESC [K
-- are the only controls it writes.
function Ctx:progress_bar()
    if self.opts.quiet then return nil end
    if self.stderr_tty == nil then self.stderr_tty = core.is_terminal(2) end
    if not self.stderr_tty then return nil end
    local visible, last = false, nil
    local bar = {}
    function bar.update(name, done, total)
        name = self:redact(name)
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
            self:err("\r", text, "\27[K")
            last, visible = text, true
        end
    end
    function bar.clear()
        if visible then self:err("\r\27[K") end
        visible, last = false, nil
    end
    return bar
end

return _M
