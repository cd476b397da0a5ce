-- The command line (bin/dataportability) as a user runs it: one child
-- process per call, under $DP_TEST_LUA, against the real emulator. Tokens
-- reach the child only through its environment or a file (never argv, not
-- even the shell's), and must never show up in anything it prints.
local helpers = require("spec.helpers")
local cjson = require("cjson.safe")

local LUA = helpers.LUA
local BIN = "bin/dataportability"
local YOUTUBE = helpers.SCOPE
local CHROME = "https://www.googleapis.com/auth/dataportability.chrome.history"

local q = helpers.quote
local sh = helpers.sh
local read = helpers.read
local write = helpers.write

local function mode_of(path)
    return (sh("stat -c %a " .. q(path)):gsub("%s", ""))
end

local function sleep(seconds)
    require("dataportability.core").sleep(seconds)
end

-- A loopback port nothing listens on.
local function closed_port()
    local uv = require("luv")
    local s = uv.new_tcp()
    assert(s:bind("127.0.0.1", 0))
    local port = s:getsockname().port
    s:close()
    uv.run("nowait")
    return port
end

describe("command line: bin/dataportability #host", function()
    local emu, tmp
    local seen = {}    -- every stdout and stderr of every run
    local secrets = {} -- every token, secret and refresh token used
    local n = 0

    lazy_setup(function()
        emu = helpers.start()
        tmp = (sh("mktemp -d"):gsub("%s+$", ""))
    end)
    lazy_teardown(function()
        helpers.stop(emu)
        if tmp and tmp:find("^/tmp/") then os.execute("rm -rf " .. q(tmp)) end
    end)
    before_each(function()
        emu:clear_faults()
        emu:configure({ job_seconds = 0, files = cjson.null })
    end)

    local function token(scopes)
        local t = helpers.registered(emu, scopes or { YOUTUBE, CHROME })
        secrets[#secrets + 1] = t
        return t
    end

    -- The shell lines that give the child its environment: the token is
    -- read from a file by the shell, so that it is in no command line.
    local function env_lines(opts)
        local lines = { "unset DATAPORTABILITY_TOKEN DATAPORTABILITY_EMULATOR_HOST" }
        if opts.emulator ~= false then
            lines[#lines + 1] = "export DATAPORTABILITY_EMULATOR_HOST=" .. q(emu.host)
        end
        if opts.token then
            n = n + 1
            local file = tmp .. "/env-token-" .. n
            write(file, opts.token)
            lines[#lines + 1] = "export DATAPORTABILITY_TOKEN=\"$(cat " .. q(file) .. ")\""
        end
        return table.concat(lines, "; ") .. "; "
    end

    -- Runs the CLI: stdout, stderr, exit code. args is a list of words.
    local function cli(args, opts)
        opts = opts or {}
        n = n + 1
        local err_file = tmp .. "/stderr-" .. n
        local words = {}
        for i, a in ipairs(args) do words[i] = q(a) end
        local out = sh("(" .. env_lines(opts) .. LUA .. " " .. BIN .. " " .. table.concat(words, " ")
            .. " 2>" .. q(err_file) .. " </dev/null); echo \"::rc=$?\"")
        local code = tonumber(out:match("::rc=(%d+)\n$"))
        out = out:gsub("::rc=%d+\n$", "")
        local err = read(err_file) or ""
        os.remove(err_file)
        seen[#seen + 1] = out
        seen[#seen + 1] = err
        return out, err, code
    end

    local function json_of(out)
        local doc = cjson.decode(out)
        assert(type(doc) == "table", "not JSON: " .. out)
        return doc
    end

    describe("reset", function()
        it("prints 'reset: done', then exits 1 with a JSON error once the token is revoked", function()
            local t = token()
            local out, err, code = cli({ "reset" }, { token = t })
            assert.equal("", err)
            assert.equal(0, code)
            assert.equal("reset: done\n", out)

            out, err, code = cli({ "--json", "reset" }, { token = t })
            assert.equal(1, code)
            assert.equal("", err)
            local e = json_of(out).error
            assert.equal("api", e.kind)
            assert.equal(401, e.http_status)
            assert.equal("UNAUTHENTICATED", e.status)
            assert.equal("authorization.reset", e.method)
            assert.is_false(e.retryable)
        end)

        it("prints {\"reset\": true} with --json", function()
            local out, _, code = cli({ "reset", "--json" }, { token = token() })
            assert.equal(0, code)
            assert.same({ reset = true }, json_of(out))
        end)

        it("tells a human why it failed, on stderr", function()
            local t = token()
            cli({ "reset" }, { token = t })
            local out, err, code = cli({ "reset" }, { token = t })
            assert.equal(1, code)
            assert.equal("", out)
            assert.matches("^dataportability: authorization.reset: api %(HTTP 401 UNAUTHENTICATED", err)
        end)
    end)

    describe("the job methods", function()
        it("initiate, state, cancel: human output", function()
            emu:configure({ job_seconds = 60 })
            local t = token()
            local out, err, code = cli({ "initiate", "myactivity.youtube" }, { token = t })
            assert.equal(0, code, err)
            local id = out:match("^job (%x+) started %(ACCESS_TYPE_ONE_TIME%)\n$")
            assert.truthy(id, out)

            out, err, code = cli({ "state", id }, { token = t })
            assert.equal(0, code, err)
            assert.matches("^state: IN_PROGRESS\nexport time: %S+\n$", out)

            out, err, code = cli({ "cancel", id }, { token = t })
            assert.equal(0, code, err)
            assert.equal("job " .. id .. " cancelled\n", out)

            out = cli({ "state", "archiveJobs/" .. id }, { token = t })
            assert.matches("^state: CANCELLED\n", out)

            -- cancelling twice is refused by the server
            out, err, code = cli({ "cancel", id }, { token = t })
            assert.equal(1, code)
            assert.equal("", out)
            assert.matches("FAILED_PRECONDITION", err)
        end)

        it("initiate, state, retry, cancel: --json output", function()
            local t = token()
            local out, _, code = cli({ "--json", "initiate", "chrome.history", "--start", "2024-01-01",
                                       "--end", "2024-06-30T12:00:00Z" }, { token = t })
            assert.equal(0, code)
            local job = json_of(out)
            assert.equal("ACCESS_TYPE_ONE_TIME", job.access_type)
            assert.matches("^%x+$", job.archive_job_id)

            out, _, code = cli({ "--json", "state", job.archive_job_id }, { token = t })
            assert.equal(0, code)
            local st = json_of(out)
            assert.equal("COMPLETE", st.state)
            assert.equal("2024-01-01T00:00:00Z", st.start_time)
            assert.equal(1, #st.urls)
            assert.matches("^https://127%.0%.0%.2:%d+/.*chrome%.history%.zip%?", st.urls[1])

            emu:set_job(job.archive_job_id, { state = "FAILED" })
            out, _, code = cli({ "--json", "retry", job.archive_job_id }, { token = t })
            assert.equal(0, code)
            local retried = json_of(out)
            assert.equal(job.archive_job_id, retried.retry_of)
            assert.not_equal(job.archive_job_id, retried.archive_job_id)

            emu:set_job(retried.archive_job_id, { state = "IN_PROGRESS" })
            out, _, code = cli({ "--json", "cancel", retried.archive_job_id }, { token = t })
            assert.equal(0, code)
            assert.same({ archive_job_id = retried.archive_job_id, cancelled = true }, json_of(out))
        end)

        it("retry: human output names the new job", function()
            local t = token()
            local id = json_of((cli({ "--json", "initiate", "myactivity.youtube" }, { token = t })))
                .archive_job_id
            emu:set_job(id, { state = "FAILED" })
            local out, err, code = cli({ "retry", id }, { token = t })
            assert.equal(0, code, err)
            assert.matches("^job %x+ started %(retry of " .. id .. "%)", out)
        end)

        it("access-type: human and --json output", function()
            local t = token()
            local out, _, code = cli({ "access-type" }, { token = t })
            assert.equal(0, code)
            assert.equal("one-time: myactivity.youtube chrome.history\ntime-based: (none)\n", out)
            out = cli({ "access-type", "--json" }, { token = t })
            assert.same({ one_time_resources = { "myactivity.youtube", "chrome.history" },
                          time_based_resources = {} }, json_of(out))
            assert.matches('"time_based_resources":%[%]', out) -- a list, even empty
        end)

        it("an unknown resource group is refused before any I/O (exit 4)", function()
            emu:clear_requests()
            local _, err, code = cli({ "initiate", "myactivity.nope" }, { token = token() })
            assert.equal(4, code)
            assert.matches("invalid_argument", err)
            assert.same({}, emu:requests())
        end)
    end)

    describe("export", function()
        local FILES = { { name = "takeout.zip", size = 300000 }, { name = "index.json", size = 17 } }

        it("downloads every file into --dir, resets, and draws no progress bar on a pipe", function()
            emu:configure({ files = FILES })
            local t = token()
            local dir = tmp .. "/export-1"
            local out, err, code = cli({ "export", "myactivity.youtube", "--dir", dir,
                                         "--ca-file", emu.ca_file, "--poll-interval", "0.1" }, { token = t })
            assert.equal(0, code, err)
            assert.equal("", err) -- no bar, no \r
            assert.matches("^job %x+ started %(ACCESS_TYPE_ONE_TIME%)\nstate: COMPLETE\n", out)
            assert.matches("file: " .. dir:gsub("%p", "%%%0") .. "/takeout%.zip %(293%.0 KiB%)\n", out)
            assert.matches("export: 2 files in ", out)
            assert.matches("reset: done\n$", out)
            assert.equal(300000, #read(dir .. "/takeout.zip"))
            assert.equal(17, #read(dir .. "/index.json"))
            assert.equal("700", mode_of(dir))
            -- the export ended with a reset: the token is dead
            local _, _, again = cli({ "reset" }, { token = t })
            assert.equal(1, again)
        end)

        it("--json --no-reset: the result as JSON, the authorization kept", function()
            local t = token()
            local dir = tmp .. "/export-2"
            local out, err, code = cli({ "--json", "export", "chrome.history", "--dir", dir, "--no-reset",
                                         "--ca-file", emu.ca_file, "--poll-interval", "0.1" }, { token = t })
            assert.equal(0, code, err)
            local r = json_of(out)
            assert.equal("COMPLETE", r.state)
            assert.is_false(r.reset)
            assert.equal(1, #r.files)
            assert.equal("chrome.history.zip", r.files[1].name)
            assert.equal(1024, r.files[1].size)
            assert.equal(1024, #read(dir .. "/chrome.history.zip"))
            local _, _, again = cli({ "reset" }, { token = t })
            assert.equal(0, again)
        end)

        it("--job resumes an existing job", function()
            local t = token()
            local id = json_of((cli({ "--json", "initiate", "myactivity.youtube" }, { token = t })))
                .archive_job_id
            local dir = tmp .. "/export-3"
            local out, err, code = cli({ "export", "--job", id, "--dir", dir, "--ca-file", emu.ca_file,
                                         "--no-reset" }, { token = t })
            assert.equal(0, code, err)
            assert.matches("^job " .. id .. " resumed\nstate: COMPLETE\n", out)
            assert.matches("reset: skipped", out)
            assert.equal(1024, #read(dir .. "/myactivity.youtube.zip"))
        end)

        it("a FAILED job exits 1 and says how to retry", function()
            emu:configure({ outcome = "FAILED" })
            local _, err, code = cli({ "export", "myactivity.youtube", "--dir", tmp .. "/export-4",
                                       "--poll-interval", "0.1" }, { token = token() })
            emu:configure({ outcome = cjson.null })
            assert.equal(1, code)
            assert.matches("job: archive job %x+ ended FAILED", err)
            assert.matches("dataportability retry %x+", err)
        end)

        it("draws a progress bar on stderr when it is a terminal", function()
            if not sh("command -v script"):find("script") then
                pending("no script(1) to give the CLI a terminal")
                return
            end
            -- the library reports progress every MiB
            emu:configure({ files = { { name = "big.zip", size = 3 * 1048576 } } })
            local dir = tmp .. "/export-tty"
            local cmd = LUA .. " " .. BIN .. " export myactivity.youtube --no-reset --dir " .. q(dir)
                .. " --ca-file " .. q(emu.ca_file)
            n = n + 1
            local script = tmp .. "/tty-" .. n .. ".sh"
            write(script, env_lines({ token = token() }) .. cmd .. ' "$@"\n')
            local out = sh("script -qec " .. q("sh " .. script) .. " /dev/null </dev/null")
            seen[#seen + 1] = out
            assert.matches("\rbig%.zip +%[#+%-*%] +%d+%% [%d.]+ MiB / 3%.0 MiB", out)
            assert.matches("\r\27%[K", out) -- the bar is cleared before the next line

            out = sh("script -qec " .. q("sh " .. script .. " --quiet") .. " /dev/null </dev/null")
            seen[#seen + 1] = out
            assert.not_matches("%[#", out)
        end)
    end)

    describe("usage errors (exit 2)", function()
        it("refuses a token on the command line, and says why", function()
            local fake = "ya29.not-a-real-token-0123456789"
            for _, args in ipairs({ { "--token", fake, "reset" }, { "reset", "--token=" .. fake },
                                    { "--access-token", fake, "state", "x" } }) do
                local out, err, code = cli(args)
                assert.equal(2, code)
                assert.equal("", out)
                assert.matches("is refused: a secret on the command line is visible", err)
                assert.matches("DATAPORTABILITY_TOKEN", err)
                assert.not_matches(fake, err, 1, true)
            end
            local out, _, code = cli({ "--json", "login", "--client-secret", "s3cr3t-value" })
            assert.equal(2, code)
            assert.equal("usage", json_of(out).error.kind)
            assert.matches("--client-secret-file", json_of(out).error.message, 1, true)
            assert.not_matches("s3cr3t", out, 1, true)
        end)

        it("unknown commands and options, missing and extra arguments", function()
            local cases = {
                { { "frobnicate" }, "unknown command frobnicate" },
                { { "--frob", "reset" }, "unknown option %-%-frob" },
                { { "reset", "--dir", "x" }, "reset does not take %-%-dir" },
                { {}, "missing command" },
                { { "state" }, "state needs JOB" },
                { { "initiate" }, "initiate needs RESOURCE" },
                { { "export", "myactivity.youtube" }, "export needs %-%-dir" },
                { { "export", "--dir", "x" }, "export needs RESOURCE" },
                { { "reset", "ya29.pasted-by-mistake" }, "reset takes no argument" },
                { { "--timeout", "soon", "reset" }, "%-%-timeout needs a number" },
                { { "--json" , "state", "a", "b" }, nil },
                { { "--endpoint", "http://example.com", "reset" }, "must be https://" },
                { { "reset", "--json=yes" }, "%-%-json takes no value" },
                { { "state", "--job" }, "%-%-job needs a value" },
            }
            for _, c in ipairs(cases) do
                local out, err, code = cli(c[1], { token = "ya29.unused-token" })
                assert.equal(2, code, table.concat(c[1], " ") .. ": " .. err)
                if c[2] then assert.matches(c[2], err) end
                if c[1][1] == "--json" then assert.equal("usage", json_of(out).error.kind) end
            end
            local _, err = cli({ "reset", "ya29.pasted-by-mistake" })
            assert.not_matches("pasted", err, 1, true) -- extra words are never echoed
        end)
    end)

    describe("the token", function()
        it("comes from --token-file (its first line)", function()
            local file = tmp .. "/token-file"
            write(file, token() .. "\nsecond line\n")
            local out, err, code = cli({ "reset", "--token-file", file })
            assert.equal(0, code, err)
            assert.equal("reset: done\n", out)
        end)

        it("a missing token file, or no token at all, is a local problem (exit 4)", function()
            local _, err, code = cli({ "reset", "--token-file", tmp .. "/nope" })
            assert.equal(4, code)
            assert.matches("io: cannot read the token file .*nope: No such file", err)
            local out
            out, _, code = cli({ "--json", "reset" })
            assert.equal(4, code)
            local e = json_of(out).error
            assert.equal("invalid_token", e.kind)
            assert.matches("DATAPORTABILITY_TOKEN", e.message)
        end)

        it("a malformed token is refused before any I/O (exit 4)", function()
            local _, err, code = cli({ "reset" }, { token = "has space" })
            assert.equal(4, code)
            assert.matches("invalid_token", err)
        end)
    end)

    describe("network errors (exit 3)", function()
        it("a closed port", function()
            local endpoint = "http://127.0.0.1:" .. closed_port()
            local out, err, code = cli({ "reset", "--endpoint", endpoint }, { token = token() })
            assert.equal(3, code)
            assert.equal("", out)
            assert.matches("connect", err)
            out, err, code = cli({ "--json", "access-type", "--endpoint", endpoint }, { token = token() })
            assert.equal(3, code, err)
            local e = json_of(out).error
            assert.equal("connect", e.kind)
            assert.is_true(e.retryable)
        end)
    end)

    describe("help", function()
        local COMMANDS = { "reset", "initiate", "state", "retry", "cancel", "access-type", "export", "login",
                           "scopes", "help" }

        it("--help on every command, and help COMMAND, exit 0", function()
            for _, c in ipairs(COMMANDS) do
                for _, args in ipairs({ { c, "--help" }, { "help", c }, { "-h", c } }) do
                    local out, err, code = cli(args)
                    assert.equal(0, code, table.concat(args, " ") .. ": " .. err)
                    assert.equal("", err)
                    assert.matches("Usage: dataportability", out)
                    if c ~= "help" then
                        assert.truthy(out:find("Usage: dataportability " .. c, 1, true), out)
                    end
                    assert.matches("Exit status:", out)
                end
            end
        end)

        it("--help lists the commands and the exit codes", function()
            local out, _, code = cli({ "--help" })
            assert.equal(0, code)
            for _, c in ipairs(COMMANDS) do assert.matches("\n  " .. c:gsub("%-", "%%-"), out) end
            for _, line in ipairs({ "0  success", "1  the API or the server refused", "2  usage error",
                                    "3  network", "4  local problem" }) do
                assert.truthy(out:find(line, 1, true), line)
            end
        end)
    end)

    describe("scopes", function()
        it("lists resource groups and scope URLs, without a token", function()
            local out, err, code = cli({ "scopes" }, { emulator = false })
            assert.equal(0, code, err)
            assert.matches("\nmyactivity%.youtube +https://www%.googleapis%.com/auth/"
                .. "dataportability%.myactivity%.youtube\n", out)
            out = cli({ "scopes", "--json" })
            local list = json_of(out).scopes
            assert.is_true(#list >= 73)
            assert.same({ resource = "alerts.subscriptions",
                          scope = "https://www.googleapis.com/auth/dataportability.alerts.subscriptions" },
                        list[1])
        end)
    end)

    describe("login", function()
        local pid_file

        after_each(function()
            local pid = pid_file and read(pid_file)
            if pid and pid:match("^%d+") then
                os.execute("kill " .. pid:match("^%d+") .. " 2>/dev/null")
            end
            pid_file = nil
        end)

        -- Starts `dataportability login` in the background; returns a table
        -- of its files (out, err, rc, pid).
        local function start_login(args)
            n = n + 1
            local f = { out = tmp .. "/login-out-" .. n, err = tmp .. "/login-err-" .. n,
                        rc = tmp .. "/login-rc-" .. n, pid = tmp .. "/login-pid-" .. n }
            pid_file = f.pid
            local words = {}
            for i, a in ipairs(args) do words[i] = q(a) end
            local script = env_lines({}) .. LUA .. " " .. BIN .. " " .. table.concat(words, " ")
                .. " >" .. q(f.out) .. " 2>" .. q(f.err) .. " </dev/null & echo $! >" .. q(f.pid)
                .. "; wait $!; echo $? >" .. q(f.rc)
            os.execute("sh -c " .. q(script) .. " >/dev/null 2>&1 &")
            return f
        end

        local function wait_for(path, pattern)
            for _ = 1, 100 do
                local data = read(path)
                if data and data:find(pattern) then return data end
                sleep(0.05)
            end
            error("timed out waiting for " .. pattern .. " in " .. path .. ": " .. tostring(read(path)))
        end

        local function finish(f)
            local rc = tonumber((wait_for(f.rc, "%d")))
            local out, err = read(f.out) or "", read(f.err) or ""
            seen[#seen + 1] = out
            seen[#seen + 1] = err
            return out, err, rc
        end

        it("loopback flow end to end: consent URL, redirect, credentials 0600 that work", function()
            local client_id, secret = "cli-spec.apps.example", "GOCSPX-cli-spec-secret-42"
            secrets[#secrets + 1] = secret
            local secret_file = tmp .. "/client-secret"
            write(secret_file, secret .. "\n")
            local creds = tmp .. "/credentials.json"
            local f = start_login({ "login", "--client-id", client_id, "--client-secret-file", secret_file,
                "--scopes", "myactivity.youtube,chrome.history", "--credentials", creds,
                "--auth-endpoint", emu.endpoint .. "/o/oauth2/v2/auth", "--wait", "20" })
            local url = wait_for(f.err, "\nhttp://[^\n]+\n"):match("\n(http://[^\n]+)\n")
            local redirect_uri = url:match("[?&]redirect_uri=([^&]+)"):gsub("%%(%x%x)", function(h)
                return string.char(tonumber(h, 16))
            end)
            assert.matches("^http://127%.0%.0%.1:%d+/$", redirect_uri)
            assert.matches("[?&]code_challenge_method=S256", url)
            -- registered without a port: Google accepts any loopback port (RFC 8252)
            emu:add_client({ client_id = client_id, client_secret = secret,
                             redirect_uris = { "http://127.0.0.1/" } })

            -- the browser: the emulator consents and redirects to the CLI's listener
            local page = sh("curl -s -L -m 20 " .. q(url))
            assert.matches("login done", page)
            local out, err, code = finish(f)
            assert.equal(0, code, err)
            assert.equal("login: credentials written to " .. creds .. " (mode 0600)\n", out)
            assert.equal("600", mode_of(creds))
            local doc = json_of(read(creds))
            assert.equal(client_id, doc.client_id)
            assert.equal(secret, doc.client_secret)
            assert.matches("%S", doc.refresh_token)
            secrets[#secrets + 1] = doc.refresh_token

            out, err, code = cli({ "access-type", "--credentials", creds })
            assert.equal(0, code, err)
            assert.equal("one-time: myactivity.youtube chrome.history\ntime-based: (none)\n", out)
            out, err, code = cli({ "reset", "--credentials", creds })
            assert.equal(0, code, err)
            assert.matches("^reset: done\n", out)

            -- a credentials file others may read is refused
            os.execute("chmod 644 " .. q(creds))
            out, err, code = cli({ "--json", "reset", "--credentials", creds })
            assert.equal(4, code, err)
            assert.matches("chmod 600", json_of(out).error.message)
        end)

        it("gives up after --wait seconds without a redirect (exit 3)", function()
            local f = start_login({ "login", "--client-id", "nobody", "--scopes", "myactivity.youtube",
                "--credentials", tmp .. "/never.json", "--wait", "0.3" })
            local _, err, code = finish(f)
            assert.equal(3, code)
            assert.matches("no redirect from the browser within 0%.3 seconds", err)
            assert.is_nil(read(tmp .. "/never.json"))
        end)

        it("refuses a redirect whose state does not match (exit 1)", function()
            local f = start_login({ "login", "--client-id", "nobody", "--scopes", "myactivity.youtube",
                "--credentials", tmp .. "/forged.json", "--wait", "20" })
            local port = wait_for(f.err, "127%.0%.0%.1:%d+/ %("):match("127%.0%.0%.1:(%d+)/ %(")
            local page = sh("curl -s -m 10 " .. q("http://127.0.0.1:" .. port .. "/?state=forged&code=4/x"))
            assert.matches("login failed", page)
            local _, err, code = finish(f)
            assert.equal(1, code)
            assert.matches("state does not match", err)
            assert.is_nil(read(tmp .. "/forged.json"))
        end)
    end)

    it("no token, secret or refresh token appears in any output", function()
        assert.is_true(#seen > 50)
        assert.is_true(#secrets > 10)
        for _, s in ipairs(seen) do
            for _, secret in ipairs(secrets) do
                assert.is_nil(s:find(secret, 1, true), "a secret in: " .. s:sub(1, 200))
            end
        end
    end)

    it("a running CLI has no token in its argv", function()
        emu:set_fault({ action = "delay", seconds = 1, path = "/v1/authorization:reset" })
        local t = token()
        n = n + 1
        local pid_file = tmp .. "/argv-pid-" .. n
        local script = env_lines({ token = t }) .. LUA .. " " .. BIN .. " reset >/dev/null 2>&1 & echo $! >"
            .. q(pid_file) .. "; wait"
        os.execute("sh -c " .. q(script) .. " >/dev/null 2>&1 &")
        local pid
        for _ = 1, 100 do
            pid = (read(pid_file) or ""):match("^%d+")
            if pid then break end
            sleep(0.02)
        end
        assert.truthy(pid)
        sleep(0.2)
        local cmdline = read("/proc/" .. pid .. "/cmdline")
        os.execute("kill " .. pid .. " 2>/dev/null")
        assert.truthy(cmdline and cmdline:find("dataportability", 1, true))
        assert.is_nil(cmdline:find(t, 1, true))
    end)
end)
