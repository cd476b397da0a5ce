-- OAuth with the emulator's endpoints: a consent URL with PKCE, the code
-- exchange, refresh and revocation; secrets never in errors.
local dp = require("dataportability")
local core = require("dataportability.core")
local helpers = require("spec.helpers")
local cjson = require("cjson.safe")

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

    describe("a token source's secrets", function()
        -- What a source shows of itself to code that does not ask for a
        -- secret by name: its pairs, its JSON, its tostring, and a dump
        -- that walks every table it reaches, metatables too (as inspect.lua
        -- does).
        local function shown(source)
            local out, seen = {}, {}
            local function walk(v)
                if type(v) ~= "table" then
                    out[#out + 1] = tostring(v)
                    return
                end
                if seen[v] then return end
                seen[v] = true
                for k, x in pairs(v) do
                    walk(k)
                    walk(x)
                end
                if getmetatable(v) then walk(getmetatable(v)) end
            end
            walk(source)
            local json, why = cjson.encode(source)
            out[#out + 1] = json or why
            out[#out + 1] = tostring(source)
            return table.concat(out, "\n"), json
        end

        -- Neither any secret nor 8 bytes of one in a row in what it shows.
        local function hides(source, secrets, label)
            local text, json = shown(source)
            for _, secret in ipairs(secrets) do
                for i = 1, #secret - 7 do
                    local window = secret:sub(i, i + 7)
                    assert.is_nil(text:find(window, 1, true), label .. ": shows " .. window)
                end
            end
            assert.is_string(json, label .. ": cjson.encode") -- nothing it cannot encode either
            for _, name in ipairs({ "client_secret", "refresh_token", "access_token" }) do
                assert.is_nil(rawget(source, name), label .. ": " .. name)
            end
        end

        it("are out of its table through exchange, token, refresh, forget and revoke", function()
            local url, meta = consent_url()
            local source = assert(exchange(url, meta))
            local c = dp.new({ endpoint = emu.endpoint })
            local seen = { SECRET }
            local function all()
                for _, name in ipairs({ "refresh_token", "access_token" }) do
                    if source[name] then seen[#seen + 1] = source[name] end
                end
                return seen
            end
            hides(source, all(), "exchanged")
            assert.is_string(source.refresh_token)
            assert(c:check_access_type(source))
            local first = assert(source:token())
            hides(source, all(), "token")
            local second = assert(source:refresh())
            assert.are_not.equal(first, second)
            hides(source, all(), "refreshed")
            source:forget()
            assert.is_nil(source.access_token)
            local third = assert(source:token()) -- forgotten: refreshed again
            assert.are_not.equal(second, third)
            hides(source, all(), "forgotten, then token")
            assert(c:check_access_type(source))
            assert.is_true(source:revoke())
            assert.is_nil(source.refresh_token)
            hides(source, all(), "revoked")
            local ok, err = c:check_access_type(third)
            assert.is_nil(ok)
            assert.equals(401, err.http_status)
            c:close()
        end)

        it("are read by name, and set only to a valid token, which an error never quotes", function()
            local refresh = "1//0g" .. core.random_base64url(48) .. core.random_base64url(25) -- 103 bytes
            emu:add_token(nil, { dp.scope_for(GROUP) }, { refresh_token = refresh })
            local o = endpoints()
            o.client_id, o.client_secret, o.refresh_token = "cid", SECRET, refresh
            local source = dp.token_source(o)
            hides(source, { SECRET, refresh }, "made")
            assert.equals(refresh, source.refresh_token)
            assert.equals(SECRET, source.client_secret)
            assert.is_nil(source.access_token)
            local ok, why = pcall(function() source.refresh_token = "bad token\r\n" .. refresh end)
            assert.is_false(ok)
            assert.matches("'refresh_token' must be a valid token", why)
            assert.is_nil(why:find("bad token", 1, true))
            assert.is_nil(why:find(refresh, 1, true))
            assert.equals(refresh, source.refresh_token)
            local access = assert(source:token())
            hides(source, { SECRET, refresh, access }, "refreshed")
            source.refresh_token = nil
            assert.matches("no refresh token", select(2, source:refresh()).message)
            assert.matches("%(no refresh token%)$", tostring(source))
        end)
    end)
end)
