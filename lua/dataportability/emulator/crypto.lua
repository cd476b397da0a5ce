--- Hashes for the emulator, inside nginx (LuaJIT): MD5 and SHA-256 (also
-- streamed), HMAC-SHA256 and random bytes from the libcrypto nginx links,
-- through ffi; CRC32C (Castagnoli) in Lua, with the linear-algebra shortcut
-- that lets the archive files be hashed without reading every byte twice.
-- luacheck: globals ngx

local ffi = require("ffi")
local bit = require("bit")

local band, bxor, rshift, lshift = bit.band, bit.bxor, bit.rshift, bit.lshift
local byte, char = string.byte, string.char

local _M = {}

ffi.cdef([[
typedef struct evp_md_ctx_st EVP_MD_CTX;
typedef struct evp_md_st EVP_MD;
EVP_MD_CTX *EVP_MD_CTX_new(void);
void EVP_MD_CTX_free(EVP_MD_CTX *ctx);
const EVP_MD *EVP_md5(void);
const EVP_MD *EVP_sha256(void);
int EVP_DigestInit_ex(EVP_MD_CTX *ctx, const EVP_MD *type, void *engine);
int EVP_DigestUpdate(EVP_MD_CTX *ctx, const void *d, size_t cnt);
int EVP_DigestFinal_ex(EVP_MD_CTX *ctx, unsigned char *md, unsigned int *s);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len,
                    const unsigned char *d, size_t n, unsigned char *md, unsigned int *md_len);
int RAND_bytes(unsigned char *buf, int num);
]])

-- nginx has libcrypto loaded already (ffi.C); a plain LuaJIT loads it.
local C = ffi.C
if not pcall(function() return C.EVP_md5 end) then
    for _, name in ipairs({ "crypto", "libcrypto.so.3", "libcrypto.so.1.1" }) do
        local ok, lib = pcall(ffi.load, name)
        if ok then C = lib; break end
    end
end

local out_buf = ffi.new("unsigned char[64]")
local out_len = ffi.new("unsigned int[1]")

local function hex(s)
    return (s:gsub(".", function(c) return ("%02x"):format(byte(c)) end))
end
_M.hex = hex

--- A streaming digest: d = crypto.digest("md5"); d:update(s) ...; d:final() -> raw bytes.
local Digest = {}
Digest.__index = Digest

function _M.digest(name)
    local ctx = ffi.gc(C.EVP_MD_CTX_new(), C.EVP_MD_CTX_free)
    assert(C.EVP_DigestInit_ex(ctx, name == "md5" and C.EVP_md5() or C.EVP_sha256(), nil) == 1)
    return setmetatable({ ctx = ctx }, Digest)
end

function Digest:update(s)
    assert(C.EVP_DigestUpdate(self.ctx, s, #s) == 1)
end

function Digest:final()
    assert(C.EVP_DigestFinal_ex(self.ctx, out_buf, out_len) == 1)
    return ffi.string(out_buf, out_len[0])
end

function _M.sha256(s)
    local d = _M.digest("sha256")
    d:update(s)
    return d:final()
end

function _M.hmac_sha256(key, s)
    assert(C.HMAC(C.EVP_sha256(), key, #key, s, #s, out_buf, out_len) ~= nil)
    return ffi.string(out_buf, out_len[0])
end

function _M.random_bytes(n)
    local buf = ffi.new("unsigned char[?]", n)
    assert(C.RAND_bytes(buf, n) == 1, "RAND_bytes failed")
    return ffi.string(buf, n)
end

--- n random bytes as lower-case hex: ids and tokens that need no escaping.
function _M.random_hex(n)
    return hex(_M.random_bytes(n))
end

--- base64url without padding (RFC 7636's S256 code challenge).
function _M.base64url(s)
    return (ngx.encode_base64(s):gsub("[+/=]", { ["+"] = "-", ["/"] = "_", ["="] = "" }))
end

---------------------------------------------------------------------------
-- CRC32C. `raw` values are the bare register (no pre/post inversion), on
-- which an update is affine: update(c, data) = Z_n(c) xor update(0, data),
-- Z_n being the linear map "feed n zero bytes". So a file made of blocks that
-- share a long tail needs the tail's bytes once, then 32 xors per block.

local POLY = 0x82F63B78
local TABLE = ffi.new("uint32_t[256]")
for i = 0, 255 do
    local c = i
    for _ = 1, 8 do
        c = band(c, 1) == 1 and bxor(rshift(c, 1), POLY) or rshift(c, 1)
    end
    TABLE[i] = c
end

--- The raw register after feeding s (from byte i to j, default all) to c.
function _M.crc32c_update(c, s, i, j)
    local p = ffi.cast("const uint8_t *", s)
    for k = (i or 1) - 1, (j or #s) - 1 do
        c = bxor(TABLE[band(bxor(c, p[k]), 255)], rshift(c, 8))
    end
    return c
end

--- The operator "feed n zero bytes", as the images of the 32 unit vectors.
function _M.crc32c_zeros(n)
    local zeros, op = string.rep("\0", n), {}
    for k = 0, 31 do op[k] = _M.crc32c_update(lshift(1, k), zeros) end
    return op
end

function _M.crc32c_apply(op, c)
    local v = 0
    for k = 0, 31 do
        if band(rshift(c, k), 1) == 1 then v = bxor(v, op[k]) end
    end
    return v
end

_M.CRC32C_INIT = -1  -- the register starts as all ones ...

--- ... and the final value is its inversion, as 4 big-endian bytes.
function _M.crc32c_bytes(raw)
    local c = bit.bnot(raw)
    return char(band(rshift(c, 24), 255), band(rshift(c, 16), 255), band(rshift(c, 8), 255), band(c, 255))
end

function _M.crc32c(s)
    return _M.crc32c_bytes(_M.crc32c_update(_M.CRC32C_INIT, s))
end

return _M
