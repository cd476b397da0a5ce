-- A small Neovim plugin on dataportability: the reset and the export run on
-- Neovim's event loop (client:reset_async, client:export_async), so the
-- editor stays responsive.
--
--   require("dataportability_nvim").setup({
--       export_dir = "/path/to/exports", -- default: stdpath("data") .. "/dataportability"
--       timeout = 30,                    -- any other field: a dp.new option
--   })
--   :DataPortabilityReset
--   :DataPortabilityExport myactivity.youtube myactivity.search
--   :DataPortabilityExportCancel
--   statusline: %{v:lua.require'dataportability_nvim'.status()}
local dp = require("dataportability")

local format, floor = string.format, math.floor

local M = { options = {} }

-- The export under way: { client =, status =, cancelled = }, or nil.
local running

--- The outcome of the last export, once it ended: { result = } or { err = }.
M.last = nil

function M.setup(options)
    M.options, M.export_dir = {}, nil
    for k, v in pairs(options or {}) do
        if k == "export_dir" then M.export_dir = v else M.options[k] = v end
    end
end

-- A notice from one command: "Command: message", at INFO unless told.
local function notifier(command)
    return function(message, level)
        vim.notify(command .. ": " .. message, level or vim.log.levels.INFO)
    end
end

-- The token from the environment or a file; never from the command line.
local function read_token()
    local token = os.getenv("DATAPORTABILITY_TOKEN")
    if token and token ~= "" then
        return token
    end
    local file = vim.g.dataportability_token_file
    if file then
        local f = io.open(vim.fn.expand(file), "r")
        if f then
            token = (f:read("*l") or ""):match("^%s*(.-)%s*$")
            f:close()
            if token ~= "" then
                return token
            end
        end
    end
    return nil, "set $DATAPORTABILITY_TOKEN or g:dataportability_token_file"
end

function M.reset()
    local say = notifier("DataPortabilityReset")
    local token, why = read_token()
    if not token then
        return say(why, vim.log.levels.ERROR)
    end
    local client = dp.new(M.options)
    say("resetting...")
    client:reset_async(token, function(ok, err)
        client:close()
        if ok then
            say("done: tokens revoked, exhausted scopes reset")
        else
            say(tostring(err), vim.log.levels.ERROR)
        end
    end)
end

--- For a statusline: "export: youtube-1.zip 37%" while an export runs, "" otherwise.
function M.status()
    return running and "export: " .. running.status or ""
end

-- Statuslines show the new status: the built-in one on a redraw, others
-- (lualine, ...) on `autocmd User DataPortabilityExport`.
local function status_changed()
    vim.cmd("redrawstatus")
    vim.cmd("doautocmd <nomodeline> User DataPortabilityExport")
end

local say = notifier("DataPortabilityExport")

-- One progress event: the status, and a notice for each step.
local function progress(export, e)
    if e.type == "job" then
        export.status = "job started"
        say("job " .. e.job_id .. " started")
    elseif e.type == "state" then
        export.status = e.state
        say("job " .. e.state)
    elseif e.type == "download" then
        export.status = e.total and e.total > 0 and format("%s %d%%", e.file, floor(e.done * 100 / e.total))
            or format("%s %d KiB", e.file, floor(e.done / 1024))
    elseif e.type == "file" then
        export.status = e.file .. " done"
        say(format("%s downloaded (%d bytes)", e.file, e.size))
    elseif e.type == "reset" then
        export.status = "reset"
        say("authorization reset")
    end
    status_changed()
end

local function finished(export, result, err)
    running = nil
    export.client:close()
    M.last = { result = result, err = err }
    status_changed()
    if result then
        local files = {}
        for i, f in ipairs(result.files) do files[i] = format("%s (%d bytes)", f.path, f.size) end
        say(format("done: %d files: %s", #files, table.concat(files, ", ")))
    elseif export.cancelled and err.kind == "closed" then
        say("cancelled: " .. tostring(err), vim.log.levels.WARN)
    else
        say("failed: " .. tostring(err), vim.log.levels.ERROR)
    end
end

--- Exports the resource groups `groups` into the export directory, then
--- resets the authorization; one export at a time.
function M.export(groups)
    if running then
        return say("an export is running; :DataPortabilityExportCancel stops it", vim.log.levels.WARN)
    end
    local token, why = read_token()
    if not token then
        return say(why, vim.log.levels.ERROR)
    end
    local dir = M.export_dir
    if not dir then -- the default's parent may not exist yet; export makes only the last level
        vim.fn.mkdir(vim.fn.stdpath("data"), "p")
        dir = vim.fn.stdpath("data") .. "/dataportability"
    end
    local export = { client = dp.new(M.options), status = "starting" }
    local ok, raised = pcall(export.client.export_async, export.client, token, groups, {
        dir = dir,
        on_progress = function(e) progress(export, e) end,
    }, function(result, err) finished(export, result, err) end)
    if not ok then -- bad options (an empty export_dir): nothing runs
        export.client:close()
        error(raised, 0)
    end
    running = export -- the callback never runs before export_async returns
    say(format("exporting %s into %s", table.concat(groups, " "), dir))
    status_changed()
end

--- Stops the running export: it ends with a `closed` error.
function M.cancel()
    if not running then
        return say("no export is running", vim.log.levels.WARN)
    end
    running.cancelled = true
    say("cancelling...")
    running.client:close()
end

--- Completion of :DataPortabilityExport: the resource groups the module knows.
function M.complete(lead)
    local names = {}
    for name in pairs(dp.scopes) do
        if name:sub(1, #lead) == lead then names[#names + 1] = name end
    end
    table.sort(names)
    return names
end

return M
