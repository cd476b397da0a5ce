--- gzip compression of whole answers, inside nginx (LuaJIT): the zlib
-- nginx itself links, through ffi. Google's front end compresses an answer
-- when the request accepts gzip AND its User-Agent contains "gzip"; wants()
-- tells whether the current request asks for that.
-- luacheck: globals ngx

local ffi = require("ffi")

local str_find, str_lower = string.find, string.lower

local _M = {}

ffi.cdef([[
typedef struct dp_z_stream {
    const unsigned char *next_in; unsigned int avail_in; unsigned long total_in;
    unsigned char *next_out; unsigned int avail_out; unsigned long total_out;
    const char *msg; void *state;
    void *zalloc; void *zfree; void *opaque;
    int data_type; unsigned long adler; unsigned long reserved;
} dp_z_stream;
const char *zlibVersion(void);
int deflateInit2_(dp_z_stream *strm, int level, int method, int windowBits, int memLevel,
                  int strategy, const char *version, int stream_size);
unsigned long deflateBound(dp_z_stream *strm, unsigned long sourceLen);
int deflate(dp_z_stream *strm, int flush);
int deflateEnd(dp_z_stream *strm);
]])

-- nginx has zlib loaded already (ffi.C); otherwise load it.
local Z = ffi.C
if not pcall(function() return Z.deflateInit2_ end) then
    for _, name in ipairs({ "z", "libz.so.1" }) do
        local ok, lib = pcall(ffi.load, name)
        if ok then Z = lib; break end
    end
end

local Z_FINISH, Z_STREAM_END, Z_DEFLATED = 4, 1, 8
local GZIP_WINDOW = 31  -- 15 bits of window, plus 16: a gzip header and trailer

--- The gzip encoding of s (one member, default level).
function _M.compress(s)
    local strm = ffi.new("dp_z_stream")
    assert(Z.deflateInit2_(strm, 6, Z_DEFLATED, GZIP_WINDOW, 8, 0, Z.zlibVersion(),
        ffi.sizeof(strm)) == 0, "deflateInit2 failed")
    local bound = tonumber(Z.deflateBound(strm, #s))
    local out = ffi.new("unsigned char[?]", bound)
    strm.next_in, strm.avail_in = ffi.cast("const unsigned char *", s), #s
    strm.next_out, strm.avail_out = out, bound
    local rc = Z.deflate(strm, Z_FINISH)
    local n = tonumber(strm.total_out)
    Z.deflateEnd(strm)
    assert(rc == Z_STREAM_END, "deflate did not finish")
    return ffi.string(out, n)
end

--- True when the request accepts gzip (a q of 0 refuses it) and names gzip
-- in its User-Agent. headers: lower-case names.
function _M.wants(headers)
    local accept, agent = headers["accept-encoding"], headers["user-agent"]
    if type(accept) == "table" then accept = table.concat(accept, ",") end
    if type(agent) == "table" then agent = table.concat(agent, " ") end
    if not accept or not agent or not str_find(str_lower(agent), "gzip", 1, true) then return false end
    for coding in str_lower(accept):gmatch("[^,]+") do
        local name, params = coding:match("^%s*([%w*-]+)%s*(.*)$")
        if name == "gzip" then
            local q = tonumber(params:match("q%s*=%s*([%d.]+)"))
            return q == nil or q > 0
        end
    end
    return false
end

return _M
