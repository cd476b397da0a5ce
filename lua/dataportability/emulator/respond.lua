--- What the emulator puts on the wire: Google's JSON (key order, escapes,
-- pretty printing, gzip), google.rpc.Status error bodies, the front end's
-- HTML pages, and Cloud Storage's XML errors; and the request as the
-- handlers see it (a batch part's, or nginx's). Inside nginx + ngx_lua.
-- luacheck: globals ngx

local cjson = require("cjson.safe")
local gzip = require("dataportability.emulator.gzip")

local concat, sort = table.concat, table.sort
local floor = math.floor
local str_find, str_lower, str_sub = string.find, string.lower, string.sub

local _M = {}

local JSON_TYPE = "application/json; charset=UTF-8"
local HTML_TYPE = "text/html; charset=UTF-8"
local XML_TYPE = "application/xml; charset=UTF-8"
local SERVICE = "dataportability.googleapis.com"
local SCOPE_PREFIX = "https://www.googleapis.com/auth/dataportability."
local REALM = 'Bearer realm="https://accounts.google.com/"'
_M.JSON_TYPE, _M.HTML_TYPE, _M.SERVICE = JSON_TYPE, HTML_TYPE, SERVICE

--- The full RPC name of a method, for ErrorInfo metadata.
function _M.rpc_method(short)
    return "google.dataportability.v1.DataPortabilityService." .. short
end

-- Every v1 method accepts any one of these (discovery doc rev 20241208);
-- Google lists a method's scopes in WWW-Authenticate on insufficient_scope.
local SCOPES = [[alerts.subscriptions businessmessaging.conversations
chrome.autofill chrome.bookmarks chrome.dictionary chrome.extensions chrome.history
chrome.reading_list chrome.settings discover.follows discover.likes discover.not_interested
maps.aliased_places maps.commute_routes maps.commute_settings maps.ev_profile
maps.factual_contributions maps.offering_contributions maps.photos_videos
maps.questions_answers maps.reviews maps.starred_places myactivity.maps myactivity.myadcenter
myactivity.play myactivity.search myactivity.shopping myactivity.youtube mymaps.maps
order_reserve.purchases_reservations play.devices play.grouping play.installs play.library
play.playpoints play.promotions play.purchases play.redemptions play.subscriptions
play.usersettings saved.collections search_ugc.media.reviews_and_stars
search_ugc.media.streaming_video_providers search_ugc.media.thumbs search_ugc.media.watched
searchnotifications.settings searchnotifications.subscriptions shopping.addresses
shopping.reviews streetview.imagery youtube.channel youtube.clips youtube.comments
youtube.live_chat youtube.music youtube.playable youtube.posts youtube.private_playlists
youtube.private_videos youtube.public_playlists youtube.public_videos youtube.shopping
youtube.subscriptions youtube.unlisted_playlists youtube.unlisted_videos]]
SCOPES = (SCOPES:gsub("%s*(%S+)%s*", " " .. SCOPE_PREFIX .. "%1"):sub(2))

local STATUS_NAME = {
    [400] = "INVALID_ARGUMENT", [401] = "UNAUTHENTICATED", [403] = "PERMISSION_DENIED",
    [404] = "NOT_FOUND", [409] = "ABORTED", [429] = "RESOURCE_EXHAUSTED", [499] = "CANCELLED",
    [500] = "INTERNAL", [501] = "UNIMPLEMENTED", [502] = "UNAVAILABLE", [503] = "UNAVAILABLE",
    [504] = "DEADLINE_EXCEEDED",
}

local STATUS_MESSAGE = {
    [400] = "Request contains an invalid argument.",
    [403] = "The caller does not have permission",
    [404] = "Requested entity was not found.",
    [409] = "The operation was aborted.",
    [429] = "Quota exceeded for quota metric 'Requests' and limit 'Requests per minute' of "
        .. "service 'dataportability.googleapis.com' for consumer 'project_number:000000000000'.",
    [499] = "The operation was cancelled.",
    [500] = "Internal error encountered.",
    [501] = "Operation is not implemented, or supported, or enabled.",
    [502] = "The service is currently unavailable.",
    [503] = "The service is currently unavailable.",
    [504] = "Deadline expired before operation could complete.",
}
_M.STATUS_MESSAGE = STATUS_MESSAGE

---------------------------------------------------------------------------
-- The request. A part of a batch runs as a subrequest whose ngx.ctx.part
-- holds its own path and headers: nginx's would be the batch's.

--- The request headers, lower-case names.
function _M.headers()
    local part = ngx.ctx.part
    return part and part.headers or ngx.req.get_headers(200)
