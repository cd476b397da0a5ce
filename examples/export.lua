-- The whole export in one call: initiate an archive job, poll it, download
-- every file into a directory (streamed, resumable, verified), then reset
-- the authorization.
--
--   Against Google:        DATAPORTABILITY_TOKEN=ya29... lua5.4 examples/export.lua DIR [RESOURCE...]
--   Against the emulator:  make demo
--                          (or: eval "$(bin/dataportability-emulator start)"; lua5.4 examples/export.lua DIR)
local dp = require("dataportability")

local dir = arg[1]
if not dir then
    io.stderr:write("usage: lua5.4 examples/export.lua DIR [RESOURCE...]\n")
    os.exit(2)
end
local resources = { table.unpack(arg, 2) }
if #resources == 0 then resources = { "myactivity.youtube" } end

local token = os.getenv("DATAPORTABILITY_TOKEN")
local opts = {}
local emulator_host = os.getenv("DATAPORTABILITY_EMULATOR_HOST")
if emulator_host then
    -- HTTPS with the emulator's CA; its archive files are served from another host.
    opts.endpoint = os.getenv("DATAPORTABILITY_EMULATOR_HTTPS")
    opts.ca_file = os.getenv("DATAPORTABILITY_EMULATOR_CA")
    if not token then
        local emu = require("dataportability.emulator").admin("http://" .. emulator_host)
        emu:configure({ job_seconds = 2, files = {
            { name = "youtube-history.zip", size = 5 * 1024 * 1024 },
            { name = "youtube-playlists.zip", size = 4096 },
        } })
        token = "ya29.demo-export-" .. os.time()
        local scopes = {}
        for i, r in ipairs(resources) do scopes[i] = dp.scope_for(r) end
        emu:add_token(token, scopes)
        print("registered a demo token with the emulator for " .. table.concat(resources, ", "))
    end
end
if not token then
    io.stderr:write("set DATAPORTABILITY_TOKEN to an access token with the resources' scopes\n")
    os.exit(2)
end

local client = dp.new(opts)
local result, err = client:export(token, resources, {
    dir = dir,
    on_progress = function(e)
        if e.type == "job" then
            print(("job %s started (%s)"):format(e.job_id, e.access_type))
        elseif e.type == "state" then
            print("state: " .. e.state)
        elseif e.type == "file" then
            print(("downloaded %s (%d bytes)"):format(e.path, e.size))
        elseif e.type == "reset" then
            print("reset: tokens revoked, exhausted scopes reset")
        end
    end,
})
client:close()
if not result then
    io.stderr:write(tostring(err), "\n")
    if err.job_id then
        io.stderr:write("job ", err.job_id, ": pass job_id to export to resume it\n")
    end
    os.exit(1)
end
print(("export of job %s done: %d files in %s"):format(result.job_id, #result.files, dir))
