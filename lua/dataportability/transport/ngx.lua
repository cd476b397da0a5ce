-- The client's requests on nginx cosockets: inside an nginx request a call
-- yields to the event loop instead of blocking the worker. It implements
-- docs/transport.md as the C core does (csrc/client.c): the same option
-- checks, token rules, request headers, verified TLS, limits and outcomes.
-- Sockets live only for one call and go back to nginx's connection pool, so
-- a client may be shared by requests and light threads.
local core = require("dataportability.core")
local limits = core.limits

local ngx = rawget(_G, "ngx")
local type, tostring, tonumber, error, setmetatable = type, tostring, tonumber, error, setmetatable
local find, lower, match, sub, format, floor = string.find, string.lower, string.match,
    string.sub, string.format, math.floor
local concat, min = table.concat, math.min

local BODY_MAX = limits.body_max
local TOO_LARGE = format("response body is larger than %g MiB", BODY_MAX / 1048576)
local STALE = "the kept-alive connection closed without answering; the request may have reached the server"

-- Where ngx_lua allows cosockets (NGX_HTTP_LUA_CONTEXT_YIELDABLE).
local COSOCKET_PHASES = {
    rewrite = true, server_rewrite = true, access = true, content = true, timer = true,
    ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true,
}
local METHODS = { GET = true, POST = true, PUT = true, PATCH = true, DELETE = true }
local DEFAULT_PORT = { http = 80, https = 443 }

local T = { __name = "dataportability.cosocket_client" }
T.__index = T

local _M = {}

-- Where a socket goes: the API endpoint, or a download URL's host.
local function target(https, host, port, pool)
    local scheme = https and "https" or "http"
    local server_name = match(host, "^%[(.*)%]$") or host
    return {
        https = https, port = port, server_name = server_name,
        -- cosockets resolve names only through `resolver`; libcurl knows localhost itself
        addr = lower(host) == "localhost" and "127.0.0.1" or host,
        host_header = port == DEFAULT_PORT[scheme] and host or host .. ":" .. port,
        -- A pooled connection skips the handshake, so its pool is named
        -- after all that decided its trust: what we know, and the user's
        -- `pool` for what nginx.conf decides (lua_ssl_trusted_certificate
        -- differs per location).
        pool = format("dataportability %s://%s:%d %s%s", scheme, host, port,
            https and "sni=" .. server_name .. " verify=on" or "tls=off", pool and " pool=" .. pool or ""),
    }
end

