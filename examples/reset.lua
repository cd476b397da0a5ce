-- Resets a Data Portability authorization: the last step of an export, once
-- every job is finished and every file downloaded. Then shows the error
-- table of a second reset with the same token, which is revoked by now.
--
--   Against Google:        DATAPORTABILITY_TOKEN=ya29... lua5.4 examples/reset.lua
--   Against the emulator:  make demo
--                          (or: eval "$(bin/dataportability-emulator start)"; lua5.4 examples/reset.lua)
local dp = require("dataportability")
local cjson = require("cjson")

local token = os.getenv("DATAPORTABILITY_TOKEN")
local opts = {}

local emulator_host = os.getenv("DATAPORTABILITY_EMULATOR_HOST")
if emulator_host then
    -- HTTPS with the emulator's own CA, as one would talk to Google.
    opts.endpoint = os.getenv("DATAPORTABILITY_EMULATOR_HTTPS")
    opts.ca_file = os.getenv("DATAPORTABILITY_EMULATOR_CA")
    if not token then
        token = "ya29.demo-" .. os.time()
        require("dataportability.emulator").admin("http://" .. emulator_host):add_token(token,
            { "https://www.googleapis.com/auth/dataportability.myactivity.youtube" })
        print("registered a demo token with the emulator at " .. opts.endpoint)
    end
end
if not token then
    io.stderr:write("set DATAPORTABILITY_TOKEN to an access token with a dataportability scope\n")
    os.exit(2)
end

local client = dp.new(opts)
local ok, err = client:reset(token)
if not ok then
    io.stderr:write(tostring(err), "\n")
    os.exit(1)
end
print("reset: ok (tokens revoked, exhausted scopes reset)")

ok, err = client:reset(token)
client:close()
assert(not ok, "a revoked token must be refused")
print("second reset: " .. tostring(err))
print("its error table:")
local keys = {}
for k in pairs(err) do keys[#keys + 1] = k end
table.sort(keys)
for _, k in ipairs(keys) do
    local v = err[k]
    print(("  %-12s %s"):format(k, type(v) == "table" and cjson.encode(v) or tostring(v)))
end
