-- :DataPortabilityReset resets the Data Portability authorization of the
-- token in $DATAPORTABILITY_TOKEN, or in the file named by
-- g:dataportability_token_file. It takes no argument, so a token never
-- lands in the command-line history.
--
-- :DataPortabilityExport {groups...} exports those resource groups with the
-- same token, into setup{ export_dir = ... }, then resets;
-- :DataPortabilityExportCancel stops it.
if vim.g.loaded_dataportability then
    return
end
vim.g.loaded_dataportability = true

vim.api.nvim_create_user_command("DataPortabilityReset", function()
    require("dataportability_nvim").reset()
end, { nargs = 0, desc = "Reset the Data Portability authorization (revokes the token)" })

vim.api.nvim_create_user_command("DataPortabilityExport", function(command)
    require("dataportability_nvim").export(command.fargs)
end, {
    nargs = "+",
    complete = function(lead) return require("dataportability_nvim").complete(lead) end,
    desc = "Export Data Portability resource groups, then reset the authorization",
})

vim.api.nvim_create_user_command("DataPortabilityExportCancel", function()
    require("dataportability_nvim").cancel()
end, { nargs = 0, desc = "Stop the running :DataPortabilityExport" })
