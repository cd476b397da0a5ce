-- OAuth 2.0 with Google (shared/reference/api.md, section 7): token sources
-- that refresh and cache access tokens, consent URLs with PKCE (S256), the
-- authorization-code exchange and revocation. Client secrets and refresh
-- tokens obey the access token's rules: checked before any I/O, copied
-- into C only to be wiped, never in an error, a log line or tostring.
local core = require("dataportability.core")
local errors = require("dataportability.errors")
local scopes = require("dataportability.scopes")
local json = require("cjson.safe")

local type, pairs, ipairs, tostring, tonumber, error, setmetatable, getmetatable, rawget = type, pairs,
    ipairs, tostring, tonumber, error, setmetatable, getmetatable, rawget
local format, gsub, byte, concat, getenv = string.format, string.gsub, string.byte, table.concat, os.getenv

local _M = {}

local GOOGLE = {
    token = "https://oauth2.googleapis.com/token",
    revoke = "https://oauth2.googleapis.com/revoke",
    auth = "https://accounts.google.com/o/oauth2/v2/auth",
}
local EARLY = 60 -- seconds before expiry when a cached access token is renewed

-- Google's endpoints, or the emulator's when DATAPORTABILITY_EMULATOR_HOST is set.
local EMULATOR_PATHS = { token = "/token", revoke = "/revoke", auth = "/o/oauth2/v2/auth" }

local function default_url(which)
    local host = getenv("DATAPORTABILITY_EMULATOR_HOST")
    if host and host ~= "" then
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

local function check(o, name, want, fname, optional)
    local v = o[name]
    if v == nil and optional then return nil end
    if type(v) ~= want then
        error(format("%s: option '%s' must be a %s, got %s", fname, name, want, type(v)), 4)
    end
    return v
end

-- A secret must pass the bearer token rules; the reason never quotes it.
local function check_secret(o, name, fname, optional)
    local v = check(o, name, "string", fname, optional)
    if v ~= nil then
        local ok, why = core.check_token(v)
        if not ok then
            error(format("%s: option '%s' is not a valid token: %s", fname, name, why), 4)
        end
    end
    return v
end

-- A client for an endpoint URL with a path: the transport and the path.
local function endpoint(url, o, fname)
    local base, path = tostring(url):match("^(https?://[^/?#]+)(/[^?#]*)$")
    if not base then
        error(fname .. ": endpoint URLs must be absolute, with a path, got '" .. tostring(url) .. "'", 4)
    end
    local c = require("dataportability.client").create({
        endpoint = base, ca_file = o.ca_file, timeout = o.timeout, user_agent = o.user_agent }, fname)
    return c, path
end

local function now()
    local ngx = rawget(_G, "ngx")
    if type(ngx) == "table" and ngx.now then return ngx.now() end
    return os.time()
end

-- POSTs a form; the decoded JSON answer or nil, err. `secrets` are removed
-- from anything the server sends back.
local function post(c, path, fields, method, secrets)
    local status, body, content_type, retry_after =
        c.transport:request("POST", path, nil, encode(fields), "form")
    if not status then
        return nil, errors.new(method, body, content_type)
    end
    for _, s in pairs(secrets) do
        body = errors.redact(body, s)
        content_type = content_type and errors.redact(content_type, s)
        retry_after = retry_after and errors.redact(retry_after, s)
    end
    if status ~= 200 then
        local err = errors.from_response(method, status, body, content_type, retry_after)
        for _, s in pairs(secrets) do errors.scrub(err, s) end -- what JSON escapes hid
        return nil, err
    end
    local doc = body == "" and {} or json.decode(body)
    if type(doc) ~= "table" then
        return nil, errors.new(method, "http", "HTTP 200 with a body that is not a JSON object",
            { http_status = status })
    end
    return doc
end

---------------------------------------------------------------------------
-- Token sources

local Source = { __name = "dataportability.token_source" }
Source.__index = Source

function _M.is_source(x)
    return getmetatable(x) == Source
end

function Source:__tostring()
    return format("dataportability.token_source: client %s%s", self.client_id,
        self.refresh_token and "" or " (no refresh token)")
end

-- Keeps the answer of a token request.
local function take(self, doc, method)
    if type(doc.access_token) ~= "string" or not core.check_token(doc.access_token) then
        return nil, errors.new(method, "http", "the token endpoint gave no valid access token")
    end
    self.access_token = doc.access_token
    self.expires_at = now() + (tonumber(doc.expires_in) or 3600)
    if type(doc.refresh_token) == "string" and core.check_token(doc.refresh_token) then
        self.refresh_token = doc.refresh_token
    end
    self.scope = type(doc.scope) == "string" and doc.scope or self.scope
    return self.access_token
end

--- source:refresh() -> access token | nil, err: a new one, now.
function Source:refresh()
    if not self.refresh_token then
        return nil, errors.new("oauth.token", "invalid_token",
            "no refresh token to renew the access token with")
    end
    local doc, err = post(self.token_client, self.token_path, {
        { "grant_type", "refresh_token" }, { "refresh_token", self.refresh_token },
        { "client_id", self.client_id }, { "client_secret", self.client_secret },
    }, "oauth.token", { self.refresh_token, self.client_secret })
    if not doc then return nil, err end
    return take(self, doc, "oauth.token")
end

--- source:token() -> access token | nil, err: the cached one until shortly
--- before it expires, then a refreshed one.
function Source:token()
    if self.access_token and now() < self.expires_at - EARLY then
        return self.access_token
    end
    return self:refresh()
