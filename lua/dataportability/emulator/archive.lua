--- Archive files at Cloud-Storage-style V4 signed URLs, on the storage
-- host 127.0.0.2 (inside nginx). A file's bytes are generated, never stored:
-- 64 KiB blocks, block i = a 16-byte header derived from (seed, i) followed
-- by a 65520-byte tail derived from the seed, seed = "<job id>/<file name>";
-- the last block is cut to the file's size.
-- luacheck: globals ngx

local bit = require("bit")
local crypto = require("dataportability.emulator.crypto")
local R = require("dataportability.emulator.respond")
local S = require("dataportability.emulator.state")

local floor, min, max = math.floor, math.min, math.max
local concat, sort = table.concat, table.sort
local str_sub = string.sub
local md5_bin = ngx.md5_bin

local _M = {}

local BLOCK = 65536
local HEAD = 16
local ALGORITHM = "GOOG4-HMAC-SHA256"
local SIGNER = "dataportability-emulator@emulator.iam.gserviceaccount.com"
local MAX_EXPIRES = 604800  -- Cloud Storage's limit: 7 days

local storage_host = "127.0.0.2"

--- Set at start: the storage host is 127.0.0.2 on the HTTPS port.
function _M.set_host(host) storage_host = host end

---------------------------------------------------------------------------
-- Signed URLs

