-- :DataPortabilityReset resets the Data Portability authorization of the
-- token in $DATAPORTABILITY_TOKEN, or in the file named by
-- g:dataportability_token_file. It takes no argument, so a token never
-- lands in the command-line history.
if vim.g.loaded_dataportability then
    return
end
vim.g.loaded_dataportability = true

vim.api.nvim_create_user_command("DataPortabilityReset", function()
    require("dataportability_nvim").reset()
end, { nargs = 0, desc = "Reset the Data Portability authorization (revokes the token)" })