end

--- The path as sent, without the query.
function _M.path()
    local part = ngx.ctx.part
    return part and part.path or ngx.var.request_uri:match("^[^?]*")
end

--- The query parameters (decoded; a repeated one is a list), read once.
function _M.query()
    local ctx = ngx.ctx
    ctx.query = ctx.query or ngx.req.get_uri_args(100)
    return ctx.query
end

--- A system parameter's value, as `name` or `$name` (the first if repeated).
function _M.param(name)
    local q = _M.query()
    local v = q[name]
    if v == nil then v = q["$" .. name] end
    if type(v) == "table" then v = v[1] end
    return v
end

---------------------------------------------------------------------------
-- JSON output. cjson 2.1.0 escapes "/" and cannot mark empty arrays, and
-- Google emits keys in proto field order, pretty-printed unless
-- prettyPrint=false; so a small encoder of our own.

local ARRAY = {}  -- metatable that marks a table as a JSON array
local function array(t) return setmetatable(t or {}, ARRAY) end
_M.array = array

local KEY_RANK = {
    error = 1, code = 2, message = 3, status = 4, details = 5, ["@type"] = 6, reason = 7,
    domain = 8, metadata = 9, service = 10, method = 11, retryDelay = 12, fieldViolations = 13,
    field = 14, description = 15,
    -- v1 responses, in proto field order
    name = 20, state = 21, urls = 22, startTime = 23, exportTime = 24,
    archiveJobId = 25, accessType = 26, oneTimeResources = 27, timeBasedResources = 28,
}
local function key_less(a, b)
    local ra, rb = KEY_RANK[a] or 99, KEY_RANK[b] or 99
    if ra ~= rb then return ra < rb end
    return a < b
end

-- Google's JSON (Gson-style, HTML-safe) leaves "/" alone but writes
-- < > & = ' as \u escapes: signed URLs come back full of \u0026 and \u003d.
local HTML_SAFE = { ["<"] = "\\u003c", [">"] = "\\u003e", ["&"] = "\\u0026",
                                        ["="] = "\\u003d", ["'"] = "\\u0027" }
local function encode_string(s)
    -- cjson escapes "/" as "\/"; every "\/" it emits is such an escape
    return (cjson.encode(s):gsub("\\/", "/"):gsub("[<>&=']", HTML_SAFE))
end

local function encode(v, pretty, indent)
    if type(v) == "string" then return encode_string(v) end
    if type(v) ~= "table" then return cjson.encode(v) end
    indent = indent or ""
    local inner = indent .. "  "
    local open = pretty and ("\n" .. inner) or ""
    local close = pretty and ("\n" .. indent) or ""
    local sep = pretty and ",\n" .. inner or ","
    local parts = {}
    if getmetatable(v) == ARRAY or #v > 0 then
        if #v == 0 then return "[]" end
        for i = 1, #v do parts[i] = encode(v[i], pretty, inner) end
        return "[" .. open .. concat(parts, sep) .. close .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    if #keys == 0 then return "{}" end
    sort(keys, key_less)
    for i, k in ipairs(keys) do
        parts[i] = encode_string(k) .. (pretty and ": " or ":") .. encode(v[k], pretty, inner)
    end
    return "{" .. open .. concat(parts, sep) .. close .. "}"
end
_M.encode = encode

---------------------------------------------------------------------------
-- Responses

--- Sends a whole answer. A `cut` fault (ngx.ctx.cut = n) sends the headers
-- and the first n body bytes, then closes the connection; a `drop` fault
-- with `after` (ngx.ctx.drop_answer) closes it before a byte is sent.
local function send(status, body, ctype, headers)
    if ngx.ctx.drop_answer then return ngx.exit(444) end
    ctype = ctype or JSON_TYPE
    -- JSON and batches are compressed as Google's front end does; a batch
    -- part never is (its batch is the answer on the wire)
    if body ~= "" and (str_find(ctype, "application/json", 1, true) == 1
            or str_find(ctype, "multipart/mixed", 1, true) == 1)
        and not ngx.is_subrequest and gzip.wants(_M.headers()) then
        body = gzip.compress(body)
        ngx.header["Content-Encoding"] = "gzip"
    end
    ngx.status = status
    ngx.header["Content-Type"] = ctype
    ngx.header["Content-Length"] = #body
    for k, v in pairs(headers or {}) do ngx.header[k] = v end
    local cut = ngx.ctx.cut
    if cut and cut < #body then
        ngx.send_headers()
        ngx.print(str_sub(body, 1, cut))
        ngx.flush(true)
        return ngx.exit(444)
    end
    ngx.print(body)
    return ngx.exit(ngx.HTTP_OK)
