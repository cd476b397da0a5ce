-- The library's modules require one another without a cycle: every
-- require in their source counts, lazy ones inside functions too, so that
-- no module can dodge a cycle by requiring another late. The emulator and
-- the command line (cli.lua) are programs on top of the library, not in it.

-- The modules: name -> path, from the files on disk.
local function modules()
    local found = { dataportability = "lua/dataportability.lua" }
    for _, dir in ipairs({ "lua/dataportability", "lua/dataportability/transport" }) do
        local p = assert(io.popen("ls " .. dir .. "/*.lua"))
        for path in p:lines() do
            local rel = path:match("^lua/(.*)%.lua$")
            local name = rel:gsub("/init$", ""):gsub("/", ".")
            if name ~= "dataportability.cli" then found[name] = path end
        end
        p:close()
    end
    return found
end

-- Lua source with its comments removed and each string literal replaced
-- by "<n>"; and the literals, by n.
local function tokens(src)
    local out, strings, i, n = {}, {}, 1, #src
    local function long_bracket(at) -- [==[ at `at`: the level, or nil
        local eq = src:match("^%[(=*)%[", at)
        return eq and #eq
    end
    local function long_end(at, level) -- the position after the closing ]==]
        local _, e = src:find("]" .. ("="):rep(level) .. "]", at, true)
        return assert(e, "unfinished long bracket") + 1
    end
    while i <= n do
        local c = src:sub(i, i)
        if src:sub(i, i + 1) == "--" then
            local level = long_bracket(i + 2)
            if level then
                i = long_end(i + 4 + level, level)
            else
                i = (src:find("\n", i, true) or n + 1)
            end
        elseif c == '"' or c == "'" then
            local j, buf = i + 1, {}
            while true do
                local d = src:sub(j, j)
                assert(d ~= "", "unfinished string")
                if d == "\\" then
                    buf[#buf + 1] = src:sub(j, j + 1)
                    j = j + 2
                elseif d == c then
                    break
                else
                    buf[#buf + 1] = d
                    j = j + 1
                end
            end
            strings[#strings + 1] = table.concat(buf)
            out[#out + 1] = '"' .. #strings .. '"'
            i = j + 1
        elseif c == "[" and long_bracket(i) then
            local level = long_bracket(i)
            local e = long_end(i + 2 + level, level)
            strings[#strings + 1] = src:sub(i + 2 + level, e - 3 - level)
            out[#out + 1] = '"' .. #strings .. '"'
            i = e
        else
            out[#out + 1] = c
            i = i + 1
        end
    end
    return table.concat(out), strings
end

-- The modules a source requires: require("x"), require "x", pcall(require, "x").
local function requires(src)
    local code, strings = tokens(src)
    local found = {}
    for _, pattern in ipairs({ '%f[%w_.:]require%s*%(?%s*"(%d+)"', 'pcall%s*%(%s*require%s*,%s*"(%d+)"' }) do
        for n in code:gmatch(pattern) do found[#found + 1] = strings[tonumber(n)] end
    end
    table.sort(found)
    return found
end

-- The module graph: name -> list of the modules of `mods` it requires.
local function graph(mods)
    local g = {}
    for name, path in pairs(mods) do
        local f = assert(io.open(path, "rb"))
        local src = f:read("*a")
        f:close()
        g[name] = {}
        for _, dep in ipairs(requires(src)) do
            if mods[dep] then g[name][#g[name] + 1] = dep end
        end
        table.sort(g[name])
    end
    return g
end

-- A cycle of g as a list of names (its first again at the end), or nil.
local function find_cycle(g)
    local state, stack = {}, {} -- state: nil unseen, 1 on the stack, 2 done
    local function visit(v)
        state[v] = 1
        stack[#stack + 1] = v
        for _, w in ipairs(g[v]) do
            if state[w] == 1 then
                local cycle, from = {}, nil
                for k, x in ipairs(stack) do
                    if x == w then from = k end
                    if from then cycle[#cycle + 1] = x end
                end
                cycle[#cycle + 1] = w
                return cycle
            elseif not state[w] then
                local cycle = visit(w)
                if cycle then return cycle end
            end
        end
        stack[#stack] = nil
        state[v] = 2
    end
    local names = {}
    for v in pairs(g) do names[#names + 1] = v end
    table.sort(names)
    for _, v in ipairs(names) do
        if not state[v] then
            local cycle = visit(v)
            if cycle then return cycle end
        end
    end
end

describe("the module graph", function()
    it("finds the requires of a source, lazy ones too, and not those in comments or strings", function()
        assert.same({ "a", "b.c", "d", "e", "g" }, requires([=[
            local a = require("a")
            local function f() return require 'b.c' end
            -- require("commented")
            --[[ require("long comment") ]]
            local s = "require('in a string')"
            local t = [[ require("in a long string") ]]
            local ok, d = pcall(require, "d")
            local e = require "e" local x = require[[g]]
        ]=]))
    end)

    it("finds a cycle, and none where there is none", function()
        assert.same({ "a", "b", "a" }, find_cycle({ a = { "b" }, b = { "a" } }))
        assert.same({ "b", "c", "b" }, find_cycle({ a = { "b" }, b = { "c" }, c = { "b" } }))
        assert.is_nil(find_cycle({ a = { "b", "c" }, b = { "c" }, c = {} }))
    end)

    it("holds the library's modules, without the programs on top of it", function()
        local mods = modules()
        for _, name in ipairs({ "dataportability", "dataportability.client", "dataportability.oauth",
                                "dataportability.options", "dataportability.transport",
                                "dataportability.transport.ngx" }) do
            assert.is_string(mods[name], name)
        end
        assert.is_nil(mods["dataportability.cli"])
        assert.is_nil(mods["dataportability.emulator"])
        local g = graph(mods)
        local function requires_of(name, dep)
            for _, d in ipairs(g[name]) do if d == dep then return true end end
            return false
        end
        assert.is_true(requires_of("dataportability.client", "dataportability.transport"))
        assert.is_true(requires_of("dataportability.oauth", "dataportability.transport"))
        -- a lazy one counts too
        assert.is_true(requires_of("dataportability.transport", "dataportability.transport.ngx"))
    end)

    it("has no cycle, counting every require", function()
        local cycle = find_cycle(graph(modules()))
        assert(cycle == nil, "require cycle: " .. table.concat(cycle or {}, " -> "))
    end)
end)
