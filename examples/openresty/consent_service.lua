-- A consent-to-reset service for OpenResty: a user consents, the service
-- exports their data into a directory of its own, then resets the
-- authorization, as Google's guidance asks.
--
--   GET /          the consent link (PKCE; the state and verifier stay here)
--   GET /callback  checks the state against this browser's cookie, then a
--                  timer exchanges the code and runs client:export
--   GET /status    the export's progress (?format=json for programs)
--
-- nginx.conf and service.conf next to this file show the wiring. Every
-- worker shares the flows and the progress through a lua_shared_dict, so
-- any worker answers /status.
--
-- Nothing secret is logged: the token, the code and the verifier never
-- reach ngx.log. The request line of /callback carries the code, and nginx
-- adds the request line to whatever is logged while it handles a request
-- (a socket error, a Lua error), so /callback makes no connection: the
-- code is exchanged in the timer, where no request line is attached. The
-- access log must not use $request or $args either (see nginx.conf).
-- luacheck: globals ngx
local dp = require("dataportability")
local core = require("dataportability.core")
local cjson = require("cjson.safe")

local concat, format = table.concat, string.format

local _M = {}

local DICT = "consent_service"
local FLOW_SECONDS = 600        -- a consent must come back within 10 minutes
local SESSION_SECONDS = 7 * 86400 -- how long /status remembers an export
local ID = "^[%w_-]+$"          -- states and session ids are base64url

local settings -- from configure()

local function dict()
    return ngx.shared[DICT]
end

local function read_secret(path)
    local f, err = io.open(path, "rb")
    if not f then error("consent_service: cannot read client_secret_file: " .. tostring(err), 3) end
    local secret = (f:read("*a") or ""):gsub("%s+$", "")
    f:close()
    if not core.check_token(secret) then
        error("consent_service: client_secret_file does not hold a client secret", 3)
    end
    return secret
end

--- configure{client_id=, client_secret_file=, redirect_uri=, resources=, dir=
--- [, endpoint=, auth_endpoint=, token_endpoint=]}: from init_by_lua. The
--- endpoints default to Google's; redirect_uri is this service's /callback
--- as the browser reaches it, registered with the OAuth client. Exports go
--- to dir/<session>/<job id>/ (dir must exist; only the workers' user may
--- write it). A mistake raises, and nginx does not start.
function _M.configure(o)
    for _, k in ipairs({ "client_id", "client_secret_file", "redirect_uri", "dir" }) do
        if type(o[k]) ~= "string" or o[k] == "" then
            error("consent_service: " .. k .. " must be a string", 2)
        end
    end
    if type(o.resources) ~= "table" or #o.resources == 0 then
        error("consent_service: resources must list resource groups", 2)
    end
    if not ngx.shared[DICT] then
        error("consent_service: nginx.conf needs lua_shared_dict " .. DICT .. " 1m", 2)
    end
    settings = {
        client_id = o.client_id, client_secret = read_secret(o.client_secret_file),
        redirect_uri = o.redirect_uri, resources = o.resources, dir = o.dir,
        endpoint = o.endpoint, auth_endpoint = o.auth_endpoint, token_endpoint = o.token_endpoint,
        -- cookies only over HTTPS when the service is reached over HTTPS
        secure = o.redirect_uri:find("^https://") and "; Secure" or "",
    }
    -- a client id or resource group that dataportability refuses stops nginx here
    dp.authorization_url({ client_id = o.client_id, redirect_uri = o.redirect_uri, scopes = o.resources,
                           endpoint = o.auth_endpoint })
end

---------------------------------------------------------------------------
-- Pages

local function escape(s)
    return (tostring(s):gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;",
                                          ['"'] = "&quot;", ["'"] = "&#39;" }))
end

