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

    describe("no 8 bytes of a secret in a row", function()
        -- A realistic access token (218 bytes: "ya29.a0" and base64url),
        -- with a '/' a '+' and a '=' as other b64tokens may have.
        local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        local function random(n, seed)
            local out, x = {}, seed
            for i = 1, n do
                x = x * 16807 % 2147483647 -- exact in doubles too (Lua 5.1, LuaJIT)
                local k = x % 64 + 1
                out[i] = B64:sub(k, k)
            end
            return table.concat(out)
        end
        local TOKEN = "ya29.a0" .. random(100, 1) .. "/" .. random(50, 2) .. "+" .. random(58, 3) .. "="
        local MARK = "<redacted>"

        -- Every 8 bytes in a row of a secret (a shorter one: itself).
        local function windows(secret)
            local w, list = math.min(8, #secret), {}
            for i = 1, #secret - w + 1 do list[#list + 1] = secret:sub(i, i + w - 1) end
            return list
        end

        local function has_window(s, secret)
            for _, w in ipairs(windows(secret)) do
                if s:find(w, 1, true) then return w end
            end
        end

        -- Each byte of s through f(c, i).
        local function each(s, f)
            local i = 0
            return (s:gsub(".", function(c) i = i + 1 return f(c, i) end))
        end

        -- The forms a server may write a secret in.
        local U, UU, P, p = "\\u%04x", "\\u%04X", "%%%02X", "%%%02x"
        local FORMS = {
            literal = function(s) return s end,
            json_slash = function(s) return (s:gsub("/", "\\/")) end,
            json_u002f = function(s) return (s:gsub("[/+=]", function(c) return U:format(c:byte()) end)) end,
            json_U002F = function(s) return (s:gsub("[/+=]", function(c) return UU:format(c:byte()) end)) end,
            json_every_byte = function(s)
                return each(s, function(c, i) return (i % 2 == 0 and UU or U):format(c:byte()) end)
            end,
            percent = function(s) return (s:gsub("[/+=]", function(c) return P:format(c:byte()) end)) end,
            percent_lower = function(s)
                return (s:gsub("[/+=]", function(c) return p:format(c:byte()) end))
            end,
            percent_every_byte = function(s) return each(s, function(c) return p:format(c:byte()) end) end,
            html_refs = function(s)
                return each(s, function(c, i)
                    if c == "/" then return "&sol;" end
                    local k = i % 3
                    return k == 0 and ("&#%d;"):format(c:byte()) or k == 1 and ("&#x%X;"):format(c:byte())
                        or c
                end)
            end,
            mixed = function(s)
                return each(s, function(c, i)
                    local k = i % 4
                    return k == 0 and U:format(c:byte()) or k == 1 and P:format(c:byte())
                        or k == 2 and ("&#%d;"):format(c:byte()) or c
                end)
            end,
        }

        it("redacts every cut of 8 bytes or more, wherever the cut falls", function()
            local tried = 0
            local arounds = { { "", "" }, { "a ", " b" }, { '"', '"' }, { "#", "" } }
            for len = 8, #TOKEN do
                local step = (len <= 10 or len >= #TOKEN - 2) and 1 or 23
                for i = 1, #TOKEN - len + 1, step do
                    local piece = TOKEN:sub(i, i + len - 1)
                    local around = arounds[(i + len) % #arounds + 1]
                    local out = errors.redact(around[1] .. piece .. around[2], TOKEN)
                    assert.equals(around[1] .. MARK .. around[2], out, piece)
                    tried = tried + 1
                end
            end
            assert.is_true(tried > 1000, tried)
        end)

        it("redacts a secret in JSON escapes, percent-encoding, HTML references: escapes and all", function()
            for name, form in pairs(FORMS) do
                for _, piece in ipairs({ TOKEN, TOKEN:sub(1, 8), TOKEN:sub(100, 120), TOKEN:sub(-9) }) do
                    local text = "Invalid token: " .. form(piece) .. ". Bye"
                    assert.equals("Invalid token: " .. MARK .. ". Bye", errors.redact(text, TOKEN),
                        name .. " " .. text)
                end
            end
        end)

        it("redacts an escape whole, when a run of the secret begins in it", function()
            -- "\\n" cut into the token after an "n": its "n" starts a run of the token
            local i = TOKEN:find("n", 10, true)
            local text = '{"m": "' .. TOKEN:sub(1, i) .. "\\n" .. TOKEN:sub(i + 1) .. '"}'
            local out = errors.redact(text, TOKEN)
            assert.equals('{"m": "' .. MARK .. '"}', out)
            assert.is_table(cjson.decode(out))
        end)

        it("redacts an echo split across lines or by markup into pieces of 8 bytes or more", function()
            local pieces = {}
            for i = 1, #TOKEN, 20 do pieces[#pieces + 1] = TOKEN:sub(i, i + 19) end
            for _, sep in ipairs({ "\r\n", "\n", "\\n", "<br>", " ", "</p><p>" }) do
                local out = errors.redact(table.concat(pieces, sep), TOKEN)
                assert.is_nil(has_window(out, TOKEN), sep)
                local _, marks = out:gsub(MARK, "")
                assert.equals(#pieces, marks, sep)
            end
        end)

        it("leaves 7 bytes in a row, and any text without the secret, byte for byte", function()
            for i = 1, #TOKEN - 6 do
                local seven = TOKEN:sub(i, i + 6)
                for _, text in ipairs({ seven, "a " .. seven .. " b", "%" .. seven, seven .. "\\" }) do
                    assert.equals(text, errors.redact(text, TOKEN), text)
                end
                -- two runs of 7 joined by a byte that is not the next one of the secret
                local other = TOKEN:sub(i + 7, i + 7) == "#" and "!" or "#"
                local two = seven .. other .. TOKEN:sub(i + 8, i + 14)
                assert.equals(two, errors.redact(two, TOKEN))
                -- 7 bytes, one of them escaped: 7 once decoded
                local escaped = FORMS.json_every_byte(seven)
                assert.equals(escaped, errors.redact(escaped, TOKEN))
            end
            local texts = {
                "", "\0", google_body(401, "UNAUTHENTICATED", "Request had invalid credentials.", "EXPIRED"),
                '{"error": "invalid_grant", "error_description": "Token has been expired or revoked."}',
                "<p>\\u00e9t\\u00E9 %2F%2f%zz &amp; &#47; &#x2F; &sol; &bogus; \\/ \\\\ \\q %</p>",
                ("\\u0041"):rep(1000), ("%41"):rep(1000), string.rep("ya29.", 100), TOKEN:reverse(),
            }
            for i, text in ipairs(texts) do
                assert.is_true(errors.redact(text, TOKEN) == text, "text " .. i)
            end
            local bytes = {}
            for b = 0, 255 do bytes[#bytes + 1] = string.char(b) end
            local all = table.concat(bytes)
            assert.equals(all, errors.redact(all, TOKEN))
            assert.equals(all:rep(3), errors.redact(all:rep(3), TOKEN))
        end)

        it("redacts a secret under 8 bytes whole, and nothing less", function()
            assert.equals("a <redacted> b", errors.redact("a s3cr.t b", "s3cr.t"))
            assert.equals("a <redacted> b", errors.redact("a s3cr\\/t b", "s3cr/t"))
            assert.equals("a <redacted> b", errors.redact("a s3cr%2Ft b", "s3cr/t"))
            assert.equals("a s3cr. b", errors.redact("a s3cr. b", "s3cr.t"))
            assert.equals("7bytes!", errors.redact("7bytes!", "7bytes?"))
        end)

        it("takes a list of secrets, with holes", function()
            local refresh, client_secret = "1//0g" .. random(98, 4), "GOCSPX-" .. random(28, 5)
            local text = "a " .. refresh:sub(10, 30) .. " b " .. client_secret:sub(3, 11) .. " c " .. TOKEN
            assert.equals("a " .. MARK .. " b " .. MARK .. " c " .. MARK,
                errors.redact(text, { refresh, nil, client_secret, TOKEN }))
            assert.equals(text, errors.redact(text, {}))
            assert.equals(text, errors.redact(text, { "" }))
        end)

        -- What errors.redact must return, found by brute force: every run of
        -- 8 bytes or more of the secret in the text, and in the text decoded,
        -- each decoded byte mapped back to its whole escape.
        local SIMPLE = { ["/"] = "/", ["\\"] = "\\", ['"'] = '"', b = "\b", f = "\f", n = "\n", r = "\r",
                         t = "\t" }
        local NAMED = { sol = "/", equals = "=", plus = "+", amp = "&" }
        local function view(s)
            local out, from, to = {}, {}, {}
            local function put(b, i, j)
                for k = 1, #b do out[#out + 1], from[#out + 1], to[#out + 1] = b:sub(k, k), i, j end
            end
            local i = 1
            while i <= #s do
                local c = s:sub(i, i)
                if c == "\\" and s:sub(i + 1, i + 1) == "u" and s:sub(i + 2, i + 5):find("^%x%x%x%x$") then
                    local cp = tonumber(s:sub(i + 2, i + 5), 16)
                    put(cp < 128 and string.char(cp) or "\1", i, i + 5) -- the rest: never in a secret here
                    i = i + 6
                elseif c == "\\" and SIMPLE[s:sub(i + 1, i + 1)] then
                    put(SIMPLE[s:sub(i + 1, i + 1)], i, i + 1)
                    i = i + 2
                elseif c == "%" and s:sub(i + 1, i + 2):find("^%x%x$") then
                    put(string.char(tonumber(s:sub(i + 1, i + 2), 16)), i, i + 2)
                    i = i + 3
                elseif c == "&" and s:find("^&#%d%d?%d?;", i) then
                    local d = s:match("^&#(%d+);", i)
                    put(string.char(tonumber(d)), i, i + #d + 2)
                    i = i + #d + 3
                elseif c == "&" and s:find("^&#[xX]%x%x?;", i) then
                    local h = s:match("^&#[xX](%x+);", i)
                    put(string.char(tonumber(h, 16)), i, i + #h + 3)
                    i = i + #h + 4
                elseif c == "&" and NAMED[s:match("^&(%a+);", i) or ""] then
                    local name = s:match("^&(%a+);", i)
                    put(NAMED[name], i, i + #name + 1)
                    i = i + #name + 2
                else
                    put(c, i, i)
                    i = i + 1
                end
            end
            return table.concat(out), from, to
        end
        local function reference(s, secret)
            local w, runs = math.min(8, #secret), {}
            local function scan(t, from, to)
                for i = 1, #t - w + 1 do
                    local j = i + w - 1
                    if secret:find(t:sub(i, j), 1, true) and (#secret >= 8 or t:sub(i, j) == secret) then
                        while #secret >= 8 and j < #t and secret:find(t:sub(i, j + 1), 1, true) do
                            j = j + 1
                        end
                        runs[#runs + 1] = { from[i], to[j] }
                    end
                end
            end
            -- in s as it is, a run that begins or ends inside an escape takes it whole
            local v, from, to = view(s)
            local starts, ends = {}, {}
            for i = 1, #s do starts[i], ends[i] = i, i end
            for k = 1, #v do
                for i = from[k], to[k] do starts[i], ends[i] = from[k], to[k] end
            end
            scan(s, starts, ends)
            scan(v, from, to)
            table.sort(runs, function(a, b) return a[1] < b[1] end)
            local out, pos, last = {}, 1, nil
            for _, r in ipairs(runs) do
                if last and r[1] <= last[2] + 1 then
                    last[2] = math.max(last[2], r[2])
                else
                    last = { r[1], r[2] }
                    out[#out + 1] = last
                end
            end
            local parts = {}
            for _, r in ipairs(out) do
                parts[#parts + 1] = s:sub(pos, r[1] - 1) .. MARK
                pos = r[2] + 1
            end
            return table.concat(parts) .. s:sub(pos)
        end

        it("agrees with a brute-force reference on 3000 texts made of pieces, escapes and noise", function()
            local seed = 7
            local function rand(n)
                seed = seed * 16807 % 2147483647
                return seed % n + 1
            end
            local form_list = {}
            for _, f in pairs(FORMS) do form_list[#form_list + 1] = f end
            table.sort(form_list, function(a, b) return a("a/b") < b("a/b") end)
            local NOISE = { "\\u", "%2", "&#", "&#x", "\\", "%", "&sol", "&sol;", "#", " ", "\\u00", "%g1",
                            "<p>" }
            for case = 1, 3000 do
                local secret = case % 10 == 0 and TOKEN:sub(rand(50), 60 + rand(10)):sub(1, rand(7))
                    or case % 7 == 0 and ("ab"):rep(4 + rand(10))
                    or TOKEN:sub(rand(100), 100 + rand(118))
                local parts = {}
                for _ = 1, rand(8) do
                    local r = rand(10)
                    if r <= 5 then
                        local a = rand(#secret)
                        local piece = secret:sub(a, a + rand(20) - 1)
                        parts[#parts + 1] = rand(3) == 1 and piece or form_list[rand(#form_list)](piece)
                    elseif r <= 8 then
                        parts[#parts + 1] = NOISE[rand(#NOISE)]
                    else
                        parts[#parts + 1] = random(rand(12), case)
                    end
                end
                local text = table.concat(parts)
                assert.equals(reference(text, secret), errors.redact(text, secret),
                    ("%q in %q"):format(secret, text))
            end
        end)

        -- How long it takes is bench material (see the closing figures), not a spec's.
        it("redacts 1 MiB bodies, with and without echoes, periodic secrets too", function()
            local MiB = 1024 * 1024
            local echoes = ("x " .. TOKEN .. " "):rep(math.ceil(MiB / (#TOKEN + 3))):sub(1, MiB)
            local bodies = { -- name, body, whether it holds echoes
                { "words", ("The quick brown fox jumps over the lazy dog 01234 "):rep(21000):sub(1, MiB) },
                { "echoes", echoes, true },
                { "echoes, \\u escapes", FORMS.json_every_byte(echoes:sub(1, math.floor(MiB / 6))), true },
                { "escapes", ("%41\\u0042&#67;"):rep(math.floor(MiB / 14)) },
                { "periodic", ("ab"):rep(math.floor(MiB / 2)), true },
            }
            for _, b in ipairs(bodies) do
                local secret = b[1] == "periodic" and ("ab"):rep(109) or TOKEN
                local out = errors.redact(b[2], secret)
                assert.equals(b[3] or false, out:find(MARK, 1, true) ~= nil, b[1])
                assert.is_nil(has_window(out, secret), b[1])
                if not b[3] then assert.equals(b[2], out, b[1]) end
            end
        end)

        it("redacts before any cut: the message at 2000 bytes, the headers at 127 and 63", function()
            local tried = 0
            for pad = 2000 - #TOKEN - 2, 2002 do
                for name, form in pairs(pad % 5 == 0 and FORMS or { literal = FORMS.literal }) do
                    local body = ('{"error": {"code": 401, "message": "%s%s end", "status": "%s"}}')
                        :format(("#"):rep(pad), form(TOKEN), "UNAUTHENTICATED")
                    local err = errors.from_response(METHOD, 401, body, "application/json", nil, TOKEN)
                    assert.is_nil(has_window(err.message, TOKEN), name .. " " .. pad)
                    assert.is_nil(has_window(tostring(err), TOKEN), name .. " " .. pad)
                    tried = tried + 1
                end
            end
            -- what the C core keeps of the headers: 127 and 63 bytes
            for pad = 0, 127 do
                local ct = ("text/html; x=" .. ("#"):rep(pad) .. TOKEN):sub(1, 127)
                local ra = (("#"):rep(pad) .. TOKEN):sub(1, 63)
                local err = errors.from_response(METHOD, 503, "<p>busy</p>", ct, ra, TOKEN)
                assert.is_nil(has_window(tostring(err), TOKEN), pad)
                assert.is_nil(has_window(err.message, TOKEN), pad)
                assert.is_nil(has_window(err.retry_after or "", TOKEN), pad)
                tried = tried + 1
            end
            assert.is_true(tried > 500)
        end)

        it("scrubs every field a server wrote, nested keys too; the error's own fields stay", function()
            local e = TOKEN:sub(20, 60)
            local body = cjson.encode({ error = { code = 403, message = "m " .. e, status = e, details = {
                { ["@type"] = "type.googleapis.com/google.rpc.ErrorInfo", reason = e, domain = e,
                  metadata = { [e] = e, k = { [e] = { e } } } } } } })
            local err = errors.from_response(METHOD, 403, body, nil, nil, TOKEN)
            assert.equals(METHOD, err.method)
            assert.equals("api", err.kind)
            assert.equals(MARK, err.status)
            assert.equals(MARK, err.reason)
            assert.equals(MARK, err.metadata[MARK])
            assert.same({ [MARK] = { MARK } }, err.metadata.k)
            assert.is_nil(has_window(tostring(err), TOKEN))
            -- scrub itself: keys of nested tables, not the error table's own
            local own = errors.new(TOKEN:sub(1, 20), "api", TOKEN:sub(5, 30),
                { nested = { [TOKEN] = TOKEN } })
            errors.scrub(own, TOKEN)
            assert.equals(TOKEN:sub(1, 20), own.method) -- the caller's, not the server's
            assert.equals(MARK, own.message)
            assert.same({ [MARK] = MARK }, own.nested)
        end)
    end)
end)
