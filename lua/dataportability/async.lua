-- Asynchronous calls for hosts with an event loop (Neovim, luv, cqueues,
-- copas, ...). libcurl's multi interface names the sockets to watch and
-- the one timer to arm; the host's loop does the watching through two
-- hooks and calls back. Nothing here blocks.
local core = require("dataportability.core")

local type, error, pairs, ipairs, select = type, error, pairs, ipairs, select
local setmetatable, getmetatable, pcall, require, rawget = setmetatable, getmetatable, pcall, require, rawget
local unpack = table.unpack or unpack -- luacheck: ignore 143
local remove = table.remove
local floor, max = math.floor, math.max

local PROGRESS_STEP = 1048576 -- as the blocking download's

local _M = {}

local Driver = { __name = "dataportability.driver" }
Driver.__index = Driver

--- dp.driver(hooks) -> driver
--   hooks.watch(fd, readable, writable): watch fd for these events, replacing
--     earlier ones for that fd; both false: stop watching it.
--   hooks.timer(ms): call driver:timeout() once, ms milliseconds from now,
--     replacing any earlier timer; ms < 0: disarm.
--   hooks.defer(fn), optional: run fn on the host's loop, where the host
--     allows user code (Neovim: vim.schedule). Without it, callbacks run
--     inside driver:ready() and driver:timeout().
--   hooks.close(), optional: driver:close() calls it last, to free what the
--     hooks hold (a timer).
-- The host calls driver:ready(fd, readable, writable) when a watched socket
-- is ready, and driver:timeout() when the timer fires.
function _M.driver(hooks)
    if type(hooks) ~= "table" or type(hooks.watch) ~= "function" or type(hooks.timer) ~= "function"
        or (hooks.defer ~= nil and type(hooks.defer) ~= "function")
        or (hooks.close ~= nil and type(hooks.close) ~= "function") then
        error("bad argument #1 to 'driver' (table with watch and timer functions expected)", 2)
    end
    return setmetatable({
        multi = core.new_multi(),
        hooks = hooks,
        callbacks = {},     -- transport -> callback of its running request
        downloads = {},     -- transport -> { progress =, give =, reported = } of its running download
        watched = {},       -- fd -> true
        queue = {},         -- results to deliver: { callback, n, ... }
        timers = {},        -- { due =, fn = }: Driver:after
        later = {},         -- what waits for the hooks being called: Driver:after_hooks
        curl_due = nil,     -- when libcurl wants its timer, on core.now()'s clock
    }, Driver)
end

function _M.is_driver(x)
    return getmetatable(x) == Driver
end

local function pack(...)
    return { n = select("#", ...), ... }
end

