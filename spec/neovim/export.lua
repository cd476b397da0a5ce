-- Runs inside headless Neovim, started by spec/50-neovim_spec.lua: one case
-- ($DP_CASE) of the example plugin's :DataPortabilityExport, or of
-- client:export_async, against the emulator; writes what it saw as JSON to
-- $DP_RESULT, then quits.
package.path = os.getenv("DP_LPATH") .. ";" .. package.path
package.cpath = os.getenv("DP_CPATH") .. ";" .. package.cpath
local cjson = require("cjson")
local dp = require("dataportability")
local uv = vim.loop

local GROUP = "myactivity.youtube"
local WAIT_MS = 60000 -- bounds each wait so that a hang still writes a result; not an assertion
local opts = { endpoint = os.getenv("DP_ENDPOINT"), ca_file = os.getenv("DP_CA") }
local out = { levels = vim.log.levels }

vim.cmd("runtime plugin/dataportability.lua")
local plugin = require("dataportability_nvim")
plugin.setup({ endpoint = opts.endpoint, ca_file = opts.ca_file, export_dir = os.getenv("DP_DIR") })

-- Every notice, and every status the plugin announced to statuslines.
local notes, statuses = {}, {}
vim.notify = function(message, level) notes[#notes + 1] = { message = message, level = level } end
vim.api.nvim_create_autocmd("User", { pattern = "DataPortabilityExport", callback = function()
    local status = plugin.status()
    if status ~= statuses[#statuses] then statuses[#statuses + 1] = status end
end })

-- An export's outcome ({ result = } or { err = }) as plain JSON.
local function plain(outcome)
    if not outcome then return nil end
    local result, err = outcome.result, outcome.err
    if result then
        local files = {}
        for i, f in ipairs(result.files) do
            files[i] = { name = f.name, path = f.path, size = f.size, md5 = f.md5 }
        end
        return { job_id = result.job_id, reset = result.reset, files = files }
    end
    return { err = { kind = err.kind, message = err.message, job_id = err.job_id, text = tostring(err) } }
end

-- A 10 ms timer counting its ticks: the loop's pulse.
local function ticker()
    local t = { count = 0, timer = uv.new_timer() }
    t.timer:start(10, 10, function() t.count = t.count + 1 end)
    function t.stop()
        t.timer:stop()
        t.timer:close()
    end
    return t
end

local cases = {}

-- The plugin's export, token from $DATAPORTABILITY_TOKEN; a second export
-- while it runs is refused.
function cases.plugin()
    vim.cmd("DataPortabilityExport " .. GROUP)
    vim.cmd("DataPortabilityExport " .. GROUP)
    out.ended = vim.wait(WAIT_MS, function() return plugin.status() == "" end, 5)
    out.completion = vim.fn.getcompletion("DataPortabilityExport myactivity.y", "cmdline")
end

-- export_async of a large file: how often a 10 ms timer fires from the
-- first download event to the file's end.
function cases.ticks()
    local client = dp.new(opts)
    local pulse = ticker()
    local from, to, outcome
    client:export_async(os.getenv("DP_TOKEN"), { GROUP }, {
        dir = os.getenv("DP_DIR"),
        on_progress = function(e)
            if e.type == "download" and not from then
                from = { ticks = pulse.count, at = uv.hrtime() }
            elseif e.type == "file" then
                to = { ticks = pulse.count, at = uv.hrtime() }
            end
        end,
    }, function(result, err) outcome = { result = result, err = err } end)
    out.ended = vim.wait(WAIT_MS, function() return outcome ~= nil end, 5)
    pulse.stop()
    client:close()
    out.export = plain(outcome)
    if from and to then
        out.ticks, out.seconds = to.ticks - from.ticks, (to.at - from.at) / 1e9
    end
end

-- The plugin's export, token from g:dataportability_token_file, cancelled
-- mid-download; then the editor is used again.
function cases.cancel()
    vim.g.dataportability_token_file = os.getenv("DP_TOKEN_FILE")
    vim.cmd("DataPortabilityExportCancel") -- nothing runs yet
    vim.cmd("DataPortabilityExport " .. GROUP)
    out.downloading = vim.wait(WAIT_MS, function() return plugin.status():find("%d%%$") ~= nil end, 5)
    out.cancelled_at = plugin.status()
    vim.cmd("DataPortabilityExportCancel")
    out.ended = vim.wait(WAIT_MS, function() return plugin.status() == "" end, 5)
    local pulse = ticker()
    out.ticking = vim.wait(WAIT_MS, function() return pulse.count >= 10 end, 5)
    pulse.stop()
    out.api_ok = pcall(vim.api.nvim_buf_set_lines, 0, 0, -1, false, { "still here" })
    vim.cmd("DataPortabilityExportCancel") -- nothing runs any more
end

local ok, err = pcall(cases[os.getenv("DP_CASE")])
out.error = not ok and tostring(err) or nil
out.notes, out.statuses, out.last = notes, statuses, plain(plugin.last)
local f = assert(io.open(os.getenv("DP_RESULT"), "w"))
f:write(cjson.encode(out))
f:close()
vim.cmd("qall!")
