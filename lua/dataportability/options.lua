-- Option tables: the one checker of every public function that takes
-- options, with one wording. A mistake is a programming error: it raises,
-- before any I/O, blaming the line that called the public function.
--
-- A spec (options.spec) maps each option's name to what it takes:
--   "string"                     a string, when given
--   "string!"                    a string, required
--   "string|number"              either type
--   { "number", check = f }      and f(v) -> nil when v is fine, else what is
--                                expected ("must be a whole number >= 0")
-- The wording:
--   bad argument #N to 'FNAME' (options table expected, got TYPE)
--   FNAME: unknown option 'NAME'
--   FNAME: option 'NAME' must be a TYPE, got TYPE
--   FNAME: option 'NAME' is required
--   FNAME: option 'NAME' <what is expected, from check>
-- A check never quotes a value that may be a secret.
local type, pairs, tostring, error, setmetatable = type, pairs, tostring, error, setmetatable
local format, gmatch, sub, concat, sort = string.format, string.gmatch, string.sub, table.concat, table.sort

local _M = {}

local TYPES = { string = true, number = true, boolean = true, table = true, ["function"] = true }

-- What nil stands for where no option is required: shared, never changed.
local EMPTY = setmetatable({}, { __newindex = function() error("read-only", 2) end })

--- options.spec(t) -> spec: t as above, made ready for options.check. A
--- mistake in t is the library's, and raises at once.
function _M.spec(t)
    local spec = { by_name = {}, required = {} }
    for name, v in pairs(t) do
        local want, check = v, nil
        if type(v) == "table" then want, check = v[1], v.check end
        local required = sub(want, -1) == "!"
        if required then want = sub(want, 1, -2) end
        local types, names = {}, {}
        for tname in gmatch(want, "[^|]+") do
            if not TYPES[tname] then
                error(format("options.spec: option '%s': unknown type '%s'", name, tname), 2)
            end
            types[tname], names[#names + 1] = true, tname
        end
        spec.by_name[name] = { types = types, want = concat(names, " or "), check = check }
        if required then spec.required[#spec.required + 1] = name end
    end
    sort(spec.required) -- the first missing one named is always the same
    return spec
end

--- options.check(opts, spec, fname, argn, level) -> opts
--- opts is argument #argn of the public function `fname`; level is what
--- the caller would give error() to blame the line that called that
--- function. nil stands for an empty table where no option is required.
function _M.check(opts, spec, fname, argn, level)
    level = level + 1 -- this function's own frame
    if opts == nil and spec.required[1] == nil then
        return EMPTY
    end
    if type(opts) ~= "table" then
        error(format("bad argument #%d to '%s' (options table expected, got %s)", argn, fname, type(opts)),
            level)
    end
    local by_name = spec.by_name
    for name, v in pairs(opts) do
        local o = by_name[name]
        if not o then
            error(format("%s: unknown option '%s'", fname, tostring(name)), level)
        end
        if not o.types[type(v)] then
            error(format("%s: option '%s' must be a %s, got %s", fname, name, o.want, type(v)), level)
        end
        local why = o.check and o.check(v)
        if why then
            error(format("%s: option '%s' %s", fname, name, why), level)
        end
    end
    local required = spec.required
    for i = 1, #required do
        if opts[required[i]] == nil then
            error(format("%s: option '%s' is required", fname, required[i]), level)
        end
    end
    return opts
end

return _M