-- Applies what libcurl asked for: socket watches, then closes, then the
-- timer; collects finished requests into the queue.
local function sync_once(self)
    -- streams: their bytes before their ends, one chunk at a time: the
    -- transfer waits until the sink has had the last one
    for transport, d in pairs(self.downloads) do
        if d.give and not d.giving then
            local chunk = self.multi:take(transport)
            if chunk then
                d.giving = true
                self.queue[#self.queue + 1] = { d.give, 1, chunk }
            end
        end
    end
    local changes, timeout = self.multi:changes()
    for i = 1, #changes, 2 do
        if self.closed then return end -- a hook closed the driver
        local fd, mask = changes[i], changes[i + 1]
        self.watched[fd] = mask ~= 0 or nil
        self.hooks.watch(fd, mask % 2 == 1, mask >= 2)
    end
    if self.closed then return end
    self.multi:flush() -- only now: no watcher refers to a closed socket
    while true do
        local r = pack(self.multi:done())
        if r.n == 0 then break end
        local callback = self.callbacks[r[1]]
        self.callbacks[r[1]], self.downloads[r[1]] = nil, nil
        self.queue[#self.queue + 1] = { callback, r.n - 1, unpack(r, 2, r.n) }
    end
    for transport, d in pairs(self.downloads) do -- progress(done, total) once per MiB
        local done, total, written = self.multi:progress(transport)
        if d.progress and done and written - d.reported >= PROGRESS_STEP then
            d.reported = written
            self.queue[#self.queue + 1] = { d.progress, 2, done, total }
        end
    end
    if timeout then
        self.curl_due = timeout >= 0 and core.now() + timeout / 1000 or nil
    end
    -- one host timer for libcurl's, Driver:after's and the queue's needs,
    -- re-armed only when the earliest of them changes
    local now, due = core.now(), self.curl_due
    for _, t in ipairs(self.timers) do
        if not due or t.due < due then due = t.due end
    end
    if #self.queue > 0 then due = now end
    if due ~= self.armed then
        self.hooks.timer(due and max(0, floor((due - now) * 1000 + 0.5)) or -1)
        self.armed = due -- once the hook took it: a hook that raised is asked again
    end
end

-- A hook may call back into the driver (start a request, close a client):
-- that sync waits for the one under way to finish its list, then runs.
-- Closes asked for meanwhile wait until the hooks have returned
-- (Driver:after_hooks), so that no hook sees its socket closed under it.
local function sync(self)
    if self.syncing then
        self.resync = true
        return
    end
    self.syncing = true
    local ok, err
    repeat
        self.resync = false
        ok, err = pcall(sync_once, self)
    until not ok or not self.resync or self.closed
    self.syncing = false
    local later = self.later
    self.later = {}
    for _, fn in ipairs(later) do fn() end
    if not ok then error(err, 0) end -- a hook's error, as it was
end

-- Each result leaves the queue before its callback runs: a callback that
-- raises leaves the rest queued, and the timer sync armed for them
-- delivers them on the next turn of the loop.
local function deliver(self)
    local queue = self.queue
    while queue[1] do
        local item = remove(queue, 1)
        local callback = item[1]
        local function run() callback(unpack(item, 3, item[2] + 2)) end
        if self.hooks.defer then self.hooks.defer(run) else run() end
    end
end

-- A queue entry for a request that ended without an answer.
local function failed(callback, kind, message, sent)
    return { callback, 7, nil, nil, nil, nil, kind, message, sent or "no" }
end

--- Starts a request on a client transport (the C core's client), a body
--- of body_type ("json", the default, or "form");
--- callback(<the seven values of docs/transport.md>), always later, never
--- before start returns.
function Driver:start(transport, method, path, token, body, callback, body_type)
    if self.closed then -- nothing will run the loop for it: answer now
        self.queue[#self.queue + 1] = failed(callback, "closed", "the event loop driver is closed")
        return deliver(self)
    end
    local _, _, _, _, kind, message, sent = self.multi:add(transport, method, path, token, body, body_type)
    if kind then
        self.queue[#self.queue + 1] = failed(callback, kind, message, sent)
    else
        self.callbacks[transport] = callback
    end
    local ok, err = pcall(sync, self)
    if not ok then -- a hook raised: the call raises, and did nothing
        if self.callbacks[transport] == callback then
            self.callbacks[transport] = nil
            self.multi:remove(transport)
        end
        error(err, 0)
    end
end

--- Starts a download on a client transport: as client:download
--- (docs/transport.md), opts.progress(done, total), a stream's
--- opts.sink(chunk) and callback(result) on the loop, in order, always
--- later. What the sink raises ends the download: callback gets it in
--- result.raised.
function Driver:download(transport, url, path, opts, callback)
    local function done(r, _, _, _, kind, message) -- a table, or a failed request's seven values
        callback(type(r) == "table" and r or { kind = kind, message = message, written = 0, size = 0 })
    end
    if self.closed then
        self.queue[#self.queue + 1] = failed(done, "closed", "the event loop driver is closed")
        return deliver(self)
    end
    local refused = self.multi:download(transport, url, path, opts)
    local d = { progress = opts.progress, reported = 0 }
    if opts.sink then
        -- A sink that raises ends the download at once; the callback gets
        -- the error in `raised`, for the caller to raise again.
        d.give = function(chunk)
            d.giving = false
            if d.failed then return end
            local ok, err = pcall(opts.sink, chunk)
            if not ok then
                d.failed = true
                if self.callbacks[transport] == done then
                    self.callbacks[transport], self.downloads[transport] = nil, nil
                    self.multi:remove(transport)
                end
                return callback({ kind = "closed", message = "the sink raised", written = 0, size = 0,
                                  raised = { err } })
            end
            sync(self) -- the next chunk, if one waits
        end
    end
    if refused then
        self.queue[#self.queue + 1] = { done, 1, refused }
    else
        self.callbacks[transport] = done
        self.downloads[transport] = d
    end
    local ok, err = pcall(sync, self)
    if not ok then -- a hook raised: the call raises, and did nothing
        if self.callbacks[transport] == done then
            self.callbacks[transport], self.downloads[transport] = nil, nil
            self.multi:remove(transport)
        end
        error(err, 0)
    end
end

--- Calls callback(...) later, as a request's end would: for calls refused
--- before any I/O.
function Driver:settle(callback, ...)
    self.queue[#self.queue + 1] = { callback, select("#", ...), ... }
    if self.closed then return deliver(self) end
    sync(self)
end

--- The client was closed while its request ran: the callback gets `closed`.
function Driver:cancelled(transport)
    local callback = self.callbacks[transport]
    if callback then
        self.callbacks[transport], self.downloads[transport] = nil, nil
        self.queue[#self.queue + 1] = failed(callback, "closed", "client is closed")
        sync(self)
    end
end

--- The host: fd is ready.
function Driver:ready(fd, readable, writable)
    self.multi:action(fd, readable, writable)
    sync(self)
    deliver(self)
end

--- Calls fn() once, `seconds` from now, on the loop: waits between retries.
function Driver:after(seconds, fn)
    if self.closed then return fn() end
    self.timers[#self.timers + 1] = { due = core.now() + seconds, fn = fn }
    sync(self)
end

--- The host: the timer fired.
function Driver:timeout()
    self.armed = nil -- the host's timer is spent
    self.multi:action(-1)
    local now, due, later = core.now(), {}, {}
    for _, t in ipairs(self.timers) do
        if t.due <= now then due[#due + 1] = t.fn else later[#later + 1] = t end
    end
    self.timers = later
    sync(self)
    deliver(self)
    local failure -- each due timer runs, even after one raised; then the first error
    for _, fn in ipairs(due) do
        local ok, err = pcall(fn)
        if not ok then failure = failure or { err } end
    end
    if failure then error(failure[1], 0) end
end

--- fn() now, or once the hooks being called have returned.
function Driver:after_hooks(fn)
    if not self.syncing then return fn() end
    self.later[#self.later + 1] = fn
end

--- Stops watching everything; running requests end with `closed`. From a
--- hook, once the hooks being called have returned.
function Driver:close()
    if self.syncing then return self:after_hooks(function() self:close() end) end
    if self.closed then return end
    self.closed = true
    for _, callback in pairs(self.callbacks) do
        self.queue[#self.queue + 1] = failed(callback, "closed", "the event loop driver is closed")
    end
    self.callbacks, self.downloads = {}, {}
    for fd in pairs(self.watched) do
        self.hooks.watch(fd, false, false)
    end
    self.watched = {}
    self.hooks.timer(-1)
    self.multi:close()
    local waiting = self.timers
    self.timers = {}
    for _, t in ipairs(waiting) do t.fn() end -- a retry that waits starts, and is told `closed`
    deliver(self)
    if self.hooks.close then
        self.hooks.close()
    end
end

--- A driver on a luv loop (Neovim's vim.loop, or require("luv")).
function _M.luv_driver(uv, defer)
    local polls, timer, driver = {}, uv.new_timer(), nil
    driver = _M.driver({
        watch = function(fd, readable, writable)
            local poll = polls[fd]
            if not (readable or writable) then
                if poll then
                    poll:stop()
                    poll:close()
                    polls[fd] = nil
                end
                return
            end
            if not poll then
                poll = uv.new_socket_poll(fd)
                polls[fd] = poll
            end
            poll:start((readable and "r" or "") .. (writable and "w" or ""), function(err, events)
                -- on an error, let libcurl find it by trying both ways
                events = err and "rw" or events or ""
                driver:ready(fd, events:find("r", 1, true) ~= nil, events:find("w", 1, true) ~= nil)
            end)
        end,
        timer = function(ms)
            timer:stop()
            if ms >= 0 then
                -- at least 1 ms: a 0 ms timer armed from a timer callback runs again in
                -- the same turn of libuv's loop, before any socket is polled
                timer:start(max(ms, 1), 0, function() driver:timeout() end)
            end
        end,
        defer = defer,
        close = function() timer:close() end,
    })
    return driver
end

local default

--- The driver used when a client has none: Neovim's loop (callbacks through
--- vim.schedule, where the Neovim API may be called), else luv's.
function _M.default_driver()
    if default then return default end
    local vim = rawget(_G, "vim")
    if type(vim) == "table" and (vim.uv or vim.loop) then
        default = _M.luv_driver(vim.uv or vim.loop, vim.schedule)
    else
        local ok, uv = pcall(require, "luv")
        if not ok then
            error("no event loop: pass dp.new{driver = dp.driver(hooks)} (see README, Event loops)", 3)
        end
        default = _M.luv_driver(uv)
    end
    return default
end

return _M
