-- Secrets for the command line (docs/cli.md, "The token", "login"): the
-- files that hold them, read only when no one else may access them; the
-- token from --credentials, --token-file or DATAPORTABILITY_TOKEN; and
-- `login`, the OAuth loopback flow that writes the credentials file. File
-- modes and private writes go through the C core: no shell, no luv.
local dp = require("dataportability")
local core = require("dataportability.core")
local json = require("cjson.safe")
local arguments = require("dataportability.cli.arguments")
local output = require("dataportability.cli.output")

local type, pairs, ipairs, tostring, tonumber, pcall = type, pairs, ipairs, tostring, tonumber, pcall
local format, gsub, find = string.format, string.gsub, string.find
local floor = math.floor

local about, path_shown = arguments.about, arguments.path_shown

local _M = {}

local DEFAULT_CREDENTIALS = "./dataportability-credentials.json"
local DEFAULT_WAIT = 300

---------------------------------------------------------------------------
-- Files

-- s as one word for a shell command we suggest, quoted only when it needs to be.
local function shell_word(s)
    if find(s, "^[%w@%%+=:,./_-]+$") then return s end
    return "'" .. gsub(s, "'", "'\\''") .. "'"
end

--- The contents of a file, or nil, err (kind io) naming it as `what`.
local function read_file(ctx, path, what)
    local f, err = io.open(path, "rb")
    local data
    if f then
        data, err = f:read("*a")
        f:close()
    end
    if not data then -- io's messages start with the path, or not
        local why = tostring(err)
        if why:sub(1, #path + 2) == path .. ": " then why = why:sub(#path + 3) end
        return ctx:fail("io", about(ctx, "cannot read the " .. what, path, { path = true }, ": " .. why))
    end
    return data
end
_M.read_file = read_file

-- The contents of a file that holds a secret (--token-file, --credentials,
-- --client-secret-file), refused as ssh refuses such a private key when
-- group or others may read, write or execute it: one check for all. Only
-- regular files: the mode of a pipe (--token-file <(pass show token)) or a
-- device says nothing of who could read what went through it. The mode is
-- of what the path leads to (links followed), as reading it does.
local function read_secret(ctx, path, what)
    local mode, kind = core.file_mode(path)
    if kind == "file" and mode % 64 ~= 0 then
        local hidden = arguments.looks_like_token(ctx, path, true)
        return ctx:fail("io", format("permissions %04o for %s are too open: the %s holds a secret that"
            .. " group and others must have no access to; run: %s", mode,
            hidden and arguments.LOOKS or ("'" .. path .. "'"), what,
            hidden and "chmod 600 on that file" or ("chmod 600 " .. shell_word(path))))
    end
    return read_file(ctx, path, what)
end

---------------------------------------------------------------------------
-- The token: from --credentials, --token-file or DATAPORTABILITY_TOKEN

local CREDENTIAL_FIELDS = { client_id = true, client_secret = true, refresh_token = true,
                            token_endpoint = true, revoke_endpoint = true }

local function from_credentials(ctx, path)
    local data, err = read_secret(ctx, path, "credentials file")
    if not data then return nil, err end
    local doc = json.decode(data)
    local shown = path_shown(ctx, path)
    if type(doc) ~= "table" then
        return ctx:fail("invalid_token", "the credentials file " .. shown .. " is not a JSON object")
    end
    local o = { ca_file = ctx.opts.ca_file, timeout = ctx.opts.timeout, user_agent = ctx.user_agent }
    for k, v in pairs(doc) do
        if CREDENTIAL_FIELDS[k] then
            if type(v) ~= "string" then
                return ctx:fail("invalid_token", format("the credentials file %s: %s must be a string",
                    shown, k))
            end
            o[k] = v
            if k == "client_secret" or k == "refresh_token" then ctx:secret(v) end
        end
    end
    if not o.client_id or not o.refresh_token then
        return ctx:fail("invalid_token", format("the credentials file %s needs client_id and refresh_token",
            shown))
    end
    local ok, source = pcall(dp.token_source, o)
    if not ok then
        return ctx:fail("invalid_token", "the credentials file " .. shown .. ": " .. output.clean(source))
    end
    ctx.source = source
    return source
end

-- The first line of a secret file, without the spaces around it; nil when empty.
local function first_line(data)
    local line = data:match("^[^\r\n]*"):match("^%s*(.-)%s*$")
    return line ~= "" and line or nil
end

local function from_token_file(ctx, path)
    local data, err = read_secret(ctx, path, "token file")
    if not data then return nil, err end
    local token = first_line(data)
    if not token then
        return ctx:fail("invalid_token", "the token file " .. path_shown(ctx, path) .. " is empty")
    end
    ctx:secret(token)
    return token
end

--- The token (a string or a token source) of a command, or nil, err.
function _M.find_token(ctx)
    if ctx.opts.credentials then return from_credentials(ctx, ctx.opts.credentials) end
    if ctx.opts.token_file then return from_token_file(ctx, ctx.opts.token_file) end
    local token = ctx.getenv("DATAPORTABILITY_TOKEN")
    if token and token ~= "" then
        ctx:secret(token)
        return token
    end
    return ctx:fail("invalid_token", "no token: set DATAPORTABILITY_TOKEN, or use --token-file FILE or"
        .. " --credentials FILE (see 'dataportability login')")
end

---------------------------------------------------------------------------
-- login: RFC 8252 loopback redirect, PKCE

local function url_decode(s)
    s = gsub(s, "+", " ")
    return (gsub(s, "%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function parse_query(q)
    local out = {}
    for pair in q:gmatch("[^&]+") do
        local k, v = pair:match("^([^=]*)=?(.*)$")
        k = url_decode(k)
        if out[k] == nil then out[k] = url_decode(v) end
    end
    return out
end

local function html_escape(s)
    return (gsub(s, "[<>&\"']", { ["<"] = "&lt;", [">"] = "&gt;", ["&"] = "&amp;", ['"'] = "&quot;",
                                  ["'"] = "&#39;" }))
end

local function page(status, title, text)
    local body = format('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>%s</title></head>\n'
        .. "<body><h1>%s</h1><p>%s</p></body></html>\n", html_escape(title), html_escape(title),
        html_escape(text))
    local reason = ({ [200] = "OK", [400] = "Bad Request", [404] = "Not Found" })[status]
    return format("HTTP/1.1 %d %s\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: %d\r\n"
        .. "Cache-Control: no-store\r\nReferrer-Policy: no-referrer\r\nConnection: close\r\n\r\n%s",
        status, reason, #body, body)
end

-- The client secret from a file: Google's client_secret_*.json (which
-- also names the client), or the file's first line.
local function read_client_secret(ctx, path)
    local data, err = read_secret(ctx, path, "client secret file")
    if not data then return nil, nil, err end
    local doc = json.decode(data)
    if type(doc) == "table" then
        local c = type(doc.installed) == "table" and doc.installed
            or type(doc.web) == "table" and doc.web or doc
        if type(c.client_secret) ~= "string" then
            return nil, nil, ctx:error("invalid_token", "the client secret file " .. path_shown(ctx, path)
                .. " has no client_secret")
        end
        return c.client_secret, type(c.client_id) == "string" and c.client_id or nil
    end
    local secret = first_line(data)
    if not secret then
        return nil, nil, ctx:error("invalid_token", "the client secret file " .. path_shown(ctx, path)
            .. " is empty")
    end
    return secret
end

-- Waits for the browser's redirect: the connection and the query of the
-- first request for "/", or nil, err. Other requests (a favicon, a probe)
-- get a 404; connections that send nothing are closed at the end.
local function await_redirect(ctx, uv, server, seconds)
    local got, failure
    local conns = {}
    local timer = uv.new_timer()
    timer:start(floor(seconds * 1000), 0, function()
        failure = ctx:error("timeout", format("no redirect from the browser within %g seconds", seconds))
        uv.stop()
    end)
    server:listen(16, function(lerr)
        if lerr or got then return end
        local conn = uv.new_tcp()
        if not server:accept(conn) then conn:close() return end
        conns[conn] = true
        local buf = ""
        local function drop()
            conns[conn] = nil
            if not conn:is_closing() then conn:close() end
        end
        conn:read_start(function(rerr, chunk)
            if rerr or not chunk then return drop() end
            buf = buf .. chunk
            local head = buf:match("^(.-)\r?\n\r?\n")
            if not head then
                if #buf > 16384 then drop() end
                return
            end
            conn:read_stop()
            local method, target = head:match("^(%u+) (%S+) HTTP/1%.%d")
            local path, query = (target or ""):match("^([^?#]*)%??([^#]*)")
            if got or method ~= "GET" or path ~= "/" then
                conn:write(page(404, "Not found", "Nothing here."), drop)
                return
            end
            conns[conn] = nil
            got = { conn = conn, params = parse_query(query) }
            uv.stop()
        end)
    end)
    uv.run("default")
    timer:close()
    server:close()
    for conn in pairs(conns) do
        if not conn:is_closing() then conn:close() end
    end
    if not got then return nil, failure end
    return got
end

-- Answers the redirect with a small page, then closes the connection.
local function answer(uv, conn, status, title, text)
    local timer = uv.new_timer()
    local function done()
        if not conn:is_closing() then conn:close() end
        if not timer:is_closing() then timer:close() end
        uv.stop()
    end
    timer:start(5000, 0, done) -- a browser that does not read is not waited for
    conn:write(page(status, title, text), function()
        conn:shutdown(done)
    end)
    uv.run("default")
end

--- The login command (docs/cli.md, "login").
function _M.command(ctx, _, _, args)
    local o = ctx.opts
    local has_luv, uv = pcall(require, "luv") -- the listener: the C core has no server
    if not has_luv then return ctx:fail("io", "login needs luv (Debian: lua-luv; LuaRocks: luv)") end
    local secret, file_client_id, err
    if o.client_secret_file then
        secret, file_client_id, err = read_client_secret(ctx, o.client_secret_file)
        if not secret then return nil, err end
        ctx:secret(secret)
        local valid, why = core.check_token(secret)
        if not valid then
            return ctx:fail("invalid_token", format("the client secret in %s is malformed: %s",
                path_shown(ctx, o.client_secret_file), why))
        end
    end
    local client_id = o.client_id or file_client_id
    if not client_id then return ctx:fail("usage", "login needs --client-id ID") end
    -- it would be in the consent URL printed below
    local fine, terr = arguments.refused_token(ctx, "--client-id", client_id)
    if not fine then return nil, terr end
    local wanted = arguments.resources_of(args)
    for _, r in ipairs(arguments.resources_of({ o.scopes or "" })) do wanted[#wanted + 1] = r end
    if #wanted == 0 then
        return ctx:fail("usage", "login needs --scopes RESOURCE,... (see 'dataportability scopes')")
    end
    local checked, cerr = arguments.check_resources(ctx, wanted)
    if not checked then return nil, cerr end
    local path = o.credentials or DEFAULT_CREDENTIALS

    local server = uv.new_tcp()
    local ok, berr = server:bind("127.0.0.1", o.port or 0)
    if not ok then
        server:close()
        return ctx:fail("io", format("cannot listen on 127.0.0.1:%d: %s", o.port or 0, tostring(berr)))
    end
    local port = server:getsockname().port
    local redirect_uri = format("http://127.0.0.1:%d/", port)
    local url, pkce
    ok, url, pkce = pcall(dp.authorization_url, { client_id = client_id, redirect_uri = redirect_uri,
        scopes = wanted, endpoint = o.auth_endpoint })
    if not ok then
        server:close()
        return ctx:fail("usage", output.clean(url))
    end
    ctx:tell("Open this URL in a browser on this machine and consent:")
    ctx:tell("")
    ctx:tell(url)
    ctx:tell("")
    ctx:tell(format("Waiting for the browser on %s (%g s)...", redirect_uri, o.wait or DEFAULT_WAIT))

    local got
    got, err = await_redirect(ctx, uv, server, o.wait or DEFAULT_WAIT)
    if not got then return nil, err end
    local p, conn = got.params, got.conn
    local function refuse(e) -- the browser is told too
        answer(uv, conn, 400, "dataportability: login failed", e.message)
        return nil, e
    end
    if p.state ~= pkce.state then
        return refuse(ctx:error("http", "the redirect's state does not match this login's: ignored"
            .. " (a forged request?)"))
    end
    if p.error then
        -- what the redirect says is anyone's text: shown only when of OAuth's
        -- shape, and cut only once redacted
        local code = find(p.error, "^[%w_]+$") and #p.error <= 40 and p.error or "(not shown)"
        return refuse(ctx:error("api", format("consent refused: %s%s", code,
            p.error_description and (": " .. ctx:cut(p.error_description, 300)) or ""), { status = p.error }))
    end
    if not p.code or p.code == "" then return refuse(ctx:error("http", "the redirect has no code")) end
    ctx:secret(p.code)
    local source
    ok, source, err = pcall(dp.exchange_code, {
        client_id = client_id, client_secret = secret, code = p.code, redirect_uri = redirect_uri,
        code_verifier = pkce.code_verifier, token_endpoint = o.token_endpoint, ca_file = o.ca_file,
        timeout = o.timeout, user_agent = ctx.user_agent,
    })
    if not ok then return refuse(ctx:error("invalid_argument", output.clean(source))) end
    if not source then return refuse(err) end
    ctx.source = source
    if not source.refresh_token then
        return refuse(ctx:error("http", "the token endpoint gave no refresh token"))
    end
    local creds = { client_id = client_id, client_secret = secret, refresh_token = source.refresh_token,
                    token_endpoint = o.token_endpoint }
    -- 0600 whatever the umask or an older file's mode, replaced whole (files.c)
    local written, why = core.write_private(path, output.to_json(creds) .. "\n")
    if not written then return refuse(ctx:error("io", arguments.about_file(ctx, why, path))) end
    answer(uv, conn, 200, "dataportability: login done",
        "The credentials are saved. You can close this window.")
    if o.json then
        ctx:json({ credentials = path, client_id = client_id, scopes = output.list(wanted) })
    else
        ctx:say("login: credentials written to ", path, " (mode 0600)")
    end
    return true
end

return _M
