-- The consent-to-reset service of examples/openresty/ end to end: the real
-- emulator, the service in a real nginx (examples/openresty/launch.lua, as
-- `make example-openresty` starts it), and Debian's headless Chromium
-- driven through chromedriver with W3C WebDriver requests (curl). The
-- browser opens the service, follows its consent link, clicks through the
-- emulator's consent page and watches /status until the export is done.
local helpers = require("spec.helpers")
local launch = require("examples.openresty.launch")
local core = require("dataportability.core")
local dp = require("dataportability")
local cjson = require("cjson.safe")

local q, sh = helpers.quote, helpers.sh
local EXPORT_DEADLINE = 180 -- seconds for consent, export and reset: a bound, not an assertion
local USER = "user@example.com" -- the emulator's consenting user
local ELEMENT = "element-6066-11e4-a52e-4f735466cecf" -- W3C WebDriver's element key

local function sleep(seconds) sh("sleep " .. seconds) end

local function mode_of(path)
    return (sh("stat -c %a " .. q(path)):gsub("%s", ""))
end

local function alive(pid)
    return pid and helpers.read("/proc/" .. pid .. "/stat") ~= nil
end

-- Stops a process by its pid, if it is still the one we started (its
-- command line names `mark`): TERM, then KILL.
local function stop_pid(pid, mark)
    local cmdline = pid and helpers.read("/proc/" .. pid .. "/cmdline")
    if not cmdline or not cmdline:find(mark, 1, true) then return end
    sh("kill -TERM " .. pid .. " 2>/dev/null")
    for i = 1, 50 do
        if not alive(pid) then return end
        if i == 40 then sh("kill -KILL " .. pid .. " 2>/dev/null") end
        sleep(0.1)
    end
end

---------------------------------------------------------------------------
-- A browser: chromedriver and the Chromium it starts, by their own pids.

local Browser = {}
Browser.__index = Browser

-- One WebDriver command: its JSON "value", or a raise naming the command.
function Browser:call(method, path, body)
    local out = sh(("curl -s -m 120 -X %s -H 'Content-Type: application/json' %s %s"):format(method,
        body and ("-d " .. q(cjson.encode(body))) or "", q(self.url .. path)))
    local doc = cjson.decode(out)
    if type(doc) ~= "table" or (type(doc.value) == "table" and doc.value.error) then
        error(("webdriver %s %s: %s"):format(method, path, out:sub(1, 500)), 2)
    end
    return doc.value
end

local function start_browser(tmp)
    local b = setmetatable({ profile = tmp .. "/chromium-profile" }, Browser)
    for _ = 1, 5 do -- a random port another program may hold
        local port = 20000 + math.random(0, 40000)
        b.url = "http://127.0.0.1:" .. port
        b.driver = tonumber(sh(("chromedriver --port=%d --log-path=%s >/dev/null 2>&1 & echo $!")
            :format(port, q(tmp .. "/chromedriver.log"))):match("%d+"))
        for _ = 1, 100 do
            local status = cjson.decode(sh("curl -s -m 2 " .. q(b.url .. "/status")))
            if type(status) == "table" and status.value and status.value.ready then break end
            if not alive(b.driver) then break end
            sleep(0.1)
        end
        if alive(b.driver) then break end
    end
    assert(alive(b.driver), "chromedriver did not start: "
        .. (helpers.read(tmp .. "/chromedriver.log") or ""))
    local session = b:call("POST", "/session", { capabilities = { alwaysMatch = {
        browserName = "chrome",
        ["goog:chromeOptions"] = { binary = "/usr/bin/chromium", args = {
            "--headless=new", "--no-sandbox", "--disable-gpu", "--user-data-dir=" .. b.profile } },
    } } })
    b.session = "/session/" .. session.sessionId
    b.chromium = session.capabilities["goog:processID"]
    return b
end

function Browser:go(url) return self:call("POST", self.session .. "/url", { url = url }) end
function Browser:current() return self:call("GET", self.session .. "/url") end

function Browser:find(css)
    return self:call("POST", self.session .. "/element", { using = "css selector", value = css })[ELEMENT]
end

-- A command on the first element `css` selects.
function Browser:on(css, method, command, body)
    return self:call(method, self.session .. "/element/" .. self:find(css) .. "/" .. command, body)
end

function Browser:click(css) return self:on(css, "POST", "click", {}) end
function Browser:text(css) return self:on(css, "GET", "text") end
function Browser:attribute(css, name) return self:on(css, "GET", "attribute/" .. name) end

