# dataportability: build, test and demo.
#
#   make          build dataportability/core.so for Lua 5.4 (build/lua5.4)
#   make luajit   the same for LuaJIT (build/luajit)
#   make matrix   for Lua 5.1, 5.2, 5.3, 5.4 and LuaJIT
#   make test     install what is missing, build the matrix, run every suite
#   make demo     install what is missing, build, run examples/reset.lua
#                 against a fresh emulator
#   make install  copy the modules, the core and both commands under PREFIX
#                 (DESTDIR honoured; LUA_VERSION=5.1 for LuaJIT)
#   make asan     the core for Lua 5.4 under ASan+UBSan, and a Lua 5.4 host
#                 linked with them (build/asan); docs/hardening.md
#   make fuzz     the libFuzzer targets in fuzz/ (clang; build/fuzz)
#   make bench    install what is missing (Google's clients too), build the
#                 matrix, run bench/run: every contender against one local
#                 HTTPS server; writes bench/RESULTS.md
#
# Every path is overridable: make LUA_INCDIR_5.4=/opt/lua/include ...

CC          ?= cc
CFLAGS      ?= -O2 -g
WARNINGS     = -std=c99 -Wall -Wextra -Wpedantic -Werror
CURL_CFLAGS ?= $(shell pkg-config --cflags libcurl 2>/dev/null)
CURL_LIBS   ?= $(shell pkg-config --libs libcurl 2>/dev/null || echo -lcurl)
LUA_INCDIR_5.1 ?= /usr/include/lua5.1
LUA_INCDIR_5.2 ?= /usr/include/lua5.2
LUA_INCDIR_5.3 ?= /usr/include/lua5.3
LUA_INCDIR_5.4 ?= /usr/include/lua5.4
LUAJIT_INCDIR  ?= /usr/include/luajit-2.1

PREFIX        ?= /usr/local
LUA_VERSION   ?= 5.4
LUA_CMODULE_DIR ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
LUA_MODULE_DIR  ?= $(PREFIX)/share/lua/$(LUA_VERSION)

SOURCES = csrc/core.c csrc/client.c csrc/batch.c csrc/crypto.c csrc/download.c csrc/endpoint.c csrc/files.c \
          csrc/multi.c csrc/part.c csrc/share.c csrc/token.c csrc/transfer.c
HEADERS = csrc/compat.h csrc/dp.h csrc/endpoint.h csrc/part.h csrc/token.h csrc/transfer.h

all: build/lua5.4/dataportability/core.so
luajit: build/luajit/dataportability/core.so
matrix: $(foreach v,5.1 5.2 5.3 5.4,build/lua$(v)/dataportability/core.so) luajit

BUILD_CORE = @mkdir -p $(@D) && echo "cc $@" && \
	$(CC) $(WARNINGS) $(CFLAGS) -fPIC -shared -I$(1) $(CURL_CFLAGS) -o $@ $(SOURCES) $(CURL_LIBS) -lcrypto -pthread

build/lua%/dataportability/core.so: $(SOURCES) $(HEADERS)
	$(call BUILD_CORE,$(LUA_INCDIR_$*))

build/luajit/dataportability/core.so: $(SOURCES) $(HEADERS)
	$(call BUILD_CORE,$(LUAJIT_INCDIR))

# spec/fork/forkhelper.c: what spec/17-fork_spec.lua needs from lua-posix,
# which Debian has no build of for Lua 5.4; one per Lua busted runs under.
SPEC_HELPERS = $(foreach v,5.1 5.2 5.3 5.4,build/lua$(v)/forkhelper.so) build/luajit/forkhelper.so \
               build/asan/forkhelper.so
spec-helpers: $(SPEC_HELPERS)

BUILD_HELPER = @mkdir -p $(@D) && echo "cc $@" && \
	$(CC) $(WARNINGS) $(2) -fPIC -shared -I$(1) -Icsrc -o $@ spec/fork/forkhelper.c

build/lua%/forkhelper.so: spec/fork/forkhelper.c csrc/compat.h
	$(call BUILD_HELPER,$(LUA_INCDIR_$*),$(CFLAGS))

build/luajit/forkhelper.so: spec/fork/forkhelper.c csrc/compat.h
	$(call BUILD_HELPER,$(LUAJIT_INCDIR),$(CFLAGS))

build/asan/forkhelper.so: spec/fork/forkhelper.c csrc/compat.h
	$(call BUILD_HELPER,$(LUA_INCDIR_5.4),$(SAN_FLAGS))

deps:
	@scripts/install-deps

test: deps matrix spec-helpers
	@scripts/run-tests

demo: deps all
	@scripts/demo

