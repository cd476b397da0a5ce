rockspec_format = "3.0"
package = "dataportability"
version = "0.1.0-1"
source = {
   url = "git+https://github.com/dataportability/dataportability-lua.git",
   tag = "v0.1.0",
}
description = {
   summary = "Google's Data Portability API for Lua, with a C core on libcurl",
   detailed = [[
The whole export workflow of Google's Data Portability API: consent URLs with
PKCE and the code exchange, token sources that refresh themselves, every v1
method (initiate, state, retry, cancel, access type check, reset),
client:export (initiate, poll, download every file with resumes and MD5
checks, then reset), reset_many (thousands of resets multiplexed over HTTP/2),
_async forms for event loops (Neovim, luv), cosockets in OpenResty, and a
command line (dataportability). Verified HTTPS only, documented error tables,
the token never in an error or a log line. Lua 5.1 to 5.4 and LuaJIT.
The command line's login needs luv. The local emulator for tests is the
dataportability-emulator rock.]],
   homepage = "https://github.com/dataportability/dataportability-lua",
   license = "MIT",
}
-- The C core is POSIX only (fork safety, file descriptors): no Windows build.
supported_platforms = { "unix" }
dependencies = {
   "lua >= 5.1",
   "lua-cjson",
}
-- No header for CURL: curl/curl.h is in Debian's multiarch include
-- directory, where luarocks does not look; the compiler finds it there.
external_dependencies = {
   CURL = { library = "curl" },
   CRYPTO = { header = "openssl/evp.h", library = "crypto" }, -- OpenSSL's libcrypto: MD5, SHA-256, randomness
}
-- Not the "builtin" backend: besides its modules, it installs everything
-- under lua/, the emulator's modules too (luarocks issue 321). So the core
-- is compiled here (into build/, out of the sources) and each file listed.
build = {
   type = "command",
   build_command = "mkdir -p build/rock && $(CC) $(CFLAGS) $(LIBFLAG) -I$(LUA_INCDIR) -I$(CURL_INCDIR)"
      .. " -I$(CRYPTO_INCDIR) -o build/rock/core.so"
      .. " csrc/core.c csrc/client.c csrc/batch.c csrc/crypto.c csrc/download.c csrc/endpoint.c"
      .. " csrc/files.c csrc/multi.c csrc/part.c csrc/share.c csrc/token.c csrc/transfer.c"
      .. " -L$(CURL_LIBDIR) -L$(CRYPTO_LIBDIR) -lcurl -lcrypto -pthread",
   install = {
      lua = {
         ["dataportability"] = "lua/dataportability.lua",
         ["dataportability.client"] = "lua/dataportability/client.lua",
         ["dataportability.errors"] = "lua/dataportability/errors.lua",
         ["dataportability.async"] = "lua/dataportability/async.lua",
         ["dataportability.scopes"] = "lua/dataportability/scopes.lua",
         ["dataportability.export"] = "lua/dataportability/export.lua",
         ["dataportability.oauth"] = "lua/dataportability/oauth.lua",
         ["dataportability.options"] = "lua/dataportability/options.lua",
         ["dataportability.retry"] = "lua/dataportability/retry.lua",
         ["dataportability.transport"] = "lua/dataportability/transport/init.lua",
         ["dataportability.transport.ngx"] = "lua/dataportability/transport/ngx.lua",
         ["dataportability.cli"] = "lua/dataportability/cli/init.lua",
         ["dataportability.cli.arguments"] = "lua/dataportability/cli/arguments.lua",
         ["dataportability.cli.output"] = "lua/dataportability/cli/output.lua",
         ["dataportability.cli.login"] = "lua/dataportability/cli/login.lua",
         ["dataportability.cli.commands"] = "lua/dataportability/cli/commands.lua",
      },
      lib = { ["dataportability.core"] = "build/rock/core.so" },
      bin = { "bin/dataportability" },
   },
   -- lua-language-server definitions: $(luarocks show --rock-dir dataportability)/types
   copy_directories = { "types" },
}