local function headers(content_type)
    ngx.header["Content-Type"] = content_type
    ngx.header["Cache-Control"] = "no-store"
    ngx.header["Referrer-Policy"] = "no-referrer"
    ngx.header["X-Frame-Options"] = "DENY"
    ngx.header["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
end

-- head: extra <head> lines (a refresh).
local function page(status, title, body, head)
    ngx.status = status
    headers("text/html; charset=utf-8")
    ngx.say("<!DOCTYPE html>\n<html lang=en>\n<meta charset=utf-8>\n", head or "",
        "<title>", escape(title), "</title>\n",
        "<style>body{font-family:sans-serif;max-width:40em;margin:3em auto}td{padding:0 1em 0 0}</style>\n",
        "<h1>", escape(title), "</h1>\n", body, "\n")
    return ngx.exit(ngx.HTTP_OK) -- the answer is sent: end the handler
end

local function start_again(text)
    return "<p>" .. escape(text) .. ' <a id=again href="/">Start again</a>.'
end

local function only_get()
    local method = ngx.req.get_method()
    if method ~= "GET" and method ~= "HEAD" then
        ngx.header["Allow"] = "GET, HEAD"
        return page(405, "Method not allowed", "")
    end
end

---------------------------------------------------------------------------
-- Sessions: one export's progress, as JSON in the shared dict under
-- "session:<id>". Only the timer of that export writes it.

local function load(id)
    local json = type(id) == "string" and #id <= 64 and id:find(ID) and dict():get("session:" .. id)
    return json and cjson.decode(json)
end

local function save(id, rec)
    local ok, err = dict():set("session:" .. id, cjson.encode(rec), SESSION_SECONDS)
    if not ok then ngx.log(ngx.ERR, "consent_service: cannot keep an export's progress: ", err) end
end

local function file_entry(rec, name)
    for _, f in ipairs(rec.files) do
        if f.name == name then return f end
    end
    rec.files[#rec.files + 1] = { name = name, done = 0 }
    return rec.files[#rec.files]
end

-- client:export's progress events, kept for /status.
local function progress(id, rec)
    return function(e)
        if e.type == "job" then
            rec.job_id, rec.access_type = e.job_id, e.access_type
        elseif e.type == "state" then
            rec.state = e.state
        elseif e.type == "download" then
            local f = file_entry(rec, e.file)
            f.done, f.total = e.done, e.total
        elseif e.type == "file" then
            local f = file_entry(rec, e.file)
            f.done, f.total, f.complete = e.size, e.size, true
        elseif e.type == "reset" then
            rec.reset = true
        end
        save(id, rec)
    end
end

-- The timer: exchange the code, export, reset. It holds the token source
-- (and so the tokens) in memory only, for the export's length.
local function export(premature, id, code, verifier)
    local rec = { step = "exporting", files = {}, reset = false }
    if premature then -- nginx is stopping
        rec.step, rec.error = "failed", "the service stopped before the export began"
        return save(id, rec)
    end
    local source, err = dp.exchange_code({
        client_id = settings.client_id, client_secret = settings.client_secret, code = code,
        redirect_uri = settings.redirect_uri, code_verifier = verifier,
        token_endpoint = settings.token_endpoint,
    })
    local result
    if source then
        save(id, rec)
        local client = dp.new({ endpoint = settings.endpoint, timeout = 60,
                                user_agent = "dataportability-consent-service/1.0" })
        local ran
        ran, result, err = pcall(client.export, client, source, settings.resources, {
            dir = settings.dir .. "/" .. id, on_progress = progress(id, rec),
        })
        client:close()
        if not ran then -- a bug: the details go to the error log only (no secret is in a raise either)
            ngx.log(ngx.ERR, "consent_service: export raised: ", tostring(result))
            result, err = nil, "the export stopped on an internal error"
        end
    end
    if result then
        rec.step, rec.job_id, rec.reset = "done", result.job_id, result.reset
        for _, f in ipairs(result.files) do
            local entry = file_entry(rec, f.name)
            entry.done, entry.total, entry.complete, entry.md5 = f.size, f.size, true, f.md5
        end
        ngx.log(ngx.NOTICE, "consent_service: export of job ", result.job_id, " done: ", #result.files,
            " files, reset ", tostring(result.reset))
    else
        rec.step, rec.error = "failed", tostring(err) -- an error table's line never holds a secret
        rec.job_id = type(err) == "table" and err.job_id or rec.job_id
        ngx.log(ngx.ERR, "consent_service: export failed: ", rec.error)
    end
    save(id, rec)
end

---------------------------------------------------------------------------
-- Handlers

local function one(v)
    return type(v) == "string" and v or nil -- a repeated parameter is refused
end

--- GET /: a new consent flow, its state kept here with its verifier, and
--- bound to this browser by a cookie.
function _M.start()
    only_get()
    local url, flow = dp.authorization_url({ client_id = settings.client_id,
        redirect_uri = settings.redirect_uri, scopes = settings.resources,
        endpoint = settings.auth_endpoint })
    -- safe_set: a flood of visits fills the dict but never evicts a running export's progress
    local ok, err = dict():safe_set("flow:" .. flow.state, flow.code_verifier, FLOW_SECONDS)
    if not ok then
        ngx.log(ngx.ERR, "consent_service: cannot keep a consent flow: ", err)
        return page(503, "Busy", start_again("The service is busy."))
    end
    ngx.header["Set-Cookie"] = format("dp_flow=%s; Path=/callback; Max-Age=%d; HttpOnly; SameSite=Lax%s",
        flow.state, FLOW_SECONDS, settings.secure)
    local groups = {}
    for i, r in ipairs(settings.resources) do groups[i] = "<li>" .. escape(r) end
    return page(200, "Export your Google data", concat({
        "<p>We copy this data from your Google account, then give up our access:",
        "<ul>", concat(groups, "\n"), "</ul>",
        '<p><a id=consent href="' .. escape(url) .. '">Consent with Google</a>',
    }, "\n"))
end

--- GET /callback?code=&state= (or ?error=&state=): Google sends the
--- browser back here.
function _M.callback()
    only_get()
    local args = ngx.req.get_uri_args(20)
    local state = one(args.state)
    -- CSRF: the state must be the one this browser's flow began with, and unused
    local verifier = state and #state <= 64 and state:find(ID) and ngx.var.cookie_dp_flow == state
        and dict():get("flow:" .. state)
    if not verifier then
        return page(400, "This consent is not valid here", start_again("It expired, was used, or began "
            .. "in another browser."))
    end
    -- single use; a code is single-use at Google too, so two racing callbacks cannot both export
    dict():delete("flow:" .. state)
    ngx.header["Set-Cookie"] = "dp_flow=; Path=/callback; Max-Age=0; HttpOnly; SameSite=Lax"
        .. settings.secure
    if args.error then
        return page(403, "No consent", start_again("Google says: " .. (one(args.error) or "refused") .. "."))
    end
    local code = one(args.code)
    if not code or not core.check_token(code) then
        return page(400, "No consent code", start_again("Google sent no usable code."))
    end
    local id = core.random_base64url(18) -- libcrypto's random bytes
    save(id, { step = "exchanging", files = {}, reset = false })
    local ok, err = ngx.timer.at(0, export, id, code, verifier)
    if not ok then
        -- err is nginx's, such as "too many pending timers"
        return page(503, "Busy", start_again("The export could not start: " .. tostring(err) .. "."))
    end
    ngx.header["Set-Cookie"] = {
        ngx.header["Set-Cookie"],
        format("dp_session=%s; Path=/status; Max-Age=%d; HttpOnly; SameSite=Lax%s", id, SESSION_SECONDS,
            settings.secure),
    }
    return ngx.redirect("/status", 303)
end

local STEPS = {
    exchanging = "Exchanging the consent code", exporting = "Exporting",
    done = "Done", failed = "Failed",
}

--- GET /status[?format=json]: this browser's export.
function _M.status()
    only_get()
    local rec = load(ngx.var.cookie_dp_session)
    local json = ngx.var.arg_format == "json"
    if json then
        ngx.status = rec and 200 or 404
        headers("application/json")
        local body = cjson.encode(rec or { error = "no export in this browser" })
        -- cjson 2.1.0 cannot mark an empty array
        ngx.say((body:gsub('"files":{}', '"files":[]')))
        return ngx.exit(ngx.HTTP_OK)
    end
    if not rec then return page(404, "No export here", start_again("This browser has no export.")) end
    local finished = rec.step == "done" or rec.step == "failed"
    local rows = {}
    for i, f in ipairs(rec.files) do
        rows[i] = format("<tr class=file><td>%s<td>%s / %s bytes<td>%s", escape(f.name), escape(f.done),
            escape(f.total or "?"), f.complete and "downloaded" or "downloading")
    end
    return page(200, "Your export: " .. (STEPS[rec.step] or rec.step), concat({
        "<p>Job: <span id=job>" .. escape(rec.job_id or "not started yet") .. "</span>",
        "<p>Job state: <span id=state>" .. escape(rec.state or "-") .. "</span>",
        "<table id=files>", concat(rows, "\n"), "</table>",
        "<p id=reset>" .. (rec.reset and "Reset done: our access to your data is revoked."
            or "Reset: not yet (after every file is downloaded)."),
        rec.error and "<p id=error>" .. escape(rec.error) or "",
        finished and start_again("") or "<p>This page refreshes every 2 seconds.",
    }, "\n"), not finished and '<meta http-equiv="refresh" content="2">\n' or nil)
end

return _M
