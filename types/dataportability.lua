---@meta dataportability
-- luacheck: no unused, no max line length (definitions: empty bodies, one-line annotations)
-- lua-language-server definitions of require("dataportability"): add this
-- directory (types/) to `workspace.library` (README, Editor types). The
-- other files here define the client, the export, token sources, drivers
-- and error tables.

---A token string, or a token source that refreshes its own.
---@alias dataportability.Token string|dataportability.TokenSource

---Google's Data Portability API: consent, the v1 methods, the export
---workflow, reset.
---@class dataportability
---The module's version, as the C core says ("0.1.0").
---@field _VERSION string
---Every known resource group ("myactivity.youtube") -> its scope URL.
---@field scopes table<string, string>
local dp = {}

---Options of `dp.new` and `dp.reset`. An unknown option or a wrong type raises.
---@class dataportability.ClientOptions
---`https://host[:port]`; `http://` only to a loopback host. Default: Google's, or
---`http://$DATAPORTABILITY_EMULATOR_HOST` when that is set.
---@field endpoint? string
---Seconds for a whole call (60).
---@field timeout? number
---Seconds to connect, TCP and TLS (10).
---@field connect_timeout? number
---PEM file of a private CA (the emulator's); default: the system's CAs.
---@field ca_file? string
---Appended after `dataportability-lua/<version>`.
---@field user_agent? string
---Sent as `x-goog-user-project`.
---@field quota_project? string
---Proxy URL (default: libcurl's `https_proxy` environment); it only sees a CONNECT tunnel.
---@field proxy? string
---The event loop of the `_async` methods (default: Neovim's loop, else luv's).
---@field driver? dataportability.Driver
---How many times a failed call may be sent again (3); 0 disables.
---@field retries? integer
---The longest wait between attempts, and the longest `Retry-After` honoured (30 s).
---@field retry_max_delay? number
---Called before each wait for a retry.
---@field on_retry? fun(event: dataportability.RetryEvent)
---OpenResty only: the cosocket pool's name (1 to 128 printable bytes).
---@field pool? string

---What `on_retry` is told before a retry.
---@class dataportability.RetryEvent
---The API method (`"authorization.reset"`, ...).
---@field method string
---The attempt that failed (1 for the first).
---@field attempt integer
---Seconds before the next attempt.
---@field delay number
---Why the attempt failed.
---@field err dataportability.Error

---A client: one connection, kept alive across calls. Closed by `client:close()`,
---`__gc` or, in Lua 5.4, `<close>`.
---@param opts? dataportability.ClientOptions
---@return dataportability.Client
function dp.new(opts) end

---Resets the authorization with a one-off client: revokes the token and clears
---the exhausted scopes.
---@param token dataportability.Token
---@param opts? dataportability.ClientOptions
---@return true? ok
---@return dataportability.Error? err
function dp.reset(token, opts) end

---A driver for an event loop of your own (see `dataportability.DriverHooks`).
---@param hooks dataportability.DriverHooks
---@return dataportability.Driver
function dp.driver(hooks) end

---`true` when `x` is an error table of this module.
---@param x any
---@return boolean
function dp.is_error(x) end

---The scope URL of a known resource group, or nil.
---@param resource string
---@return string? scope
function dp.scope_for(resource) end

---The resource group of any `dataportability.` scope URL, known or not, or nil.
---@param scope string
---@return string? resource
function dp.resource_for(scope) end

---Teaches the module a resource group Google added after this release.
---@param resource string a name like "myactivity.youtube"
---@return string scope its scope URL
function dp.add_resource(resource) end

---A token source: caches the access token and refreshes it shortly before it expires.
---@param opts dataportability.TokenSourceOptions
---@return dataportability.TokenSource
function dp.token_source(opts) end

---The consent URL (PKCE S256, offline access), and what to keep for the exchange.
---@param opts dataportability.AuthorizationUrlOptions
---@return string url
---@return dataportability.Consent consent
function dp.authorization_url(opts) end

---Turns the code your redirect received into a token source.
---@param opts dataportability.ExchangeCodeOptions
---@return dataportability.TokenSource? source
---@return dataportability.Error? err
function dp.exchange_code(opts) end

return dp
