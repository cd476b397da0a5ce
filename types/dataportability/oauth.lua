---@meta _
-- luacheck: no unused, no max line length (definitions: empty bodies, one-line annotations)
-- Token sources (dp.token_source, dp.exchange_code) and the options of
-- consent (dp.authorization_url). Secrets are checked by the bearer token
-- rules (a malformed one raises without quoting it) and never appear in an
-- error, pairs() or tostring().

---A token source: any client method takes one in place of a token string. The
---client secret and the tokens are kept out of its table (pairs and cjson show
---none), but are read and set by name.
---@class dataportability.TokenSource
---@field client_id string
---When the access token expires, in epoch seconds (0: none cached).
---@field expires_at number
---The scopes the token endpoint granted, space separated.
---@field scope? string
---To store after a consent (`dp.exchange_code`) and pass back as an option.
---@field refresh_token? string
local TokenSource = {}

---The cached access token until 60 s before it expires, then a refreshed one.
---@return string? access_token
---@return dataportability.Error? err
function TokenSource:token() end

---A new access token, now (`err.method == "oauth.token"`).
---@return string? access_token
---@return dataportability.Error? err
function TokenSource:refresh() end

---The same without blocking, on the event loop of the `driver` option (default: Neovim's,
---else luv's; an `_async` client call lends its client's): `callback` later, on the loop.
---@param callback fun(access_token: string?, err: dataportability.Error?)
function TokenSource:refresh_async(callback) end

---`token()` on the event loop: the cached access token, or a refreshed one; `callback` later.
---@param callback fun(access_token: string?, err: dataportability.Error?)
function TokenSource:token_async(callback) end

---Drops the cached access token (a reset revoked it): the next `token()` refreshes.
function TokenSource:forget() end

---Revokes the refresh token, and with it the access tokens (or the access token when
---there is no refresh token); `err.method == "oauth.revoke"`.
---@return true? ok
---@return dataportability.Error? err
function TokenSource:revoke() end

---Options of `dp.token_source`.
---@class dataportability.TokenSourceOptions
---@field client_id string
---@field client_secret? string
---@field refresh_token? string
---To start from a stored access token.
---@field access_token? string
---When `access_token` expires, in epoch seconds (default: an hour from now).
---@field expires_at? number
---Default: Google's, or the emulator's when `DATAPORTABILITY_EMULATOR_HOST` is set.
---@field token_endpoint? string
---@field revoke_endpoint? string
---PEM file of a private CA for the OAuth endpoints.
---@field ca_file? string
---Seconds for a whole request.
---@field timeout? number
---Appended after `dataportability-lua/<version>`.
---@field user_agent? string
---The event loop of `refresh_async` and `token_async`, from `dp.driver`.
---@field driver? dataportability.Driver

---Options of `dp.exchange_code`: a token source's, and what the consent returned.
---@class dataportability.ExchangeCodeOptions: dataportability.TokenSourceOptions
---The `code` your redirect received.
---@field code string
---`consent.code_verifier` from `dp.authorization_url`.
---@field code_verifier string
---The same `redirect_uri` as the consent URL's.
---@field redirect_uri string

---Options of `dp.authorization_url`.
---@class dataportability.AuthorizationUrlOptions
---@field client_id string
---Where the user's browser is sent back with `?code=...&state=...`
---(`http://127.0.0.1:PORT/` for an installed app).
---@field redirect_uri string
---Resource groups ("myactivity.youtube") or `dataportability.` scope URLs.
---@field scopes string[]
---Default: 16 random bytes, base64url.
---@field state? string
---43 to 128 characters of `A-Z a-z 0-9 -._~`; default: 32 random bytes, base64url.
---@field code_verifier? string
---The consent page (default: Google's, or the emulator's).
---@field endpoint? string
---@field login_hint? string

---What to keep between `dp.authorization_url` and `dp.exchange_code`.
---@class dataportability.Consent
---Compare it with the `state` your redirect receives.
---@field state string
---Pass it to `dp.exchange_code`.
---@field code_verifier string
