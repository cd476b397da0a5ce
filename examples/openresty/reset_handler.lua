-- An OpenResty content handler: POST with "Authorization: Bearer <token>"
-- resets that token's Data Portability authorization. Inside nginx the
-- library talks over cosockets, so the worker keeps serving other requests
-- while Google answers.
--
--   location = /reset {
--       content_by_lua_block { require("reset_handler").handle() }
--   }
--
-- Answers 200 {"ok":true}, or {"ok":false} with the error table's kind,
-- status, reason, message, http_status and retryable. The token is never
-- logged nor echoed (the library's messages never contain it).
-- luacheck: globals ngx
local dp = require("dataportability")
local cjson = require("cjson.safe")

local _M = {}

-- The status this endpoint answers with for a failed reset.
local function answer_status(err)
    if err.kind == "invalid_token" then return 400 end
    if err.http_status and err.http_status >= 400 and err.http_status < 500 then
        return err.http_status -- 401 revoked token, 403 no dataportability scope, 429 ...
    end
    return err.kind == "timeout" and 504 or 502
end

local function reply(status, tbl)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Cache-Control"] = "no-store"
    ngx.say(cjson.encode(tbl))
    return ngx.exit(ngx.HTTP_OK)
end

--- handle([opts]): content_by_lua entry; opts as for dp.reset (endpoint,
--- timeout, user_agent, quota_project, ...).
function _M.handle(opts)
    if ngx.req.get_method() ~= "POST" then
        ngx.header["Allow"] = "POST"
        return reply(405, { ok = false, kind = "invalid_argument", message = "use POST" })
    end
    local auth = ngx.req.get_headers()["authorization"]
    local token = type(auth) == "string" and auth:match("^%s*[Bb][Ee][Aa][Rr][Ee][Rr] +(.-)%s*$")
    if not token then
        ngx.header["WWW-Authenticate"] = "Bearer"
        return reply(401, { ok = false, kind = "invalid_token",
                            message = "expected an Authorization: Bearer header" })
    end
    -- the library checks the token's syntax before any I/O
    local ok, err = dp.reset(token, opts)
    if ok then
        return reply(200, { ok = true })
    end
    ngx.log(ngx.WARN, tostring(err)) -- one line, never the token
    if err.retry_after then ngx.header["Retry-After"] = err.retry_after end
    return reply(answer_status(err), {
        ok = false, kind = err.kind, status = err.status, reason = err.reason,
        message = err.message, http_status = err.http_status, retryable = err.retryable,
    })
end

return _M
