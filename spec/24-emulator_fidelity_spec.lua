-- The emulator as Google's front end behaves, driven with the curl command
-- line: system query parameters and unknown ones, access_token, gzip,
-- no nginx Server header or error page, alt=proto, JSONP and batches.
local cjson = require("cjson")
local helpers = require("spec.helpers")

local q = helpers.quote
local sh = helpers.sh

local CHECK = "/v1/accessType:check"
local UNKNOWN_X = 'Invalid JSON payload received. Unknown name "x": Cannot bind query parameter. '
    .. "Field 'x' could not be found in request message."

-- curl: status, headers (lower-case name -> list of values), body, exit code.
local function curl(args)
    local out = sh("curl -s -i " .. args .. "; rc=$?; echo; echo \"curl-rc=$rc\"")
    local rc = tonumber(out:match("curl%-rc=(%d+)%s*$"))
    out = out:gsub("\ncurl%-rc=%d+%s*$", "")
    local head, body = out:match("^(.-)\r\n\r\n(.*)$")
    local headers = {}
    for name, value in (head or ""):gmatch("([%w-]+): ([^\r\n]*)") do
        name = name:lower()
        headers[name] = headers[name] or {}
        table.insert(headers[name], value)
    end
    return tonumber((head or ""):match("^HTTP/[%d.]+ (%d+)")), headers, body, rc
end

local function one(headers, name)
    local v = headers[name]
    return v and table.concat(v, ", ")
end

local function gunzip(data, dir)
    helpers.write(dir .. "/body.gz", data)
    return sh("gzip -dc < " .. q(dir .. "/body.gz"))
end

