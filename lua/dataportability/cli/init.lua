-- The command line (bin/dataportability; docs/cli.md): reads argv
-- (cli/arguments.lua), finds the token (cli/login.lua: never on the
-- command line, never from a file others may read), runs the command
-- (cli/commands.lua) and prints the outcome (cli/output.lua), for people
-- or, with --json, for programs.
--
--   local code = require("dataportability.cli").main(arg)
local dp = require("dataportability")
local arguments = require("dataportability.cli.arguments")
local output = require("dataportability.cli.output")
local login = require("dataportability.cli.login")
local commands = require("dataportability.cli.commands")

local tostring, pcall = tostring, pcall

local _M = {}

local PROG = output.PROG

-- Exit codes, by error kind (docs/cli.md, "Exit status").
local EXIT = {
    api = 1, http = 1, redirect = 1, job = 1, integrity = 1, too_large = 1, closed = 1,
    usage = 2,
    timeout = 3, connect = 3, dns = 3, tls = 3, network = 3,
    io = 4, invalid_token = 4, invalid_argument = 4,
}
_M.EXIT = EXIT

local function run(ctx, argv)
    local name, args = arguments.read(ctx, argv)
    if not name then return nil, args end
    local o = ctx.opts
    if o.help then
        ctx:out(arguments.help(name))
        return true
    end
    if o.ca_file then -- libcurl would only say that TLS failed
        local pem, err = login.read_file(ctx, o.ca_file, "CA file")
        if not pem then return nil, err end
    end
    ctx.user_agent = "dataportability-cli/" .. dp._VERSION .. (o.user_agent and (" " .. o.user_agent) or "")

    local command = commands[name]
    if not arguments.COMMANDS[name].token then return command(ctx, nil, nil, args) end
    local token, err = login.find_token(ctx)
    if not token then return nil, err end
    local created, client = pcall(dp.new, { endpoint = o.endpoint, ca_file = o.ca_file, timeout = o.timeout,
        quota_project = o.quota_project, user_agent = ctx.user_agent })
    if not created then return ctx:fail("usage", output.clean(client)) end
    local done
    done, err = command(ctx, client, token, args)
    client:close()
    return done, err
end

--- main(argv [, sys]) -> exit code; never calls os.exit. sys (for tests):
--- stdout, stderr (file handles), getenv (function), stderr_tty (boolean).
function _M.main(argv, sys)
    local ctx = output.context(sys or {})
    -- redacted from the start, so that even a usage error cannot show it
    ctx:secret(ctx.getenv("DATAPORTABILITY_TOKEN"))
    local ok, done, err = pcall(run, ctx, argv or {})
    if not ok and tostring(done):find("interrupted!$") then -- Ctrl-C, through lua.c's hook
        ctx:err("\n")
        ctx:tell(PROG, ": interrupted")
        if ctx.command == "export" and ctx.job_id then
            ctx:tell("the job is kept: to resume, run the same command with --job ", ctx.job_id)
        end
        return 130
    end
    if not ok then -- a bug of ours: say so, without a traceback that could hold anything
        ctx:tell(PROG, ": internal error: ", output.clean(done))
        return 4
    end
    if done then return 0 end
    if not err.reported then ctx:report(err) end
    return EXIT[err.kind] or 1
end

_M.to_json = output.to_json

return _M
