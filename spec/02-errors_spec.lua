local errors = require("dataportability.errors")
local dp = require("dataportability")
local cjson = require("cjson")

local METHOD = "authorization.reset"

local function google_body(code, status, message, reason)
    return cjson.encode({ error = { code = code, status = status, message = message, details = {
        { ["@type"] = "type.googleapis.com/google.rpc.DebugInfo", detail = "x" },
        { ["@type"] = "type.googleapis.com/google.rpc.ErrorInfo", reason = reason,
          domain = "googleapis.com", metadata = { service = "dataportability.googleapis.com" } },
    } } })
end

describe("error tables", function()
    it("shapes Google's JSON error body", function()
        local err = errors.from_response(METHOD, 403,
            google_body(403, "PERMISSION_DENIED", "Request had insufficient authentication scopes.",
                        "ACCESS_TOKEN_SCOPE_INSUFFICIENT"), "application/json; charset=UTF-8")
        assert.is_true(dp.is_error(err))
        assert.equals("api", err.kind)
        assert.equals(METHOD, err.method)
        assert.equals(403, err.http_status)
        assert.equals(403, err.code)
        assert.equals("403", tostring(err.code)) -- an integer on Lua 5.3+
        assert.equals("PERMISSION_DENIED", err.status)
        assert.equals("ACCESS_TOKEN_SCOPE_INSUFFICIENT", err.reason)
        assert.equals("googleapis.com", err.domain)
        assert.equals("dataportability.googleapis.com", err.metadata.service)
        assert.equals(2, #err.details)
        assert.equals("Request had insufficient authentication scopes.", err.message)
        assert.is_false(err.retryable)
    end)

    it("marks 408, 429, 500, 502, 503 and 504 retryable, other statuses not", function()
        for _, s in ipairs({ 408, 429, 500, 502, 503, 504 }) do
            assert.is_true(errors.from_response(METHOD, s, "{}", nil).retryable, s)
        end
        for _, s in ipairs({ 400, 401, 403, 404, 409, 501 }) do
            assert.is_false(errors.from_response(METHOD, s, "{}", nil).retryable, s)
        end
    end)

    it("gives kind http and a short sanitised excerpt for an HTML body", function()
        local html = "<html><head><title>502 Bad Gateway</title></head>\r\n<body>"
            .. string.rep("proxy says no\n\0\27[31m ", 50) .. "</body></html>"
        local err = errors.from_response(METHOD, 502, html, "text/html")
        assert.equals("http", err.kind)
        assert.equals(502, err.http_status)
        assert.is_true(err.retryable)
        assert.matches("502 Bad Gateway", err.excerpt, 1, true)
        assert.is_nil(err.excerpt:find("[<>%c]"))
        assert.is_true(#err.excerpt <= 203)
        assert.matches("text/html", err.message, 1, true)
    end)

    it("gives kind http for an empty or malformed JSON body", function()
        assert.equals("http", errors.from_response(METHOD, 500, "", nil).kind)
        assert.equals("http", errors.from_response(METHOD, 500, '{"error": {"code": 5', nil).kind)
        assert.equals("http", errors.from_response(METHOD, 500, '{"error": 5}', nil).kind)
        assert.equals("http", errors.from_response(METHOD, 500, '[1,2]', nil).kind)
    end)

    it("shapes OAuth's error body: its error code becomes status", function()
        local err = errors.from_response("oauth.token", 400,
            '{"error": "invalid_grant", "error_description": "Bad Request"}', "application/json")
        assert.equals("api", err.kind)
        assert.equals("invalid_grant", err.status)
        assert.equals("Bad Request", err.message)
        assert.is_false(err.retryable)
    end)

    it("survives hostile field types in a JSON error body", function()
        local err = errors.from_response(METHOD, 400, cjson.encode({ error = {
            code = "x", status = {}, message = 5, details = { "a", 7, { ["@type"] = {} } } } }), nil)
        assert.equals("api", err.kind)
        assert.is_nil(err.code)
        assert.is_nil(err.status)
        assert.is_nil(err.reason)
        assert.equals("HTTP 400", err.message)
    end)

    it("gives kind redirect for a 3xx", function()
        local err = errors.from_response(METHOD, 302, "", nil)
        assert.equals("redirect", err.kind)
        assert.is_false(err.retryable)
    end)

    it("marks transport kinds retryable or not", function()
        for kind, retryable in pairs({ timeout = true, connect = true, dns = true, network = true,
                                       tls = false, too_large = false, invalid_token = false,
                                       closed = false }) do
            assert.equals(retryable, errors.new(METHOD, kind, "m").retryable, kind)
        end
    end)

    it("prints as one readable line", function()
        local err = errors.from_response(METHOD, 401,
            google_body(401, "UNAUTHENTICATED", "Request had invalid\nauthentication credentials.",
                        "ACCESS_TOKEN_TYPE_UNSUPPORTED"), nil)
        local line = tostring(err)
        assert.is_nil(line:find("[\r\n]"))
        assert.matches("authorization.reset", line, 1, true)
        assert.matches("HTTP 401 UNAUTHENTICATED ACCESS_TOKEN_TYPE_UNSUPPORTED", line, 1, true)
    end)

    it("is_error recognises only error tables", function()
        assert.is_true(dp.is_error(errors.new(METHOD, "closed", "client is closed")))
        assert.is_false(dp.is_error({ kind = "api", message = "look-alike" }))
        assert.is_false(dp.is_error("api"))
        assert.is_false(dp.is_error(nil))
    end)

    it("redacts every occurrence of a secret", function()
        assert.equals("a <redacted> b <redacted>", errors.redact("a s3cr.t b s3cr.t", "s3cr.t"))
        assert.equals("unchanged", errors.redact("unchanged", "s3cr.t"))
        assert.equals("a.b a<redacted>", errors.redact("a.b a%b", "%b")) -- no patterns
    end)
end)
