---@meta _
-- luacheck: no unused, no max line length (definitions: empty bodies, one-line annotations)
-- The client of dp.new(): the API's methods, each with its `_async` form
-- (the same request on an event loop; the callback runs later, never
-- before the call returns), reset_many and close. The export is in
-- export.lua.

---@class dataportability.Client
local Client = {}

---A new archive job (`initiate`, `retry`).
---@class dataportability.Job
---The job's id, without the `archiveJobs/` prefix.
---@field archive_job_id string
---@field access_type? dataportability.AccessTypeName

---@alias dataportability.AccessTypeName
---| "ACCESS_TYPE_UNSPECIFIED"
---| "ACCESS_TYPE_ONE_TIME"
---| "ACCESS_TYPE_TIME_BASED"

---@alias dataportability.JobStateName
---| "STATE_UNSPECIFIED"
---| "IN_PROGRESS"
---| "COMPLETE"
---| "FAILED"
---| "CANCELLED"

---An archive job's state (`state`).
---@class dataportability.JobState
---@field state dataportability.JobStateName
---Signed URLs of the archive's files, once COMPLETE; fetched without the token.
---@field urls string[]
---`archiveJobs/ID/portabilityArchiveState`.
---@field name? string
---RFC 3339.
---@field export_time? string
---RFC 3339, when the job was initiated with one.
---@field start_time? string

---What `check_access_type` answers: the token's resource groups by access type.
---@class dataportability.AccessType
---@field one_time_resources string[]
---@field time_based_resources string[]

---The time range of `initiate`: RFC 3339 strings, or numbers of epoch seconds.
---@class dataportability.TimeRange
---@field start_time? string|number
---@field end_time? string|number

---@alias dataportability.DoneCallback fun(ok: true?, err: dataportability.Error?)
---@alias dataportability.JobCallback fun(job: dataportability.Job?, err: dataportability.Error?)

---Options of `client:reset_many`.
---@class dataportability.ResetManyOptions
---How many requests run at once (32; at most 1000).
---@field concurrency? integer
---Called as each token's outcome is final, in completion order; `i` is its index in
---`tokens`. If it raises, the batch stops and the error is raised again.
---@field on_result? fun(i: integer, ok: boolean, err: dataportability.Error?)

---`authorization.reset`: revokes the token and clears the exhausted scopes. A source
---forgets its access token after a reset.
---@param token dataportability.Token
---@return true? ok
---@return dataportability.Error? err
function Client:reset(token) end

---The same on the client's event loop: returns at once; `callback` runs later.
---@param token dataportability.Token
---@param callback dataportability.DoneCallback
function Client:reset_async(token, callback) end

---`portabilityArchive.initiate`: starts an archive job for resource groups
---("myactivity.youtube").
---@param token dataportability.Token
---@param resources string[]
---@param range? dataportability.TimeRange
---@return dataportability.Job? job
---@return dataportability.Error? err
function Client:initiate(token, resources, range) end

---The same on the client's event loop: returns at once; `callback` runs later.
---@param token dataportability.Token
---@param resources string[]
---@param range dataportability.TimeRange|nil
---@param callback dataportability.JobCallback
---@overload fun(self: dataportability.Client, token: dataportability.Token, resources: string[], callback: dataportability.JobCallback)
function Client:initiate_async(token, resources, range, callback) end

---`archiveJobs.getPortabilityArchiveState`.
---@param token dataportability.Token
---@param job_id string "ID" or "archiveJobs/ID"
---@return dataportability.JobState? state
---@return dataportability.Error? err
function Client:state(token, job_id) end

---The same on the client's event loop: returns at once; `callback` runs later.
---@param token dataportability.Token
---@param job_id string
---@param callback fun(state: dataportability.JobState?, err: dataportability.Error?)
function Client:state_async(token, job_id, callback) end

---`archiveJobs.retry`: a new job for a FAILED one.
---@param token dataportability.Token
---@param job_id string
---@return dataportability.Job? job
---@return dataportability.Error? err
function Client:retry(token, job_id) end

---The same on the client's event loop: returns at once; `callback` runs later.
---@param token dataportability.Token
---@param job_id string
---@param callback dataportability.JobCallback
function Client:retry_async(token, job_id, callback) end

---`archiveJobs.cancel`: cancels an IN_PROGRESS job.
---@param token dataportability.Token
---@param job_id string
---@return true? ok
---@return dataportability.Error? err
function Client:cancel(token, job_id) end

---The same on the client's event loop: returns at once; `callback` runs later.
---@param token dataportability.Token
---@param job_id string
---@param callback dataportability.DoneCallback
function Client:cancel_async(token, job_id, callback) end

---`accessType.check`.
---@param token dataportability.Token
---@return dataportability.AccessType? access
---@return dataportability.Error? err
function Client:check_access_type(token) end

---The same on the client's event loop: returns at once; `callback` runs later.
---@param token dataportability.Token
---@param callback fun(access: dataportability.AccessType?, err: dataportability.Error?)
function Client:check_access_type_async(token, callback) end

---Resets every token of the list, concurrently, and returns when all are done; it
---never stops at a failure.
---@param tokens string[]
---@param opts? dataportability.ResetManyOptions
---@return (true|dataportability.Error)[] results `true` or the error of `tokens[i]` (`err.index == i`)
---@return integer failed how many failed
function Client:reset_many(tokens, opts) end

---Frees the client's libcurl handles; idempotent. Later calls return a `closed` error;
---from a callback of the client's running call, that call stops with `closed`.
function Client:close() end