describe("emulator fidelity to Google's front end", function()
    local emu, tmp

    lazy_setup(function()
        emu = helpers.start()
        tmp = helpers.tmpdir()
    end)
    lazy_teardown(function()
        helpers.stop(emu)
        if tmp and tmp:match("^/tmp/") then sh("rm -rf " .. q(tmp)) end
    end)
    before_each(function() emu:clear() end)

    local function url(path) return q(emu.endpoint .. path) end

    -- POST accessType:check with a token in the header (unless nil) and extra curl args.
    local function check(query, token, extra)
        local auth = token and (" -H " .. q("Authorization: Bearer " .. token)) or ""
        return curl("-X POST" .. auth .. " " .. (extra or "") .. " " .. url(CHECK .. (query or "")))
    end

    describe("query parameters", function()
        it("refuse an unknown one with Google's 400, naming the first in query order", function()
            local tok = helpers.registered(emu)
            local status, _, body = check("?prettyPrint=false&x=1&y=2", tok)
            assert.equals(400, status)
            local err = cjson.decode(body).error
            assert.equals("INVALID_ARGUMENT", err.status)
            assert.equals(UNKNOWN_X, err.message)
            assert.equals("type.googleapis.com/google.rpc.BadRequest", err.details[1]["@type"])
            assert.same({ { description = UNKNOWN_X } }, err.details[1].fieldViolations)
            -- a GET too, and a name that needed decoding
            local _, _, state = curl("-H " .. q("Authorization: Bearer " .. tok) .. " "
                .. url("/v1/archiveJobs/abc/portabilityArchiveState?%78=1"))
            assert.equals(UNKNOWN_X, cjson.decode(state).error.message)
            -- after the credentials: without a token, the 401
            assert.equals(401, (check("?x=1", nil)))
        end)

        it("accept Google's system parameters", function()
            local tok = helpers.registered(emu)
            local status, _, body = check("?alt=json&%24alt=json&fields=oneTimeResources"
                .. "&%24fields=oneTimeResources&prettyPrint=true&%24prettyPrint=true&key=k&%24key=k"
                .. "&quotaUser=u&%24quotaUser=u&userProject=p&%24userProject=p&%24.xgafv=2"
                .. "&%24ct=application%2Fjson&%24requestReason=r&uploadType=media&upload_protocol=raw"
                .. "&userIp=192.0.2.1&access_token=ignored-when-the-header-is-there", tok)
            assert.equals(200, status)
            assert.same({ oneTimeResources = { "myactivity.youtube" } }, cjson.decode(body))
            local _, _, compact = check("?%24prettyPrint=false&%24fields=nothing", tok)
            assert.equals("{}", compact)
        end)

        it("take the token from access_token or oauth_token, with the header's checks", function()
            local tok = helpers.registered(emu)
            assert.equals(200, (check("?access_token=" .. tok, nil)))
            assert.equals(200, (check("?oauth_token=" .. tok, nil)))
            local status, headers, body = check("?access_token=ya29.unknown", nil)
            assert.equals(401, status)
            assert.truthy(one(headers, "www-authenticate"):find('error="invalid_token"', 1, true))
            assert.equals("ACCESS_TOKEN_TYPE_UNSUPPORTED", cjson.decode(body).error.details[1].reason)
            -- the header wins over the query
            assert.equals(401, (check("?access_token=" .. tok, "ya29.unknown")))
            -- a reset through the query revokes the token
            assert.equals(200, (curl("-X POST " .. url("/v1/authorization:reset?access_token=" .. tok))))
            assert.equals(401, (check("?access_token=" .. tok, nil)))
            -- and no log shows it: neither the request log nor nginx's
            for _, r in ipairs(emu:requests()) do
                assert.is_nil(r.query:find(tok, 1, true))
            end
            assert.is_nil(emu:logs():find(tok, 1, true))
        end)

        it("answer alt=proto with 501 UNIMPLEMENTED in JSON, other alt values with 400", function()
            local tok = helpers.registered(emu)
            local status, headers, body = check("?alt=proto", tok)
            assert.equals(501, status)
            assert.equals("application/json; charset=UTF-8", one(headers, "content-type"))
            local err = cjson.decode(body).error
            assert.equals("UNIMPLEMENTED", err.status)
            assert.truthy(err.message:find("alt=proto", 1, true))
            -- before the credentials: the format of any answer is at stake
            assert.equals(501, (check("?%24alt=proto", nil)))
            local _
            status, _, body = check("?alt=media", tok)
            assert.equals(400, status)
            assert.equals("alt", cjson.decode(body).error.details[1].fieldViolations[1].field)
            assert.equals(200, (check("?alt=json", tok)))
        end)

        it("wrap the answer in a JSONP callback, and refuse an unsafe name", function()
            local tok = helpers.registered(emu)
            local status, headers, body = check("?callback=app.got&prettyPrint=false", tok)
            assert.equals(200, status)
            assert.equals("text/javascript; charset=UTF-8", one(headers, "content-type"))
            assert.equals('// API callback\napp.got({"oneTimeResources":["myactivity.youtube"]});\n', body)
            status, headers, body = check("?callback=alert(1)//", tok)
            assert.equals(400, status)
            assert.equals("application/json; charset=UTF-8", one(headers, "content-type"))
            assert.equals("INVALID_ARGUMENT", cjson.decode(body).error.status)
        end)
    end)

    describe("gzip", function()
        local GZIP = "-H 'Accept-Encoding: gzip' -A 'my-app/1.0 (gzip)'"

        it("compresses when Accept-Encoding has gzip and User-Agent says gzip", function()
            local tok = helpers.registered(emu)
            local _, plain_headers, plain = check("", tok)
            assert.is_nil(plain_headers["content-encoding"])
            local status, headers, body = check("", tok, GZIP)
            assert.equals(200, status)
            assert.equals("gzip", one(headers, "content-encoding"))
            assert.equals(#body, tonumber(one(headers, "content-length")))
            assert.equals(plain, gunzip(body, tmp))
            assert.same({ "Origin", "X-Origin", "Referer", "Accept-Encoding" }, headers.vary)
            assert.same(headers.vary, plain_headers.vary)
        end)

        it("does not compress without both, or with q=0", function()
            local tok = helpers.registered(emu)
            for _, extra in ipairs({ "-H 'Accept-Encoding: gzip' -A 'my-app/1.0'",
                                     "-A 'my-app/1.0 (gzip)'",
                                     "-H 'Accept-Encoding: gzip;q=0, identity' -A 'x (gzip)'" }) do
                local status, headers = check("", tok, extra)
                assert.equals(200, status)
                assert.is_nil(headers["content-encoding"])
            end
        end)

        it("compresses errors and OAuth JSON, never HTML pages or downloads", function()
            local status, headers, body = check("", nil, GZIP)
            assert.equals(401, status)
            assert.equals("gzip", one(headers, "content-encoding"))
            assert.equals("UNAUTHENTICATED", cjson.decode(gunzip(body, tmp)).error.status)
            status, headers, body = curl("-X POST -d grant_type=nope " .. GZIP .. " " .. url("/token"))
            assert.equals(400, status)
            assert.equals("gzip", one(headers, "content-encoding"))
            assert.equals("unsupported_grant_type", cjson.decode(gunzip(body, tmp)).error)
            status, headers = curl(GZIP .. " " .. url("/nowhere"))
            assert.equals(404, status)
            assert.is_nil(headers["content-encoding"])

            emu:configure({ job_seconds = 0 })
            local tok = helpers.registered(emu)
            local _, _, job = curl("-X POST -H " .. q("Authorization: Bearer " .. tok) .. " -d "
                .. q('{"resources":["myactivity.youtube"]}') .. " " .. url("/v1/portabilityArchive:initiate"))
            local _, _, st = curl("-H " .. q("Authorization: Bearer " .. tok) .. " "
                .. url("/v1/archiveJobs/" .. cjson.decode(job).archiveJobId .. "/portabilityArchiveState"))
            status, headers, body = curl("--cacert " .. q(emu.ca_file) .. " " .. GZIP .. " "
                .. q(cjson.decode(st).urls[1]))
            assert.equals(200, status)
            assert.is_nil(headers["content-encoding"])
            assert.equals(1024, #body)
        end)
    end)

    describe("headers and nginx's own answers", function()
        -- An answer whose headers and body never show nginx.
        local function assert_not_nginx(headers, body)
            assert.is_nil(headers.server and one(headers, "server"):lower():find("nginx", 1, true))
            assert.is_nil((body or ""):lower():find("nginx", 1, true))
        end

        it("sends no Server header on HTML pages and OAuth answers, Google's on the others", function()
            local status, headers, body = curl(url("/nowhere"))
            assert.equals(404, status)
            assert.is_nil(headers.server)
            assert.truthy(body:find("<title>Error 404 (Not Found)!!1</title>", 1, true))
            status, headers = curl("-X POST -d grant_type=nope " .. url("/token"))
            assert.equals(400, status)
            assert.is_nil(headers.server)
            status, headers = check("", nil)
            assert.equals(401, status)
            assert.same({ "ESF" }, headers.server)
            local storage = "https://127.0.0.2:" .. emu.https_port .. "/dataportability-emulator/a/b.zip"
            status, headers, body = curl("--cacert " .. q(emu.ca_file) .. " " .. q(storage))
            assert.equals(403, status)
            assert.same({ "UploadServer" }, headers.server)
            assert.truthy(body:find("<Code>AccessDenied</Code>", 1, true))
        end)

        it("answers nginx's own errors with Google's HTML pages", function()
            local big = tmp .. "/big"
            sh("head -c 1100000 /dev/zero > " .. q(big))
            local status, headers, body = curl("-X POST --data-binary @" .. q(big) .. " " .. url(CHECK))
            assert.equals(413, status)
            assert.truthy(body:find("<title>Error 413 (Request Entity Too Large)!!1</title>", 1, true))
            assert_not_nginx(headers, body)
            -- a malformed request line
            status, headers, body = curl("--request-target '/%' " .. url("/"))
            assert.equals(400, status)
            assert.truthy(body:find("<title>Error 400 (Bad Request)!!1</title>", 1, true))
            assert_not_nginx(headers, body)
            -- plain HTTP to the HTTPS port
            status, headers, body = curl(q("http://127.0.0.1:" .. emu.https_port .. "/v1"))
            assert.equals(400, status)
            assert.truthy(body:find("Error 400 (Bad Request)!!1", 1, true))
            assert_not_nginx(headers, body)
            -- the emulator's internal locations are not reachable
            for _, path in ipairs({ "/emulator-error", "/emulator-batch-part" }) do
                status, headers, body = curl(url(path))
                assert.equals(404, status)
                assert.truthy(body:find("Error 404 (Not Found)!!1", 1, true))
                assert_not_nginx(headers, body)
            end
        end)
    end)

    describe("batches", function()
        -- A multipart/mixed batch of raw HTTP requests (CRLF line ends).
        local function batch(parts, extra, boundary)
            boundary = boundary or "b0undary"
            local body = {}
            for _, p in ipairs(parts) do
                body[#body + 1] = "--" .. boundary .. "\r\nContent-Type: application/http\r\n"
                    .. (p.id and ("Content-ID: " .. p.id .. "\r\n") or "") .. "\r\n" .. p.request
            end
            body[#body + 1] = "--" .. boundary .. "--\r\n"
            helpers.write(tmp .. "/batch", table.concat(body, "\r\n"))
            return curl("-X POST -H " .. q("Content-Type: multipart/mixed; boundary=" .. boundary) .. " "
                .. (extra or "") .. " --data-binary @" .. q(tmp .. "/batch") .. " " .. url("/batch"))
        end

        -- The parts of a multipart answer: {id=, status=, headers=, body=}.
        local function parts_of(headers, body)
            local boundary = one(headers, "content-type"):match("^multipart/mixed; boundary=(%S+)$")
            assert.is_string(boundary)
            local out = {}
            for part in body:gmatch("%-%-" .. boundary:gsub("%p", "%%%0") .. "\r\n(.-)\r\n%f[-]") do
                local mime, http = part:match("^(.-)\r\n\r\n(.*)$")
                local status, head, content = http:match("^HTTP/1%.1 (%d+) [^\r\n]+\r\n(.-)\r\n\r\n(.*)$")
                local h = {}
                for name, value in head:gmatch("([%w-]+): ([^\r\n]*)") do h[name:lower()] = value end
                out[#out + 1] = { id = mime:match("Content%-ID: ([^\r\n]+)"), status = tonumber(status),
                                  headers = h, body = content }
            end
            assert.truthy(body:find("--" .. boundary .. "--\r\n", 1, true))
            return out
        end

        it("answers each request in order, with the batch's headers unless a part has its own", function()
            local tok = helpers.registered(emu)
            local status, headers, body = batch({
                { id = "<item1:ab+1>", request = "POST " .. CHECK .. "?prettyPrint=false HTTP/1.1\r\n\r\n" },
                { id = "<item1:ab+2>", request = "GET /v1/archiveJobs/nope/portabilityArchiveState"
                    .. " HTTP/1.1\r\nContent-Type: application/json\r\n\r\n" },
                { request = "POST /v1/authorization:reset HTTP/1.1\r\nAuthorization: Bearer ya29.other\r\n"
                    .. "Content-Type: application/json\r\n\r\n{}" },
                { id = "x", request = "POST /token HTTP/1.1\r\n\r\n" },
            }, "-H " .. q("Authorization: Bearer " .. tok))
            assert.equals(200, status)
            assert.same({ "ESF" }, headers.server)
            local parts = parts_of(headers, body)
            assert.equals(4, #parts)
            assert.equals("<response-item1:ab+1>", parts[1].id)
            assert.equals(200, parts[1].status)
            assert.equals('{"oneTimeResources":["myactivity.youtube"]}', parts[1].body)
            assert.equals(#parts[1].body, tonumber(parts[1].headers["content-length"]))
            assert.equals("<response-item1:ab+2>", parts[2].id)
            assert.equals(404, parts[2].status)
            assert.equals("NOT_FOUND", cjson.decode(parts[2].body).error.status)
            assert.is_nil(parts[3].id)
            assert.equals(401, parts[3].status) -- its own Authorization won
            assert.equals("<response-x>", parts[4].id)
            assert.equals(404, parts[4].status) -- only /v1 is reachable
            assert.truthy(parts[4].body:find("Error 404 (Not Found)!!1", 1, true))
            -- logged as the batch, then each /v1 part on its own
            local log, paths = emu:requests(), {}
            for i, r in ipairs(log) do paths[i] = r.path end
            assert.same({ "/batch", CHECK, "/v1/archiveJobs/nope/portabilityArchiveState",
                          "/v1/authorization:reset" }, paths)
            assert.equals("prettyPrint=false", log[2].query)
            assert.equals("Bearer <redacted>", log[2].headers.authorization)
            -- the batch's Content-Type is not a part's; a part's own is
            assert.is_nil(log[2].headers["content-type"])
            assert.equals("application/json", log[3].headers["content-type"])
        end)

        it("takes faults per part; a dropped part loses the whole batch", function()
            local tok = helpers.registered(emu)
            emu:set_fault({ action = "status", status = 503, path = CHECK })
            local req = { request = "POST " .. CHECK .. " HTTP/1.1\r\n\r\n" }
            local status, headers, body = batch({ req, req }, "-H " .. q("Authorization: Bearer " .. tok))
            assert.equals(200, status)
            local parts = parts_of(headers, body)
            assert.equals(503, parts[1].status)
            assert.equals(200, parts[2].status)
            emu:set_fault({ action = "drop", path = CHECK })
            local _, _, _, rc = batch({ req }, "-H " .. q("Authorization: Bearer " .. tok))
            assert.equals(52, rc) -- an empty reply
        end)

        it("compresses the whole answer when asked, never a part", function()
            local tok = helpers.registered(emu)
            local status, headers, body = batch({ { request = "POST " .. CHECK .. " HTTP/1.1\r\n"
                .. "Accept-Encoding: gzip\r\nUser-Agent: x (gzip)\r\n\r\n" } },
                "-H 'Accept-Encoding: gzip' -A 'x (gzip)' -H " .. q("Authorization: Bearer " .. tok))
            assert.equals(200, status)
            assert.equals("gzip", one(headers, "content-encoding"))
            local parts = parts_of(headers, gunzip(body, tmp))
            assert.is_nil(parts[1].headers["content-encoding"])
            assert.same({ oneTimeResources = { "myactivity.youtube" } }, cjson.decode(parts[1].body))
        end)

        it("refuses a batch it cannot parse, and runs none of it", function()
            local tok = helpers.registered(emu)
            local auth = "-H " .. q("Authorization: Bearer " .. tok)
            local good = { request = "POST /v1/authorization:reset HTTP/1.1\r\n\r\n" }
            local cases = {
                { good, { request = "POST http://example.com" .. CHECK .. " HTTP/1.1\r\n\r\n" } },
                { good, { request = "NOT A REQUEST LINE\r\n\r\n" } },
            }
            for _, parts in ipairs(cases) do
                local status, _, body = batch(parts, auth)
                assert.equals(400, status)
                local err = cjson.decode(body).error
                assert.equals("INVALID_ARGUMENT", err.status)
                assert.truthy(err.message:find("^Failed to parse batch request: "))
            end
            helpers.write(tmp .. "/plain", "POST " .. CHECK .. " HTTP/1.1\r\n\r\n")
            local status = curl("-X POST -H 'Content-Type: text/plain' --data-binary @" .. q(tmp .. "/plain")
                .. " " .. auth .. " " .. url("/batch"))
            assert.equals(400, status)
            status = curl("-X POST -H 'Content-Type: multipart/mixed' -d x " .. auth .. " " .. url("/batch"))
            assert.equals(400, status)
            -- nothing ran: the token still works
            assert.equals(200, (check("", tok)))
            status = curl(url("/batch"))
            assert.equals(404, status)
        end)
    end)
end)