--- T.new(o): o as for core.new, plus `pool`. Bad options raise.
function _M.new(o)
    if type(ngx) ~= "table" or not ngx.socket then
        error("dataportability.transport.ngx needs ngx_lua", 2)
    end
    local opts = core.check_options(o)
    -- cosockets take their trust and route from nginx.conf, not per call
    if o.ca_file ~= nil then
        error("option 'ca_file' cannot be applied in OpenResty: trust the CA with "
            .. "lua_ssl_trusted_certificate (and lua_ssl_verify_depth) in nginx.conf", 0)
    end
    if o.proxy ~= nil then
        error("option 'proxy' is not supported in OpenResty: cosockets connect directly", 0)
    end
    local pool = o.pool
    if pool ~= nil and (type(pool) ~= "string" or #pool < 1 or #pool > 128 or find(pool, "[^\32-\126]")) then
        error("option 'pool' must be a string of 1 to 128 printable ASCII bytes", 0)
    end
    local self = target(opts.scheme == "https", opts.host, opts.port, pool)
    self.id = match(tostring(self), "0x%x+") or tostring(self) -- before __tostring hides it
    self.user_pool, self.loopback = pool, opts.loopback
    self.timeout_ms, self.connect_timeout_ms = opts.timeout_ms, opts.connect_timeout_ms
    self.user_agent, self.quota_project = o.user_agent, o.quota_project
    return setmetatable(self, T)
end

function T:close()
    self.closed = true -- idle connections stay in the worker's pool until their timeout
end

function T:__tostring()
    return T.__name .. ": " .. self.id .. (self.closed and " (closed)" or "")
end

-- ngx_lua refuses a timeout over 2^31 - 1 ms (24.8 days); a longer wait
-- is armed again when this one ends.
local TIMEOUT_MAX_MS = 2147483647

-- Sets the socket's timeouts to what is left of the call; false when none is.
local function arm(self, sock, deadline)
    ngx.update_time()
    local left = min(floor((deadline - ngx.now()) * 1000), TIMEOUT_MAX_MS)
    if left <= 0 then return false end
    sock:settimeouts(min(self.connect_timeout_ms, left), left, left)
    return true
end

local function connect_kind(err)
    if err == "timeout" then return "timeout" end
    if find(err, "no resolver defined", 1, true) or find(err, "could not be resolved", 1, true) then
        return "dns"
    end
    return "connect"
end

-- A connected (and for https verified) socket to `to` (the API endpoint,
-- self, or a download's host), or nil, kind, message.
local function open(self, deadline, to)
    local sock = ngx.socket.tcp()
    if not arm(self, sock, deadline) then return nil, "timeout", "connect timed out" end
    local ok, err = sock:connect(to.addr, to.port, { pool = to.pool })
    if not ok then
        return nil, connect_kind(err), format("cannot connect to %s: %s", to.host_header, err)
    end
    if to.https and sock:getreusedtimes() == 0 then
        -- Never pass `false` as the session: lua-resty-core 0.1.25 then
        -- returns true for a handshake that completes at once even when
        -- verification failed. With a session argument that case raises
        -- "assertion failed!" instead (lua-resty-core #499): a tls error.
        local ran, session, why = pcall(sock.sslhandshake, sock, to.session, to.server_name, true)
        if not ran then session, why = nil, "certificate verification failed" end
        if not session then
            sock:close()
            return nil, why == "timeout" and "timeout" or "tls",
                format("TLS handshake with %s failed: %s", to.host_header, tostring(why))
        end
        to.session = session -- resumes TLS on the next new connection
    end
    return sock
end

-- A header's value as the C core keeps it: leading spaces skipped, then
-- printable bytes only, at most max of them, trailing spaces dropped.
local function header_value(v, max)
    v = match(sub(match(v, "^ *([\32-\126]*)"), 1, max), "^(.-) *$")
    return v ~= "" and v or nil
end

-- One receive within what is left of the call.
local function recv(self, sock, deadline, pattern)
    if not arm(self, sock, deadline) then return nil, "timeout" end
    return sock:receive(pattern)
end

local function read_error(err)
    if err == "timeout" then return "timeout", "timed out waiting for the response" end
    return "network", "reading the response failed: " .. tostring(err)
end

-- A chunked body's framing: each(size) takes each chunk's size bytes and
-- answers true, or nil, kind, message; then the trailers.
local function read_chunked(self, sock, deadline, each)
    while true do
        local line, err = recv(self, sock, deadline, "*l")
        local size = line and tonumber(match(line, "^%s*(%x+)"), 16)
        if not size then return nil, read_error(err or "malformed chunk size") end
        if size == 0 then break end
        local ok, kind, message = each(size)
        if not ok then return nil, kind, message end
        line, err = recv(self, sock, deadline, "*l")
        if line ~= "" then return nil, read_error(err or "malformed chunk end") end
    end
    repeat -- trailers, up to the empty line
        local line, err = recv(self, sock, deadline, "*l")
        if not line then return nil, read_error(err) end
    until line == ""
    return true
end

-- The body by Content-Length, chunked, or until the server closes; never
-- more than BODY_MAX bytes are read into memory.
local function read_body(self, sock, deadline, length, chunked)
    local parts, total = {}, 0
    if chunked then
        local ok, kind, message = read_chunked(self, sock, deadline, function(size)
            if total + size > BODY_MAX then return nil, "too_large", TOO_LARGE end
            local data, err = recv(self, sock, deadline, size)
            if not data then return nil, read_error(err) end
            total, parts[#parts + 1] = total + size, data
            return true
        end)
        if not ok then return nil, kind, message end
        return concat(parts)
    elseif length then
        if length > BODY_MAX then return nil, "too_large", TOO_LARGE end
        if length == 0 then return "" end
        local data, err = recv(self, sock, deadline, length)
        if not data then return nil, read_error(err) end
        return data
    end
    while true do
        if not arm(self, sock, deadline) then return nil, read_error("timeout") end
        local data, err = sock:receiveany(BODY_MAX - total + 1)
        if not data then
            if err ~= "closed" then return nil, read_error(err) end
            return concat(parts)
        end
        total, parts[#parts + 1] = total + #data, data
        if total > BODY_MAX then return nil, "too_large", TOO_LARGE end
    end
end

-- Status line and headers, skipping interim 1xx answers. Returns status,
-- HTTP minor version, lowercased headers; or nil, kind, message and whether
-- not one byte came back.
local function read_head(self, sock, deadline)
    local status, minor, headers
    repeat
        local line, err, partial = recv(self, sock, deadline, "*l")
        if not line then
            local kind, message = read_error(err)
            return nil, kind, message, status == nil and (partial or "") == ""
        end
        minor, status = match(line, "^HTTP/1%.([01]) (%d%d%d)")
        if not status then return nil, "network", "malformed response status line" end
        status, headers = tonumber(status), {}
        for _ = 1, limits.header_lines_max + 1 do
            line, err = recv(self, sock, deadline, "*l")
            if not line then return nil, read_error(err) end
            if line == "" then break end
            local name, value = match(line, "^([^:]+):(.*)$")
            if name then headers[lower(name)] = value end
        end
        if line ~= "" then return nil, "network", "too many response header lines" end
    until status >= 200 or status == 101
    return status, minor, headers
end

-- How the body ends: chunked, and its Content-Length (nil: chunked, or at
-- the connection's close); or nil, what is wrong.
local function framing(h)
    local chunked = find(lower(h["transfer-encoding"] or ""), "chunked", 1, true) ~= nil
    local length = h["content-length"] and tonumber(match(h["content-length"], "^%s*(%d+)%s*$"))
    if h["content-length"] and not length and not chunked then return nil, "malformed Content-Length" end
    return chunked, not chunked and length or nil
end

-- After an answer: back to the pool only when the body's end was not the
-- connection's close (delimited) and the server keeps it open.
local function release(sock, minor, h, delimited)
    if minor == "1" and delimited and not find(lower(h["connection"] or ""), "close", 1, true) then
        if not sock:setkeepalive() then sock:close() end
    else
        sock:close()
    end
end

-- No answer: the seven values of docs/transport.md.
local function none(kind, message, sent)
    return nil, nil, nil, nil, kind, message, sent
end

-- One exchange on one connection; never sent twice. A reused connection
-- that took the request and closed without a byte back is "stale": the
-- server most likely dropped it idle, but it may have read the request.
local function exchange(self, req, deadline)
    local sock, kind, message = open(self, deadline, self)
    if not sock then return none(kind, message, "no") end
    local reused = sock:getreusedtimes() > 0
    local function fail(k, m, sent)
        sock:close()
        return none(k, m, sent or "yes")
    end
    if not arm(self, sock, deadline) then return fail("timeout", "timed out before sending", "no") end
    local ok, err = sock:send(req)
    if not ok then
        if reused and err ~= "timeout" then return fail("network", STALE, "stale") end
        return fail(read_error(err))
    end
    local status, minor, h, nothing = read_head(self, sock, deadline)
    if not status then -- minor, h: the kind and message
        if reused and nothing and minor ~= "timeout" then return fail("network", STALE, "stale") end
        return fail(minor, h)
    end
    local chunked, length = framing(h)
    if chunked == nil then return fail("network", length) end
    local body = ""
    if status ~= 204 and status ~= 304 then
        body, kind, message = read_body(self, sock, deadline, length, chunked)
        if not body then return fail(kind, message) end
    end
    release(sock, minor, h, chunked or length ~= nil or status == 204 or status == 304)
    return status, body, h["content-type"] and header_value(h["content-type"], limits.content_type_max),
        h["retry-after"] and header_value(h["retry-after"], limits.retry_after_max)
end

--- t:request(method, path [, token [, body [, "json"|"form"]]])
---   -> status, body, content_type|nil, retry_after|nil
---   |  nil, nil, nil, nil, kind, message, sent ("no", "yes" or "stale")
function T:request(method, path, token, body, body_type)
    if not METHODS[method] then
        error("bad argument #2 to 'request' (method must be GET, POST, PUT, PATCH or DELETE)", 2)
    end
    if type(path) ~= "string" or not find(path, "^/[\33-\126]*$") or find(path, "#", 1, true) then
        error("bad argument #3 to 'request' (path must start with / and be printable ASCII)", 2)
    end
    if body ~= nil and (type(body) ~= "string" or method == "GET") then
        error("bad argument #5 to 'request' (a GET has no body)", 2)
    end
    if body_type ~= nil and body_type ~= "json" and body_type ~= "form" then
        error("bad argument #6 to 'request' (body type must be 'json' or 'form')", 2)
    end
    if self.closed then return none("closed", "client is closed", "no") end
    if token ~= nil then
        local ok, reason = core.check_token(token)
        if not ok then return none("invalid_token", reason, "no") end
    end
    local phase = ngx.get_phase()
    if not COSOCKET_PHASES[phase] then
        -- a programming error; blocking the worker instead is never an option
        error(format("dataportability: cosockets are not available in the '%s' phase of nginx; "
            .. "call from rewrite_by_lua*, access_by_lua*, content_by_lua* or a timer "
            .. "(ngx.timer.at(0, fn))", tostring(phase)), 0)
    end
    local lines = { method .. " " .. path .. " HTTP/1.1", "Host: " .. self.host_header }
    if self.user_agent then lines[#lines + 1] = "User-Agent: " .. self.user_agent end
    if token then lines[#lines + 1] = "Authorization: Bearer " .. token end
    lines[#lines + 1] = "Accept: application/json"
    if self.quota_project then lines[#lines + 1] = "x-goog-user-project: " .. self.quota_project end
    if body then
        lines[#lines + 1] = body_type == "form" and "Content-Type: application/x-www-form-urlencoded"
            or "Content-Type: application/json"
    end
    if method ~= "GET" then lines[#lines + 1] = "Content-Length: " .. #(body or "") end
    lines[#lines + 1] = "\r\n"
    local req = concat(lines, "\r\n") .. (body or "")

    ngx.update_time()
    return exchange(self, req, ngx.now() + self.timeout_ms / 1000)
end

-- Downloads (docs/transport.md): the body streamed into a part file.

local CHUNK = 65536
local PROGRESS_STEP = 1048576

-- x-goog-hash: crc32c=...,md5=... -> the md5 value.
local function goog_md5(v)
    return v and match(v, "md5=([%w+/=]+)")
end

-- The whole object's size: Content-Range's total, else offset + Content-Length.
local function expected_total(h, offset, length)
    local total = h["content-range"] and match(h["content-range"], "/%s*(%d+)%s*$")
    if total then return tonumber(total) end
    return length and offset + length or nil
end

-- Reads a 2xx body into part, CHUNK bytes at most at a time. An average
-- below low_speed_limit bytes/s over low_speed_time seconds ends it, as
-- libcurl's CURLOPT_LOW_SPEED_* do. Returns true, or nil, kind, message.
local function stream_body(self, sock, deadline, length, chunked, part, o, report)
    local window_start, window_bytes = ngx.now(), 0
    local slow_ms = o.low_speed_time * 1000
    local function take(max)
        if not arm(self, sock, deadline) then return nil, read_error("timeout") end
        local left = min(floor((deadline - ngx.now()) * 1000), TIMEOUT_MAX_MS)
        sock:settimeouts(left, left, min(slow_ms, left)) -- a silent server is a slow one
        local data, err = sock:receiveany(max)
        if not data then
            ngx.update_time()
            if err == "timeout" and ngx.now() < deadline then
                return nil, "timeout", format("fewer than %d bytes a second for %d seconds",
                    o.low_speed_limit, o.low_speed_time)
            end
            return nil, read_error(err)
        end
        local ok, why = part:write(data)
        if not ok then return nil, "io", why end
        ngx.update_time()
        window_bytes = window_bytes + #data
        if ngx.now() - window_start >= o.low_speed_time then
            if window_bytes < o.low_speed_limit * o.low_speed_time then
                return nil, "timeout", format("fewer than %d bytes a second for %d seconds",
                    o.low_speed_limit, o.low_speed_time)
            end
            window_start, window_bytes = ngx.now(), 0
        end
        return report()
    end
    if chunked then
        return read_chunked(self, sock, deadline, function(size)
            while size > 0 do
                local before = part:size()
                local ok, kind, message = take(min(size, CHUNK))
                if not ok then return nil, kind, message end
                size = size - (part:size() - before)
            end
            return true
        end)
    end
    local left = length
    while left == nil or left > 0 do
        local before = part:size()
        local ok, kind, message = take(left and min(left, CHUNK) or CHUNK)
        if not ok then
            if not left and kind == "network" and find(message, "closed", 1, true) then return true end
            return nil, kind, message
        end
        if left then left = left - (part:size() - before) end
    end
    return true
end

-- One GET of a download into part, filling r (docs/transport.md).
local function fetch(self, to, path, part, o, deadline, r)
    local offset = part:size()
    local lines = { "GET " .. path .. " HTTP/1.1", "Host: " .. to.host_header }
    if self.user_agent then lines[#lines + 1] = "User-Agent: " .. self.user_agent end
    if offset > 0 then
        lines[#lines + 1] = "Range: bytes=" .. offset .. "-"
        if o.if_range then lines[#lines + 1] = "If-Range: " .. o.if_range end
    end
    lines[#lines + 1] = "\r\n"
    local sock, kind, message = open(self, deadline, to)
    if not sock then return kind, message end
    if not arm(self, sock, deadline) then
        sock:close()
        return "timeout", "timed out before sending"
    end
    local ok, err = sock:send(concat(lines, "\r\n"))
    local status, minor, h
    if ok then -- no byte for low_speed_time is too slow, as for libcurl
        ngx.update_time()
        status, minor, h = read_head(self, sock, min(deadline, ngx.now() + o.low_speed_time))
        ngx.update_time()
        if not status and minor == "timeout" and ngx.now() < deadline then
            h = format("no answer for %d seconds", o.low_speed_time)
        end
    else
        minor, h = read_error(err)
    end
    if not status then -- minor, h: the kind and message
        sock:close()
        return minor, h
    end
    local chunked, length = framing(h)
    if chunked == nil then
        sock:close()
        return "network", length
    end
    r.answered = status -- until the body is whole
    if status == 200 and offset > 0 then -- the server ignored the Range: the file starts again
        if not part.truncate then
            sock:close()
            return "http", "the server ignored the Range request, and a sink cannot take back what it got"
        end
        ok, err = part:truncate()
        if not ok then
            sock:close()
            return "io", err
        end
        r.offset = 0
    end
    if status >= 200 and status < 300 then
        r.total = expected_total(h, r.offset or offset, length)
        r.etag = h["etag"] and header_value(h["etag"], 127)
        if status == 200 then r.md5 = goog_md5(h["x-goog-hash"]) end
        local reported = part:size()
        local function report()
            if o.progress and part:size() - reported >= PROGRESS_STEP then
                reported = part:size()
                local ran, raised = pcall(o.progress, reported, r.total)
                if not ran then
                    r.raised = { raised }
                    return nil, "raised"
                end
            end
            if self.closed then return nil, "closed", "client is closed" end
            return true
        end
        ok, kind, message = stream_body(self, sock, deadline, length, chunked, part, o, report)
        if not ok then
            sock:close()
            return kind, message
        end
    elseif status ~= 204 and status ~= 304 then
        local body
        body, kind, message = read_body(self, sock, deadline, length, chunked)
        if not body then
            sock:close()
            return kind, message
        end
        r.error_body = body ~= "" and body or nil
    end
    release(sock, minor, h, chunked or length ~= nil or status == 204 or status == 304)
    r.status, r.answered = status, nil
end

-- What a part file is to fetch, for a sink: each chunk to sink(chunk),
-- from offset (the bytes it already has); what it raises is kept in r.
local function stream(sink, offset, r)
    local size = offset
    return {
        write = function(_, data)
            local ok, raised = pcall(sink, data)
            if not ok then
                r.raised = { raised }
                return nil, "raised"
            end
            size = size + #data
            return true
        end,
        size = function() return size end,
        close = function() return true end,
    }
end

--- t:download(url, path, opts) -> result (docs/transport.md), as the C
--- core's: the same options, checks and result fields, on a cosocket;
--- opts.progress(done, total) runs between reads, at most once per MiB.
function T:download(url, path, o)
    if o.if_range ~= nil and (type(o.if_range) ~= "string" or find(o.if_range, "[^\32-\126]")) then
        error("download option 'if_range' must be printable ASCII", 2)
    end
    if path == nil and type(o.sink) ~= "function" then
        error("download option 'sink' is needed without a path", 2)
    end
    local r = { written = 0, size = 0 }
    if self.closed then
        r.kind, r.message = "closed", "client is closed"
        return r
    end
    local https, host, port, target_path = core.download_target(url, self.loopback)
    local part, why
    if https == nil then
        r.kind, r.message = "http", host
        return r
    end
    if path == nil then
        part = stream(o.sink, o.offset or 0, r)
    else
        part, why = core.part_file(path, o.resume)
    end
    if not part then
        r.kind, r.message = "io", why
        return r
    end
    local offset = part:size()
    ngx.update_time()
    local deadline = ngx.now() + ((o.timeout or 0) > 0 and o.timeout or 30 * 86400)
    local kind, message = fetch(self, target(https, host, port, self.user_pool), target_path, part, {
        progress = o.progress, if_range = o.if_range,
        low_speed_limit = o.low_speed_limit or 1, low_speed_time = o.low_speed_time or 60,
    }, deadline, r)
    r.size = part:size()
    r.written = r.size - (r.offset or offset)
    r.digest = part.digest and part:digest()
    r.offset = nil
    if not part:close() and not kind then
        kind, message, r.answered, r.status = "io", "writing the file failed", r.status, nil
    end
    if r.raised then error(r.raised[1], 0) end -- progress's error, as it was
    if kind then r.kind, r.message = kind, message end
    return r
end

--- t:many(method, path, tokens, concurrency, on_done): as the C core's
--- (csrc/batch.c), with `concurrency` light threads, each on a connection
--- of its own from the pool. An error in on_done, or a close, stops every
--- thread before its next token; the tokens not reported are the caller's.
function T:many(method, path, tokens, concurrency, on_done)
    if self.closed then return end
    local n, taken, threads, failure = #tokens, 0, {}, nil
    local function one(i)
        on_done(i, self:request(method, path, tokens[i]))
    end
    local function work()
        while taken < n and not failure and not self.closed do
            taken = taken + 1
            local ok, err = pcall(one, taken)
            if not ok then failure = failure or { err } end
        end
    end
    for t = 1, min(concurrency, n) do
        threads[t] = ngx.thread.spawn(work)
    end
    for t = 1, #threads do
        ngx.thread.wait(threads[t])
    end
    if failure then error(failure[1], 0) end
end

return _M
