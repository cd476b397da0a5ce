-- Google's own clients against the emulator: the Python and Node examples
-- of docs/emulator.md ("Google's own clients"), taken from the page and run
-- as they stand, so the page and what works cannot drift apart.
local helpers = require("spec.helpers")

local q = helpers.quote

local HERE = helpers.sh("pwd"):gsub("%s+$", "")
local DOC = "docs/emulator.md"
-- Google's discovery document, as https://dataportability.googleapis.com/$discovery/rest?version=v1
-- served it
local DISCOVERY = HERE .. "/spec/fixtures/google-discovery-dataportability-v1.json"
local NODE_MODULES = HERE .. "/bench/google/node/node_modules"

-- The code blocks of one "## " section of a markdown page, by language.
local function code_blocks(path, heading)
    local text = assert(helpers.read(path), "cannot read " .. path)
    local start = assert(text:find("\n## " .. heading .. "\n", 1, true), "no section " .. heading)
    local stop = text:find("\n## ", start + 1, true) or #text
    local blocks = {}
    for lang, code in text:sub(start, stop):gmatch("\n```(%w+)\n(.-)\n```") do
        assert(blocks[lang] == nil, "two " .. lang .. " blocks in " .. heading)
        blocks[lang] = code .. "\n"
    end
    return blocks
end

-- Runs a command with environment variables; its output and whether it
-- exited 0. `timeout` bounds it: a hung client ends, and so does the spec.
local function run(env, cmd)
    local prefix = ""
    for k, v in pairs(env) do prefix = prefix .. k .. "=" .. q(v) .. " " end
    local out = helpers.sh(prefix .. "timeout 120 " .. cmd .. " 2>&1; echo \"rc=$?\"")
    local body, rc = out:match("^(.-)rc=(%d+)%s*$")
    return body, rc == "0"
end

describe("Google's own clients, as docs/emulator.md shows them #host", function()
    local emu, tmp, blocks, env

    lazy_setup(function()
        blocks = code_blocks(DOC, "Google's own clients")
        emu = helpers.start()
        tmp = helpers.tmpdir()
        env = {
            DATAPORTABILITY_EMULATOR_HOST = emu.host,
            DATAPORTABILITY_EMULATOR_HTTPS = emu.https_endpoint,
            DATAPORTABILITY_EMULATOR_CA = emu.ca_file,
        }
    end)
    lazy_teardown(function()
        helpers.stop(emu)
        if tmp and tmp:match("^/tmp/") then helpers.sh("rm -rf " .. q(tmp)) end
    end)

    -- A fresh emulator state and the page's set-up (an OAuth client, a
    -- refresh token, jobs that finish at once).
    before_each(function()
        emu:clear()
        assert.is_string(blocks.sh)
        helpers.write(tmp .. "/setup.sh", blocks.sh)
        local out, ok = run(env, "sh " .. q(tmp .. "/setup.sh"))
        assert(ok, "the set-up block failed: " .. out)
    end)

    -- What both examples do, as the emulator's request log shows it.
    local function assert_log()
        local log = emu:requests()
        local paths, id = {}, nil
        for i, r in ipairs(log) do
            paths[i] = r.method .. " " .. r.path
            id = id or r.path:match("^/v1/archiveJobs/(%x+)/portabilityArchiveState$")
        end
        assert.is_string(id)
        assert.same({
            "POST /v1/portabilityArchive:initiate",  -- 401: ya29.stale is unknown
            "POST /token",                           -- the refresh
            "POST /v1/portabilityArchive:initiate",  -- sent again, with the new token
            "GET /v1/archiveJobs/" .. id .. "/portabilityArchiveState",
            "GET /dataportability-emulator/" .. id .. "/myactivity.youtube.zip",
            "POST /v1/authorization:reset",
        }, paths)
        assert.equals(1, #emu:jobs())
        -- the download went to the storage host, without the token
        assert.equals("127.0.0.2:" .. emu.https_port, log[5].host)
        assert.is_nil(log[5].headers.authorization)
        for _, i in ipairs({ 1, 3, 4, 6 }) do
            local h = log[i].headers
            assert.equals("Bearer <redacted>", h.authorization)
            -- so the emulator compressed every API answer these clients decoded
            assert.truthy(h["accept-encoding"]:find("gzip", 1, true))
            assert.truthy(h["user-agent"]:find("(gzip)", 1, true))
        end
    end

    it("Python: googleapiclient from the discovery document, google-auth refreshing on 401", function()
        assert(helpers.read(DISCOVERY), "Google's discovery document is missing: " .. DISCOVERY)
        local _, importable = run({}, "/usr/bin/python3 -c 'import googleapiclient, google_auth_httplib2'")
        assert(importable, "/usr/bin/python3 cannot import googleapiclient and google_auth_httplib2 "
            .. "(python3-googleapi, python3-google-auth-httplib2: scripts/install-deps)")
        assert.is_string(blocks.python)
        helpers.write(tmp .. "/export.py", blocks.python)
        local py_env = { DISCOVERY_DOC = DISCOVERY }
        for k, v in pairs(env) do py_env[k] = v end
        local out, ok = run(py_env, "/usr/bin/python3 " .. q(tmp .. "/export.py"))
        assert(ok, "export.py failed: " .. out)
        assert.equals("200 1024 myactivity.youtube.zip\nreset\n", out)
        assert_log()
    end)

    it("Node: googleapis with rootUrl and NODE_EXTRA_CA_CERTS, OAuth2Client refreshing on 401", function()
        assert(helpers.read(NODE_MODULES .. "/googleapis/package.json"),
            "googleapis is not installed in " .. NODE_MODULES .. " (scripts/install-node-deps)")
        assert.is_string(blocks.js)
        helpers.write(tmp .. "/export.js", blocks.js)
        local node_env = { NODE_EXTRA_CA_CERTS = emu.ca_file, NODE_PATH = NODE_MODULES }
        for k, v in pairs(env) do node_env[k] = v end
        local out, ok = run(node_env, "node " .. q(tmp .. "/export.js"))
        assert(ok, "export.js failed: " .. out)
        assert.equals("200 1024 myactivity.youtube.zip\nreset\n", out)
        assert_log()
    end)
end)
