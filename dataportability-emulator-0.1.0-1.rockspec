rockspec_format = "3.0"
package = "dataportability-emulator"
version = "0.1.0-1"
source = {
   url = "git+https://github.com/dataportability/dataportability-lua.git",
   tag = "v0.1.0",
}
description = {
   summary = "A local emulator of Google's Data Portability API, for tests",
   detailed = [[
Google's Data Portability API on your machine, for the tests of programs that
use it: every v1 method with Google's answers and error shapes, the OAuth
endpoints, signed archive downloads over HTTPS with its own CA, fault
injection and a request log through an admin API. dataportability-emulator
start prints the shell lines that point the dataportability module (and
Google's own clients) at it. It runs in nginx: it needs, at run time, nginx
with ngx_lua (OpenResty, or Debian's libnginx-mod-http-lua) and the openssl
command, which luarocks cannot install.]],
   homepage = "https://github.com/dataportability/dataportability-lua",
   license = "MIT",
}
supported_platforms = { "unix" }
dependencies = {
   "lua >= 5.1",
   "lua-cjson",
   "dataportability = 0.1.0",
}
-- Lua only: "none" installs the files listed, where "builtin" would
-- install everything under lua/, the client's modules too (luarocks issue 321).
build = {
   type = "none",
   install = {
      lua = {
         ["dataportability.emulator"] = "lua/dataportability/emulator/init.lua",
         ["dataportability.emulator.nginx"] = "lua/dataportability/emulator/nginx.lua",
         ["dataportability.emulator.server"] = "lua/dataportability/emulator/server.lua",
         ["dataportability.emulator.admin"] = "lua/dataportability/emulator/admin.lua",
         ["dataportability.emulator.api"] = "lua/dataportability/emulator/api.lua",
         ["dataportability.emulator.archive"] = "lua/dataportability/emulator/archive.lua",
         ["dataportability.emulator.batch"] = "lua/dataportability/emulator/batch.lua",
         ["dataportability.emulator.crypto"] = "lua/dataportability/emulator/crypto.lua",
         ["dataportability.emulator.gzip"] = "lua/dataportability/emulator/gzip.lua",
         ["dataportability.emulator.oauth"] = "lua/dataportability/emulator/oauth.lua",
         ["dataportability.emulator.respond"] = "lua/dataportability/emulator/respond.lua",
         ["dataportability.emulator.state"] = "lua/dataportability/emulator/state.lua",
         ["dataportability.emulator.traffic"] = "lua/dataportability/emulator/traffic.lua",
      },
      bin = { "bin/dataportability-emulator" },
   },
}
