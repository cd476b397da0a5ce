-- Soak: many resets against the emulator on one client, then many
-- short-lived clients; file descriptors and RSS must stay flat.
--   lua5.4 scripts/soak.lua [RESETS [CLIENTS [SECONDS]]]   (defaults 100000 1000 300)
-- from the repository root (it uses spec/helpers.lua).
-- Prints the figures; exits 1 when a limit is crossed or the time box ends first.
local dp = require("dataportability")
local core = require("dataportability.core")
local emulator = require("dataportability.emulator")
local rss_kib = require("spec.helpers").rss_kib

local RESETS, CLIENTS = tonumber(arg[1]) or 100000, tonumber(arg[2]) or 1000
local SECONDS = tonumber(arg[3]) or 300
local FD_SLACK, RSS_SLACK_KIB = 2, 4096

local function fds()
    -- /proc/self in the shell would be the shell: name this process
    local f = io.open("/proc/self/stat")
    local pid = f:read("*l"):match("^%d+")
    f:close()
    local p = io.popen("ls /proc/" .. pid .. "/fd | wc -l")
    local n = tonumber(p:read("*l"))
    p:close()
    return n
end

local emu = assert(emulator.start())
local failed, lines = false, {}
local function report(fmt, ...)
    lines[#lines + 1] = fmt:format(...)
    print(lines[#lines])
end

local ok, err = pcall(function()
    local opts = { endpoint = emu.https_endpoint, ca_file = emu.ca_file, retries = 0 }
    local token = "ya29.soak-unknown" -- answered 401: a whole request and answer each time
    local deadline = core.now() + SECONDS

    local c = dp.new(opts)
    for _ = 1, 1000 do c:reset(token) end -- warm up: connection, allocator, caches
    collectgarbage()
    local fd0, rss0, started = fds(), rss_kib(), core.now()
    local done = 0
    while done < RESETS and core.now() < deadline do
        local r, e = c:reset(token)
        assert(not r and e.http_status == 401, "unexpected answer")
        done = done + 1
    end
    local took = core.now() - started
    collectgarbage()
    local fd1, rss1 = fds(), rss_kib()
    c:close()
    report("one client:  %d resets in %.1f s (%.0f/s); fds %d -> %d; RSS %d -> %d KiB",
        done, took, done / took, fd0, fd1, rss0, rss1)
    failed = failed or done < RESETS or fd1 - fd0 > FD_SLACK or rss1 - rss0 > RSS_SLACK_KIB

    started = core.now()
    local made = 0
    while made < CLIENTS and core.now() < deadline do
        local short = dp.new(opts)
        short:reset(token)
        short:close()
        made = made + 1
    end
    took = core.now() - started
    collectgarbage()
    local fd2, rss2 = fds(), rss_kib()
    report("new clients: %d clients in %.1f s (%.0f/s); fds %d -> %d; RSS %d -> %d KiB",
        made, took, made / took, fd1, fd2, rss1, rss2)
    failed = failed or made < CLIENTS or fd2 - fd1 > FD_SLACK or rss2 - rss1 > RSS_SLACK_KIB
end)
emu:stop()
if not ok then
    io.stderr:write("soak: ", tostring(err), "\n")
    os.exit(1)
end
print(failed and ("soak: FAILED (limits: fds +%d, RSS +%d KiB)"):format(FD_SLACK, RSS_SLACK_KIB)
    or "soak: ok")
os.exit(failed and 1 or 0)
