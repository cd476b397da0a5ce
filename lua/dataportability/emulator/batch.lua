--- HTTP batches (POST /batch, the discovery document's batchPath), inside
-- nginx: a multipart/mixed body whose parts are HTTP requests to the v1
-- API. Each part runs as a subrequest, through the same handlers as a
-- request of its own (logged, faulted), with the batch's headers except its
-- Content-* ones, a part's own headers winning. The answer is one
-- multipart/mixed body, a part per request in the same order, each with
-- Content-ID "<response-ID>" for the request's "<ID>".
-- luacheck: globals ngx

local R = require("dataportability.emulator.respond")
local crypto = require("dataportability.emulator.crypto")

local concat, sort = table.concat, table.sort
local str_find, str_lower, str_sub, str_match = string.find, string.lower, string.sub, string.match

local _M = {}

local MAX_PARTS = 1000
local PART_LOCATION = "/emulator-batch-part"  -- internal: runs server.handle

local METHODS = {
    GET = ngx.HTTP_GET, HEAD = ngx.HTTP_HEAD, POST = ngx.HTTP_POST, PUT = ngx.HTTP_PUT,
    DELETE = ngx.HTTP_DELETE, PATCH = ngx.HTTP_PATCH, OPTIONS = ngx.HTTP_OPTIONS,
}

local REASONS = {
    [200] = "OK", [204] = "No Content", [302] = "Found", [400] = "Bad Request",
    [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found", [405] = "Method Not Allowed",
    [409] = "Conflict", [413] = "Request Entity Too Large", [429] = "Too Many Requests",
    [499] = "Client Closed Request", [500] = "Internal Server Error", [501] = "Not Implemented",
    [502] = "Bad Gateway", [503] = "Service Unavailable", [504] = "Gateway Timeout",
}

local function refuse(why)
    return R.send_json(400, R.rpc_error(400, "Failed to parse batch request: " .. why .. "."))
end

-- "head<blank line>rest", CRLF or LF line ends; nil when there is no blank line.
local function split_head(s)
    local a, b = str_find(s, "\r?\n\r?\n")
    if not a then return nil end
    return str_sub(s, 1, a - 1), str_sub(s, b + 1)
end

-- Header lines into a table of lower-case names; nil for a malformed line.
local function parse_headers(lines, into)
    into = into or {}
    for line in (lines .. "\n"):gmatch("([^\n]*)\n") do
        line = line:gsub("\r$", "")
        if line ~= "" then
            local name, value = str_match(line, "^([%w!#$%%&'*+.^_`|~-]+):%s*(.-)%s*$")
            if not name then return nil end
            into[str_lower(name)] = value
        end
    end
    return into
end

-- The parts between the delimiters of a multipart body, or nil, why.
local function split_parts(body, boundary)
    local delim = "--" .. boundary
    local at = str_find(body, delim, 1, true)
    if not at then return nil, "no part delimiter" end
    local parts, pos = {}, at + #delim
    while true do
        if str_sub(body, pos, pos + 1) == "--" then return parts end
        local eol = str_find(body, "\n", pos, true)
        if not eol then return nil, "unterminated body" end
        at = str_find(body, delim, eol + 1, true)
        if not at then return nil, "no closing delimiter" end
        -- the line end before a delimiter belongs to the delimiter
        parts[#parts + 1] = (str_sub(body, eol + 1, at - 1):gsub("\r?\n$", ""))
        if #parts > MAX_PARTS then return nil, "more than " .. MAX_PARTS .. " requests" end
        pos = at + #delim
    end
end

-- One part: its Content-ID and the HTTP request it holds, or nil, why.
local function parse_part(part, outer)
    local head, request = split_head(part)
    local mime = head and parse_headers(head)
    if not mime then return nil, "a part without headers" end
    if str_lower(mime["content-type"] or ""):match("^%s*([^;%s]+)") ~= "application/http" then
        return nil, "a part whose Content-Type is not application/http"
    end
    local request_head, body = split_head(request)
    if not request_head then request_head, body = request, "" end
    local line, header_lines = str_match(request_head, "^([^\n]*)\n?(.*)$")
    local method, target = str_match(line:gsub("\r$", ""), "^(%u+) (%S+) HTTP/1%.[01]$")
    if not method then return nil, "a part whose request line is not METHOD /path HTTP/1.1" end
    if not METHODS[method] then return nil, "a part with the method " .. method end
    if str_sub(target, 1, 1) ~= "/" then return nil, "a part with a full URL (only the path is allowed)" end
    local headers = {}
    for name, value in pairs(outer) do
        if str_sub(name, 1, 8) ~= "content-" then headers[name] = value end
    end
    if not parse_headers(header_lines, headers) then return nil, "a part with a malformed header" end
    local path, query = str_match(target, "^([^?#]*)%??([^#]*)")
    return { id = mime["content-id"], method = method, path = path, query = query,
             headers = headers, body = body }
end

local function response_id(id)
    if not id then return nil end
    return "<response-" .. (str_match(id, "^%s*<(.*)>%s*$") or id) .. ">"
end

-- A part's answer: the subrequest's status line, headers and body.
local function answer(req, res)
    local lines = { "Content-Type: application/http" }
    local cid = response_id(req.id)
    if cid then lines[#lines + 1] = "Content-ID: " .. cid end
    lines[#lines + 1] = ""
    lines[#lines + 1] = ("HTTP/1.1 %d %s"):format(res.status, REASONS[res.status] or "Unknown")
    local names = {}
    for name in pairs(res.header) do
        if str_lower(name) ~= "content-length" then names[#names + 1] = name end
    end
    sort(names)
    for _, name in ipairs(names) do
        local v = res.header[name]
        for _, value in ipairs(type(v) == "table" and v or { v }) do
            lines[#lines + 1] = name .. ": " .. value
        end
    end
    lines[#lines + 1] = "Content-Length: " .. #res.body
    lines[#lines + 1] = ""
    lines[#lines + 1] = res.body
    return concat(lines, "\r\n")
end

--- Answers POST /batch (after logging and faults).
function _M.handle(body)
    local ctype = ngx.var.http_content_type or ""
    if str_lower(ctype):match("^%s*([^;%s]+)") ~= "multipart/mixed" then
        return refuse("the Content-Type is not multipart/mixed")
    end
    local boundary = str_match(ctype, ';%s*[Bb][Oo][Uu][Nn][Dd][Aa][Rr][Yy]="([^"]+)"')
        or str_match(ctype, ";%s*[Bb][Oo][Uu][Nn][Dd][Aa][Rr][Yy]=([^;%s]+)")
    if not boundary then return refuse("the Content-Type has no boundary") end
    local parts, why = split_parts(body, boundary)
    if not parts then return refuse(why) end
    if #parts == 0 then return refuse("no requests") end
    local outer = ngx.req.get_headers(200)
    local requests = {}
    for i, part in ipairs(parts) do
        requests[i], why = parse_part(part, outer)
        if not requests[i] then return refuse(why .. " (part " .. i .. ")") end
    end

    local out_boundary = "batch_" .. crypto.random_hex(12)
    local answers = {}
    for i, req in ipairs(requests) do
        local res = ngx.location.capture(PART_LOCATION, {
            method = METHODS[req.method], body = req.body, args = req.query,
            ctx = { part = { path = req.path, headers = req.headers } },
        })
        -- a part that was dropped or cut short (faults) loses the whole batch
        if res.truncated or res.status == 444 then return ngx.exit(444) end
        answers[i] = "--" .. out_boundary .. "\r\n" .. answer(req, res) .. "\r\n"
    end
    answers[#answers + 1] = "--" .. out_boundary .. "--\r\n"
    return R.send_api(200, concat(answers), "multipart/mixed; boundary=" .. out_boundary)
end

return _M
