-- OAuth 2.0 with Google (https://developers.google.com/identity/protocols/oauth2): token sources
-- that refresh and cache access tokens, consent URLs with PKCE (S256), the
-- authorization-code exchange and revocation. Client secrets and refresh
-- tokens obey the access token's rules: checked before any I/O, copied
-- into C only to be wiped, never in an error (not even 8 bytes of one in a
-- row, errors.redact), a log line or tostring, and kept out of a token
-- source's table (pairs and cjson.encode show none).
local core = require("dataportability.core")
local errors = require("dataportability.errors")
local scopes = require("dataportability.scopes")
local options = require("dataportability.options")
local transport = require("dataportability.transport")
local async = require("dataportability.async")
local json = require("cjson.safe")

local type, pairs, ipairs, tonumber, error, setmetatable, getmetatable, rawget = type, pairs, ipairs,
    tonumber, error, setmetatable, getmetatable, rawget
local format, gsub, byte, concat = string.format, string.gsub, string.byte, table.concat

local _M = {}

local GOOGLE = {
    token = "https://oauth2.googleapis.com/token",
    revoke = "https://oauth2.googleapis.com/revoke",
    auth = "https://accounts.google.com/o/oauth2/v2/auth",
}
local EARLY = 60 -- seconds before expiry when a cached access token is renewed

-- Google's endpoints, or the emulator's when DATAPORTABILITY_EMULATOR_HOST is set.
local EMULATOR_PATHS = { token = "/token", revoke = "/revoke", auth = "/o/oauth2/v2/auth" }

-- level: what the caller would give error() (a malformed emulator host raises).
local function default_url(which, fname, level)
    local host = transport.emulator_host(fname, level + 1)
    if host then
        return "http://" .. host .. EMULATOR_PATHS[which]
    end
    return GOOGLE[which]
end

local function escape(s)
    return (gsub(s, "[^%w%-._~]", function(c) return format("%%%02X", byte(c)) end))
end

-- application/x-www-form-urlencoded from {name, value} pairs, in order.
local function encode(fields)
    local parts = {}
    for _, f in ipairs(fields) do
        if f[2] ~= nil then parts[#parts + 1] = escape(f[1]) .. "=" .. escape(f[2]) end
    end
    return concat(parts, "&")
end

-- A secret must pass the bearer token rules; the reason never quotes it.
local function token_rules(v)
    local ok, why = core.check_token(v)
    if not ok then return "is not a valid token: " .. why end
end

-- The transport for the endpoint URL of option `name` (or its default),
-- and the URL's path. level: what the caller would give error().
local function endpoint(o, name, which, fname, level)
    local url = o[name] or default_url(which, fname, level + 1)
    local base, path = url:match("^(https?://[^/?#]+)(/[^?#]*)$")
    if not base then
        error(format("%s: option '%s' must be an absolute http(s) URL with a path, got '%s'", fname, name,
            url), level + 1)
    end
    local t = transport.new({ endpoint = base, ca_file = o.ca_file, timeout = o.timeout,
                              user_agent = o.user_agent }, fname, level + 1, name)
    return t, path
end

local function now()
    local ngx = rawget(_G, "ngx")
    if type(ngx) == "table" and ngx.now then return ngx.now() end
    return os.time()
end

-- A form POST's answer (the seven values of docs/transport.md): the
-- decoded JSON or nil, err. `secrets` (a list, maybe with holes) are
-- redacted from anything the server sends back, before it is decoded or
-- cut (errors.redact: any 8 bytes of one in a row).
local function answer(method, secrets, status, body, content_type, retry_after, kind, message, sent)
    if not status then
        return nil, errors.new(method, kind, message and errors.redact(message, secrets),
            { sent = sent ~= "no" })
    end
    if status ~= 200 then
        return nil, errors.from_response(method, status, body, content_type, retry_after, secrets)
    end
    local doc = body == "" and {} or json.decode(errors.redact(body, secrets))
    if type(doc) ~= "table" then
        return nil, errors.new(method, "http", "HTTP 200 with a body that is not a JSON object",
            { http_status = status })
    end
    return errors.scrub(doc, secrets) -- what JSON escapes hid
end

local function post(t, path, fields, method, secrets)
    return answer(method, secrets, t:request("POST", path, nil, encode(fields), "form"))
end

-- The same on an event loop: done(doc) or done(nil, err), later.
local function post_async(driver, t, path, fields, method, secrets, done)
    driver:start(t, "POST", path, nil, encode(fields), function(...) done(answer(method, secrets, ...)) end,
        "form")
end

---------------------------------------------------------------------------
-- Token sources

local Source = { __name = "dataportability.token_source" }

-- What a source keeps out of its own table, so that pairs(), cjson.encode
-- and dumps of it show none of its secrets: the client secret, the
-- refresh and access tokens, and its endpoints' transports and paths.
-- Keyed by the source, weakly: it goes with its source.
local private = setmetatable({}, { __mode = "k" })
local HIDDEN = { client_secret = "secret", refresh_token = "secret", access_token = "secret",
                 token_transport = true, revoke_transport = true, token_path = true, revoke_path = true }

-- source.refresh_token and the like are still read by name (the CLI saves
-- the refresh token a login got), and set: a secret must pass the token
-- rules, checked without quoting it.
function Source.__index(self, k)
    local method = Source[k]
    if method ~= nil then return method end
    if HIDDEN[k] then return private[self][k] end
end

function Source.__newindex(self, k, v)
    if not HIDDEN[k] then return rawset(self, k, v) end
    if HIDDEN[k] == "secret" and v ~= nil and (type(v) ~= "string" or not core.check_token(v)) then
        error(format("token source: '%s' must be a valid token", k), 2)
    end
    private[self][k] = v
end

function _M.is_source(x)
    return getmetatable(x) == Source
end

function Source:__tostring()
    return format("dataportability.token_source: client %s%s", self.client_id,
        private[self].refresh_token and "" or " (no refresh token)")
end

-- Keeps the answer of a token request.
local function take(self, doc, method)
    if type(doc.access_token) ~= "string" or not core.check_token(doc.access_token) then
        return nil, errors.new(method, "http", "the token endpoint gave no valid access token")
    end
    local p = private[self]
    p.access_token = doc.access_token
    self.expires_at = now() + (tonumber(doc.expires_in) or 3600)
    if type(doc.refresh_token) == "string" and core.check_token(doc.refresh_token) then
        p.refresh_token = doc.refresh_token
    end
    self.scope = type(doc.scope) == "string" and doc.scope or self.scope
    return p.access_token
end

local function no_refresh_token()
    return errors.new("oauth.token", "invalid_token", "no refresh token to renew the access token with")
end

local function refresh_fields(self, p)
    return { { "grant_type", "refresh_token" }, { "refresh_token", p.refresh_token },
             { "client_id", self.client_id }, { "client_secret", p.client_secret } }
end

--- source:refresh() -> access token | nil, err: a new one, now.
function Source:refresh()
    local p = private[self]
    if not p.refresh_token then return nil, no_refresh_token() end
    local doc, err = post(p.token_transport, p.token_path, refresh_fields(self, p), "oauth.token",
        { p.refresh_token, p.client_secret })
    if not doc then return nil, err end
    return take(self, doc, "oauth.token")
end

local function check_callback(callback, fname)
    if type(callback) ~= "function" then
        error(format("bad argument #1 to '%s' (function expected, got %s)", fname, type(callback)), 3)
    end
    if transport.in_nginx() then
        error(fname .. ": asynchronous calls are for event loops outside nginx; in OpenResty "
            .. fname:gsub("_async$", "") .. " does not block", 3)
    end
end

--- source:refresh_async(callback): the same on the event loop of the
--- source's `driver` option (default: Neovim's, else luv's);
--- callback(access) or callback(nil, err), later.
function Source:refresh_async(callback)
    check_callback(callback, "refresh_async")
    local p = private[self]
    self.driver = self.driver or async.default_driver()
    if not p.refresh_token then return self.driver:settle(callback, nil, no_refresh_token()) end
    if p.waiting then -- one refresh at a time: its answer is everyone's
        p.waiting[#p.waiting + 1] = callback
        return
    end
    p.waiting = { callback }
    local started, raised = pcall(post_async, self.driver, p.token_transport, p.token_path,
        refresh_fields(self, p), "oauth.token", { p.refresh_token, p.client_secret }, function(doc, err)
            local waiting, access, failure = p.waiting, nil, nil
            p.waiting = nil
            if doc then access, err = take(self, doc, "oauth.token") end
            for _, waiter in ipairs(waiting) do -- each one, even after one raised
                local ok, why = pcall(waiter, access, err)
                if not ok then failure = failure or { why } end
            end
            if failure then error(failure[1], 0) end
        end)
    if not started then -- a hook raised: nothing runs, and nothing waits
        p.waiting = nil
        error(raised, 0)
    end
end

--- source:token() -> access token | nil, err: the cached one until shortly
--- before it expires, then a refreshed one.
function Source:token()
    local access = private[self].access_token
    if access and now() < self.expires_at - EARLY then
        return access
    end
    return self:refresh()
end

--- source:token_async(callback): token() on the event loop: callback(access)
--- or callback(nil, err), later; a refresh, when one is due, never blocks.
function Source:token_async(callback)
    check_callback(callback, "token_async")
    local access = private[self].access_token
    if access and now() < self.expires_at - EARLY then
        self.driver = self.driver or async.default_driver()
        return self.driver:settle(callback, access)
    end
    self:refresh_async(callback)
end

--- The access token is dead (a reset revoked it): the next token() refreshes.
function Source:forget()
    private[self].access_token = nil
    self.expires_at = 0
end

--- source:revoke() -> true | nil, err: revokes the refresh token (and with
--- it the access tokens), or the access token when there is none.
function Source:revoke()
    local p = private[self]
    local token = p.refresh_token or p.access_token
    if not token then return true end
    local doc, err = post(p.revoke_transport, p.revoke_path, { { "token", token } }, "oauth.revoke",
        { token, p.client_secret })
    if not doc then return nil, err end
    p.refresh_token = nil
    self:forget()
    return true
end

-- A token source's options, and an exchange's (which makes one).
local SOURCE = {
    client_id = "string!", client_secret = { "string", check = token_rules },
    refresh_token = { "string", check = token_rules }, access_token = { "string", check = token_rules },
    expires_at = "number", token_endpoint = "string", revoke_endpoint = "string", ca_file = "string",
    timeout = "number", user_agent = "string",
    driver = { "table", check = function(v)
        if not async.is_driver(v) then return "must be a driver from dp.driver" end
    end },
}
local EXCHANGE = {
    code = { "string!", check = token_rules }, code_verifier = "string!", redirect_uri = "string!",
}
for k, v in pairs(SOURCE) do EXCHANGE[k] = v end
SOURCE, EXCHANGE = options.spec(SOURCE), options.spec(EXCHANGE)

-- A token source from checked options. level: what the caller would give error().
local function new_source(o, fname, level)
    local p = { client_secret = o.client_secret, refresh_token = o.refresh_token,
                access_token = o.access_token }
    p.token_transport, p.token_path = endpoint(o, "token_endpoint", "token", fname, level + 1)
    p.revoke_transport, p.revoke_path = endpoint(o, "revoke_endpoint", "revoke", fname, level + 1)
    local self = setmetatable({ client_id = o.client_id, expires_at = o.expires_at or 0, driver = o.driver },
        Source)
    private[self] = p
    if p.access_token and not o.expires_at then self.expires_at = now() + 3600 end
    return self, p
end

--- dp.token_source{client_id=, client_secret=, refresh_token= [, access_token=,
--- expires_at=, token_endpoint=, revoke_endpoint=, ca_file=, timeout=, user_agent=]}
function _M.token_source(o)
    o = options.check(o, SOURCE, "token_source", 1, 2)
    local source = new_source(o, "token_source", 2) -- not a tail call: errors blame the caller
    return source
end

---------------------------------------------------------------------------
-- Consent

local function scope_url(s)
    return type(s) == "string" and (scopes.resource_for(s) and s or scopes.scope_for(s)) or nil
end

local function code_verifier_rules(v)
    if not v:find("^[%w%-._~]+$") or #v < 43 or #v > 128 then
        return "must be 43 to 128 characters of A-Z a-z 0-9 -._~ (RFC 7636)"
    end
end

local CONSENT = options.spec({
    client_id = "string!", redirect_uri = "string!",
    scopes = { "table!", check = function(list)
        if #list == 0 then return "must not be empty" end
        for i, s in ipairs(list) do
            if not scope_url(s) then
                return format("must list dataportability resource groups or scope URLs; [%d] is %s", i,
                    type(s) == "string" and "'" .. s .. "'" or "a " .. type(s))
            end
        end
    end },
    state = "string", code_verifier = { "string", check = code_verifier_rules }, endpoint = "string",
    login_hint = "string",
})

--- dp.authorization_url{client_id=, redirect_uri=, scopes= [, state=,
--- code_verifier=, endpoint=, login_hint=]} -> url, {state=, code_verifier=}
--- scopes: resource groups ("myactivity.youtube") or scope URLs.
function _M.authorization_url(o)
    o = options.check(o, CONSENT, "authorization_url", 1, 2)
    local wanted = {}
    for i, s in ipairs(o.scopes) do wanted[i] = scope_url(s) end
    local state = o.state or core.random_base64url(16)
    local verifier = o.code_verifier or core.random_base64url(32)
    local url = (o.endpoint or default_url("auth", "authorization_url", 2)) .. "?" .. encode({
        { "response_type", "code" }, { "client_id", o.client_id }, { "redirect_uri", o.redirect_uri },
        { "scope", concat(wanted, " ") }, { "state", state },
        { "code_challenge", core.sha256_base64url(verifier) }, { "code_challenge_method", "S256" },
        { "access_type", "offline" }, { "prompt", "consent" },
        { "login_hint", o.login_hint },
    })
    return url, { state = state, code_verifier = verifier }
end

--- dp.exchange_code{client_id=, client_secret=, code=, redirect_uri=,
--- code_verifier= [, token_endpoint=, revoke_endpoint=, ca_file=, timeout=, user_agent=]}
--- -> token source | nil, err
function _M.exchange_code(o)
    o = options.check(o, EXCHANGE, "exchange_code", 1, 2)
    local source, p = new_source(o, "exchange_code", 2)
    local code, verifier = o.code, o.code_verifier
    local doc, err = post(p.token_transport, p.token_path, {
        { "grant_type", "authorization_code" }, { "code", code }, { "redirect_uri", o.redirect_uri },
        { "client_id", source.client_id }, { "client_secret", p.client_secret },
        { "code_verifier", verifier },
    }, "oauth.token", { code, verifier, p.client_secret })
    if not doc then return nil, err end
    local ok, terr = take(source, doc, "oauth.token")
    if not ok then return nil, terr end
    return source
end

return _M
