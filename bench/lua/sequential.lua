--- Sequential resets on one client: client:reset(token) in a loop, one
-- kept-alive connection. The same calls as bench/c/loop.c.
--   lua5.4 bench/lua/sequential.lua URL CA COUNT
--   -> {"client":"lua-sequential","calls":N,"ok":K,"seconds":S}
-- Run from the repository root with LUA_PATH="./lua/?.lua;./lua/?/init.lua;;"
-- and LUA_CPATH="build/lua5.4/?.so;;" (build/luajit/?.so under LuaJIT).
local dp = require("dataportability")
local core = require("dataportability.core")

local url, ca, count = arg[1], arg[2], tonumber(arg[3])
if not (url and ca and count) then
    io.stderr:write("usage: sequential.lua URL CA COUNT\n")
    os.exit(2)
end

local client = dp.new({ endpoint = url, ca_file = ca, retries = 0 })
local ok, first_err = 0, nil
local started = core.now()
for i = 1, count do
    local r, err = client:reset("bench-token-" .. i)
    if r == true then
        ok = ok + 1
    elseif not first_err then
        first_err = err
    end
end
local seconds = core.now() - started
client:close()

if first_err then io.stderr:write("sequential.lua: ", tostring(first_err), "\n") end
print(('{"client":"lua-sequential","calls":%d,"ok":%d,"seconds":%.6f}'):format(count, ok, seconds))
os.exit(ok == count and 0 or 1)