end
_M.send = send

local function pretty()
    local p = _M.param("prettyPrint")
    return not (type(p) == "string" and (str_lower(p) == "false" or p == "0"))
end

-- Google's front end adds these to every API response.
local function google_headers()
    ngx.header["Server"] = "ESF"
    ngx.header["Vary"] = { "Origin", "X-Origin", "Referer", "Accept-Encoding" }
    ngx.header["X-Content-Type-Options"] = "nosniff"
    ngx.header["X-Frame-Options"] = "SAMEORIGIN"
    ngx.header["X-XSS-Protection"] = "0"
    ngx.header["Cache-Control"] = "private"
end

-- The `fields` partial-response selector, top-level names only
-- ("state,urls", "urls/x" keeps "urls"); errors are never filtered.
local function select_fields(tbl)
    local spec = _M.param("fields")
    if type(spec) ~= "string" or spec == "" or tbl.error then return tbl end
    local out = {}
    for item in spec:gmatch("[^,]+") do
        local top = item:match("^%s*([^/(%s]+)")
        if top and tbl[top] ~= nil then out[top] = tbl[top] end
    end
    return out
end

--- A JSONP callback name safe to write before "(": dotted identifiers.
function _M.valid_callback(name)
    return type(name) == "string" and #name <= 256 and str_find(name, "^[%a_$][%w_$.]*$") ~= nil
        and not str_find(name, "..", 1, true) and str_sub(name, -1) ~= "."
end

--- An answer of the API host, with the front end's headers.
function _M.send_api(status, body, ctype, headers)
    google_headers()
    return send(status, body, ctype, headers)
end

--- The API's JSON answer; with `callback` (JSONP) it is wrapped in a call.
function _M.send_json(status, tbl, headers)
    local p = pretty()
    local json = encode(select_fields(tbl), p)
    local callback = _M.param("callback")
    if _M.valid_callback(callback) then
        return _M.send_api(status, "// API callback\n" .. callback .. "(" .. json .. ");\n",
            "text/javascript; charset=UTF-8", headers)
    end
    return _M.send_api(status, json .. (p and "\n" or ""), JSON_TYPE, headers)
end

--- An ErrorInfo detail; domain defaults to googleapis.com.
function _M.error_info(reason, method, extra, domain)
    local metadata = { service = SERVICE, method = method }
    for k, v in pairs(extra or {}) do metadata[k] = v end
    return { ["@type"] = "type.googleapis.com/google.rpc.ErrorInfo", reason = reason,
             domain = domain or "googleapis.com", metadata = metadata }
end

--- google.rpc.Status body; details omitted when empty, as Google does.
-- `status` overrides the code's usual name (400 FAILED_PRECONDITION).
function _M.rpc_error(code, message, details, status)
    local err = { code = code, message = message or STATUS_MESSAGE[code] or "Unknown error.",
                  status = status or STATUS_NAME[code] or "UNKNOWN" }
    if details and #details > 0 then err.details = array(details) end
    return { error = err }
end

--- 400 INVALID_ARGUMENT with a BadRequest detail.
function _M.bad_request(description, field)
    return _M.rpc_error(400, description, { {
        ["@type"] = "type.googleapis.com/google.rpc.BadRequest",
        fieldViolations = array({ { field = field, description = description } }) } })
end

local INVALID_CREDENTIALS = "Request had invalid authentication credentials. Expected OAuth 2 access "
    .. "token, login cookie or other valid authentication credential. See "
    .. "https://developers.google.com/identity/sign-in/web/devconsole-project."
local AUTH_ERRORS = {
    missing = { 401, "Request is missing required authentication credential. Expected OAuth 2 "
        .. "access token, login cookie or other valid authentication credential. See "
        .. "https://developers.google.com/identity/sign-in/web/devconsole-project.",
        "CREDENTIALS_MISSING", REALM },
    invalid = { 401, INVALID_CREDENTIALS, "ACCESS_TOKEN_TYPE_UNSUPPORTED",
        REALM .. ', error="invalid_token"' },
    expired = { 401, INVALID_CREDENTIALS, "ACCESS_TOKEN_EXPIRED", REALM .. ', error="invalid_token"' },
    scope = { 403, "Request had insufficient authentication scopes.",
        "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
        REALM .. ', error="insufficient_scope", scope="' .. SCOPES .. '"' },
}

