-- The command line (bin/dataportability) as a user runs it: one child
-- process per call, under $DP_TEST_LUA, against the real emulator. Tokens
-- reach the child only through its environment or a file (never argv, not
-- even the shell's), and must never show up in anything it prints.
local helpers = require("spec.helpers")
local nginx = require("dataportability.emulator.nginx")
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

-- A file as a secret should be: only its owner may read it.
local function write_secret(path, data, mode)
    write(path, data)
    assert(os.execute("chmod " .. (mode or "600") .. " " .. q(path)))
end

-- Text with a byte a terminal would obey: a C0 control other than the
-- line's end, DEL, or a C1 control in UTF-8 (U+0080..U+009F).
local function raw_control(text)
    return text:find("[%z\1-\9\11-\31\127]") or text:find("\194[\128-\159]")
end

-- The path of the file `name` in an export's "file: PATH (SIZE)" line.
local function file_line(out, name)
    return out:match("\nfile: (%S+/" .. name:gsub("%p", "%%%0") .. ") %(")
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

    -- Runs the CLI: stdout, stderr, exit code. args is a list of words;
    -- opts.prelude, Lua the interpreter runs first (lua -e).
    local function cli(args, opts)
        opts = opts or {}
        n = n + 1
        local err_file = tmp .. "/stderr-" .. n
        local words = {}
        for i, a in ipairs(args) do words[i] = q(a) end
        local lua = LUA .. (opts.prelude and (" -e " .. q(opts.prelude)) or "")
        local out = sh("(" .. env_lines(opts) .. lua .. " " .. BIN .. " " .. table.concat(words, " ")
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
            assert.is_nil(out:find("\\/", 1, true)) -- a / is written as it is, not as \/

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
                                         "--ca-file", emu.ca_file, "--poll-interval", "1" }, { token = t })
            assert.equal(0, code, err)
            assert.equal("", err) -- no bar, no \r
            assert.matches("^job %x+ started %(ACCESS_TYPE_ONE_TIME%)\nstate: COMPLETE\n", out)
            assert.matches("file: " .. dir:gsub("%p", "%%%0") .. "/%S*takeout%.zip %(293%.0 KiB%)\n", out)
            assert.matches("export: 2 files in ", out)
            assert.matches("reset: done\n$", out)
            assert.equal(300000, #read(file_line(out, "takeout.zip")))
            assert.equal(17, #read(file_line(out, "index.json")))
            assert.equal("700", mode_of(dir))
            -- the export ended with a reset: the token is dead
            local _, _, again = cli({ "reset" }, { token = t })
            assert.equal(1, again)
        end)

        it("--json --no-reset: the result as JSON, the authorization kept", function()
            local t = token()
            local dir = tmp .. "/export-2"
            local out, err, code = cli({ "--json", "export", "chrome.history", "--dir", dir, "--no-reset",
                                         "--ca-file", emu.ca_file, "--poll-interval", "1" }, { token = t })
            assert.equal(0, code, err)
            local r = json_of(out)
            assert.equal("COMPLETE", r.state)
            assert.is_false(r.reset)
            assert.equal(1, #r.files)
            assert.equal("chrome.history.zip", r.files[1].name)
            assert.equal(1024, r.files[1].size)
            assert.equal(1024, #read(r.files[1].path))
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
            assert.equal(1024, #read(file_line(out, "myactivity.youtube.zip")))
        end)

        it("an existing --dir that group or others may write is refused before any request (exit 4)",
            function()
                local dir = tmp .. "/export-open"
                assert(os.execute("mkdir -m 777 " .. q(dir)))
                local t = token()
                emu:clear_requests()
                local out, err, code = cli({ "export", "myactivity.youtube", "--dir", dir }, { token = t })
                assert.equal(4, code, err)
                assert.equal("", out)
                assert.truthy(err:find("io: " .. dir .. " is writable by group or others", 1, true), err)
                assert.same({}, emu:requests())
            end)

        it("a FAILED job exits 1 and says how to retry", function()
            emu:configure({ outcome = "FAILED" })
            local _, err, code = cli({ "export", "myactivity.youtube", "--dir", tmp .. "/export-4" },
                                     { token = token() })
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
            write_secret(file, token() .. "\nsecond line\n")
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
            -- no 8 bytes in common: errors.redact hides any run of 8 bytes of a secret
            local client_id, secret = "cli-spec.apps.example", "GOCSPX-" .. nginx.random_hex(24)
            secrets[#secrets + 1] = secret
            local secret_file = tmp .. "/client-secret"
            write_secret(secret_file, secret .. "\n")
            local creds = tmp .. "/credentials.json"
            -- a link where the file goes: replaced, never written through
            local victim = tmp .. "/victim"
            write_secret(victim, "someone else's\n", "644")
            assert(os.execute("ln -s " .. q(victim) .. " " .. q(creds)))
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
            assert.equal("600", mode_of(creds)) -- a file now, not the link
            assert.equal("someone else's\n", read(victim))
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

    -- Strings from a server, in human output and in --json. A test nginx
    -- plays the API; its answers, chosen by the token, put control bytes
    -- in every string the CLI prints.
    describe("text from the server", function()
        local server, endpoint
        -- ESC sequences (clear the screen, red, a window title ended by BEL),
        -- a CR and an LF that forge lines of ours, a tab, DEL, a C1 CSI in
        -- UTF-8, a right-to-left override, a backslash
        local HOSTILE = "IN_PROGRESS\27[2J\27[31mred\27]0;title\7\rstate: COMPLETE\n"
            .. "https://evil.example/forged\t\127\194\155" .. "31m\226\128\174gnp.exe\\x1b"
        local SHOWN = [[IN_PROGRESS\x1b[2J\x1b[31mred\x1b]0;title\x07\rstate: COMPLETE\n]]
            .. [[https://evil.example/forged\t\x7f\u{9b}31m\u{202e}gnp.exe\\x1b]]
        local ID = "job\27[8m\r\nstate: COMPLETE\194\155" .. "0m"
        local ID_SHOWN = [[job\x1b[8m\r\nstate: COMPLETE\u{9b}0m]]
        local BAD_UTF8 = "https://evil.example/\255\254\192\175"

        lazy_setup(function()
            local bodies = {
                job = cjson.encode({ archiveJobId = ID, accessType = HOSTILE }),
                state = cjson.encode({ state = HOSTILE, urls = { HOSTILE, BAD_UTF8 }, exportTime = HOSTILE }),
                failed = cjson.encode({ state = "FAILED" }),
                access = cjson.encode({ oneTimeResources = { HOSTILE } }),
            }
            local handler = "local BODIES = {\n"
            for k, v in pairs(bodies) do handler = handler .. ("    %s = %q,\n"):format(k, v) end
            handler = handler .. [==[
}
local token = (ngx.var.http_authorization or ""):match("^Bearer (%S+)$") or ""
local uri = ngx.var.uri
local body
if uri:find(":initiate$") or uri:find(":retry$") then
    body = BODIES.job
elseif uri:find("/portabilityArchiveState$") then
    body = token:find("^ya29%.failed") and BODIES.failed or BODIES.state
elseif uri:find("accessType:check$") then
    body = BODIES.access
end
ngx.header["Content-Type"] = "application/json; charset=UTF-8"
if not body then
    ngx.status = 404
    body = '{"error": {"code": 404, "message": "Method not found.", "status": "NOT_FOUND"}}'
end
ngx.print(body)
]==]
            server = assert(nginx.start({
                watch = tonumber((nginx.sh("echo $PPID"):gsub("%s", ""))),
                prepare = function(d) return nginx.write_file(d .. "/hostile-cli.lua", handler) end,
                http = function(srv)
                    return ("    server {\n        listen 127.0.0.1:%d;\n"
                        .. "        location / { content_by_lua_file %s/hostile-cli.lua; }\n    }\n")
                        :format(srv.ports[1], srv.dir)
                end,
            }))
            endpoint = "http://127.0.0.1:" .. server.ports[1]
        end)
        lazy_teardown(function()
            if server then assert(server:stop()) end
        end)

        local function hostile(args, mode)
            local t = "ya29." .. (mode or "hostile") .. "-" .. nginx.random_hex(16)
            secrets[#secrets + 1] = t
            table.insert(args, 1, endpoint)
            table.insert(args, 1, "--endpoint")
            return cli(args, { token = t, emulator = false })
        end

        it("state: escaped in human output, one line per line; exact in --json", function()
            local out, err, code = hostile({ "state", "job1" })
            assert.equal(0, code, err)
            assert.equal("", err)
            assert.falsy(raw_control(out))
            assert.equal("state: " .. SHOWN .. "\nexport time: " .. SHOWN .. "\n" .. SHOWN .. "\n"
                .. [[https://evil.example/\xff\xfe\xc0\xaf]] .. "\n", out)

            out, err, code = hostile({ "--json", "state", "job1" })
            assert.equal(0, code, err)
            assert.falsy(raw_control(out))
            assert.equal(1, select(2, out:gsub("\n", ""))) -- one line
            local doc = json_of(out)
            assert.equal(HOSTILE, doc.state)
            assert.equal(HOSTILE, doc.export_time)
            assert.equal(HOSTILE, doc.urls[1])
            -- not UTF-8: each such byte is U+FFFD, so that the JSON text is UTF-8
            assert.equal("https://evil.example/" .. ("\239\191\189"):rep(4), doc.urls[2])
            -- the C1 and bidirectional controls as escapes, inert on a terminal
            assert.truthy(out:find("\\u009b", 1, true), out)
            assert.truthy(out:find("\\u202e", 1, true), out)
            assert.is_nil(out:find("\226\128\174", 1, true))
        end)

        it("initiate, retry, access-type: the job id, access type and groups escaped", function()
            local out, err, code = hostile({ "initiate", "myactivity.youtube" })
            assert.equal(0, code, err)
            assert.falsy(raw_control(out))
            assert.equal("job " .. ID_SHOWN .. " started (" .. SHOWN .. ")\n", out)

            out, err, code = hostile({ "retry", "job1" })
            assert.equal(0, code, err)
            assert.equal("job " .. ID_SHOWN .. " started (retry of job1) (" .. SHOWN .. ")\n", out)

            out, err, code = hostile({ "access-type" })
            assert.equal(0, code, err)
            assert.equal("one-time: " .. SHOWN .. "\ntime-based: (none)\n", out)

            out = hostile({ "--json", "initiate", "myactivity.youtube" })
            assert.falsy(raw_control(out))
            assert.same({ archive_job_id = ID, access_type = HOSTILE }, json_of(out))
        end)

        it("export: progress lines and the hints on stderr escaped", function()
            local dir = tmp .. "/export-h"
            -- a job that never ends: its state printed, then --max-wait runs out
            local out, err, code = hostile({ "export", "myactivity.youtube", "--dir", dir,
                                             "--max-wait", "1" })
            assert.equal(3, code, err)
            assert.falsy(raw_control(out))
            assert.falsy(raw_control(err))
            assert.equal("job " .. ID_SHOWN .. " started (" .. SHOWN .. ")\nstate: " .. SHOWN .. "\n", out)
            assert.truthy(err:find("\nthe job is kept: to resume, run the same command with --job "
                .. ID_SHOWN .. "\n", 1, true), err)
            assert.equal(2, select(2, err:gsub("\n", ""))) -- the error, the hint

            -- a job that FAILED: the hint to retry it
            out, err, code = hostile({ "export", "myactivity.youtube", "--dir", dir }, "failed")
            assert.equal(1, code, err)
            assert.falsy(raw_control(out))
            assert.falsy(raw_control(err))
            assert.truthy(err:find("\nto run it again: dataportability retry " .. ID_SHOWN .. "\n", 1, true),
                err)
            assert.equal(2, select(2, err:gsub("\n", "")))

            out, err = hostile({ "--json", "export", "myactivity.youtube", "--dir", dir }, "failed")
            assert.equal("", err)
            assert.falsy(raw_control(out))
            assert.equal(ID, json_of(out).error.job_id)
        end)

        it("an error's message (the emulator's status fault): escaped on stderr, exact in --json", function()
            local message = "refused \27[31mred\rforged\nline \194\155" .. "2J \226\128\174end"
            emu:set_fault({ action = "status", status = 400, message = message, count = 2,
                            path = "/v1/authorization:reset" })
            local out, err, code = cli({ "reset" }, { token = token() })
            assert.equal(1, code)
            assert.equal("", out)
            assert.falsy(raw_control(err))
            assert.matches("red.*forged.*line.*2J.*end\n$", err)
            assert.equal(1, select(2, err:gsub("\n", "")))

            out, err, code = cli({ "--json", "reset" }, { token = token() })
            assert.equal(1, code)
            assert.equal("", err)
            assert.falsy(raw_control(out))
            local e = json_of(out).error
            assert.equal(400, e.http_status)
            -- the error table's message as the library made it (one line), byte for byte
            assert.matches("\194\155" .. "2J \226\128\174end$", e.message)
        end)
    end)

    describe("secret files", function()
        local CREDENTIALS = '{"client_id": "c", "refresh_token": "1//0-not-a-real-refresh-token"}'
        for _, mode in ipairs({ "644", "640" }) do
            it("a --token-file of mode 0" .. mode .. " is refused (exit 4), with the chmod to run", function()
                local file = tmp .. "/token-" .. mode
                write_secret(file, token() .. "\n", mode)
                local out, err, code = cli({ "reset", "--token-file", file })
                assert.equal(4, code, err)
                assert.equal("", out)
                local too_open = "io: permissions 0" .. mode .. " for '" .. file .. "' are too open"
                assert.truthy(err:find(too_open, 1, true), err)
                assert.truthy(err:find("run: chmod 600 " .. file .. "\n", 1, true), err)
                out, err, code = cli({ "--json", "reset", "--token-file", file })
                assert.equal(4, code, err)
                assert.equal("io", json_of(out).error.kind)
            end)

            it("a --credentials file of mode 0" .. mode .. " is refused the same way", function()
                local file = tmp .. "/credentials-" .. mode .. ".json"
                write_secret(file, CREDENTIALS, mode)
                local out, err, code = cli({ "reset", "--credentials", file })
                assert.equal(4, code, err)
                assert.equal("", out)
                local too_open = "io: permissions 0" .. mode .. " for '" .. file .. "' are too open"
                assert.truthy(err:find(too_open, 1, true), err)
                assert.truthy(err:find("run: chmod 600 " .. file .. "\n", 1, true), err)
            end)
        end

        it("a --client-secret-file of mode 0644 is refused before login listens", function()
            local file = tmp .. "/client-secret-644"
            write_secret(file, "GOCSPX-not-a-real-client-secret\n", "644")
            local out, err, code = cli({ "login", "--client-id", "c", "--client-secret-file", file,
                                         "--scopes", "myactivity.youtube", "--credentials",
                                         tmp .. "/never-644.json", "--wait", "0.3" })
            assert.equal(4, code, err)
            assert.equal("", out)
            assert.truthy(err:find("permissions 0644 for '" .. file .. "' are too open", 1, true), err)
            assert.truthy(err:find("run: chmod 600 " .. file .. "\n", 1, true), err)
            assert.is_nil(err:find("Open this URL", 1, true))
        end)

        it("a link is judged by the file it leads to, as reading it would be", function()
            local target, link = tmp .. "/token-target", tmp .. "/token-link"
            write_secret(target, token() .. "\n")
            assert(os.execute("ln -s " .. q(target) .. " " .. q(link)))
            local out, err, code = cli({ "reset", "--token-file", link })
            assert.equal(0, code, err)
            assert.equal("reset: done\n", out)
            write_secret(target, token() .. "\n", "644")
            out, err, code = cli({ "reset", "--token-file", link })
            assert.equal("", out)
            assert.equal(4, code, err)
            assert.truthy(err:find("permissions 0644 for '" .. link .. "' are too open", 1, true), err)
        end)

        it("a pipe is read without a mode check (--token-file /dev/stdin)", function()
            local file = tmp .. "/token-for-pipe"
            write_secret(file, token() .. "\n", "644")
            local out = sh("(" .. env_lines({}) .. "cat " .. q(file) .. " | " .. LUA .. " " .. BIN
                .. " reset --token-file /dev/stdin 2>&1); echo \"::rc=$?\"")
            seen[#seen + 1] = out
            assert.equal("reset: done\n::rc=0\n", out)
        end)

        it("files of mode 0600 are used", function()
            local file = tmp .. "/token-600"
            write_secret(file, token() .. "\n")
            local out, err, code = cli({ "reset", "--token-file", file })
            assert.equal(0, code, err)
            assert.equal("reset: done\n", out)
            -- a credentials file 0600 goes as far as the token endpoint, which does not know it
            file = tmp .. "/credentials-600.json"
            write_secret(file, CREDENTIALS)
            out, err, code = cli({ "--json", "reset", "--credentials", file })
            assert.equal(1, code, err)
            assert.equal("api", json_of(out).error.kind)
        end)
    end)

    describe("an argument that looks like a token", function()
        local function fake(prefix)
            local t = prefix .. nginx.random_hex(8) .. "AbC" .. nginx.random_hex(8)
            secrets[#secrets + 1] = t
            return t
        end

        it("is never echoed, wherever it was put, and the message says how to give a token", function()
            local access, refresh, generic = fake("ya29.a0"), fake("1//0g"), fake("Zz")
            local short = "ya29.Q" .. nginx.random_hex(4) -- short enough for the old quoting rules
            local secret = fake("GOCSPX-")
            secrets[#secrets + 1] = short
            local dir = tmp .. "/token-args"
            local cases = {
                { { "initiate", access }, 4, access },
                { { "initiate", "myactivity.youtube," .. generic }, 4, generic },
                { { "export", short, "--dir", dir }, 4, short },
                { { "initiate", "myactivity.youtube", "--start", access }, 4, access },
                { { "state", access .. "/x" }, 4, access },
                { { "cancel", refresh }, 4, refresh },
                { { "export", "--job", access, "--dir", dir }, 4, access },
                { { "reset", "--token-file", access }, 4, access },
                { { "reset", "--credentials", refresh }, 4, refresh },
                { { "login", "--client-id", "c", "--client-secret-file", secret, "--scopes",
                    "myactivity.youtube", "--credentials", tmp .. "/never.json", "--wait", "0.3" },
                  4, secret },
                { { "login", "--client-id", "c", "--scopes", short, "--credentials", tmp .. "/never.json",
                    "--wait", "0.3" }, 4, short },
                { { generic }, 2, generic },
                { { "--timeout", "ya29.1", "reset" }, 2, "ya29.1" },
            }
            for _, c in ipairs(cases) do
                local out, err, code = cli(c[1], { token = token() })
                local label = table.concat(c[1], " ") .. ": " .. err
                assert.equal(c[2], code, label)
                assert.is_nil((out .. err):find(c[3], 1, true), label)
                assert.truthy(err:find("an argument that looks like a token (not shown)", 1, true), label)
                assert.truthy(err:find("DATAPORTABILITY_TOKEN", 1, true), label)
                assert.truthy(err:find("--token-file FILE", 1, true), label)
            end
        end)

        it("a job id that is a token is refused before any request", function()
            emu:clear_requests()
            local access = fake("ya29.a0")
            for _, command in ipairs({ "state", "retry", "cancel" }) do
                local _, err, code = cli({ "--json", command, access }, { token = token() })
                assert.equal(4, code, err)
            end
            assert.same({}, emu:requests())
        end)
    end)

    -- The CLI runs no other program, and needs luv only for login: here
    -- io.popen and os.execute raise, and luv cannot be loaded.
    describe("without a shell or luv", function()
        local PRELUDE = "package.preload.luv = function() error('luv hidden by the spec') end "
            .. "io.popen = function() error('the CLI ran a shell') end "
            .. "os.execute = function() error('the CLI ran a shell') end"

        it("checks a secret file's mode, makes --dir 0700 and exports into it", function()
            emu:configure({ files = { { name = "a.zip", size = 2048 } } })
            local file = tmp .. "/token-noshell"
            write_secret(file, token() .. "\n")
            local dir = tmp .. "/export-noshell"
            local out, err, code = cli({ "export", "myactivity.youtube", "--dir", dir, "--token-file", file,
                                         "--ca-file", emu.ca_file, "--no-reset" }, { prelude = PRELUDE })
            assert.equal(0, code, err)
            assert.equal("700", mode_of(dir))
            assert.equal(2048, #read(file_line(out, "a.zip")))
            assert(os.execute("chmod 644 " .. q(file)))
            out, err, code = cli({ "--json", "reset", "--token-file", file }, { prelude = PRELUDE })
            assert.equal(4, code, err)
            assert.matches("permissions 0644", json_of(out).error.message)
        end)

        it("login says that it needs luv (exit 4)", function()
            local out, err, code = cli({ "login", "--client-id", "c", "--scopes", "myactivity.youtube" },
                                       { prelude = PRELUDE })
            assert.equal(4, code, err)
            assert.equal("", out)
            assert.matches("login needs luv", err)
        end)
    end)

    it("runs in process: require('dataportability.cli').main(argv, sys) returns the exit code", function()
        local main = require("dataportability.cli").main
        local out, err = io.tmpfile(), io.tmpfile()
        local sys = { stdout = out, stderr = err, getenv = function() return nil end }
        local function text(f)
            f:seek("set")
            return f:read("*a")
        end
        assert.equal(0, main({ "scopes", "--json" }, sys))
        assert.equal("alerts.subscriptions", json_of(text(out)).scopes[1].resource)
        assert.equal(2, main({ "state" }, sys))
        assert.matches("^dataportability: state needs JOB\n", text(err))
        out:close()
        err:close()
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