# The consent-to-reset service of examples/openresty/ against a fresh
# emulator: open the URL it prints; Ctrl-C stops both (PORT=8080 default).
example-openresty: deps luajit
	@examples/openresty/run

# Not part of make test: it takes minutes and wants an otherwise idle machine.
bench: deps matrix
	@bench/install || echo "bench: bench/install failed: the OpenResty figure will be 'not run'" >&2
	@if [ -x bench/google/install ]; then bench/google/install || \
		echo "bench: bench/google/install failed: Google's clients will be 'not run'" >&2; fi
	@bench/run

# Both rocks' worth: the modules, the emulator's, the core for LUA_VERSION
# and both commands.
install: build/lua$(LUA_VERSION)/dataportability/core.so
	install -d $(DESTDIR)$(LUA_CMODULE_DIR)/dataportability
	install -m 0755 build/lua$(LUA_VERSION)/dataportability/core.so $(DESTDIR)$(LUA_CMODULE_DIR)/dataportability/
	cd lua && find . -name '*.lua' -exec install -D -m 0644 {} $(DESTDIR)$(LUA_MODULE_DIR)/{} \;
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 bin/dataportability bin/dataportability-emulator $(DESTDIR)$(PREFIX)/bin/

# ---- hardening (docs/hardening.md) ----
# The sanitized core runs in build/asan/lua5.4 (fuzz/asan_lua.c), not in
# lua5.4 with LD_PRELOAD, which every program the specs start would inherit.
SAN_FLAGS   = -fsanitize=address,undefined -fno-sanitize-recover=undefined \
              -fno-omit-frame-pointer -g -O1
FUZZ_CC    ?= clang
FUZZ_FLAGS  = -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
              -fno-omit-frame-pointer -g -O1
LUA_LIB_5.4 ?= -llua5.4
# Where the response target finds cjson.so for Lua 5.4.
FUZZ_CJSON_CPATH ?= /usr/lib/x86_64-linux-gnu/lua/5.4/?.so
FUZZ_TARGETS = token_fuzz header_fuzz response_fuzz

asan: build/asan/dataportability/core.so build/asan/lua5.4
fuzz: $(FUZZ_TARGETS:%=build/fuzz/%)

build/asan/dataportability/core.so: $(SOURCES) $(HEADERS)
	@mkdir -p $(@D) && echo "cc $@"
	@$(CC) $(WARNINGS) $(SAN_FLAGS) -fPIC -shared -I$(LUA_INCDIR_5.4) $(CURL_CFLAGS) \
		-o $@ $(SOURCES) $(CURL_LIBS) -lcrypto -pthread

build/asan/lua5.4: fuzz/asan_lua.c
	@mkdir -p $(@D) && echo "cc $@"
	@$(CC) $(WARNINGS) $(SAN_FLAGS) -I$(LUA_INCDIR_5.4) -o $@ fuzz/asan_lua.c $(LUA_LIB_5.4)

build/fuzz/token_fuzz: fuzz/token_fuzz.c csrc/token.c csrc/token.h
	@mkdir -p $(@D) && echo "clang $@"
	@$(FUZZ_CC) $(WARNINGS) $(FUZZ_FLAGS) -Icsrc -o $@ fuzz/token_fuzz.c csrc/token.c

# dp_keep_header lives in the Lua-free transfer engine.
build/fuzz/header_fuzz: fuzz/header_fuzz.c csrc/transfer.c csrc/transfer.h csrc/part.c csrc/part.h csrc/token.c csrc/token.h
	@mkdir -p $(@D) && echo "clang $@"
	@$(FUZZ_CC) $(WARNINGS) $(FUZZ_FLAGS) -Icsrc $(CURL_CFLAGS) -o $@ \
		fuzz/header_fuzz.c csrc/transfer.c csrc/part.c csrc/token.c $(CURL_LIBS) -lcrypto

# lua/ and fuzz/response_fuzz.lua are read at run time, from this tree; the
# core is linked in for the Lua layer to load.
build/fuzz/response_fuzz: fuzz/response_fuzz.c $(SOURCES) $(HEADERS)
	@mkdir -p $(@D) && echo "clang $@"
	@$(FUZZ_CC) $(WARNINGS) $(FUZZ_FLAGS) -Icsrc -I$(LUA_INCDIR_5.4) $(CURL_CFLAGS) \
		-DDP_FUZZ_ROOT='"$(CURDIR)"' -DDP_CJSON_CPATH='"$(FUZZ_CJSON_CPATH)"' -o $@ \
		fuzz/response_fuzz.c $(SOURCES) $(CURL_LIBS) -lcrypto $(LUA_LIB_5.4) -pthread

clean:
	rm -rf build

.PHONY: all luajit matrix deps test demo example-openresty bench install clean asan fuzz spec-helpers
