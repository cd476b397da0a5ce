-- The emulator's whole API, driven with the curl command line (as in
-- spec/20): the v1 methods, the job lifecycle, access types, the signed
-- downloads on 127.0.0.2 and the OAuth endpoints.
local cjson = require("cjson")
local helpers = require("spec.helpers")

local PREFIX = "https://www.googleapis.com/auth/dataportability."
local YOUTUBE, HISTORY = PREFIX .. "myactivity.youtube", PREFIX .. "chrome.history"
local REDIRECT = "http://127.0.0.1:9/callback"

local q = helpers.quote
local sh = helpers.sh

local function sleep(seconds) sh("sleep " .. seconds) end

-- curl: returns status, lowercased headers, body, curl's exit code.
local function curl(args)
    local out = sh("curl -s -i " .. args .. "; rc=$?; echo; echo \"curl-rc=$rc\"")
    local rc = tonumber(out:match("curl%-rc=(%d+)%s*$"))
    out = out:gsub("\ncurl%-rc=%d+%s*$", "")  -- and the newline the first echo added
    local head, body = out:match("^(.-)\r\n\r\n(.*)$")
    local headers = {}
    for name, value in (head or ""):gmatch("([%w-]+): ([^\r\n]*)") do headers[name:lower()] = value end
    return tonumber((head or ""):match("^HTTP/[%d.]+ (%d+)")), headers, body, rc
end

local function decode(body)
    local ok, v = pcall(cjson.decode, body)
    return ok and v or nil
end

local function base64_of(cmd)
    return (sh(cmd .. " | openssl base64 -A"):gsub("%s", ""))
end

