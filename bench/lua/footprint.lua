--- Footprint: the time `require("dataportability")` takes, the memory of a
-- client, and RSS on one client as calls go by (it must stay flat).
--   lua5.4 bench/lua/footprint.lua URL CA [CALLS]     (CALLS: 100000)
-- Each measurement runs in a fresh process of the same interpreter (this
-- script with a PART argument), so that memory one of them freed cannot
-- hide what the next one takes. Prints JSON lines:
--   {"measure":"require","runs":20,"cpu_ms":M,"process_ms":P,"empty_process_ms":E}
--   {"measure":"rss","calls":N,"rss_kib":R,"lua_kib":L}   one client, N = 0, 1, CALLS/10, /2, CALLS
--   {"measure":"client","clients":1000,"lua_kib":L,"rss_kib":R}            per client, new
--   {"measure":"connected_client","clients":100,"lua_kib":L,"rss_kib":R}   after one reset
local url, ca, calls, part = arg[1], arg[2], tonumber(arg[3] or 100000), arg[4]
if not (url and ca and calls) then
    io.stderr:write("usage: footprint.lua URL CA [CALLS]\n")
    os.exit(2)
end
local LUA = arg[-1] or "lua5.4"

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function run(cmd)
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    local ok = p:close()
    return out, ok
end

local function emit(fmt, ...) print(fmt:format(...)); io.stdout:flush() end

if not part then
    -- require: cpu_ms is os.clock() around the require inside a fresh
    -- process; process_ms and empty_process_ms are wall times of a whole
    -- process with and without it.
    local core = require("dataportability.core")
    local function median(t)
        table.sort(t)
        local n = #t
        return n % 2 == 1 and t[(n + 1) / 2] or (t[n / 2] + t[n / 2 + 1]) / 2
    end
    local probe = "local t = os.clock() require('dataportability') io.write(os.clock() - t)"
    local cpu, with, without = {}, {}, {}
    for i = 1, 20 do
        local t = core.now()
        cpu[i] = tonumber((run(quote(LUA) .. " -e " .. quote(probe)))) * 1000
        with[i] = (core.now() - t) * 1000
        t = core.now()
        run(quote(LUA) .. " -e ''")
        without[i] = (core.now() - t) * 1000
    end
    emit('{"measure":"require","runs":20,"cpu_ms":%.2f,"process_ms":%.2f,"empty_process_ms":%.2f}',
        median(cpu), median(with), median(without))
    local failed = false
    for _, p in ipairs({ "rss", "client", "connected_client" }) do
        local out, ok = run(table.concat({ quote(LUA), quote(arg[0]), quote(url), quote(ca), calls, p }, " "))
        io.write(out)
        failed = failed or not ok
    end
    os.exit(failed and 1 or 0)
end

local dp = require("dataportability")
local opts = { endpoint = url, ca_file = ca, retries = 0 }
local PAGE_KIB = (tonumber((run("getconf PAGESIZE 2>/dev/null"))) or 4096) / 1024

-- Lua heap and RSS (from /proc/self/statm) after a full collection.
local function measure()
    collectgarbage()
    collectgarbage()
    local f = assert(io.open("/proc/self/statm"))
    local resident = f:read("*l"):match("^%d+%s+(%d+)")
    f:close()
    return collectgarbage("count"), tonumber(resident) * PAGE_KIB
end

if part == "rss" then
    -- One client when new, after its first call (connected), and after 10k,
    -- 50k and 100k calls (scaled to CALLS).
    local client = dp.new(opts)
    local marks = { 0, 1, math.floor(calls / 10), math.floor(calls / 2), calls }
    local done = 0
    for _, mark in ipairs(marks) do
        while done < mark do
            done = done + 1
            assert(client:reset("bench-token-" .. done))
        end
        local lua_kib, rss = measure()
        emit('{"measure":"rss","calls":%d,"rss_kib":%d,"lua_kib":%.1f}', done, rss, lua_kib)
    end
    client:close()
elseif part == "client" or part == "connected_client" then
    -- Many clients kept alive, new or holding their connection.
    local connect = part == "connected_client"
    local n = connect and 100 or 1000
    if connect then assert(dp.new(opts):reset("bench-token-0")) end -- TLS and CA set up once
    local lua0, rss0 = measure()
    local clients = {}
    for i = 1, n do
        clients[i] = dp.new(opts)
        if connect then assert(clients[i]:reset("bench-token-" .. i)) end
    end
    local lua1, rss1 = measure()
    emit('{"measure":"%s","clients":%d,"lua_kib":%.2f,"rss_kib":%.2f}',
        part, n, (lua1 - lua0) / n, (rss1 - rss0) / n)
    for i = 1, n do clients[i]:close() end
else
    io.stderr:write("footprint.lua: unknown part ", part, "\n")
    os.exit(2)
end
