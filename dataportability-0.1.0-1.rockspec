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
Resets Data Portability authorizations (authorization.reset) over verified
HTTPS with a libcurl core, returns documented error tables, and ships a local
emulator (nginx + ngx_lua) for tests.]],
   homepage = "https://github.com/dataportability/dataportability-lua",
   license = "MIT",
}
-- The C core is POSIX only (fork safety, file descriptors): no Windows build.
supported_platforms = { "unix" }
dependencies = {
   "lua >= 5.1",
   "lua-cjson",
}
external_dependencies = {
   CURL = { library = "curl" },
}
build = {
   type = "builtin",
   modules = {
      ["dataportability"] = "lua/dataportability.lua",
      ["dataportability.client"] = "lua/dataportability/client.lua",
      ["dataportability.errors"] = "lua/dataportability/errors.lua",
      ["dataportability.async"] = "lua/dataportability/async.lua",
      ["dataportability.scopes"] = "lua/dataportability/scopes.lua",
      ["dataportability.export"] = "lua/dataportability/export.lua",
      ["dataportability.oauth"] = "lua/dataportability/oauth.lua",
      ["dataportability.options"] = "lua/dataportability/options.lua",
      ["dataportability.retry"] = "lua/dataportability/retry.lua",
      ["dataportability.cli"] = "lua/dataportability/cli.lua",
      ["dataportability.transport"] = "lua/dataportability/transport/init.lua",
      ["dataportability.transport.ngx"] = "lua/dataportability/transport/ngx.lua",
      ["dataportability.emulator"] = "lua/dataportability/emulator/init.lua",
      ["dataportability.emulator.server"] = "lua/dataportability/emulator/server.lua",
      ["dataportability.emulator.nginx"] = "lua/dataportability/emulator/nginx.lua",
      ["dataportability.emulator.admin"] = "lua/dataportability/emulator/admin.lua",
      ["dataportability.emulator.api"] = "lua/dataportability/emulator/api.lua",
      ["dataportability.emulator.archive"] = "lua/dataportability/emulator/archive.lua",
      ["dataportability.emulator.crypto"] = "lua/dataportability/emulator/crypto.lua",
      ["dataportability.emulator.oauth"] = "lua/dataportability/emulator/oauth.lua",
      ["dataportability.emulator.respond"] = "lua/dataportability/emulator/respond.lua",
      ["dataportability.emulator.state"] = "lua/dataportability/emulator/state.lua",
      ["dataportability.emulator.traffic"] = "lua/dataportability/emulator/traffic.lua",
      ["dataportability.core"] = {
         sources = {
            "csrc/core.c", "csrc/client.c", "csrc/batch.c", "csrc/crypto.c", "csrc/download.c",
            "csrc/endpoint.c", "csrc/files.c", "csrc/multi.c", "csrc/share.c", "csrc/token.c", "csrc/transfer.c",
         },
         libraries = { "curl", "crypto", "pthread" },
         incdirs = { "$(CURL_INCDIR)" },
         libdirs = { "$(CURL_LIBDIR)" },
      },
   },
   install = {
      bin = { "bin/dataportability-emulator", "bin/dataportability" },
   },
}