describe("emulator API", function()
    local emu, tmp

    lazy_setup(function()
        emu = helpers.start()
        tmp = sh("mktemp -d"):gsub("%s", "")
    end)
    lazy_teardown(function()
        helpers.stop(emu)
        if tmp and tmp:match("^/tmp/") then sh("rm -rf " .. q(tmp)) end
    end)
    before_each(function() emu:clear() end)

    -- A v1 call: status, headers, decoded body, raw body.
    local function call(method, path, token, body, extra)
        local args = "-X " .. method .. (token and (" -H " .. q("Authorization: Bearer " .. token)) or "")
            .. (body and (" -H 'Content-Type: application/json' --data-binary " .. q(body)) or "")
            .. " " .. (extra or "") .. " " .. q(emu.endpoint .. path)
        local status, headers, raw = curl(args)
        return status, headers, decode(raw), raw
    end

    local function token(scopes, opts)
        local t = helpers.token()
        emu:add_token(t, scopes or { YOUTUBE }, opts)
        return t
    end

    local function initiate(tok, resources, extra)
        local body = { resources = resources or { "myactivity.youtube" } }
        for k, v in pairs(extra or {}) do body[k] = v end
        return call("POST", "/v1/portabilityArchive:initiate", tok, cjson.encode(body))
    end

    local function state(tok, id)
        return call("GET", "/v1/archiveJobs/" .. id .. "/portabilityArchiveState", tok)
    end

    -- A COMPLETE job with these files; returns its id and URLs.
    local function complete_job(files)
        emu:configure({ job_seconds = 0, files = files })
        local tok = token()
        local _, _, res = initiate(tok)
        local status, _, st = state(tok, res.archiveJobId)
        assert.equals(200, status)
        assert.equals("COMPLETE", st.state)
        return res.archiveJobId, st.urls, tok
    end

    describe("portabilityArchive.initiate", function()
        it("starts a one-time job", function()
            local status, headers, res = initiate(token(), { "myactivity.youtube" },
                { startTime = "2024-01-02T03:04:05.5+02:00", endTime = "2024-02-01T00:00:00Z" })
            assert.equals(200, status)
            assert.equals("application/json; charset=UTF-8", headers["content-type"])
            assert.truthy(res.archiveJobId:match("^%x+$"))
            assert.equals(32, #res.archiveJobId)
            assert.equals("ACCESS_TYPE_ONE_TIME", res.accessType)
            local job = emu:job(res.archiveJobId)
            assert.equals("2024-01-02T01:04:05.500Z", job.start_time)
            assert.equals("2024-02-01T00:00:00Z", job.export_time)
        end)

        it("refuses bad requests with Google's errors", function()
            local tok = token()
            local cases = {
                { '{}', "resources" }, { '{"resources":[]}', "resources" },
                { '{"resources":"myactivity.youtube"}', "resources" },
                { '{"resources":["myactivity.youtube"],"startTime":"2024-01-01"}', "startTime" },
                { '{"resources":["myactivity.youtube"],"startTime":"2024-02-30T00:00:00Z"}', "startTime" },
                { '{"resources":["myactivity.youtube"],"startTime":"2024-02-01T00:00:00Z",'
                    .. '"endTime":"2024-01-01T00:00:00Z"}', "startTime" },
            }
            for _, c in ipairs(cases) do
                local status, _, res = call("POST", "/v1/portabilityArchive:initiate", tok, c[1])
                assert.equals(400, status)
                assert.equals("INVALID_ARGUMENT", res.error.status)
                assert.equals("type.googleapis.com/google.rpc.BadRequest", res.error.details[1]["@type"])
                assert.equals(c[2], res.error.details[1].fieldViolations[1].field)
            end
            local status, _, res = call("POST", "/v1/portabilityArchive:initiate", tok,
                '{"resources":["myactivity.youtube"],"bogus":1}')
            assert.equals(400, status)
            assert.equals('Invalid JSON payload received. Unknown name "bogus": Cannot find field.',
                res.error.message)
            -- none of these used up the one-time scope
            assert.equals(200, (initiate(tok)))
        end)

        it("needs a valid token with a dataportability scope", function()
            local status, _, res = initiate(nil)
            assert.equals(401, status)
            assert.equals("CREDENTIALS_MISSING", res.error.details[1].reason)
            status, _, res = initiate("ya29.unknown")
            assert.equals(401, status)
            assert.equals("ACCESS_TOKEN_TYPE_UNSUPPORTED", res.error.details[1].reason)
            status, _, res = initiate(token({ helpers.OTHER_SCOPE }))
            assert.equals(403, status)
            assert.equals("ACCESS_TOKEN_SCOPE_INSUFFICIENT", res.error.details[1].reason)
            assert.equals("google.dataportability.v1.DataPortabilityService.InitiatePortabilityArchive",
                res.error.details[1].metadata.method)
        end)

        it("refuses resource groups the token has no scope for", function()
            local status, _, res = initiate(token(),
                { "myactivity.youtube", "chrome.history", "maps.reviews" })
            assert.equals(403, status)
            assert.equals("PERMISSION_DENIED", res.error.status)
            assert.truthy(res.error.message:find("chrome.history, maps.reviews", 1, true))
            assert.equals("RESOURCES_NOT_AUTHORIZED", res.error.details[1].reason)
            assert.equals("chrome.history,maps.reviews", res.error.details[1].metadata.resources)
        end)
    end)

    describe("one-time access", function()
        it("exports a group once per consent; reset and a new consent allow it again", function()
            local first = token({ YOUTUBE, HISTORY }, { user = "alice" })
            assert.equals(200, (initiate(first)))
            local status, _, res = initiate(first)
            assert.equals(403, status)
            assert.equals("PERMISSION_DENIED", res.error.status)
            assert.equals("ONE_TIME_ACCESS_EXHAUSTED", res.error.details[1].reason)
            assert.equals("dataportability.googleapis.com", res.error.details[1].domain)
            -- another group of the same consent is still available
            assert.equals(200, (initiate(first, { "chrome.history" })))
            -- a new token for the same user, without a reset: still exhausted
            local second = token({ YOUTUBE }, { user = "alice" })
            assert.equals(403, (initiate(second)))
            -- another user is not affected
            assert.equals(200, (initiate(token({ YOUTUBE }, { user = "bob" }))))

            assert.equals(200, (call("POST", "/v1/authorization:reset", second, "{}")))
            -- the reset revoked every token of alice's
            assert.equals(401, (initiate(first)))
            assert.equals(401, (initiate(second)))
            local third = token({ YOUTUBE }, { user = "alice" })
            status, _, res = initiate(third)
            assert.equals(200, status)
            assert.equals("ACCESS_TYPE_ONE_TIME", res.accessType)
        end)
    end)

    describe("time-based access", function()
        it("allows one export per group per window", function()
            local tok = token({ YOUTUBE, HISTORY }, { access_type = "TIME_BASED" })
            local status, _, res = initiate(tok)
            assert.equals(200, status)
            assert.equals("ACCESS_TYPE_TIME_BASED", res.accessType)
            status, _, res = initiate(tok)
            assert.equals(400, status)
            assert.equals("FAILED_PRECONDITION", res.error.status)
            assert.equals("TIME_BASED_EXPORT_TOO_SOON", res.error.details[1].reason)
            assert.truthy(res.error.message:find("24 hours", 1, true))
            assert.equals(200, (initiate(tok, { "chrome.history" })))
            emu:configure({ time_based_seconds = 0 })
            assert.equals(200, (initiate(tok)))
        end)

        it("makes a job one-time if any of its groups is", function()
            local tok = token({ YOUTUBE, HISTORY }, { access_type = { ["chrome.history"] = "TIME_BASED" } })
            local status, _, res = call("POST", "/v1/accessType:check", tok)
            assert.equals(200, status)
            assert.same({ oneTimeResources = { "myactivity.youtube" },
                          timeBasedResources = { "chrome.history" } }, res)
            local _, _, job = initiate(tok, { "myactivity.youtube", "chrome.history" })
            assert.equals("ACCESS_TYPE_ONE_TIME", job.accessType)
            _, _, job = initiate(token({ HISTORY }, { access_type = "TIME_BASED" }), { "chrome.history" })
            assert.equals("ACCESS_TYPE_TIME_BASED", job.accessType)
        end)
    end)

    describe("accessType.check", function()
        it("lists the token's groups by access type, omitting an empty list", function()
            local status, _, res, raw = call("POST", "/v1/accessType:check", token({ YOUTUBE, HISTORY,
                helpers.OTHER_SCOPE }), "{}")
            assert.equals(200, status)
            assert.same({ oneTimeResources = { "myactivity.youtube", "chrome.history" } }, res)
            assert.is_nil(raw:find("timeBasedResources", 1, true))
            status, _, res = call("POST", "/v1/accessType:check", token(), '{"x":1}')
            assert.equals(400, status)
            assert.equals("INVALID_ARGUMENT", res.error.status)
        end)
    end)

    describe("archive jobs", function()
        it("go from IN_PROGRESS to COMPLETE, with URLs only when COMPLETE", function()
            emu:configure({ job_seconds = 0.4 })
            local tok = token()
            local _, _, res = initiate(tok, nil, { startTime = "2024-01-01T00:00:00.120000Z" })
            local id = res.archiveJobId
            local status, _, st = state(tok, id)
            assert.equals(200, status)
            assert.equals("archiveJobs/" .. id .. "/portabilityArchiveState", st.name)
            assert.equals("IN_PROGRESS", st.state)
            assert.is_nil(st.urls)
            assert.equals("2024-01-01T00:00:00.120Z", st.startTime)
            assert.truthy(st.exportTime:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d[.%d]*Z$"))
            sleep(0.5)
            -- the id segment may be percent-encoded
            status, _, st = state(tok, ("%%%02X"):format(id:byte(1)) .. id:sub(2))
            assert.equals(200, status)
            assert.equals("COMPLETE", st.state)
            assert.equals(1, #st.urls)
            assert.truthy(st.urls[1]:find("^https://127%.0%.0%.2:" .. emu.https_port
                .. "/dataportability%-emulator/" .. id .. "/myactivity%.youtube%.zip%?X%-Goog%-Algorithm="))
            _, _, st = call("GET", "/v1/archiveJobs/" .. id .. "/portabilityArchiveState?fields=state", tok)
            assert.same({ state = "COMPLETE" }, st)
        end)

        it("are unknown (404) to other users", function()
            local tok = token()
            local _, _, res = initiate(tok)
            local status, _, err = state(token(), res.archiveJobId)
            assert.equals(404, status)
            assert.equals("NOT_FOUND", err.error.status)
            assert.equals(404, (state(tok, "0123456789abcdef0123456789abcdef")))
            assert.equals(404, (call("POST", "/v1/archiveJobs/nope:retry", tok, "{}")))
        end)

        it("retry only a FAILED job, as a new job", function()
            emu:configure({ job_seconds = 0, outcome = "FAILED" })
            local tok = token()
            local _, _, res = initiate(tok)
            local id = res.archiveJobId
            local _, _, st = state(tok, id)
            assert.equals("FAILED", st.state)
            assert.is_nil(st.urls)
            emu:configure({ outcome = "COMPLETE" })
            local status, _, retried = call("POST", "/v1/archiveJobs/" .. id .. ":retry", tok, "{}")
            assert.equals(200, status)
            assert.are_not.equal(id, retried.archiveJobId)
            assert.is_nil(retried.accessType)
            _, _, st = state(tok, retried.archiveJobId)
            assert.equals("COMPLETE", st.state)
            assert.equals(id, emu:job(retried.archiveJobId).retry_of)
            local _, _, old = state(tok, id)
            assert.equals("FAILED", old.state)
            local err
            status, _, err = call("POST", "/v1/archiveJobs/" .. retried.archiveJobId .. ":retry", tok)
            assert.equals(400, status)
            assert.equals("FAILED_PRECONDITION", err.error.status)
            assert.equals("ARCHIVE_JOB_NOT_FAILED", err.error.details[1].reason)
        end)

        it("cancel only an IN_PROGRESS job", function()
            emu:configure({ job_seconds = 600 })
            local tok = token()
            local _, _, res = initiate(tok)
            local id = res.archiveJobId
            local status, _, body = call("POST", "/v1/archiveJobs/" .. id .. ":cancel", tok, "{}")
            assert.equals(200, status)
            assert.same({}, body)
            local _, _, st = state(tok, id)
            assert.equals("CANCELLED", st.state)
            status, _, body = call("POST", "/v1/archiveJobs/" .. id .. ":cancel", tok)
            assert.equals(400, status)
            assert.equals("FAILED_PRECONDITION", body.error.status)
            assert.equals("ARCHIVE_JOB_NOT_IN_PROGRESS", body.error.details[1].reason)
        end)

        it("take a forced state from the admin API", function()
            emu:configure({ job_seconds = 600 })
            local tok = token()
            local _, _, res = initiate(tok)
            local id = res.archiveJobId
            local job = emu:set_job(id, { state = "FAILED" })
            assert.equals("FAILED", job.state)
            assert.equals("FAILED", select(3, state(tok, id)).state)
            emu:set_job(id, { state = "COMPLETE" })
            local _, _, st = state(tok, id)
            assert.equals("COMPLETE", st.state)
            assert.equals(1, #st.urls)
            assert.equals(1, #emu:jobs())
            assert.equals("myactivity.youtube", emu:job(id).resources[1])
        end)
    end)

    describe("downloads", function()
        -- GET url into file: status, lowercased headers, curl's exit code.
        local function download(url, file, extra)
            local out = sh("rm -f " .. q(file) .. "; curl -s -D - --cacert " .. q(emu.ca_file) .. " "
                .. (extra or "") .. " -o " .. q(file) .. " " .. q(url) .. "; echo \"curl-rc=$?\"")
            local headers = {}
            for name, value in out:gmatch("([%w-]+): ([^\r\n]*)") do headers[name:lower()] = value end
            return tonumber(out:match("^HTTP/[%d.]+ (%d+)")), headers, tonumber(out:match("curl%-rc=(%d+)"))
        end

        local function cat(file)
            local f = io.open(file, "rb")
            local s = f and f:read("*a") or ""
            if f then f:close() end
            return s
        end

        it("serve the files at signed URLs, with hashes, and ranges", function()
            local id, urls, tok = complete_job({ { name = "a.zip", size = 200003 },
                                                 { name = "b.bin", size = 10 } })
            assert.equals(2, #urls)
            local whole = tmp .. "/whole"
            local status, headers = download(urls[1], whole)
            assert.equals(200, status)
            assert.equals("application/zip", headers["content-type"])
            assert.equals("200003", headers["content-length"])
            assert.equals("200003", headers["x-goog-stored-content-length"])
            assert.equals("bytes", headers["accept-ranges"])
            assert.truthy(headers["etag"]:match('^"%x+"$'))
            local md5 = base64_of("openssl dgst -md5 -binary " .. q(whole))
            local crc = base64_of("luajit -e " .. q([[
                local bit = require("bit")
                local t = {}
                for i = 0, 255 do
                    local c = i
                    for _ = 1, 8 do
                        c = bit.band(c, 1) == 1 and bit.bxor(bit.rshift(c, 1), 0x82F63B78) or bit.rshift(c, 1)
                    end
                    t[i] = c
                end
                local s, c = io.read("*a"), -1
                for i = 1, #s do c = bit.bxor(t[bit.band(bit.bxor(c, s:byte(i)), 255)], bit.rshift(c, 8)) end
                c = bit.bnot(c)
                io.write(string.char(bit.band(bit.rshift(c, 24), 255), bit.band(bit.rshift(c, 16), 255),
                    bit.band(bit.rshift(c, 8), 255), bit.band(c, 255)))
            ]]) .. " < " .. q(whole))
            assert.equals("crc32c=" .. crc .. ",md5=" .. md5, headers["x-goog-hash"])

            local part = tmp .. "/part"
            status, headers = download(urls[1], part, "-H 'Range: bytes=70000-70009'")
            assert.equals(206, status)
            assert.equals("bytes 70000-70009/200003", headers["content-range"])
            assert.is_nil(headers["x-goog-hash"])
            assert.equals(sh("tail -c +70001 " .. q(whole) .. " | head -c 10 | od -An -tx1"),
                sh("od -An -tx1 " .. q(part)))
            status, headers = download(urls[1], part, "-H 'Range: bytes=-3'")
            assert.equals(206, status)
            assert.equals("bytes 200000-200002/200003", headers["content-range"])
            status, headers = download(urls[1], part, "-H 'Range: bytes=200003-'")
            assert.equals(416, status)
            assert.equals("bytes */200003", headers["content-range"])

            status, headers = download(urls[2], part)
            assert.equals(200, status)
            assert.equals("application/octet-stream", headers["content-type"])
            assert.equals("10", headers["content-length"])
            -- a fresh URL from a new poll gives the same bytes
            local _, _, st = state(tok, id)
            assert.equals(200, (download(st.urls[1], part)))
            assert.equals(cat(whole), cat(part))
        end)

        it("refuse a bad or expired signature, no signature, and an Authorization header", function()
            local _, urls = complete_job({ { name = "f.zip", size = 100 } })
            local url, out = urls[1], tmp .. "/out"
            local status, headers = download((url:gsub("X%-Goog%-Expires=3600", "X-Goog-Expires=3601")), out)
            assert.equals(403, status)
            assert.equals("application/xml; charset=UTF-8", headers["content-type"])
            assert.truthy(cat(out):find("^<%?xml .*<Error><Code>SignatureDoesNotMatch</Code>"))
            assert.equals(403, (download((url:gsub("%?.*$", "")), out)))
            assert.truthy(cat(out):find("<Code>AccessDenied</Code>", 1, true))
            assert.equals(400, (download(url, out, "-H 'Authorization: Bearer ya29.secret-token'")))
            assert.truthy(cat(out):find("<Code>InvalidArgument</Code>", 1, true))
            assert.equals(200, (download(url, out)))

            -- the log shows where each download went, and whether it carried a token
            local downloads = {}
            for _, r in ipairs(emu:requests()) do
                if r.host == "127.0.0.2:" .. emu.https_port then downloads[#downloads + 1] = r end
                assert.is_false(helpers.contains(r, "ya29.secret-token"))
            end
            assert.equals(4, #downloads)
            assert.equals("Bearer <redacted>", downloads[3].headers.authorization)
            assert.is_nil(downloads[4].headers.authorization)
            assert.truthy(downloads[4].query:find("X-Goog-Signature=<redacted>", 1, true))

            emu:configure({ url_seconds = 1 })
            _, urls = complete_job({ { name = "f.zip", size = 100 } })
            assert.truthy(urls[1]:find("X-Goog-Expires=1&", 1, true))
            sleep(1.1)
            assert.equals(400, (download(urls[1], out)))
            assert.truthy(cat(out):find("<Code>ExpiredToken</Code>", 1, true))
        end)

        it("resume with Range after a cut gives the same bytes as one download", function()
            local _, urls = complete_job({ { name = "cut.zip", size = 3 * 1048576 + 5 } })
            local whole, part, rest = tmp .. "/whole", tmp .. "/part", tmp .. "/rest"
            assert.equals(200, (download(urls[1], whole)))
            emu:set_fault({ action = "cut", after_bytes = 1234567,
                            path_prefix = "/dataportability-emulator/" })
            local status, headers, rc = download(urls[1], part)
            assert.equals(200, status)
            assert.equals(tostring(3 * 1048576 + 5), headers["content-length"])
            assert.are_not.equal(0, rc)
            assert.equals(1234567, #cat(part))
            -- the cut applies to a ranged answer too (over HTTP/1.1 here)
            emu:set_fault({ action = "cut", after_bytes = 1000, path_prefix = "/dataportability-emulator/" })
            status, _, rc = download(urls[1], rest, "--http1.1 -H 'Range: bytes=1234567-'")
            assert.equals(206, status)
            assert.equals(18, rc)  -- partial file
            assert.equals(1000, #cat(rest))
            assert.equals(206, (download(urls[1], rest, "-H 'Range: bytes=1234567-'")))
            assert.equals("same\n", sh("cat " .. q(part) .. " " .. q(rest) .. " | cmp - " .. q(whole)
                .. " && echo same"))
            assert.equals(sh("md5sum < " .. q(whole)), sh("cat " .. q(part) .. " " .. q(rest) .. " | md5sum"))
        end)
    end)

    describe("OAuth", function()
        local function add_client(extra)
            local c = { client_id = "client-" .. helpers.token(), client_secret = "s3cret",
                        redirect_uris = { REDIRECT } }
            for k, v in pairs(extra or {}) do c[k] = v end
            emu:add_client(c)
            return c
        end

        local function challenge(verifier)
            return (sh("printf %s " .. q(verifier) .. " | openssl dgst -sha256 -binary | openssl base64 -A"
                .. " | tr '+/' '-_' | tr -d '='"):gsub("%s", ""))
        end

        -- The consent step: the Location it redirects to.
        local function consent(client, scopes, extra)
            local query = "response_type=code&client_id=" .. client.client_id
                .. "&redirect_uri=" .. REDIRECT:gsub(":", "%%3A"):gsub("/", "%%2F")
                .. "&scope=" .. table.concat(scopes, "%20") .. "&state=st-1" .. (extra or "")
            local status, headers = curl(q(emu.endpoint .. "/o/oauth2/v2/auth?" .. query))
            return status, headers.location
        end

        local function form(fields)
            local parts = {}
            for _, kv in ipairs(fields) do
                parts[#parts + 1] = "--data-urlencode " .. q(kv[1] .. "=" .. kv[2])
            end
            local status, _, body = curl(table.concat(parts, " ") .. " " .. q(emu.endpoint .. "/token"))
            return status, decode(body)
        end

        local function unescape(s)
            return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
        end

        it("exchanges a code with PKCE, refreshes, and revokes", function()
            local client = add_client({ access_type = "TIME_BASED" })
            local verifier = "v-" .. string.rep("abcdefgh", 6)
            local status, location = consent(client, { YOUTUBE, HISTORY },
                "&access_type=offline&code_challenge_method=S256&code_challenge=" .. challenge(verifier))
            assert.equals(302, status)
            assert.truthy(location:find("^" .. REDIRECT:gsub("%p", "%%%0") .. "%?state=st%-1&code=4%%2F"))
            local code = unescape(location:match("code=([^&]+)"))

            local function exchange(c, v)
                return form({ { "grant_type", "authorization_code" }, { "code", c },
                    { "redirect_uri", REDIRECT }, { "client_id", client.client_id },
                    { "client_secret", client.client_secret }, { "code_verifier", v } })
            end
            local res
            status, res = exchange(code, verifier .. "x")
            assert.equals(400, status)
            assert.equals("invalid_grant", res.error)
            assert.equals("Invalid code verifier.", res.error_description)
            -- a code is single-use, even after a failed exchange
            status, res = exchange(code, verifier)
            assert.equals(400, status)
            assert.equals("invalid_grant", res.error)

            local _
            _, location = consent(client, { YOUTUBE, HISTORY },
                "&access_type=offline&code_challenge_method=S256&code_challenge=" .. challenge(verifier))
            status, res = exchange(unescape(location:match("code=([^&]+)")), verifier)
            assert.equals(200, status)
            assert.equals("Bearer", res.token_type)
            assert.equals(3600, res.expires_in)
            assert.equals(YOUTUBE .. " " .. HISTORY, res.scope)
            assert.truthy(res.refresh_token)
            local checked
            status, _, checked = call("POST", "/v1/accessType:check", res.access_token)
            assert.equals(200, status)
            assert.same({ timeBasedResources = { "myactivity.youtube", "chrome.history" } }, checked)

            local refresh = res.refresh_token
            local function refresh_with(secret)
                return form({ { "grant_type", "refresh_token" }, { "refresh_token", refresh },
                    { "client_id", client.client_id }, { "client_secret", secret } })
            end
            status, res = refresh_with("wrong")
            assert.equals(401, status)
            assert.equals("invalid_client", res.error)
            status, res = refresh_with(client.client_secret)
            assert.equals(200, status)
            assert.is_nil(res.refresh_token)
            assert.equals(200, (call("POST", "/v1/accessType:check", res.access_token)))

            local rstatus, _, rbody = curl("--data-urlencode " .. q("token=" .. refresh) .. " "
                .. q(emu.endpoint .. "/revoke"))
            assert.equals(200, rstatus)
            assert.same({}, decode(rbody))
            -- revoking the refresh token revoked its grant's access tokens too
            assert.equals(401, (call("POST", "/v1/accessType:check", res.access_token)))
            status, res = refresh_with(client.client_secret)
            assert.equals(400, status)
            assert.equals("invalid_grant", res.error)
            rstatus, _, rbody = curl("-d token=nope " .. q(emu.endpoint .. "/revoke"))
            assert.equals(400, rstatus)
            assert.equals("invalid_token", decode(rbody).error)

            -- no secret reached the request log
            for _, r in ipairs(emu:requests()) do
                assert.is_false(helpers.contains(r, refresh))
                assert.is_false(helpers.contains(r, client.client_secret))
                assert.is_false(helpers.contains(r, verifier))
            end
        end)

        it("refuses unknown clients and redirect URIs, and mixed scopes", function()
            local client = add_client({ consent = "deny" })
            local status = consent({ client_id = "nobody" }, { YOUTUBE })
            assert.equals(401, status)
            local location
            status, location = consent(client, { YOUTUBE, "https://www.googleapis.com/auth/drive" })
            assert.equals(302, status)
            assert.truthy(location:find("error=invalid_scope", 1, true))
            local _
            _, location = consent(client, { YOUTUBE })
            assert.truthy(location:find("?error=access_denied&state=st-1", 1, true))
            assert.equals(400, (consent(add_client({ redirect_uris = { "http://other/" } }), { YOUTUBE })))
            local res
            status, res = form({ { "grant_type", "authorization_code" }, { "code", "4/nope" },
                { "client_id", "nobody" }, { "client_secret", "x" } })
            assert.equals(401, status)
            assert.equals("invalid_client", res.error)
        end)

        it("mints access tokens from a registered refresh token; they expire", function()
            local refresh = "1//" .. helpers.token()
            emu:add_token(nil, { YOUTUBE }, { refresh_token = refresh, expires_in = 1, user = "carol" })
            local status, res = form({ { "grant_type", "refresh_token" }, { "refresh_token", refresh },
                { "client_id", "any" }, { "client_secret", "any" } })
            assert.equals(200, status)
            assert.equals(1, res.expires_in)
            local at = res.access_token
            assert.equals(200, (call("POST", "/v1/accessType:check", at)))
            sleep(1.1)
            local _, headers, err = call("POST", "/v1/accessType:check", at)
            assert.equals(401, err.error.code)
            assert.equals("UNAUTHENTICATED", err.error.status)
            assert.equals("ACCESS_TOKEN_EXPIRED", err.error.details[1].reason)
            assert.truthy(headers["www-authenticate"]:find('error="invalid_token"', 1, true))
            -- the refresh token still works, until a reset revokes the user's tokens
            local again
            status, again = form({ { "grant_type", "refresh_token" }, { "refresh_token", refresh },
                { "client_id", "any" }, { "client_secret", "any" } })
            assert.equals(200, status)
            assert.equals(200, (call("POST", "/v1/authorization:reset", again.access_token)))
            status, res = form({ { "grant_type", "refresh_token" }, { "refresh_token", refresh },
                { "client_id", "any" }, { "client_secret", "any" } })
            assert.equals(400, status)
            assert.equals("invalid_grant", res.error)
        end)
    end)

    -- A web page can reach loopback: a "simple" cross-origin request (a form,
    -- or fetch with text/plain) needs no preflight, and DNS rebinding makes a
    -- page's own name resolve to 127.0.0.1. So admin writes need the JSON
    -- type, and every admin request a loopback Host with the port it came in on.
    describe("admin API guard", function()
        local RESET, JSON = "/v1/authorization:reset", "application/json"

        -- "-H 'Name: value'"; "" for value: curl sends no such header.
        local function header(name, value)
            return " -H " .. q(name .. ":" .. (value ~= "" and " " .. value or ""))
        end

        -- An admin request by the curl command line: status, decoded body, raw body.
        -- o.type / o.host: that header ("" sends none); o.body; o.https: "2" or
        -- "1.1", to the HTTPS port; o.extra: more curl arguments.
        local function admin(method, path, o)
            o = o or {}
            local base, args = emu.endpoint, "-X " .. method .. " " .. (o.extra or "")
            if o.https then
                base = emu.https_endpoint
                args = args .. " --cacert " .. q(emu.ca_file) .. " --http" .. o.https
            end
            if o.type then args = args .. header("Content-Type", o.type) end
            if o.host then args = args .. header("Host", o.host) end
            if o.body then args = args .. " --data-binary " .. q(o.body) end
            local status, _, raw = curl(args .. " " .. q(base .. "/emulator/v1" .. path))
            return status, decode(raw) or {}, raw
        end

        local function token_body(tok)
            return cjson.encode({ token = tok, scopes = { YOUTUBE } })
        end

        local function works(tok) return (call("POST", RESET, tok)) == 200 end

        it("refuses a write without the JSON Content-Type (415), and changes nothing", function()
            for _, t in ipairs({ "text/plain", "text/plain;charset=UTF-8",
                                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "",
                                 "text/plain; application/json", "application/json-seq", "application/jsonx",
                                 "application/json, text/plain" }) do
                local tok = helpers.token()
                local status, res = admin("POST", "/tokens", { type = t, body = token_body(tok) })
                assert.equals(415, status, t)
                assert.truthy(tostring(res.error):find("Content-Type: application/json", 1, true), t)
                assert.is_false(works(tok), t)
            end
            -- a PUT: the configuration stays as it was
            assert.equals(415, (admin("PUT", "/config", { type = "text/plain", body = '{"job_seconds":7}' })))
            assert.equals(1, emu:config().job_seconds)
        end)

        it("refuses bodiless writes without it: reset, clearing faults and the log", function()
            local tok = token()
            emu:set_fault({ action = "status", status = 503, path = "/nowhere" })
            assert.equals(200, (call("POST", "/v1/accessType:check", tok)))
            for _, w in ipairs({ { "POST", "/reset" }, { "DELETE", "/state" }, { "DELETE", "/faults" },
                                 { "DELETE", "/requests" } }) do
                for _, t in ipairs({ "", "text/plain" }) do
                    assert.equals(415, (admin(w[1], w[2], { type = t })), w[1] .. " " .. w[2] .. " " .. t)
                end
            end
            assert.is_true(works(tok))
            assert.equals(1, #select(2, admin("GET", "/faults")).faults)
            assert.equals(2, #emu:requests())
        end)

        it("takes application/json with parameters, and an empty body for a bodiless write", function()
            local tok = helpers.token()
            assert.equals(200, (admin("POST", "/tokens",
                { type = "Application/JSON ; charset=utf-8", body = token_body(tok) })))
            assert.equals(200, (admin("GET", "/requests")))  -- a read needs no Content-Type
            assert.equals(200, (admin("POST", "/reset", { type = JSON })))
            assert.is_false(works(tok))
        end)

        it("refuses a Host that is not loopback with this port (403), for writes and for reads", function()
            local port = emu.http_port
            local kept = token()
            assert.equals(200, (call("POST", "/v1/accessType:check", kept)))
            local bad = {
                "evil.example", "evil.example:" .. port, "127.0.0.1.evil.example",
                "127.0.0.1.evil.example:" .. port, "localhost.evil.example",
                "localhost.evil.example:" .. port, "127.0.0.1:" .. emu.https_port,
                "localhost:" .. emu.https_port, "[::1]:1", "127.0.0.1:", "128.0.0.1:" .. port,
                "127.0.0.256:" .. port, "0.0.0.0:" .. port, "127.1:" .. port, "[::ffff:127.0.0.1]:" .. port,
                "localhost.:" .. port, "localhost:" .. port .. "@evil.example",
            }
            for _, host in ipairs(bad) do
                local tok = helpers.token()
                local status, res = admin("POST", "/tokens",
                    { host = host, type = JSON, body = token_body(tok) })
                assert.equals(403, status, host)
                assert.truthy(tostring(res.error):find("Host", 1, true), host)
                assert.is_false(works(tok), host)
                local raw
                status, res, raw = admin("GET", "/requests", { host = host })
                assert.equals(403, status, host)
                assert.is_nil(res.requests)
                assert.falsy(raw:find("/v1/", 1, true))
                assert.equals(403, (admin("POST", "/reset", { host = host, type = JSON })), host)
                assert.equals(403, (admin("GET", "/health", { host = host })), host)
            end
            -- no Host at all (HTTP/1.0)
            assert.equals(403, (admin("GET", "/requests", { host = "", extra = "-0" })))
            assert.equals(403, (admin("POST", "/reset", { host = "", type = JSON, extra = "-0" })))
            assert.is_true(works(kept))
        end)

        it("accepts 127.0.0.0/8, [::1] and localhost, without a port or with this one", function()
            local port = emu.http_port
            for _, host in ipairs({ "127.0.0.1", "127.0.0.1:" .. port, "127.1.2.3:" .. port,
                                    "localhost", "localhost:" .. port, "LocalHost:" .. port, "[::1]",
                                    "[::1]:" .. port }) do
                assert.equals(200, (admin("GET", "/health", { host = host })), host)
                assert.equals(200, (admin("POST", "/reset", { host = host, type = JSON })), host)
            end
        end)

        it("guards the HTTPS port the same way, over HTTP/2 and HTTP/1.1", function()
            for _, v in ipairs({ "2", "1.1" }) do
                assert.equals(200, (admin("GET", "/health", { https = v })), v)
                for _, host in ipairs({ "evil.example", "127.0.0.1.evil.example:" .. emu.https_port,
                                        "localhost:" .. emu.http_port }) do
                    local what = v .. " " .. host
                    assert.equals(403, (admin("GET", "/requests", { https = v, host = host })), what)
                    local tok = helpers.token()
                    assert.equals(403, (admin("POST", "/tokens",
                        { https = v, host = host, type = JSON, body = token_body(tok) })), what)
                    assert.is_false(works(tok), what)
                end
                local tok = helpers.token()
                assert.equals(415, (admin("POST", "/tokens",
                    { https = v, type = "text/plain", body = token_body(tok) })), v)
                assert.is_false(works(tok), v)
                assert.equals(200, (admin("POST", "/tokens", { https = v, type = JSON,
                    host = "127.0.0.1:" .. emu.https_port, body = token_body(tok) })), v)
                assert.is_true(works(tok), v)
            end
        end)

        it("leaves the admin client working, bodiless writes included", function()
            local tok = token()
            emu:set_fault({ action = "status", status = 503, path = "/nowhere" })
            assert.is_true(emu:clear_faults())
            assert.equals(0, #select(2, admin("GET", "/faults")).faults)
            assert.is_true(works(tok))
            assert.is_true(emu:clear_requests())
            assert.equals(0, #emu:requests())
            assert.equals(5, emu:configure({ job_seconds = 5 }).job_seconds)
            local by_name = require("dataportability.emulator").admin("localhost:" .. emu.http_port)
            assert.is_true(by_name:clear())
            assert.equals(1, emu:config().job_seconds)
        end)
    end)
end)