-- RFC 3986 unreserved characters stay; everything else is %XX.
local function uri_encode(s)
    return (s:gsub("[^%w%-._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

local function goog_date(t)
    return os.date("!%Y%m%dT%H%M%SZ", floor(t))
end

-- The query without the signature, every name and value re-encoded one way
-- and sorted, so that a client's choice of escapes does not matter.
local function canonical_query(args)
    local parts = {}
    for k, v in pairs(args) do
        if k ~= "X-Goog-Signature" then
            if type(v) == "table" then v = v[1] end
            parts[#parts + 1] = uri_encode(k) .. "=" .. uri_encode(v == true and "" or v)
        end
    end
    sort(parts)
    return concat(parts, "&")
end

local function string_to_sign(method, path, args, host)
    local date = args["X-Goog-Date"]
    local request = concat({ method, path, canonical_query(args), "host:" .. host, "", "host",
                             "UNSIGNED-PAYLOAD" }, "\n")
    return concat({ ALGORITHM, date, date:sub(1, 8) .. "/auto/storage/goog4_request",
                    crypto.hex(crypto.sha256(request)) }, "\n")
end

local function sign(sts)
    return crypto.hex(crypto.hmac_sha256(S.secret(), sts))
end

local function object_path(job, file)
    return "/" .. job.bucket .. "/" .. job.id .. "/" .. file.name
end

--- Fresh signed URLs for the files of a COMPLETE job (one per file).
function _M.urls(job)
    local date = goog_date(ngx.now())
    local out = {}
    for i, file in ipairs(job.files) do
        local path = object_path(job, file)
        local args = {
            ["X-Goog-Algorithm"] = ALGORITHM,
            ["X-Goog-Credential"] = SIGNER .. "/" .. date:sub(1, 8) .. "/auto/storage/goog4_request",
            ["X-Goog-Date"] = date,
            ["X-Goog-Expires"] = tostring(job.url_seconds),
            ["X-Goog-SignedHeaders"] = "host",
        }
        local sig = sign(string_to_sign("GET", path, args, storage_host))
        out[i] = "https://" .. storage_host .. path .. "?" .. canonical_query(args)
            .. "&X-Goog-Signature=" .. sig
    end
    return out
end

---------------------------------------------------------------------------
-- Generated content

local tails, ntails = {}, 0  -- per-seed 65520-byte tails, a small cache

local function tail_of(seed)
    local t = tails[seed]
    if t then return t end
    local parts = {}
    for k = 1, (BLOCK - HEAD) / 16 do parts[k] = md5_bin(seed .. "#" .. k) end
    t = concat(parts)
    if ntails >= 16 then tails, ntails = {}, 0 end
    tails[seed], ntails = t, ntails + 1
    return t
end

local function block_head(seed, i)
    return md5_bin(seed .. ":" .. ("%d"):format(i))
end

local function block(seed, i)
    return block_head(seed, i) .. tail_of(seed)
end

local tail_zeros  -- the CRC32C operator "feed 65520 zero bytes"

--- The x-goog-hash value of a file: crc32c always, md5 up to md5_max_bytes.
-- Computed once (cached); yields now and then, so the server keeps serving.
local function goog_hash(seed, size, with_md5)
    local key = seed .. ":" .. ("%d"):format(size) .. (with_md5 and ":md5" or "")
    local cached = S.file_hash(key)
    if cached then return cached end
    tail_zeros = tail_zeros or crypto.crc32c_zeros(BLOCK - HEAD)
    local tail = tail_of(seed)
    local tail_crc = crypto.crc32c_update(0, tail)
    local md5 = with_md5 and crypto.digest("md5")
    local c, full = crypto.CRC32C_INIT, floor(size / BLOCK)
    for i = 0, full - 1 do
        local head = block_head(seed, i)
        c = bit.bxor(crypto.crc32c_apply(tail_zeros, crypto.crc32c_update(c, head)), tail_crc)
        if md5 then
            md5:update(head)
            md5:update(tail)
        end
        -- let other requests in every 4 MiB hashed (256 MiB with crc32c alone);
        -- sleep(0) would warn in the error log
        if i % (md5 and 64 or 4096) == 63 then ngx.sleep(0.001) end
    end
    local rest = size - full * BLOCK
    if rest > 0 then
        local last = str_sub(block(seed, full), 1, rest)
        c = crypto.crc32c_update(c, last)
        if md5 then md5:update(last) end
    end
    local value = "crc32c=" .. ngx.encode_base64(crypto.crc32c_bytes(c))
        .. (md5 and ",md5=" .. ngx.encode_base64(md5:final()) or "")
    S.set_file_hash(key, value)
    return value
end

---------------------------------------------------------------------------
-- Serving

local function xml_error(status, code, message, extra, headers)
    return R.send_xml_error(status, code, message, extra, headers)
end

--- first, last (inclusive) of a single "bytes=" range; false when it cannot
-- be satisfied; nil to ignore the header (absent, malformed or multi-range).
local function parse_range(h, size)
    if not h then return nil end
    local a, b = h:match("^%s*bytes%s*=%s*(%d*)%s*%-%s*(%d*)%s*$")
    if not a or (a == "" and b == "") then return nil end
    if a == "" then
        local n = tonumber(b)
        if n == 0 or size == 0 then return false end
        return max(size - n, 0), size - 1
    end
    a = tonumber(a)
    if b ~= "" and tonumber(b) < a then return nil end
    if a >= size then return false end
    return a, b == "" and size - 1 or min(tonumber(b), size - 1)
end

-- Sends bytes first..last of the file, block by block; a `cut` fault
-- stops after that many bytes and closes the connection.
local function stream(seed, first, last)
    local cut = ngx.ctx.cut
    ngx.send_headers()
    if cut == 0 then ngx.flush(true); return ngx.exit(444) end
    local i, off = floor(first / BLOCK), first % BLOCK
    local left, sent = last - first + 1, 0
    while left > 0 do
        local chunk = str_sub(block(seed, i), off + 1, min(BLOCK, off + left))
        if cut and sent + #chunk >= cut then
            ngx.print(str_sub(chunk, 1, cut - sent))
            ngx.flush(true)
            return ngx.exit(444)
        end
        if not ngx.print(chunk) or not ngx.flush(true) then return ngx.exit(444) end  -- client gone
        sent, left, i, off = sent + #chunk, left - #chunk, i + 1, 0
    end
    return ngx.exit(ngx.HTTP_OK)
end

local function object(bucket, id, name)
    local job = S.job(id)
    if not job or job.bucket ~= bucket then return nil, "NoSuchKey" end
    for _, f in ipairs(job.files) do
        if f.name == name then return job, f end
    end
    return nil, "NoSuchKey"
end

--- Serves a request to the storage host (after logging and faults).
function _M.serve()
    local method = ngx.req.get_method()
    -- Cloud Storage refuses two authentication mechanisms at once
    if ngx.var.http_authorization then
        return xml_error(400, "InvalidArgument", "Invalid argument.", { { "Details",
            "Only one auth mechanism allowed; only the X-Goog-Algorithm query parameter, Signature query "
            .. "string parameter or the Authorization header should be specified." } })
    end
    local args = ngx.req.get_uri_args(100)
    local sig = args["X-Goog-Signature"]
    if not sig and not args["X-Goog-Algorithm"] then
        return xml_error(403, "AccessDenied", "Access denied.", { { "Details", "Anonymous caller does "
            .. "not have storage.objects.get access to the Google Cloud Storage object. Permission "
            .. "'storage.objects.get' denied on resource (or it may not exist)." } })
    end
    for _, k in ipairs({ "X-Goog-Algorithm", "X-Goog-Credential", "X-Goog-Date", "X-Goog-Expires",
                         "X-Goog-SignedHeaders", "X-Goog-Signature" }) do
        if type(args[k]) ~= "string" then
            return xml_error(400, "AuthorizationQueryParametersError", "Query-string authentication "
                .. "version 4 requires the " .. k .. " parameter, exactly once.")
        end
    end
    local date, expires = args["X-Goog-Date"], tonumber(args["X-Goog-Expires"])
    local y, mo, d, h, mi, s = date:match("^(%d%d%d%d)(%d%d)(%d%d)T(%d%d)(%d%d)(%d%d)Z$")
    if args["X-Goog-Algorithm"] ~= ALGORITHM or not y or not expires or expires % 1 ~= 0
        or expires < 1 or expires > MAX_EXPIRES then
        return xml_error(400, "AuthorizationQueryParametersError", "Error parsing the X-Goog-Algorithm, "
            .. "X-Goog-Date or X-Goog-Expires query parameter.")
    end
    local host = ngx.var.http_host or (storage_host)
    local path = ngx.var.request_uri:match("^[^?]*")
    local sts = string_to_sign(method, path, args, host)
    if sign(sts) ~= sig:lower() then
        return xml_error(403, "SignatureDoesNotMatch", "Access denied.", { { "Details", "The request "
            .. "signature we calculated does not match the signature you provided. Check your Google "
            .. "secret key and signing method." }, { "StringToSign", sts } })
    end
    local signed = R.parse_time(('%s-%s-%sT%s:%s:%sZ'):format(y, mo, d, h, mi, s))
    if not signed or ngx.now() > signed + expires then
        return xml_error(400, "ExpiredToken", "Invalid argument.", { { "Details", "Request signature "
            .. "expired at: " .. os.date("!%Y-%m-%dT%H:%M:%S+00:00", (signed or 0) + expires) } })
    end

    local bucket, id, name = path:match("^/([^/]+)/([^/]+)/([^/]+)$")
    local job, file = object(bucket and ngx.unescape_uri(bucket), id and ngx.unescape_uri(id),
        name and ngx.unescape_uri(name))
    if not job then
        return xml_error(404, "NoSuchKey", "The specified key does not exist.", { { "Details",
            "No such object: " .. ngx.unescape_uri(path:sub(2)) } })
    end

    local seed, size = job.id .. "/" .. file.name, file.size
    local etag = '"' .. ngx.md5(seed .. ":" .. ("%d"):format(size)) .. '"'
    local first, last = parse_range(ngx.var.http_range, size)
    local if_range = ngx.var.http_if_range
    if if_range and if_range ~= etag then first, last = nil, nil end  -- changed: send it all
    ngx.header["Server"] = "UploadServer"
    ngx.header["Accept-Ranges"] = "bytes"
    ngx.header["ETag"] = etag
    ngx.header["Last-Modified"] = ngx.http_time(floor(job.finished or job.created))
    ngx.header["Cache-Control"] = "private, max-age=0"
    ngx.header["x-goog-generation"] = ("%d"):format(floor(job.created * 1e6))
    ngx.header["x-goog-metageneration"] = "1"
    ngx.header["x-goog-stored-content-encoding"] = "identity"
    ngx.header["x-goog-stored-content-length"] = ("%d"):format(size)
    ngx.header["x-goog-storage-class"] = "STANDARD"
    if first == false then
        return xml_error(416, "InvalidRange", "The requested range cannot be satisfied.",
            { { "Details", ngx.var.http_range } }, { ["Content-Range"] = ("bytes */%d"):format(size) })
    end
    ngx.header["Content-Type"] = name:match("%.zip$") and "application/zip" or "application/octet-stream"
    if first then
        ngx.status = 206
        ngx.header["Content-Range"] = ("bytes %d-%d/%d"):format(first, last, size)
    else
        first, last = 0, size - 1
        ngx.status = 200
        ngx.header["x-goog-hash"] = goog_hash(seed, size, size <= (job.md5_max_bytes or 0))
    end
    ngx.header["Content-Length"] = ("%d"):format(last - first + 1)
    return stream(seed, first, last)
end

return _M
