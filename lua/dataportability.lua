-- dataportability: Google's Data Portability API for Lua.
local client = require("dataportability.client")
local errors = require("dataportability.errors")
local async = require("dataportability.async")
local scopes = require("dataportability.scopes")
local oauth = require("dataportability.oauth")

local _M = {
    _VERSION = client.VERSION,
    is_error = errors.is_error,
    driver = async.driver,
    scopes = scopes.scopes,
    scope_for = scopes.scope_for,
    resource_for = scopes.resource_for,
    add_resource = scopes.add,
    token_source = oauth.token_source,
    authorization_url = oauth.authorization_url,
    exchange_code = oauth.exchange_code,
}

--- dp.new(opts) -> client
function _M.new(opts)
    local c = client.create(opts, "new", 1, 2) -- not a tail call: errors blame the caller
    return c
end

--- dp.reset(token [, opts]) -> true | nil, err: a one-off client.
function _M.reset(token, opts)
    client.check_token_type(token, "reset")
    local c = client.create(opts, "reset", 2, 2)
    local ok, err = c:reset(token)
    c:close()
    if not ok then
        return nil, err
    end
    return true
end

return _M
