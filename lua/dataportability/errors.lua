-- Error tables: every failed call returns nil and one of these.
-- Fields: kind, message, method, retryable, and where the server answered
-- http_status; from Google's JSON error body code, status, details, reason,
-- domain, metadata (from OAuth's error body, status is its error code);
-- from a non-JSON body a sanitised excerpt.
local json = require("cjson.safe")

local find, gsub, sub, format = string.find, string.gsub, string.sub, string.format
local concat = table.concat
local type, tostring, ipairs, pairs = type, tostring, ipairs, pairs
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

local function excerpt(body)
    local text = gsub(gsub(sub(body, 1, 4 * EXCERPT_MAX), "<[^>]*>", " "), "[^\32-\126]", " ")
    return one_line(gsub(text, "%s+", " "), EXCERPT_MAX)
end

local ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"

-- The error table for a response that is not a success.
function _M.from_response(method, status, body, content_type, retry_after)
    local fields = { http_status = status, retry_after = retry_after }
    if status >= 300 and status < 400 then
        return _M.new(method, "redirect",
            format("server answered HTTP %d with a redirect, which is never followed", status), fields)
    end
    local doc = json.decode(body)
    local e = type(doc) == "table" and doc.error
    if type(e) == "string" then -- OAuth's shape: {"error": "invalid_grant", "error_description": ...}
        fields.status = e
        local text = type(doc.error_description) == "string" and doc.error_description or e
        return _M.new(method, "api", one_line(text, 2000), fields)
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
    return _M.new(method, "api", one_line(message, 2000), fields)
end

-- `s` with every occurrence of `secret` replaced, so that a server echoing
-- the token back cannot put it into an error table.
function _M.redact(s, secret)
    if not secret or secret == "" or not find(s, secret, 1, true) then
        return s
    end
    local out, pos = {}, 1
    while true do
        local i, j = find(s, secret, pos, true)
        if not i then break end
        out[#out + 1] = sub(s, pos, i - 1)
        out[#out + 1] = "<redacted>"
        pos = j + 1
    end
    out[#out + 1] = sub(s, pos)
    return concat(out)
end

-- `v` with `secret` redacted in every string value and in the keys of
-- nested tables (what a server sent), in place. The error table's own
-- field names stay, whatever the secret.
function _M.scrub(v, secret, seen, nested)
    if type(v) == "string" then return _M.redact(v, secret) end
    if type(v) ~= "table" or not secret then return v end
    seen = seen or {}
    if seen[v] then return v end
    seen[v] = true
    local moved = {}
    for k, x in pairs(v) do
        local k2 = nested and _M.scrub(k, secret, seen, true) or k
        local x2 = _M.scrub(x, secret, seen, true)
        if k2 ~= k then moved[#moved + 1] = { k, k2, x2 } elseif x2 ~= x then v[k] = x2 end
    end
    for _, m in ipairs(moved) do v[m[1]] = nil; v[m[2]] = m[3] end
    return v
end

return _M
