---@meta dataportability.async
-- luacheck: no unused, no max line length (definitions: empty bodies, one-line annotations)
-- Event-loop drivers for the `_async` methods: dp.driver(hooks) for any
-- loop, and require("dataportability.async").luv_driver for a luv loop.

---What a driver asks of its loop. libcurl decides what to watch; the loop calls
---`driver:ready` when a watched socket is ready and `driver:timeout` when the timer
---fires.
---@class dataportability.DriverHooks
---Watch `fd` for these events, replacing earlier ones for it; both false: stop
---watching it.
---@field watch fun(fd: integer, readable: boolean, writable: boolean)
---Call `driver:timeout()` once, `ms` milliseconds from now, replacing the last timer;
---`ms < 0`: disarm.
---@field timer fun(ms: integer)
---Runs `fn` on the loop where user code may run (Neovim: `vim.schedule`); without it,
---callbacks run inside `driver:ready` and `driver:timeout`.
---@field defer? fun(fn: fun())
---`driver:close()` calls it last, to free what the hooks hold.
---@field close? fun()

---An event loop driver, from `dp.driver` or `luv_driver`; give it to `dp.new{driver=}`.
---@class dataportability.Driver
local Driver = {}

---The loop: a watched socket is ready.
---@param fd integer
---@param readable boolean
---@param writable boolean
function Driver:ready(fd, readable, writable) end

---The loop: the timer fired.
function Driver:timeout() end

---Stops every watch; running requests end with a `closed` error. From a hook, once
---the hooks being called have returned.
function Driver:close() end

---@class dataportability.async
local async = {}

---The same as `dp.driver`.
---@param hooks dataportability.DriverHooks
---@return dataportability.Driver
function async.driver(hooks) end

---A driver on a luv loop: `require("luv")`, or Neovim's `vim.uv` with `vim.schedule`.
---@param uv table the luv module
---@param defer? fun(fn: fun())
---@return dataportability.Driver
function async.luv_driver(uv, defer) end

return async
