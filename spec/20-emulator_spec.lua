-- The emulator on its own, driven with the curl command line (not the core),
-- so a fault in the core cannot hide a fault in the emulator.
local emulator = require("dataportability.emulator")
local cjson = require("cjson")

local SCOPE = "https://www.googleapis.com/auth/dataportability.myactivity.youtube"
local RESET = "/v1/authorization:reset"

-- curl: returns status, lowercased headers, body, curl's exit code.
local function curl(args)
    local p = assert(io.popen("curl -s -i " .. args .. "; rc=$?; echo; echo \"curl-rc=$rc\""))
    local out = p:read("*a")
    p:close()
    local rc = tonumber(out:match("curl%-rc=(%d+)%s*$"))
    out = out:gsub("\ncurl%-rc=%d+%s*$", ""):gsub("\n$", "")
    local head, body = out:match("^(.-)\r\n\r\n(.*)$")
    local headers = {}
    for name, value in (head or ""):gmatch("([%w-]+): ([^\r\n]*)") do headers[name:lower()] = value end
    return tonumber((head or ""):match("^HTTP/[%d.]+ (%d+)")), headers, body, rc
end

describe("emulator", function()
    local emu

    lazy_setup(function() emu = assert(emulator.start()) end)
    lazy_teardown(function() if emu then emu:stop() end end)
    before_each(function() emu:clear() end)

    local function reset(token, extra)
        local auth = token and (" -H 'Authorization: Bearer " .. token .. "'") or ""
        return curl("-X POST" .. auth .. " " .. (extra or "") .. " '" .. emu.endpoint .. RESET .. "'")
    end

    it("answers health over HTTP, HTTPS with HTTP/2, and HTTPS with HTTP/1.1", function()
        assert.equals(200, (curl(emu.endpoint .. "/emulator/v1/health")))
        local https = "--cacert '" .. emu.ca_file .. "' " .. emu.https_endpoint .. "/emulator/v1/health"
        local p = io.popen("curl -s -o /dev/null -w '%{http_version}' --http2 " .. https
            .. "; echo; curl -s -o /dev/null -w '%{http_version}' --http1.1 " .. https)
        assert.equals("2\n1.1", p:read("*a"))
        p:close()
    end)

    it("resets a registered token once, then rejects it", function()
        emu:add_token("tok-emu-spec-1", { SCOPE })
        local status, _, body = reset("tok-emu-spec-1", "-H 'Content-Type: application/json' -d '{}'")
        assert.equals(200, status)
        assert.same({}, cjson.decode(body))
        local status2, headers, body2 = reset("tok-emu-spec-1")
        assert.equals(401, status2)
        assert.equals('Bearer realm="https://accounts.google.com/", error="invalid_token"',
            headers["www-authenticate"])
        local err = cjson.decode(body2).error
        assert.equals("UNAUTHENTICATED", err.status)
        assert.equals("ACCESS_TOKEN_TYPE_UNSUPPORTED", err.details[1].reason)
    end)

    it("gives Google's errors for a missing token, a missing scope and a bad body", function()
        local status, headers, body = reset(nil)
        assert.equals(401, status)
        assert.equals('Bearer realm="https://accounts.google.com/"', headers["www-authenticate"])
        assert.equals("CREDENTIALS_MISSING", cjson.decode(body).error.details[1].reason)
        assert.equals("application/json; charset=UTF-8", headers["content-type"])

        emu:add_token("tok-emu-spec-2", { "https://www.googleapis.com/auth/drive" })
        status, headers = reset("tok-emu-spec-2")
        assert.equals(403, status)
        assert.truthy(headers["www-authenticate"]:find('error="insufficient_scope"', 1, true))

        emu:add_token("tok-emu-spec-3", { SCOPE })
        local _
        status, _, body = reset("tok-emu-spec-3", "-d '{\"force\":true}'")
        assert.equals(400, status)
        local err = cjson.decode(body).error
        assert.equals('Invalid JSON payload received. Unknown name "force": Cannot find field.', err.message)
        assert.equals("type.googleapis.com/google.rpc.BadRequest", err.details[1]["@type"])
    end)

    it("injects faults in order, for `count` requests", function()
        emu:set_fault({ action = "status", status = 503, retry_after = "2" })
        emu:set_fault({ action = "drop" })
        local status, headers, body = reset(nil)
        assert.equals(503, status)
        assert.equals("2", headers["retry-after"])
        assert.equals("UNAVAILABLE", cjson.decode(body).error.status)
        local _, _, _, rc = reset(nil)
        assert.equals(52, rc)  -- empty reply from server
        assert.equals(401, (reset(nil)))
    end)

    it("drop with after: the method takes effect, then the connection closes without a byte", function()
        emu:add_token("tok-emu-spec-5", { SCOPE })
        emu:set_fault({ action = "drop", after = true, path = RESET })
        local p = io.popen("curl -s -i -X POST -H 'Authorization: Bearer tok-emu-spec-5' '"
            .. emu.endpoint .. RESET .. "'; echo \"curl-rc=$?\"")
        local out = p:read("*a")
        p:close()
        assert.equals("curl-rc=52\n", out) -- an empty reply: not even a status line
        assert.equals(401, (reset("tok-emu-spec-5"))) -- the lost reset was applied

        emu:add_token("tok-emu-spec-6", { SCOPE })
        local initiate = "/v1/portabilityArchive:initiate"
        emu:set_fault({ action = "drop", after = true, path = initiate })
        local _, _, _, rc = curl("-X POST -H 'Authorization: Bearer tok-emu-spec-6' "
            .. "-H 'Content-Type: application/json' -d '{\"resources\":[\"myactivity.youtube\"]}' '"
            .. emu.endpoint .. initiate .. "'")
        assert.equals(52, rc)
        local jobs = emu:jobs()
        assert.equals(1, #jobs)
        assert.equals("IN_PROGRESS", jobs[1].state)
        assert.equals(3, #emu:requests()) -- the requests whose answers were lost are logged
    end)

    it("refuses a drop rule whose after is not a boolean", function()
        assert.has_error(function() emu:set_fault({ action = "drop", after = "yes" }) end)
    end)

    it("logs /v1 requests with the token redacted, and keeps it out of its logs", function()
        emu:add_token("tok-emu-spec-4", { SCOPE })
        reset("tok-emu-spec-4")
        local log = emu:requests()
        assert.equals(1, #log)
        assert.equals("POST", log[1].method)
        assert.equals(RESET, log[1].path)
        assert.equals("Bearer <redacted>", log[1].headers.authorization)
        for _, name in ipairs({ "/logs/access.log", "/logs/error.log" }) do
            local f = io.open(emu.dir .. name)
            if f then
                assert.is_nil(f:read("*a"):find("tok-emu-spec-4", 1, true))
                f:close()
            end
        end
    end)

    it("stops its own nginx and removes its directory, idempotently", function()
        local other = assert(emulator.start())
        assert.are_not.equal(emu.pid, other.pid)
        assert.is_true(other:running())
        assert.is_true(other:stop())
        assert.is_true(other:stop())
        assert.is_false(other:running())
        assert.is_nil(io.open(other.dir .. "/nginx.pid"))
        assert.equals(200, (curl(emu.endpoint .. "/emulator/v1/health")))
    end)
end)
