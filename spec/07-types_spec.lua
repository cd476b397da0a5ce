-- The lua-language-server definitions in types/ cover the public API as the
-- code has it, found by walking the loaded module rather than from a list:
-- every field of dp, every method of a client (each generated _async form
-- too), of a token source and of a driver, every hook dp.driver reads,
-- every option each function's options check knows, and every error field
-- and kind of README.md's error tables. And nothing is annotated that the
-- code lacks. With lua-language-server on PATH, it also checks the
-- definitions, and the examples against them.
local helpers = require("spec.helpers")


-- What the client calls on its driver and on the async module; not for users.
local INTERNAL = {
    ["dataportability.Driver"] = { start = true, download = true, settle = true, cancelled = true,
                                   after = true, after_hooks = true },
    ["dataportability.async"] = { is_driver = true, default_driver = true },
}

-- An option no check knows: the probes below call each function that
-- takes options with it, so that its check raises before any I/O.
local PROBE_KEY = "types_spec_probe"

---------------------------------------------------------------------------
-- types/, read the way the spec needs it: classes with their parents and
-- fields (a `---@field` in the class's comment block, or a `function
-- Var.name` / `function Var:name` on the local the class annotates), the
-- `---@param`s of each function, and aliases with their `---| "value"`s.

local function files_under(dir)
    local list = {}
    for path in helpers.sh("find " .. dir .. " -name '*.lua' | sort"):gmatch("[^\n]+") do
        list[#list + 1] = path
    end
    return list
end

local function read_types()
    local classes, aliases = {}, {}
    local function class(name)
        classes[name] = classes[name] or { name = name, parents = {}, fields = {}, functions = {} }
        return classes[name]
    end
    for _, path in ipairs(files_under("types")) do
        local current, alias, params, vars = nil, nil, {}, {}
        local n = 0
        for line in io.lines(path) do
            n = n + 1
            local where = path .. ":" .. n
            local name, parents = line:match("^%-%-%-@class%s+([%w_.]+)%s*:?%s*(.*)$")
            local field = line:match("^%-%-%-@field%s+([%w_]+)")
            local param, ptype = line:match("^%-%-%-@param%s+([%w_]+%??)%s+(%S+)")
            local value = line:match('^%-%-%-|%s*"([^"]+)"')
            if name then
                current, alias = class(name), nil
                for parent in parents:gmatch("[%w_.]+") do table.insert(current.parents, parent) end
            elseif line:match("^%-%-%-@alias%s") then
                alias = line:match("^%-%-%-@alias%s+([%w_.]+)")
                aliases[alias] = {}
            elseif field then
                assert(current, where .. ": a field outside a class")
                current.fields[field] = where
            elseif param then
                params[#params + 1] = { name = param, type = ptype }
            elseif value and alias then
                table.insert(aliases[alias], value)
            elseif not line:match("^%-%-") then -- code, or a blank line, ends a comment block
                local var = line:match("^local%s+([%w_]+)%s*=%s*{}")
                if var and current then vars[var] = current.name end
                local owner, fname = line:match("^function%s+([%w_]+)[.:]([%w_]+)%(")
                if owner then
                    local c = class(assert(vars[owner], where .. ": '" .. owner .. "' is no class's local"))
                    c.fields[fname] = where
                    c.functions[fname] = { params = params, where = where }
                end
                current, alias, params = nil, nil, {}
            end
        end
    end
    return classes, aliases
end

local function field_of(classes, cname, name)
    local c = classes[cname]
    if not c then return nil end
    if c.fields[name] then return c.fields[name] end
    for _, parent in ipairs(c.parents) do
        local where = field_of(classes, parent, name)
        if where then return where end
    end
end

local function all_fields(classes, cname, into)
    into = into or {}
    local c = assert(classes[cname], "no class " .. cname .. " in types/")
    for name in pairs(c.fields) do into[name] = true end
    for _, parent in ipairs(c.parents) do all_fields(classes, parent, into) end
    return into
end

-- Names of `t`'s functions (or of all its fields), sorted; `__` metamethods left out.
local function names(t, functions_only)
    local list = {}
    for k, v in pairs(t) do
        if type(k) == "string" and not k:find("^__") and (type(v) == "function" or not functions_only) then
            list[#list + 1] = k
        end
    end
    table.sort(list)
    return list
end

-- What is annotated in class `cname` (its functions only, with `functions_only`)
-- but not in the code (`present`).
local function stale(classes, cname, present, functions_only)
    local extra = {}
    local annotated = functions_only and assert(classes[cname]).functions or all_fields(classes, cname)
    for name in pairs(annotated) do
        if not present[name] then
            extra[#extra + 1] = cname .. "." .. name
        end
    end
    table.sort(extra)
    return extra
end

local function set(list)
    local s = {}
    for _, v in ipairs(list) do s[v] = true end
    return s
end

-- Each name of `list` that class `cname` lacks (INTERNAL aside), as "Class.name".
local function missing(classes, cname, list)
    local out = {}
    for _, name in ipairs(list) do
        if not (INTERNAL[cname] or {})[name] and not field_of(classes, cname, name) then
            out[#out + 1] = cname .. "." .. name
        end
    end
    return out
end

---------------------------------------------------------------------------

describe("types/ (lua-language-server definitions)", function()
    local classes, aliases, dp, made, reached
    local options, real_spec, real_check
    local saved = {}

    -- The library loaded afresh, with options.spec and options.check watched:
    -- every option spec made while it loads, and every check a probe reaches.
    lazy_setup(function()
        classes, aliases = read_types()
        for name, module in pairs(package.loaded) do
            if name:find("^dataportability") and name ~= "dataportability.core" then
                saved[name], package.loaded[name] = module, nil
            end
        end
        options = require("dataportability.options")
        real_spec, real_check = options.spec, options.check
        made, reached = {}, {}
        options.spec = function(t)
            local s = real_spec(t)
            local info = debug.getinfo(2, "Sl")
            made[s] = info.short_src .. ":" .. info.currentline
            return s
        end
        options.check = function(opts, s, fname, argn, level)
            reached[#reached + 1] = { spec = s, fname = fname, argn = argn }
            return real_check(opts, s, fname, argn, level)
        end
        dp = require("dataportability")
    end)

    lazy_teardown(function()
        if options then options.spec, options.check = real_spec, real_check end
        for name in pairs(package.loaded) do
            if name:find("^dataportability") and name ~= "dataportability.core" then
                package.loaded[name] = nil
            end
        end
        for name, module in pairs(saved) do package.loaded[name] = module end
    end)

    it("are Lua files that start with ---@meta", function()
        local list = files_under("types")
        assert.is_true(#list >= 1)
        for _, path in ipairs(list) do
            assert.truthy(loadfile(path), path)
            assert.truthy(helpers.read(path):find("^%-%-%-@meta"), path)
        end
        assert.truthy(helpers.read("types/dataportability.lua"):find("^%-%-%-@meta dataportability\n"))
    end)

    it("annotate every field of the module, and nothing it lacks", function()
        assert.same({}, missing(classes, "dataportability", names(dp)))
        assert.same({}, stale(classes, "dataportability", set(names(dp))))
    end)

    it("annotate every client method, each _async form too, and nothing it lacks", function()
        local client = dp.new()
        local methods = names(getmetatable(client), true)
        client:close()
        local async = 0
        for _, name in ipairs(methods) do
            if name:find("_async$") then async = async + 1 end
        end
        assert.is_true(async >= 6, "the generated _async methods were not found")
        assert.same({}, missing(classes, "dataportability.Client", methods))
        assert.same({}, stale(classes, "dataportability.Client", set(methods)))
    end)

    it("annotate every token source method and nothing it lacks", function()
        local source = dp.token_source({ client_id = "types-spec" })
        local methods = names(getmetatable(source), true)
        assert.same({}, missing(classes, "dataportability.TokenSource", methods))
        assert.same({}, stale(classes, "dataportability.TokenSource", set(methods), true))
    end)

    it("annotate every hook dp.driver reads, every driver method and luv_driver", function()
        local read = {}
        local hooks = setmetatable({}, { __index = function(_, k)
            read[#read + 1] = k
            return function() end
        end })
        local driver = dp.driver(hooks)
        local methods = names(getmetatable(driver), true)
        driver:close()
        local hook_names = names(set(read))
        assert.is_true(#hook_names >= 2)
        assert.same({}, missing(classes, "dataportability.DriverHooks", hook_names))
        assert.same({}, stale(classes, "dataportability.DriverHooks", set(hook_names)))
        assert.same({}, missing(classes, "dataportability.Driver", methods))
        assert.same({}, stale(classes, "dataportability.Driver", set(methods)))
        for name in pairs(INTERNAL["dataportability.Driver"]) do -- the list names real methods
            assert.is_function(getmetatable(driver)[name], name)
        end
        local async = require("dataportability.async")
        assert.same({}, missing(classes, "dataportability.async", names(async, true)))
        assert.same({}, stale(classes, "dataportability.async", set(names(async, true))))
    end)

    it("annotate every option of each function, in the class its declaration takes", function()
        local client = dp.new()
        local P = { [PROBE_KEY] = true }
        local probes = {
            { "dataportability", "new", function() return dp.new(P) end },
            { "dataportability", "reset", function() return dp.reset("ya29.probe", P) end },
            { "dataportability", "token_source", function() return dp.token_source(P) end },
            { "dataportability", "authorization_url", function() return dp.authorization_url(P) end },
            { "dataportability", "exchange_code", function() return dp.exchange_code(P) end },
            { "dataportability.Client", "reset_many", function() return client:reset_many({}, P) end },
            { "dataportability.Client", "export", function()
                return client:export("ya29.probe", { "myactivity.youtube" }, P)
            end },
        }
        local problems, covered = {}, {}
        local function problem(s) problems[#problems + 1] = s end
        for _, probe in ipairs(probes) do
            local cname, fname, call = probe[1], probe[2], probe[3]
            local label = cname .. "." .. fname
            reached = {}
            local ok, err = pcall(call)
            local hit = reached[1]
            if hit then covered[hit.spec] = true end
            local decl = classes[cname] and classes[cname].functions[fname]
            local param = hit and decl and decl.params[hit.argn] -- argn counts the arguments after self
            local oclass = param and param.type:gsub("%?$", ""):gsub("|nil$", "")
            if ok or not tostring(err):find("unknown option '" .. PROBE_KEY .. "'", 1, true) or not hit then
                problem(label .. ": its options check did not refuse the probe: " .. tostring(err))
            elseif not decl then
                problem(label .. " is not declared in types/")
            elseif not param then
                problem(decl.where .. ": no @param #" .. hit.argn .. " for its options")
            elseif not classes[oclass] then
                problem(decl.where .. ": its options class " .. oclass .. " is not defined")
            else
                local option_names = names(hit.spec.by_name)
                for _, name in ipairs(missing(classes, oclass, option_names)) do
                    problem(label .. ": option not annotated: " .. name)
                end
                for _, name in ipairs(stale(classes, oclass, set(option_names))) do
                    problem(label .. ": annotated, but no such option: " .. name)
                end
            end
        end
        client:close()
        -- no option spec escapes the probes: a new function with options needs one
        for s, where in pairs(made) do
            if not covered[s] then
                problem("the option spec made at " .. where .. " is reached by no probe (add its function"
                    .. " to the probes here, and annotate it in types/)")
            end
        end
        table.sort(problems)
        assert.same({}, problems)
    end)

    it("annotate every error field and kind README.md documents", function()
        local section = assert(helpers.read("README.md"):match("\n## Error tables\n(.-)\n## "),
            "README.md has no Error tables section")
        local documented, table_of = { field = {}, kind = {} }, nil
        for line in (section .. "\n"):gmatch("(.-)\n") do
            local first = line:match("^|%s*([^|]-)%s*|")
            if first == "field" or first == "kind" then
                table_of = first
            elseif not first then
                table_of = nil
            elseif table_of then
                for name in first:gmatch("`([%w_]+)`") do table.insert(documented[table_of], name) end
            end
        end
        assert.is_true(#documented.field >= 10 and #documented.kind >= 10)
        assert.same({}, missing(classes, "dataportability.Error", documented.field))
        local kinds = aliases["dataportability.ErrorKind"]
        table.sort(kinds)
        table.sort(documented.kind)
        assert.same(documented.kind, kinds)
    end)
end)
