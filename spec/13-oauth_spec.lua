-- OAuth with the emulator's endpoints: a consent URL with PKCE, the code
-- exchange, refresh and revocation; secrets never in errors.
local dp = require("dataportability")
local core = require("dataportability.core")
local helpers = require("spec.helpers")

local GROUP = "myactivity.youtube"
local REDIRECT = "http://127.0.0.1:1/callback"
local SECRET = "GOCSPX-spec-secret"

describe("OAuth", function()
    local emu

    lazy_setup(function()
        emu = helpers.start()
        emu:add_client({ client_id = "cid", client_secret = SECRET, redirect_uris = { REDIRECT } })
    end)
    lazy_teardown(function() helpers.stop(emu) end)

    local function endpoints()
        return { token_endpoint = emu.endpoint .. "/token", revoke_endpoint = emu.endpoint .. "/revoke" }
    end

    local function consent_url(scopes)
        return dp.authorization_url({ client_id = "cid", redirect_uri = REDIRECT,
            scopes = scopes or { GROUP }, endpoint = emu.endpoint .. "/o/oauth2/v2/auth" })
    end

    -- The consent step, automated by the emulator: its 302's query.
    local function consent(url)
        local p = io.popen("curl -s -o /dev/null -w '%{redirect_url}' '" .. url .. "'")
        local location = p:read("*a")
        p:close()
        local query = {}
        for k, v in (location:match("%?(.*)$") or ""):gmatch("([^&=]+)=([^&]*)") do
            query[k] = v:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
        end
        return query
    end

    local function exchange(url, meta, overrides)
        local q = consent(url)
        assert.equals(meta.state, q.state)
        local o = endpoints()
        o.client_id, o.client_secret, o.code, o.redirect_uri, o.code_verifier =
            "cid", SECRET, q.code, REDIRECT, meta.code_verifier
        for k, v in pairs(overrides or {}) do o[k] = v end
        return dp.exchange_code(o)
    end

    it("builds a consent URL with PKCE S256", function()
        local url, meta = consent_url({ GROUP, dp.scope_for("myactivity.search") })
        assert.equals(43, #meta.code_verifier)
        assert.matches("code_challenge=" .. core.sha256_base64url(meta.code_verifier), url, 1, true)
        assert.matches("code_challenge_method=S256", url, 1, true)
        local scope = "https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fdataportability.myactivity.youtube"
        assert.matches("scope=" .. scope .. "%20", url, 1, true)
        assert.matches("state=" .. meta.state, url, 1, true)
        assert.has_error(function() dp.authorization_url({ client_id = "cid", redirect_uri = REDIRECT,
            scopes = { "drive" } }) end,
            "authorization_url: option 'scopes' must list dataportability resource groups or scope URLs;"
            .. " [1] is 'drive'")
    end)

    it("exchanges the code, then uses, refreshes and revokes the tokens", function()
        local url, meta = consent_url()
        local source = assert(exchange(url, meta))
        local c = dp.new({ endpoint = emu.endpoint })
        local access = assert(c:check_access_type(source))
        assert.same({ GROUP }, access.one_time_resources)
        local first = assert(source:token())
        local second = assert(source:refresh())
        assert.are_not.equal(first, second)
        assert.is_true(source:revoke())
        local ok, err = c:check_access_type(second)
        assert.is_nil(ok)
        assert.equals(401, err.http_status)
        c:close()
    end)

    it("checks the exchange's options before any I/O, blaming the caller", function()
        local before = #emu:requests()
        local o = endpoints()
        o.client_id, o.client_secret, o.code, o.redirect_uri = "cid", SECRET, "c0de", REDIRECT
        local ok, err = pcall(function() dp.exchange_code(o) end)
        assert.is_false(ok)
        assert.matches("13%-oauth_spec%.lua:%d+: exchange_code: option 'code_verifier' is required$", err)
        o.code_verifier, o.scope = ("v"):rep(43), GROUP
        assert.has_error(function() dp.exchange_code(o) end, "exchange_code: unknown option 'scope'")
        assert.equals(before, #emu:requests())
    end)

    it("refuses a wrong PKCE verifier, without the secrets in the error", function()
        local url, meta = consent_url()
        local wrong = core.random_base64url(32)
        local ok, err = exchange(url, meta, { code_verifier = wrong })
        assert.is_nil(ok)
        assert.equals("api", err.kind)
        assert.equals("invalid_grant", err.status)
        assert.equals("oauth.token", err.method)
        assert.is_false(helpers.contains(err, SECRET))
        assert.is_false(helpers.contains(err, wrong))
    end)
end)
