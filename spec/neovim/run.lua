-- Runs inside headless Neovim, started by spec/50-neovim_spec.lua; writes
-- what it saw as JSON to $DP_RESULT, then quits.
package.path = os.getenv("DP_LPATH") .. ";" .. package.path
package.cpath = os.getenv("DP_CPATH") .. ";" .. package.cpath
local cjson = require("cjson")
local dp = require("dataportability")
local uv = vim.loop

local opts = { endpoint = os.getenv("DP_ENDPOINT"), ca_file = os.getenv("DP_CA") }
local out = {}

local function plain(err)
    if not err then return nil end
    return { kind = err.kind, status = err.status, reason = err.reason, http_status = err.http_status,
             message = err.message, retryable = err.retryable, text = tostring(err) }
end

local function run()
    -- A slow reset: the emulator answers after a delay; a timer must keep
    -- firing meanwhile, and the callback must be allowed to call the API.
    local ticks = 0
    local ticker = uv.new_timer()
    ticker:start(10, 10, function() ticks = ticks + 1 end)
    local client = dp.new(opts)
    local slow
    local started = uv.hrtime()
    client:reset_async(os.getenv("DP_TOKEN_SLOW"), function(ok, err)
        local api_ok = pcall(vim.api.nvim_buf_set_lines, 0, 0, -1, false, { "reset done" })
        slow = { ok = ok, err = plain(err), fast = vim.in_fast_event(), api_ok = api_ok }
    end)
    out.returned_ms = (uv.hrtime() - started) / 1e6
    vim.wait(10000, function() return slow ~= nil end, 5)
    out.elapsed_ms = (uv.hrtime() - started) / 1e6
    ticker:stop()
    ticker:close()
    out.ticks, out.slow = ticks, slow

    -- The same token again: revoked, and the same error table as blocking.
    local again
    client:reset_async(os.getenv("DP_TOKEN_SLOW"), function(ok, err)
        again = { ok = ok, err = plain(err) }
    end)
    vim.wait(10000, function() return again ~= nil end, 5)
    out.again = again
    local _, blocking = client:reset(os.getenv("DP_TOKEN_SLOW"))
    out.blocking = plain(blocking)
    client:close()

    -- The example plugin, token from $DATAPORTABILITY_TOKEN.
    local notes = {}
    vim.notify = function(message, level) notes[#notes + 1] = { message = message, level = level } end
    vim.cmd("runtime plugin/dataportability.lua")
    require("dataportability_nvim").setup(opts)
    vim.cmd("DataPortabilityReset")
    vim.wait(10000, function() return #notes >= 2 end, 5)
    out.notes = notes
    out.info_level = vim.log.levels.INFO
    out.history = vim.fn.histget(":", -1)
end

local ok, err = pcall(run)
out.error = not ok and tostring(err) or nil
local f = assert(io.open(os.getenv("DP_RESULT"), "w"))
f:write(cjson.encode(out))
f:close()
vim.cmd("qall!")