end

--- The access token is dead (a reset revoked it): the next token() refreshes.
function Source:forget()
    self.access_token, self.expires_at = nil, 0
end

--- source:revoke() -> true | nil, err: revokes the refresh token (and with
--- it the access tokens), or the access token when there is none.
function Source:revoke()
    local token = self.refresh_token or self.access_token
    if not token then return true end
    local c, path = self.revoke_client, self.revoke_path
    local doc, err = post(c, path, { { "token", token } }, "oauth.revoke", { token, self.client_secret })
    if not doc then return nil, err end
    self.refresh_token = nil
    self:forget()
    return true
end

local SOURCE_OPTIONS = {
    client_id = true, client_secret = true, refresh_token = true, access_token = true, expires_at = true,
    token_endpoint = true, revoke_endpoint = true, ca_file = true, timeout = true, user_agent = true,
}

--- dp.token_source{client_id=, client_secret=, refresh_token= [, access_token=,
--- expires_at=, token_endpoint=, revoke_endpoint=, ca_file=, timeout=]}
function _M.token_source(o, fname)
    fname = fname or "token_source"
    if type(o) ~= "table" then
        error(format("bad argument #1 to '%s' (options table expected, got %s)", fname, type(o)), 3)
    end
    for k in pairs(o) do
        if not SOURCE_OPTIONS[k] then error(format("%s: unknown option '%s'", fname, tostring(k)), 3) end
    end
    local self = setmetatable({
        client_id = check(o, "client_id", "string", fname),
        client_secret = check_secret(o, "client_secret", fname, true),
        refresh_token = check_secret(o, "refresh_token", fname, true),
        access_token = check_secret(o, "access_token", fname, true),
        expires_at = check(o, "expires_at", "number", fname, true) or 0,
    }, Source)
    if self.access_token and not o.expires_at then self.expires_at = now() + 3600 end
    self.token_client, self.token_path = endpoint(o.token_endpoint or default_url("token"), o, fname)
    self.revoke_client, self.revoke_path = endpoint(o.revoke_endpoint or default_url("revoke"), o, fname)
    return self
end

---------------------------------------------------------------------------
-- Consent

--- dp.authorization_url{client_id=, redirect_uri=, scopes= [, state=,
--- code_verifier=, endpoint=, login_hint=]} -> url, {state=, code_verifier=}
--- scopes: resource groups ("myactivity.youtube") or scope URLs.
function _M.authorization_url(o)
    local fname = "authorization_url"
    if type(o) ~= "table" then error("bad argument #1 to 'authorization_url' (options table expected)", 2) end
    local client_id = check(o, "client_id", "string", fname)
    local redirect_uri = check(o, "redirect_uri", "string", fname)
    local list = check(o, "scopes", "table", fname)
    local wanted = {}
    for i, s in ipairs(list) do
        local url = type(s) == "string" and (scopes.resource_for(s) and s or scopes.scope_for(s))
        if not url then
            error(format("%s: scopes[%d] is not a dataportability resource group or scope: %s", fname, i,
                tostring(s)), 2)
        end
        wanted[#wanted + 1] = url
    end
    if #wanted == 0 then error(fname .. ": scopes must not be empty", 2) end
    local state = check(o, "state", "string", fname, true) or core.random_base64url(16)
    local verifier = check(o, "code_verifier", "string", fname, true) or core.random_base64url(32)
    if not verifier:find("^[%w%-._~]+$") or #verifier < 43 or #verifier > 128 then
        error(fname .. ": code_verifier must be 43 to 128 characters of A-Z a-z 0-9 -._~ (RFC 7636)", 2)
    end
    local url = (check(o, "endpoint", "string", fname, true) or default_url("auth")) .. "?" .. encode({
        { "response_type", "code" }, { "client_id", client_id }, { "redirect_uri", redirect_uri },
        { "scope", concat(wanted, " ") }, { "state", state },
        { "code_challenge", core.sha256_base64url(verifier) }, { "code_challenge_method", "S256" },
        { "access_type", "offline" }, { "prompt", "consent" },
        { "login_hint", check(o, "login_hint", "string", fname, true) },
    })
    return url, { state = state, code_verifier = verifier }
end

--- dp.exchange_code{client_id=, client_secret=, code=, redirect_uri=,
--- code_verifier= [, token_endpoint=, revoke_endpoint=, ca_file=, timeout=]}
--- -> token source | nil, err
function _M.exchange_code(o)
    local fname = "exchange_code"
    if type(o) ~= "table" then error("bad argument #1 to 'exchange_code' (options table expected)", 2) end
    local code = check_secret(o, "code", fname)
    local verifier = check(o, "code_verifier", "string", fname)
    local redirect_uri = check(o, "redirect_uri", "string", fname)
    local source_opts = {}
    for k, v in pairs(o) do
        if SOURCE_OPTIONS[k] then source_opts[k] = v end
    end
    local source = _M.token_source(source_opts, fname)
    local doc, err = post(source.token_client, source.token_path, {
        { "grant_type", "authorization_code" }, { "code", code }, { "redirect_uri", redirect_uri },
        { "client_id", source.client_id }, { "client_secret", source.client_secret },
        { "code_verifier", verifier },
    }, "oauth.token", { code, verifier, source.client_secret })
    if not doc then return nil, err end
    local ok, terr = take(source, doc, "oauth.token")
    if not ok then return nil, terr end
    return source
end

return _M
