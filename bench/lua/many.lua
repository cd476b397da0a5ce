--- Concurrent resets: client:reset_many(tokens, {concurrency = C}) on one
-- client. The same calls as bench/c/multi.c.
--   lua5.4 bench/lua/many.lua URL CA COUNT CONCURRENCY
--   -> {"client":"lua-reset_many","calls":N,"ok":K,"seconds":S}
-- reset_many returns a list with, per token, true or an error table.
local dp = require("dataportability")
local core = require("dataportability.core")

local url, ca, count, concurrency = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4])
if not (url and ca and count and concurrency) then
    io.stderr:write("usage: many.lua URL CA COUNT CONCURRENCY\n")
    os.exit(2)
end

local client = dp.new({ endpoint = url, ca_file = ca, retries = 0 })
if type(client.reset_many) ~= "function" then
    io.stderr:write("many.lua: client.reset_many does not exist in this build\n")
    os.exit(1)
end

local tokens = {}
for i = 1, count do tokens[i] = "bench-token-" .. i end

local started = core.now()
local results, err = client:reset_many(tokens, { concurrency = concurrency })
local seconds = core.now() - started
client:close()
if type(results) ~= "table" then
    io.stderr:write("many.lua: reset_many returned no list: ", tostring(err), "\n")
    os.exit(1)
end

local ok, first_err = 0, nil
for i = 1, count do
    if results[i] == true then
        ok = ok + 1
    elseif not first_err then
        first_err = results[i]
    end
end
if first_err ~= nil then io.stderr:write("many.lua: ", tostring(first_err), "\n") end
print(('{"client":"lua-reset_many","calls":%d,"ok":%d,"seconds":%.6f}'):format(count, ok, seconds))
os.exit(ok == count and 0 or 1)
