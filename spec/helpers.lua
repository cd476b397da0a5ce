-- Shared by the specs: a real emulator per describe block, fresh tokens,
-- and a deep scan for a secret in anything a call returned.
local emulator = require("dataportability.emulator")
local nginx = require("dataportability.emulator.nginx")

local _M = {}

_M.SCOPE = "https://www.googleapis.com/auth/dataportability.myactivity.youtube"
_M.OTHER_SCOPE = "https://www.googleapis.com/auth/drive.readonly"
_M.LUA = os.getenv("DP_TEST_LUA") or "lua5.4"

math.randomseed(os.time() + math.floor(os.clock() * 1e6))
local counter = 0

--- A fresh, valid bearer token that no one has used.
function _M.token()
    counter = counter + 1
    return string.format("ya29.test-%d-%d-%d", os.time(), math.random(1, 1e9), counter)
end

--- Starts an emulator; the caller stops it (helpers.stop) in teardown.
function _M.start()
    return assert(emulator.start())
end

function _M.stop(emu)
    if emu then emu:stop() end
end

--- A token registered with the emulator, by default with a DP scope.
function _M.registered(emu, scopes)
    local token = _M.token()
    emu:add_token(token, scopes or { _M.SCOPE })
    return token
end

--- Options for a client that talks HTTPS to the emulator through its CA,
--- without retries: most specs look at one failure (spec/14 retries).
function _M.https(emu, extra)
    local opts = { endpoint = emu.https_endpoint, ca_file = emu.ca_file, retries = 0 }
    for k, v in pairs(extra or {}) do opts[k] = v end
    return opts
end

--- True when `secret` appears in any string, key or tostring() reachable
--- from `value`.
function _M.contains(value, secret, seen)
    seen = seen or {}
    local t = type(value)
    if t == "string" then
        return value:find(secret, 1, true) ~= nil
    elseif t == "table" and not seen[value] then
        seen[value] = true
        if tostring(value):find(secret, 1, true) then return true end
        for k, v in pairs(value) do
            if _M.contains(k, secret, seen) or _M.contains(v, secret, seen) then return true end
        end
    end
    return false
end

--- Shell and files, for the specs that drive other programs.
_M.quote = nginx.quote
_M.read = nginx.read_file

--- A command's standard output.
function _M.sh(cmd)
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    p:close()
    return out
end

function _M.write(path, data)
    assert(nginx.write_file(path, data))
end

--- A new temporary directory; the caller removes it.
function _M.tmpdir()
    return (_M.sh("mktemp -d"):gsub("%s+$", ""))
end

--- A file's MD5, base64 as Cloud Storage's x-goog-hash gives it: the
--- openssl command's, a reference apart from the code under test.
function _M.md5_of(path)
    return (_M.sh("openssl md5 -binary " .. _M.quote(path) .. " | base64"):gsub("%s+$", ""))
end

--- A file's size, or nil when it does not exist.
function _M.size_of(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local n = f:seek("end")
    f:close()
    return n
end

--- This process's resident set size, in KiB.
function _M.rss_kib()
    for line in io.lines("/proc/self/status") do
        local kib = line:match("^VmRSS:%s+(%d+)")
        if kib then return tonumber(kib) end
    end
end

--- Runs a Lua chunk in a child interpreter with extra environment
--- variables; returns its stdout and whether it exited 0.
function _M.run_lua(env, code)
    local tmp = os.tmpname()
    local f = assert(io.open(tmp, "w"))
    f:write(code)
    f:close()
    local prefix = ""
    for k, v in pairs(env) do prefix = prefix .. k .. "='" .. v .. "' " end
    local p = assert(io.popen(prefix .. _M.LUA .. " " .. tmp .. " 2>&1"))
    local out = p:read("*a")
    local ok = p:close()
    os.remove(tmp)
    return out, ok == true or ok == 0
end

return _M
