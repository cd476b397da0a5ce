--- Google's OAuth 2.0 endpoints, emulated (inside nginx): the consent step
-- (GET /o/oauth2/v2/auth: a consent page for a browser, an immediate
-- redirect for a program; the page's buttons POST back here), the token
-- endpoint (POST /token: authorization_code with PKCE, refresh_token) and
-- POST /revoke. Clients are registered through the admin API.
-- luacheck: globals ngx

local crypto = require("dataportability.emulator.crypto")
local R = require("dataportability.emulator.respond")
local S = require("dataportability.emulator.state")

local concat = table.concat

local _M = {}

local CODE_SECONDS = 600  -- authorization codes live 10 minutes
_M.DEFAULT_EXPIRES_IN = 3600
_M.DEFAULT_USER = "user@example.com"

local function send_oauth(status, tbl, headers)
    ngx.header["Cache-Control"] = "no-cache, no-store, max-age=0, must-revalidate"
    ngx.header["Pragma"] = "no-cache"
    return R.send(status, R.encode(tbl, true) .. "\n", "application/json; charset=utf-8", headers)
end

--- Google's OAuth error shape (not google.rpc.Status).
local function oauth_error(status, err, description)
    return send_oauth(status, { error = err, error_description = description })
end

--- Mints an access token (and a refresh token if asked) for a grant.
-- g: scopes, user, project, access_type, expires_in, grant.
local function mint(g, with_refresh)
    local expires_in = g.expires_in or _M.DEFAULT_EXPIRES_IN
    local access = "ya29.emu-" .. crypto.random_hex(24)
    S.put_access(access, { scopes = g.scopes, user = g.user, project = g.project,
        access_type = g.access_type, grant = g.grant, expires_at = ngx.now() + expires_in })
    local out = { access_token = access, expires_in = expires_in, token_type = "Bearer",
                  scope = concat(g.scopes, " ") }
    if with_refresh then
        out.refresh_token = "1//emu-" .. crypto.random_hex(24)
        S.put_refresh(out.refresh_token, { scopes = g.scopes, user = g.user, project = g.project,
            access_type = g.access_type, grant = g.grant, expires_in = expires_in, client_id = g.project })
    end
    return out
end

-- client_id and client_secret from the form, or HTTP Basic (RFC 6749 2.3.1).
local function client_credentials(args)
    local basic = (ngx.var.http_authorization or ""):match("^%s*[Bb]asic%s+(%S+)")
    local decoded = basic and ngx.decode_base64(basic)
    local id, secret = (decoded or ""):match("^([^:]*):(.*)$")
    if id then return ngx.unescape_uri(id), ngx.unescape_uri(secret) end
    return args.client_id, args.client_secret
end

local function one(v)
    if type(v) == "table" then return v[1] end
    if type(v) == "string" then return v end
end

local function code_grant(args, client_id)
    local code = one(args.code)
    if not code then return oauth_error(400, "invalid_request", "Missing required parameter: code") end
    local rec = S.take_code(code)  -- single use, even when the exchange fails
    if not rec or rec.client_id ~= client_id then
        return oauth_error(400, "invalid_grant", "Malformed auth code.")
    end
    if one(args.redirect_uri) ~= rec.redirect_uri then
        return oauth_error(400, "redirect_uri_mismatch", "Bad Request")
    end
    if rec.challenge then
        local verifier = one(args.code_verifier)
        if not verifier then return oauth_error(400, "invalid_grant", "Missing code verifier.") end
        local derived = rec.method == "S256" and crypto.base64url(crypto.sha256(verifier)) or verifier
        if derived ~= rec.challenge then
            return oauth_error(400, "invalid_grant", "Invalid code verifier.")
        end
    end
    return send_oauth(200, mint(rec, rec.offline))
end

local function refresh_grant(args, client_id, client)
    local token = one(args.refresh_token)
    if not token then
        return oauth_error(400, "invalid_request", "Missing required parameter: refresh_token")
    end
    local rec, status = S.refresh(token)
    -- a refresh token registered by the admin API without client_id takes any client
    if not client and (not rec or rec.client_id) then
        return oauth_error(401, "invalid_client", "The OAuth client was not found.")
    end
    if not rec or status ~= "ok" then
        return oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
    end
    if rec.client_id and rec.client_id ~= client_id then
        return oauth_error(400, "unauthorized_client", "Unauthorized")
    end
    return send_oauth(200, mint(rec, false))
end

--- POST /token (form-encoded).
function _M.token(body)
    if ngx.req.get_method() ~= "POST" then
        return oauth_error(405, "invalid_request", "Invalid request method: use POST.")
    end
    local args = ngx.decode_args(body, 100)
    local grant = one(args.grant_type)
    if grant ~= "authorization_code" and grant ~= "refresh_token" then
        return oauth_error(400, "unsupported_grant_type", "Invalid grant_type: " .. (grant or ""))
    end
    local client_id, secret = client_credentials(args)
    client_id, secret = one(client_id), one(secret)
    if not client_id or client_id == "" then
        return oauth_error(400, "invalid_request", "Could not determine client ID from request.")
    end
    local client = S.client(client_id)
    if client and client.client_secret ~= secret then
        return oauth_error(401, "invalid_client", "Unauthorized")
    end
    if grant == "refresh_token" then return refresh_grant(args, client_id, client) end
    if not client then return oauth_error(401, "invalid_client", "The OAuth client was not found.") end
    return code_grant(args, client_id)
end

--- POST /revoke (form or query `token`): an access or a refresh token, and
-- with it the grant it belongs to.
function _M.revoke(body)
    local token = one(ngx.decode_args(body, 100).token) or one(ngx.req.get_uri_args(100).token)
    if not token then return oauth_error(400, "invalid_request", "Missing required parameter: token") end
    local rec, status = S.access(token)
    if not rec then rec, status = S.refresh(token) end
    if not rec or status ~= "ok" then return oauth_error(400, "invalid_token", "Token expired or revoked") end
    if rec.grant then S.revoke_grant(rec.grant) end
    if rec.kind == "access" then S.revoke_access(token) end
    return send_oauth(200, {})
end

local function redirect(uri, params)
    local q = {}
    for _, kv in ipairs(params) do
        if kv[2] then q[#q + 1] = kv[1] .. "=" .. ngx.escape_uri(kv[2]) end
    end
    local location = uri .. (uri:find("?", 1, true) and "&" or "?") .. concat(q, "&")
    return R.send(302, "<HTML><HEAD><TITLE>Moved Temporarily</TITLE></HEAD><BODY><H1>Moved Temporarily</H1>"
        .. "The document has moved <A HREF=\"" .. R.html_escape(location) .. "\">here</A>.</BODY></HTML>\n",
        R.HTML_TYPE, { Location = location })
end


-- Installed apps (RFC 8252, section 7.3): a registered loopback redirect
-- matches the same URI on any port, as Google allows.
local function same_loopback(registered, uri)
    local function parts(u)
        local host, path = tostring(u):match("^http://(127%.0%.0%.1)[:%d]*(/?.*)$")
        if not host then
            host, path = tostring(u):match("^http://(%[::1%])[:%d]*(/?.*)$")
        end
        return host and (host .. " " .. (path == "" and "/" or path))
    end
    local a = parts(registered)
    return a ~= nil and a == parts(uri)
end

local function consent_error(code, name, text)
    return R.send_html(code, "Error " .. code .. ": " .. name, R.html_escape(text))
end

-- The request parameters a consent page sends back with the user's decision.
local CONSENT_FIELDS = { "response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge",
                         "code_challenge_method", "access_type", "login_hint" }

-- Google's consent screen, in spirit: who asks, for which data, Allow or
-- Cancel. Both buttons POST the request back with `decision`.
local function consent_page(args, client_id, user, scopes)
    local e = R.html_escape
    local items, hidden = {}, {}
    for i, s in ipairs(scopes) do
        items[i] = ("    <li><b>%s</b><br><small>%s</small></li>"):format(e(s:sub(#S.SCOPE_PREFIX + 1)), e(s))
    end
    for _, name in ipairs(CONSENT_FIELDS) do
        local v = one(args[name])
        if v then hidden[#hidden + 1] = ('  <input type=hidden name="%s" value="%s">'):format(name, e(v)) end
    end
    local page = concat({
        "<!DOCTYPE html>", "<html lang=en>", "<meta charset=utf-8>",
        "<title>Sign in - Google Accounts (emulator)</title>",
        "<style>body{font-family:sans-serif;max-width:34em;margin:3em auto}"
            .. "button{font-size:1em;padding:.5em 1.5em;margin-right:1em}</style>",
        "<p><small>Data Portability API emulator: nobody signs in here.</small>",
        ("<h1><span id=client>%s</span> wants to copy some of your Google data</h1>"):format(e(client_id)),
        ("<p>Signed in as <span id=user>%s</span>"):format(e(user)),
        ("<p>If you allow it, %s can export a copy of:"):format(e(client_id)),
        "<ul id=scopes>", concat(items, "\n"), "</ul>",
        "<p>Only allow this if you trust the app. Your data stays in your account; the app gets a copy.",
        '<form method=post action="/o/oauth2/v2/auth">', concat(hidden, "\n"),
        "  <button id=submit_deny_access name=decision value=cancel>Cancel</button>",
        "  <button id=submit_approve_access name=decision value=allow>Allow</button>",
        "</form>", "",
    }, "\n")
    ngx.header["Cache-Control"] = "no-cache, no-store, max-age=0, must-revalidate"
    return R.send(200, page, R.HTML_TYPE, { ["X-Frame-Options"] = "DENY" })
end

--- GET /o/oauth2/v2/auth: a browser navigating here (Sec-Fetch-Mode:
-- navigate) gets the consent page, unless the client was registered with
-- consent = "grant" or "deny"; a program (curl, libcurl, a test) is
-- answered at once, as if the user allowed (or, with "deny", refused).
-- POST: the page's decision, "allow" or "cancel", with the request's fields.
function _M.authorize(body)
    local posted = ngx.req.get_method() == "POST"
    local args = posted and ngx.decode_args(body, 100) or ngx.req.get_uri_args(100)
    local client_id, redirect_uri = one(args.client_id), one(args.redirect_uri)
    local client = client_id and S.client(client_id)
    if not client then return consent_error(401, "invalid_client", "The OAuth client was not found.") end
    local registered = false
    for _, u in ipairs(client.redirect_uris or {}) do
        registered = registered or u == redirect_uri or same_loopback(u, redirect_uri)
    end
    if not registered then
        return consent_error(400, "redirect_uri_mismatch", "You can't sign in to this app because it "
            .. "doesn't comply with Google's OAuth 2.0 policy: redirect_uri=" .. tostring(redirect_uri))
    end
    -- from here on, errors go back to the client, as Google sends them
    local state = one(args.state)
    local function fail(err, description)
        return redirect(redirect_uri, { { "error", err }, { "error_description", description },
                                        { "state", state } })
    end
    if one(args.response_type) ~= "code" then
        return fail("unsupported_response_type", "Invalid response_type: "
            .. tostring(one(args.response_type)))
    end
    local scope = one(args.scope)
    if not scope or not scope:find("%S") then
        return fail("invalid_request", "Missing required parameter: scope")
    end
    local scopes = {}
    for s in scope:gmatch("%S+") do
        -- Data Portability scopes may not be mixed with others
        if s:sub(1, #S.SCOPE_PREFIX) ~= S.SCOPE_PREFIX then
            return fail("invalid_scope", "Invalid scope: " .. s)
        end
        scopes[#scopes + 1] = s
    end
    local challenge, method = one(args.code_challenge), one(args.code_challenge_method) or "plain"
    if challenge and method ~= "S256" and method ~= "plain" then
        return fail("invalid_request", "Invalid code_challenge_method: " .. method)
    end
    local user = one(args.login_hint) or client.user or _M.DEFAULT_USER
    local decision = posted and one(args.decision)
    if posted and decision ~= "allow" and decision ~= "cancel" then
        return consent_error(400, "invalid_request", "decision must be allow or cancel")
    end
    if client.consent == "deny" or decision == "cancel" then return fail("access_denied", nil) end
    if not posted and not client.consent and ngx.var.http_sec_fetch_mode == "navigate" then
        return consent_page(args, client_id, user, scopes)
    end
    local code = "4/emu-" .. crypto.random_hex(24)
    S.put_code(code, {
        client_id = client_id, redirect_uri = redirect_uri, scopes = scopes, project = client_id,
        user = user, access_type = client.access_type,
        expires_in = client.expires_in, grant = S.new_grant(), challenge = challenge, method = method,
        offline = one(args.access_type) == "offline",
    }, CODE_SECONDS)
    return redirect(redirect_uri, { { "state", state }, { "code", code }, { "scope", concat(scopes, " ") } })
end

return _M
