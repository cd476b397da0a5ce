-- A small Neovim plugin on dataportability: the reset runs on Neovim's
-- event loop (client:reset_async), so the editor stays responsive.
--
--   require("dataportability_nvim").setup({ timeout = 30 })  -- dp.new options
--   :DataPortabilityReset
local dp = require("dataportability")

local M = { options = {} }

function M.setup(options)
    M.options = options or {}
end

local function notify(message, level)
    vim.notify("DataPortabilityReset: " .. message, level)
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
    local token, why = read_token()
    if not token then
        return notify(why, vim.log.levels.ERROR)
    end
    local client = dp.new(M.options)
    notify("resetting...", vim.log.levels.INFO)
    client:reset_async(token, function(ok, err)
        client:close()
        if ok then
            notify("done: tokens revoked, exhausted scopes reset", vim.log.levels.INFO)
        else
            notify(tostring(err), vim.log.levels.ERROR)
        end
    end)
end

return M