-- Waits (up to 30 s) until the page's URL matches `pattern`; returns it.
function Browser:wait_for(pattern)
    local url
    for _ = 1, 300 do
        url = self:current()
        if url:find(pattern) then return url end
        sleep(0.1)
    end
    error("the browser is at " .. tostring(url) .. ", not at " .. pattern, 2)
end

-- Ends the session, then stops Chromium and chromedriver by their pids.
function Browser:stop()
    if self.session then pcall(self.call, self, "DELETE", self.session) end
    stop_pid(self.chromium, self.profile)
    stop_pid(self.driver, "chromedriver")
end

---------------------------------------------------------------------------

describe("OpenResty: the consent-to-reset service in headless Chromium #host", function()
    local emu, service, browser, tmp, exports
    local secret = "GOCSPX-" .. helpers.token():gsub("%W", "")

    lazy_setup(function()
        tmp = helpers.tmpdir()
        exports = tmp .. "/exports"
        assert(os.execute("mkdir -m 700 " .. q(exports)))
        emu = helpers.start()
        emu:configure({ job_seconds = 1, files = launch.FILES })
        emu:add_client({ client_id = launch.CLIENT_ID, client_secret = secret,
                         redirect_uris = { launch.REDIRECT_URI } })
        service = assert(launch.start({ emulator = emu, client_secret = secret, dir = exports,
                                        log_level = "info" }))
        browser = start_browser(tmp)
    end)

    lazy_teardown(function()
        if browser then browser:stop() end
        if service then service:stop() end
        helpers.stop(emu)
        if tmp then sh("rm -rf " .. q(tmp)) end
    end)

    local function requests(path)
        local out = {}
        for _, r in ipairs(emu:requests()) do
            if r.path == path then out[#out + 1] = r end
        end
        return out
    end

    -- The consent link's code_challenge, for the log scan at the end.
    local challenges = {}

    -- Opens the service, follows its consent link to the emulator's page.
    local function to_consent_page()
        browser:go(service.url .. "/")
        local href = browser:attribute("#consent", "href")
        challenges[#challenges + 1] = href:match("[?&]code_challenge=([%w_-]+)")
        browser:click("#consent")
        browser:wait_for("/o/oauth2/v2/auth")
    end

    it("refuses a callback whose state is not this browser's: no code is exchanged", function()
        local jar = tmp .. "/cookies"
        local function get(path)
            return sh(("curl -s -o /dev/null -w '%%{http_code}' -b %s -c %s %s"):format(q(jar), q(jar),
                q(service.url .. path)))
        end
        assert.equals("200", get("/")) -- a flow whose state is in the cookie jar
        local state = helpers.read(jar):match("dp_flow%s+(%S+)")
        assert.is_string(state)
        local other = sh("curl -s " .. q(service.url .. "/")):match("state=([%w_-]+)")
        assert.is_string(other)
        assert.are_not.equal(state, other)
        assert.equals("400", get("/callback?code=4%2Femu-x&state=" .. other)) -- another browser's flow
        assert.equals("400", get("/callback?code=4%2Femu-x&state=forged"))
        assert.equals("400", get("/callback?code=4%2Femu-x"))
        assert.equals("400", get("/callback?code=4%2Femu-x&state=" .. state .. "&state=" .. state))
        assert.equals(0, #requests("/token"))
        assert.equals("405", sh("curl -s -o /dev/null -w '%{http_code}' -X POST " .. q(service.url .. "/")))
    end)

    it("shows the emulator's consent page; Cancel comes back as access_denied and starts nothing", function()
        to_consent_page()
        assert.equals(launch.CLIENT_ID, browser:text("#client"))
        assert.equals(USER, browser:text("#user"))
        local scopes = browser:text("#scopes")
        for _, r in ipairs(launch.RESOURCES) do assert.matches(dp.scope_for(r), scopes, 1, true) end
        assert.equals("Allow", browser:text("#submit_approve_access"))
        browser:click("#submit_deny_access")
        browser:wait_for("^" .. service.url:gsub("%p", "%%%0") .. "/callback%?error=access_denied")
        assert.equals("No consent", browser:text("h1"))
        assert.equals(0, #requests("/token"))
        assert.equals(0, #emu:jobs())
    end)

    it("Allow: the code is exchanged, every file downloaded into a private directory, then the reset",
        function()
            -- a token of the same user and client: the reset revokes it too
            local sibling = helpers.token()
            emu:add_token(sibling, { dp.scope_for(launch.RESOURCES[1]) },
                { user = USER, client_id = launch.CLIENT_ID })

            to_consent_page()
            browser:click("#submit_approve_access")
            browser:wait_for("^" .. service.url:gsub("%p", "%%%0") .. "/status$")
            assert.equals(1, #requests("/token"))

            local status
            local deadline = os.time() + EXPORT_DEADLINE
            repeat
                sleep(0.5)
                browser:go(service.url .. "/status?format=json")
                status = cjson.decode(browser:text("pre")) or {}
            until os.time() > deadline or (status.step ~= "exchanging" and status.step ~= "exporting")
            local why = cjson.encode(status) .. "\nnginx's error.log ends:\n"
                .. (helpers.read(service.dir .. "/logs/error.log") or ""):sub(-2000)
            assert.is_nil(status.error, why)
            assert.equals("done", status.step, "after " .. EXPORT_DEADLINE .. " s: " .. why)
            assert.equals("COMPLETE", status.state)
            assert.is_true(status.reset)
            local job_id = status.job_id
            assert.matches("^[%w_-]+$", job_id)

            -- the files /status lists, as the emulator made them
            assert.equals(#launch.FILES, #status.files)
            local listed = {}
            for _, f in ipairs(status.files) do listed[f.name] = f end
            local sessions = sh("ls -A " .. q(exports)):gsub("%s+$", "")
            assert.matches("^[%w_-]+$", sessions) -- one session directory
            local session_dir = exports .. "/" .. sessions
            local job_dir = session_dir .. "/" .. job_id
            assert.equals("700", mode_of(session_dir))
            assert.equals("700", mode_of(job_dir))
            for _, want in ipairs(launch.FILES) do
                local f = listed[want.name]
                assert.is_table(f, want.name)
                assert.is_true(f.complete)
                assert.equals(want.size, f.done)
                assert.equals(want.size, f.total)
                local path = job_dir .. "/" .. want.name
                assert.equals(want.size, helpers.size_of(path))
                assert.equals("600", mode_of(path))
                assert.equals(f.md5, helpers.md5_of(path))
            end
            for name in sh("ls -A " .. q(job_dir)):gmatch("%S+") do
                assert.equals("600", mode_of(job_dir .. "/" .. name), name) -- .part and .json too
            end

            -- the reset: sent once, after the last download; it revoked the user's tokens of this client
            local resets = requests("/v1/authorization:reset")
            assert.equals(1, #resets)
            assert.equals("Bearer <redacted>", resets[1].headers["authorization"])
            local downloads = 0
            for _, r in ipairs(emu:requests()) do
                if r.host:find("^127%.0%.0%.2:") then -- the storage host
                    downloads = downloads + 1
                    assert.is_true(r.time <= resets[1].time)
                end
            end
            assert.is_true(downloads >= #launch.FILES)
            local client = dp.new(helpers.https(emu))
            local _, err = client:check_access_type(sibling)
            assert.equals(401, err and err.http_status)

            -- the bytes are the emulator's: fetched again with a new token of the same user and client
            local fresh = helpers.token()
            emu:add_token(fresh, { dp.scope_for(launch.RESOURCES[1]) },
                { user = USER, client_id = launch.CLIENT_ID })
            local st = assert(client:state(fresh, job_id))
            assert.equals(#launch.FILES, #st.urls)
            for i, url in ipairs(st.urls) do
                local copy = tmp .. "/copy-" .. i
                sh(("curl -s -m 60 --cacert %s -o %s %s"):format(q(emu.ca_file), q(copy), q(url)))
                local name = url:match("^[^?]*/([^/?]+)%?")
                assert.equals(helpers.md5_of(copy), helpers.md5_of(job_dir .. "/" .. name), name)
            end
            client:close()

            -- what a person sees
            browser:go(service.url .. "/status")
            assert.matches("Reset done", browser:text("#reset"), 1, true)
            local files = browser:text("#files")
            for _, want in ipairs(launch.FILES) do assert.matches(want.name, files, 1, true) end
            assert.equals(job_id, browser:text("#job"))
        end)

    it("never writes a token, a code or a verifier to nginx's logs", function()
        local logs = service:logs()
        assert.matches("GET /status", logs, 1, true) -- the access log is there
        for _, secret_like in ipairs({ "ya29.", "1//", "4/emu-", "4%2Femu-", "code=", secret }) do
            assert.is_nil(logs:find(secret_like, 1, true), secret_like)
        end
        -- a PKCE verifier is 43 to 128 of these characters, and hashes to its challenge
        assert.is_true(#challenges > 0)
        for word in logs:gmatch("[%w_~.-]+") do
            if #word >= 43 and #word <= 128 then
                local hash = core.sha256_base64url(word)
                for _, c in ipairs(challenges) do assert.are_not.equal(c, hash, "a verifier in the logs") end
            end
        end
    end)
end)
