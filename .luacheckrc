std = "max"
max_line_length = 110
files["spec/"] = { std = "+busted" }
files["lua/dataportability/emulator/server.lua"] = { read_globals = { "ngx" } }
exclude_files = { "build/" }