--- kind: "missing" | "invalid" | "expired" | "scope".
function _M.send_auth_error(kind, method, message)
    local e = AUTH_ERRORS[kind]
    return _M.send_json(e[1], _M.rpc_error(e[1], message or e[2], { _M.error_info(e[3], method) }),
        { ["WWW-Authenticate"] = e[4] })
end

local function html_escape(s)
    return (s:gsub("[&<>\"]", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;" }))
end
_M.html_escape = html_escape

-- Shaped like the error pages of Google's front end (GFE).
function _M.html_page(code, title, text)
    return "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
        .. "  <title>Error " .. code .. " (" .. title .. ")!!1</title>\n"
        .. "  <p><b>" .. code .. ".</b> <ins>That\226\128\153s an error.</ins>\n"
        .. "  <p>" .. text .. "  <ins>That\226\128\153s all we know.</ins>\n"
end

function _M.send_html(code, title, text)
    return send(code, _M.html_page(code, title, text), HTML_TYPE)
end

function _M.send_html_404()
    local path = _M.path()
    return _M.send_html(404, "Not Found", "The requested URL <code>"
        .. html_escape(path) .. "</code> was not found on this server.")
end

--- Cloud Storage's XML error: <Error><Code>..</Code><Message>..</Message>
-- then `extra` elements, a list of {tag, text}.
function _M.send_xml_error(status, code, message, extra, headers)
    local parts = { "<?xml version='1.0' encoding='UTF-8'?><Error><Code>", code, "</Code><Message>",
                    html_escape(message), "</Message>" }
    for _, e in ipairs(extra or {}) do
        parts[#parts + 1] = "<" .. e[1] .. ">" .. html_escape(e[2]) .. "</" .. e[1] .. ">"
    end
    parts[#parts + 1] = "</Error>"
    ngx.header["Server"] = "UploadServer"
    return send(status, concat(parts), XML_TYPE, headers)
end

---------------------------------------------------------------------------
-- Timestamps (RFC 3339 in, Z-normalised with 0/3/6/9 fraction digits out),
-- by civil-day arithmetic: no os.time, no local time zone.

local function days_from_civil(y, m, d)
    y = m <= 2 and y - 1 or y
    local era = floor(y / 400)
    local yoe = y - era * 400
    local doy = floor((153 * ((m + 9) % 12) + 2) / 5) + d - 1
    return era * 146097 + yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy - 719468
end

local function civil_from_days(z)
    z = z + 719468
    local era = floor(z / 146097)
    local doe = z - era * 146097
    local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
    local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
    local mp = floor((5 * doy + 2) / 153)
    local d = doy - floor((153 * mp + 2) / 5) + 1
    local m = mp < 10 and mp + 3 or mp - 9
    return yoe + era * 400 + (m <= 2 and 1 or 0), m, d
end

local MONTH_DAYS = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

--- seconds since the epoch and nanoseconds, or nil for a bad timestamp.
function _M.parse_time(s)
    if type(s) ~= "string" then return nil end
    local y, mo, d, h, mi, sec, frac, zone =
        s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt](%d%d):(%d%d):(%d%d)(%.?%d*)(.*)$")
    if not y then return nil end
    y, mo, d, h, mi, sec = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(sec)
    if y < 1 or mo < 1 or mo > 12 or d < 1 or d > MONTH_DAYS[mo] or h > 23 or mi > 59 or sec > 59
        or (mo == 2 and d == 29 and not (y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0))) then
        return nil
    end
    local nanos = 0
    if frac ~= "" then
        if frac:sub(1, 1) ~= "." or #frac < 2 or #frac > 10 then return nil end
        nanos = tonumber(frac:sub(2) .. ("0"):rep(10 - #frac))
    end
    local offset = 0
    if zone ~= "Z" and zone ~= "z" then
        local sign, oh, om = zone:match("^([+-])(%d%d):(%d%d)$")
        if not sign or tonumber(oh) > 23 or tonumber(om) > 59 then return nil end
        offset = (tonumber(oh) * 60 + tonumber(om)) * 60 * (sign == "+" and 1 or -1)
    end
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset, nanos
end

function _M.format_time(t, nanos)
    local days = floor(t / 86400)
    local rest = t - days * 86400
    local y, m, d = civil_from_days(days)
    local frac = ""
    if nanos ~= 0 then
        frac = nanos % 1000000 == 0 and (".%03d"):format(nanos / 1000000)
            or nanos % 1000 == 0 and (".%06d"):format(nanos / 1000) or (".%09d"):format(nanos)
    end
    return ("%04d-%02d-%02dT%02d:%02d:%02d%sZ"):format(y, m, d, floor(rest / 3600),
        floor(rest % 3600 / 60), rest % 60, frac)
end

return _M
