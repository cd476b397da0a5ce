-- Error tables: every failed call returns nil and one of these.
-- Fields: kind, message, method, retryable, and where the server answered
-- http_status; from Google's JSON error body code, status, details, reason,
-- domain, metadata (from OAuth's error body, status is its error code);
-- from a non-JSON body a sanitised excerpt.
--
-- And redaction: what a server sends back never holds 8 bytes in a row of
-- a secret (WINDOW), written as is or with JSON escapes, percent-encoding
-- or HTML character references.
local json = require("cjson.safe")

local find, match, gsub, sub, byte, char, format = string.find, string.match, string.gsub, string.sub,
    string.byte, string.char, string.format
local concat = table.concat
local floor = math.floor
local type, tostring, tonumber, ipairs, pairs = type, tostring, tonumber, ipairs, pairs
local setmetatable, getmetatable = setmetatable, getmetatable

local _M = {}

local Error = { __name = "dataportability.error" }
Error.__index = Error

-- Kinds whose request may succeed when simply sent again.
local RETRYABLE_KIND = { timeout = true, connect = true, dns = true, network = true }
-- HTTP statuses Google's clients retry.
local RETRYABLE_STATUS = { [408] = true, [429] = true, [500] = true, [502] = true,
                           [503] = true, [504] = true }

local EXCERPT_MAX = 200
local MESSAGE_MAX = 2000

-- One printable line, at most `max` bytes. Cut first: a hostile body
-- must not make the patterns below run over a whole MiB.
local function one_line(s, max)
    local cut = max and #s > max
    if cut then s = sub(s, 1, max) end
    s = gsub(gsub(s, "[%c]+", " "), "^%s+", "")
    s = gsub(s, "%s+$", "")
    return cut and s .. "..." or s
end

function Error:__tostring()
    local parts = { "dataportability: ", self.method or "?", ": ", self.kind }
    if self.http_status then
        parts[#parts + 1] = format(" (HTTP %d", self.http_status)
        if self.status then parts[#parts + 1] = " " .. one_line(tostring(self.status), 100) end
        if self.reason then parts[#parts + 1] = " " .. one_line(tostring(self.reason), 100) end
        parts[#parts + 1] = ")"
    end
    parts[#parts + 1] = ": " .. one_line(tostring(self.message))
    return concat(parts)
end

function _M.is_error(x)
    return getmetatable(x) == Error
end

function _M.new(method, kind, message, fields)
    local err = fields or {}
    err.method, err.kind, err.message = method, kind, message
    if err.retryable == nil then
        err.retryable = RETRYABLE_KIND[kind] or RETRYABLE_STATUS[err.http_status] or false
    end
    return setmetatable(err, Error)
end

---------------------------------------------------------------------------
-- Redaction
--
-- A secret of WINDOW bytes or more: every run of WINDOW bytes or more of
-- the text that is also a run of the secret is replaced by MARK, so that a
-- cut echo (a header kept to 127 bytes, a message to 2000) is redacted as
-- well as a whole one. A shorter secret: each whole occurrence. The runs
-- are looked for in the text as it is, and in its decoded view: JSON
-- escapes (\/ \\ \uXXXX ...), percent-encoding (%2F, %2f) and HTML
-- character references (&#47; &#x2F; &sol;) decoded, each escape mapped
-- back to its bytes in the text, and replaced whole.
--
-- Linear in the text, whatever it holds: the text is read in aligned
-- blocks of BLOCK bytes (a run of WINDOW bytes holds a whole one, since
-- WINDOW >= 2 * BLOCK - 1), each looked for in the secrets (or, in a long
-- text, in a table of their blocks); only around a block of a secret does
-- its suffix automaton read the text byte by byte, from 3 bytes before the
-- block, and it stops as soon as fewer than BLOCK bytes match. A run can
-- be redacted once decoded only where the text has escapes; where it has
-- none the decoded view is not made. 1 MiB takes about 0.05 to 0.4 s
-- (Lua 5.1 to 5.4, LuaJIT faster), the most for a body made of echoes.

local WINDOW, BLOCK = 8, 4
local BLOCKS_AT = 16 -- a text this many times the secrets' length: a table of their blocks
local MARK = "<redacted>"

-- The suffix automaton of s: go[state][byte] -> state, link, len; the
-- root is state 1.
local function automaton(s)
    local go, link, len = { {} }, { 0 }, { 0 }
    local last = 1
    for i = 1, #s do
        local c = byte(s, i)
        local cur = #len + 1
        len[cur], go[cur] = len[last] + 1, {}
        local p = last
        while p ~= 0 and not go[p][c] do
            go[p][c] = cur
            p = link[p]
        end
        if p == 0 then
            link[cur] = 1
        else
            local q = go[p][c]
            if len[p] + 1 == len[q] then
                link[cur] = q
            else
                local clone, moves = cur + 1, {}
                for k, v in pairs(go[q]) do moves[k] = v end
                len[clone], go[clone], link[clone] = len[p] + 1, moves, link[q]
                while p ~= 0 and go[p][c] == q do
                    go[p][c] = clone
                    p = link[p]
                end
                link[q], link[cur] = clone, clone
            end
        end
        last = cur
    end
    return { go = go, link = link, len = len }
end

-- The secrets (a string, or a list that may have holes) made ready, or nil
-- when there is none: short (under WINDOW bytes), long (the others), all
-- (the long ones, each after a NUL) and starts (where each begins in all,
-- and where one more would), automata (made once a text holds a block of
-- the secret), blocks (made for a long text), min (the shortest text worth
-- reading).
local function compile(secret)
    local list = type(secret) == "table" and secret or { secret }
    local m = { short = {}, long = {}, starts = {}, automata = {} }
    local seen, at, min = {}, 2, nil
    for _, s in pairs(list) do
        if type(s) == "string" and s ~= "" and not seen[s] then
            seen[s] = true
            if #s < WINDOW then
                m.short[#m.short + 1] = s
                if not min or #s < min then min = #s end
            else
                m.long[#m.long + 1], m.starts[#m.long + 1] = s, at
                at = at + #s + 1
                if not min or WINDOW < min then min = WINDOW end
            end
        end
    end
    if not min then return nil end
    m.min, m.all, m.starts[#m.long + 1] = min, "\0" .. concat(m.long, "\0"), at
    return m
end

-- A list of runs: starts a, ends b, in order of start.
local function new_runs()
    return { a = {}, b = {}, n = 0 }
end

local function add_run(r, a, b)
    local n = r.n
    if n > 0 and a <= r.b[n] + 1 then -- overlaps or touches the last: one run
        if b > r.b[n] then r.b[n] = b end
        return
    end
    n = n + 1
    r.a[n], r.b[n], r.n = a, b, n
end

-- Reads t with the automaton `au`, from its root at byte q, at least up to
-- byte `to`, then until fewer than BLOCK bytes match; adds to r the runs
-- of WINDOW bytes or more. Returns the last byte read.
local function scan(t, au, q, to, r)
    local go, link, len = au.go, au.link, au.len
    local v, l = 1, 0
    local n = #t
    for i = q, n do
        local c = byte(t, i)
        local nv = go[v][c]
        while not nv and v ~= 1 do
            v = link[v]
            l = len[v]
            nv = go[v][c]
        end
        if nv then v, l = nv, l + 1 else l = 0 end
        if l >= WINDOW then add_run(r, i - l + 1, i) end
        if l < BLOCK and i >= to then return i end
    end
    return n
end

-- The runs of t to redact for the compiled secrets m: one list per secret.
local function find_runs(t, m, lists)
    local n = #t
    for _, s in ipairs(m.short) do
        local r, from = new_runs(), 1
        while true do
            local i, j = find(t, s, from, true)
            if not i then break end
            add_run(r, i, j)
            from = i + 1
        end
        if r.n > 0 then lists[#lists + 1] = r end
    end
    local long = m.long
    if not long[1] or n < WINDOW then return end
    local all, starts, automata = m.all, m.starts, m.automata
    local found, read = {}, {} -- per long secret: its runs, the last byte its automaton read
    for k = 1, #long do found[k], read[k] = new_runs(), 0 end
    local covered = 0 -- the least of read

    -- Block p..p+3 of t is in secret k: read the runs through it.
    local function visit(k, p)
        local d = read[k]
        if p + BLOCK - 1 <= d then return end
        -- A run through this block starts at p - 3 at the earliest, or (a
        -- run the last read ran into, with fewer than BLOCK bytes) at d - 2.
        local q = p - BLOCK + 1
        if d - BLOCK + 2 > q then q = d - BLOCK + 2 end
        if q < 1 then q = 1 end
        local au = automata[k]
        if not au then
            au = automaton(long[k])
            automata[k] = au
        end
        read[k] = scan(t, au, q, p + BLOCK - 1, found[k])
        covered = read[k]
        for j = 1, #long do
            if read[j] < covered then covered = read[j] end
        end
    end

    -- Each block of t looked up in a table of the secrets' blocks, once t is
    -- long enough to repay making it; else found in `all`.
    local blocks = m.blocks
    if not blocks and n > BLOCKS_AT * #all then
        blocks = {}
        for k = 1, #long do
            local s = long[k]
            for o = 1, #s - BLOCK + 1 do
                local b = sub(s, o, o + BLOCK - 1)
                local ks = blocks[b]
                if not ks then blocks[b] = { k } elseif ks[#ks] ~= k then ks[#ks + 1] = k end
            end
        end
        m.blocks = blocks
    end
    if blocks then
        for p = 1, n - BLOCK + 1, BLOCK do
            local ks = p + BLOCK - 1 > covered and blocks[sub(t, p, p + BLOCK - 1)]
            if ks then
                for x = 1, #ks do visit(ks[x], p) end
            end
        end
    else
        for p = 1, n - BLOCK + 1, BLOCK do
            local b = p + BLOCK - 1 > covered and sub(t, p, p + BLOCK - 1)
            local x = b and find(all, b, 1, true)
            while x do -- in each secret holding it (or across a NUL: read in vain)
                local k = 1
                while starts[k + 1] <= x do k = k + 1 end
                visit(k, p)
                x = find(all, b, starts[k + 1], true)
            end
        end
    end
    for k = 1, #long do
        if found[k].n > 0 then lists[#lists + 1] = found[k] end
    end
end

-- Decoded views

local SIMPLE_ESCAPES = { ["/"] = "/", ["\\"] = "\\", ['"'] = '"', b = "\b", f = "\f", n = "\n", r = "\r",
                         t = "\t" }
local ENTITIES = { amp = "&", lt = "<", gt = ">", quot = '"', apos = "'", sol = "/", bsol = "\\",
                   equals = "=", plus = "+", period = ".", lowbar = "_", percnt = "%", num = "#",
                   colon = ":", semi = ";", comma = ",", excl = "!", quest = "?", dollar = "$",
                   lpar = "(", rpar = ")", ast = "*", commat = "@", Hat = "^", grave = "`",
                   verbar = "|", lsqb = "[", rsqb = "]", lcub = "{", rcub = "}", hyphen = "\226\128\144",
                   dash = "\226\128\144", nbsp = "\194\160" }
local ESCAPE_START = "[\\%%&]"

-- UTF-8 for a code point (surrogates too, as three bytes), or nil.
local function utf8_char(cp)
    if cp < 0x80 then return char(cp) end
    if cp < 0x800 then return char(0xC0 + floor(cp / 0x40), 0x80 + cp % 0x40) end
    if cp < 0x10000 then
        return char(0xE0 + floor(cp / 0x1000), 0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
    end
    if cp < 0x110000 then
        return char(0xF0 + floor(cp / 0x40000), 0x80 + floor(cp / 0x1000) % 0x40,
            0x80 + floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
    end
end

-- The escape at byte i of s (which is \, % or &): its bytes, and its last
-- byte in s; or nil when there is none.
local function escape_at(s, i)
    local c = byte(s, i)
    if c == 92 then -- \
        local e = sub(s, i + 1, i + 1)
        if e ~= "u" then
            local b = SIMPLE_ESCAPES[e]
            if b then return b, i + 1 end
            return nil
        end
        local hex = match(s, "^%x%x%x%x", i + 2)
        if not hex then return nil end
        local cp, j = tonumber(hex, 16), i + 5
        if cp >= 0xD800 and cp < 0xDC00 then -- a pair, as JSON writes what is past U+FFFF
            local low = match(s, "^\\u([dD][c-fC-F]%x%x)", i + 6)
            if low then cp, j = 0x10000 + (cp - 0xD800) * 0x400 + tonumber(low, 16) - 0xDC00, i + 11 end
        end
        return utf8_char(cp), j
    elseif c == 37 then -- %
        local hex = match(s, "^%x%x", i + 1)
        if hex then return char(tonumber(hex, 16)), i + 2 end
        return nil
    end
    local hex, after = match(s, "^&#[xX](%x%x?%x?%x?%x?%x?);()", i)
    local cp = hex and tonumber(hex, 16)
    if not hex then
        local dec
        dec, after = match(s, "^&#(%d%d?%d?%d?%d?%d?%d?);()", i)
        cp = dec and tonumber(dec)
    end
    if cp then
        local b = utf8_char(cp)
        if b then return b, after - 1 end
        return nil
    end
    local name
    name, after = match(s, "^&(%a%a?%a?%a?%a?%a?);()", i)
    local b = name and ENTITIES[name]
    if b then return b, after - 1 end
    return nil
end

-- s with its escapes decoded, and the map back: for escape k, its first
-- byte in the view ev[k] and its length there el[k], its first and last
-- bytes in s eo[k], ee[k]. nil when s has no escape.
local function decode(s)
    local i = find(s, ESCAPE_START)
    if not i then return nil end
    local out, ev, el, eo, ee = {}, {}, {}, {}, {}
    local pos, at, k = 1, 1, 0 -- pos: the first byte of s not in out; at: its place in the view
    while i do
        local b, j = escape_at(s, i)
        if b then
            if i > pos then
                out[#out + 1] = sub(s, pos, i - 1)
                at = at + i - pos
            end
            out[#out + 1] = b
            k = k + 1
            ev[k], el[k], eo[k], ee[k] = at, #b, i, j
            at, pos = at + #b, j + 1
            i = find(s, ESCAPE_START, pos)
        else
            i = find(s, ESCAPE_START, i + 1)
        end
    end
    if k == 0 then return nil end
    out[#out + 1] = sub(s, pos)
    return { text = concat(out), ev = ev, el = el, eo = eo, ee = ee }
end

-- The index of the last item of the sorted list that is <= x; 0 if none.
local function last_at_most(list, x)
    local lo, hi, k = 1, #list, 0
    while lo <= hi do
        local mid = floor((lo + hi) / 2)
        if list[mid] <= x then k, lo = mid, mid + 1 else hi = mid - 1 end
    end
    return k
end

-- Byte x of the view, in s: the first byte of its escape (last: its last
-- byte), or the byte itself.
local function to_source(d, x, last)
    local k = last_at_most(d.ev, x)
    if k == 0 then return x end
    local after = d.ev[k] + d.el[k]
    if x < after then return last and d.ee[k] or d.eo[k] end
    return d.ee[k] + 1 + x - after
end

-- Two lists of runs as one, in order of start, overlapping ones joined.
local function merge(r1, r2)
    local r = new_runs()
    local i, j = 1, 1
    while i <= r1.n or j <= r2.n do
        if j > r2.n or (i <= r1.n and r1.a[i] <= r2.a[j]) then
            add_run(r, r1.a[i], r1.b[i])
            i = i + 1
        else
            add_run(r, r2.a[j], r2.b[j])
            j = j + 1
        end
    end
    return r
end

-- The escape of s holding byte x: its first and last bytes; or x, x.
local function escape_around(d, x)
    local k = last_at_most(d.eo, x)
    if k > 0 and x <= d.ee[k] then return d.eo[k], d.ee[k] end
    return x, x
end

local function redact_with(s, m)
    if #s < m.min then return s end
    local lists = {}
    find_runs(s, m, lists)
    local d = decode(s)
    if d then
        -- A run found in s as it is may begin or end inside an escape ("\n"
        -- then a run from its "n"): the escape goes whole, no "\" is left.
        for x, r in ipairs(lists) do
            local w = new_runs()
            for i = 1, r.n do
                local a = escape_around(d, r.a[i])
                local _, b = escape_around(d, r.b[i])
                add_run(w, a, b)
            end
            lists[x] = w
        end
        local in_view = {}
        find_runs(d.text, m, in_view)
        for _, v in ipairs(in_view) do
            local r = new_runs()
            for x = 1, v.n do add_run(r, to_source(d, v.a[x], false), to_source(d, v.b[x], true)) end
            lists[#lists + 1] = r
        end
    end
    local runs = lists[1]
    if not runs then return s end
    for x = 2, #lists do runs = merge(runs, lists[x]) end
    local out, pos = {}, 1
    for x = 1, runs.n do
        out[#out + 1] = sub(s, pos, runs.a[x] - 1)
        out[#out + 1] = MARK
        pos = runs.b[x] + 1
    end
    out[#out + 1] = sub(s, pos)
    return concat(out)
end

-- An error table's own fields, never scrubbed: not from the server.
local OWN = { method = true, kind = true }

-- v with every string redacted, in place; keys too when `keys`, and in
-- every nested table. The own fields of an error table stay.
local function scrub_with(v, m, seen, keys)
    local t = type(v)
    if t == "string" then return redact_with(v, m) end
    if t ~= "table" or seen[v] then return v end
    seen[v] = true
    local own = getmetatable(v) == Error and OWN or nil
    local moved
    for k, x in pairs(v) do
        if not (own and own[k]) then
            local k2 = keys and scrub_with(k, m, seen, true) or k
            local x2 = scrub_with(x, m, seen, true)
            if k2 ~= k then
                moved = moved or {}
                moved[#moved + 1] = { k, k2, x2 }
            elseif x2 ~= x then
                v[k] = x2
            end
        end
    end
    for _, mv in ipairs(moved or {}) do
        v[mv[1]] = nil
        v[mv[2]] = mv[3]
    end
    return v
end

--- errors.redact(s, secret) -> s with every run of 8 bytes or more of
--- `secret` (a shorter secret: every whole occurrence) replaced by
--- "<redacted>", in s as it is and in s decoded (JSON escapes,
--- percent-encoding, HTML character references; such an escape goes
--- whole). `secret` may be a list of secrets. A string without any comes
--- back as it was.
function _M.redact(s, secret)
    local m = type(s) == "string" and compile(secret)
    if not m then return s end
    return redact_with(s, m)
end

--- errors.scrub(v, secret) -> v: redact on every string reachable from v,
--- keys included, in place; an error table keeps its own field names,
--- method and kind.
function _M.scrub(v, secret)
    local m = compile(secret)
    if not m then return v end
    return scrub_with(v, m, {}, getmetatable(v) ~= Error)
end

---------------------------------------------------------------------------
-- Error tables from answers

local function excerpt(body)
    local text = gsub(gsub(sub(body, 1, 4 * EXCERPT_MAX), "<[^>]*>", " "), "[^\32-\126]", " ")
    return one_line(gsub(text, "%s+", " "), EXCERPT_MAX)
end

local ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"

-- The error table for an answer: `doc` is the decoded body, or nil.
local function shape(method, status, body, doc, content_type, retry_after)
    local fields = { http_status = status, retry_after = retry_after }
    if status >= 300 and status < 400 then
        return _M.new(method, "redirect",
            format("server answered HTTP %d with a redirect, which is never followed", status), fields)
    end
    local e = type(doc) == "table" and doc.error
    if type(e) == "string" then -- OAuth's shape: {"error": "invalid_grant", "error_description": ...}
        fields.status = e
        local text = type(doc.error_description) == "string" and doc.error_description or e
        return _M.new(method, "api", one_line(text, MESSAGE_MAX), fields)
    end
    if type(e) ~= "table" then
        fields.excerpt = excerpt(body)
        local what = body == "" and "an empty body"
            or format("a body that is not a Google error (%s)", content_type or "no content type")
        return _M.new(method, "http", format("HTTP %d with %s", status, what), fields)
    end
    -- cjson decodes every number as a float; 401, not 401.0, on Lua 5.3+
    fields.code = type(e.code) == "number" and (math.tointeger and math.tointeger(e.code) or e.code) or nil
    fields.status = type(e.status) == "string" and e.status or nil
    if type(e.details) == "table" then
        fields.details = e.details
        for _, d in ipairs(e.details) do
            if type(d) == "table" and d["@type"] == ERROR_INFO then
                fields.reason = type(d.reason) == "string" and d.reason or nil
                fields.domain = type(d.domain) == "string" and d.domain or nil
                fields.metadata = type(d.metadata) == "table" and d.metadata or nil
                break
            end
        end
    end
    local message = type(e.message) == "string" and e.message ~= "" and e.message
        or format("HTTP %d", status)
    return _M.new(method, "api", one_line(message, MESSAGE_MAX), fields)
end

--- errors.from_response(method, status, body, content_type, retry_after
--- [, secrets]) -> the error table for an answer that is not a success.
--- secrets (a string or a list): redacted from the body and the headers
--- before anything is decoded or cut, and from what decoding revealed.
function _M.from_response(method, status, body, content_type, retry_after, secrets)
    local m = secrets and compile(secrets)
    if m then
        body = redact_with(body, m)
        content_type = content_type and redact_with(content_type, m)
        retry_after = retry_after and redact_with(retry_after, m)
    end
    local doc = (status < 300 or status >= 400) and json.decode(body) or nil
    -- What JSON escapes hid from redact_with, before anything is cut or put
    -- in a message. Without a backslash every string of doc is a piece of
    -- the body, already redacted.
    if m and type(doc) == "table" and find(body, "\\", 1, true) then
        scrub_with(doc, m, {}, true)
    end
    local err = shape(method, status, body, doc, content_type, retry_after)
    if m then -- what one_line and excerpt made of the text: spaces, a cut
        err.message = redact_with(err.message, m)
        if err.excerpt then err.excerpt = redact_with(err.excerpt, m) end
    end
    return err
end

return _M
