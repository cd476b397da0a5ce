---@meta _
-- luacheck: no unused, no max line length (definitions: empty bodies, one-line annotations)
-- client:export and client:export_async: initiate (or resume) a job, poll
-- it, download every file, then reset.

---@class dataportability.Client
local Client = {}

---Options of `client:export` and `client:export_async`. An unknown option or a wrong
---type raises.
---@class dataportability.ExportOptions
---Where files land, as `DIR/<job id>/NAME` (made 0700 when missing). Required unless
---`sink` is given; must not be given with one.
---@field dir? string
---Each file's bytes go here instead of a file on disk.
---@field sink? dataportability.SinkFunction|dataportability.Sink
---`false` skips the final reset (default `true`).
---@field reset? boolean
---Called on each step; a `client:close()` from it stops the export with `closed`.
---@field on_progress? fun(event: dataportability.ProgressEvent)
---Resumes this job instead of initiating one (an error's `job_id`).
---@field job_id? string
---The range of a new job: RFC 3339 string or epoch seconds.
---@field start_time? string|number
---@field end_time? string|number
---Seconds before the first poll again (1, at least 1); each wait is 1.5 times the last.
---@field poll_interval? number
---The longest wait between polls (30 s).
---@field poll_max_interval? number
---Seconds the job may take before the export gives up (7 days; 30 days at most).
---@field max_wait? number
---A download slower than this many bytes a second (1024) for `low_speed_time`
---seconds (60) ends, and is resumed.
---@field low_speed_limit? number
---@field low_speed_time? number
---Seconds for all of the export's downloads together (no default).
---@field download_timeout? number

---Called with each chunk of a file, then once with `chunk == nil` at the end of the
---file: `err == nil` when it is complete and its MD5 verified, else the error, and what
---was delivered must be discarded.
---@alias dataportability.SinkFunction fun(chunk: string?, file: dataportability.SinkFile, err: dataportability.Error?)

---A sink object: `write` for each chunk, then `close` at the end of each file.
---@class dataportability.Sink
---@field write fun(self: dataportability.Sink, chunk: string, file: dataportability.SinkFile)
---`err == nil`: the file is complete and verified; else what was written must be discarded.
---@field close fun(self: dataportability.Sink, file: dataportability.SinkFile, err: dataportability.Error?)

---The file a sink is given chunks of.
---@class dataportability.SinkFile
---Its name, as `dataportability.ExportFile.name`.
---@field name string
---Its position in the job's list of files, from 1.
---@field index integer

---A file of the archive.
---@class dataportability.ExportFile
---Its local name: the URL's last path segment, kept to letters, digits and `._-`.
---@field name string
---Where it was written, `DIR/<job id>/NAME`; nil with a sink.
---@field path? string
---Its size in bytes.
---@field size integer
---Its MD5 (base64, as Cloud Storage's `x-goog-hash`), when the server gave one.
---@field md5? string

---What `export` returns.
---@class dataportability.ExportResult
---@field job_id string
---@field state "COMPLETE"
---@field files dataportability.ExportFile[]
---Whether the authorization was reset.
---@field reset boolean

---@alias dataportability.ProgressType
---| "job"      # the job was initiated: job_id, access_type
---| "state"    # the job's state changed: job_id, state
---| "download" # bytes of a file arrived (every MiB): file, done, total
---| "file"     # a file is complete and verified: file, path, size
---| "reset"    # the authorization was reset

---What `on_progress` is told; which fields are set depends on `type`.
---@class dataportability.ProgressEvent
---@field type dataportability.ProgressType
---@field job_id? string
---@field access_type? dataportability.AccessTypeName
---@field state? dataportability.JobStateName
---The file's local name.
---@field file? string
---Bytes received so far.
---@field done? integer
---The file's size, when the server said.
---@field total? integer
---@field path? string
---@field size? integer

---The whole export workflow in one call; it waits between polls. On failure
---`err.job_id` says which job to resume, `err.files` what is done so far.
---@param token dataportability.Token
---@param resources string[] resource groups ("myactivity.youtube"); ignored with `job_id`
---@param opts dataportability.ExportOptions
---@return dataportability.ExportResult? result
---@return dataportability.Error? err
function Client:export(token, resources, opts) end

---The same on the client's event loop, without blocking.
---@param token dataportability.Token
---@param resources string[]
---@param opts dataportability.ExportOptions
---@param callback fun(result: dataportability.ExportResult?, err: dataportability.Error?)
function Client:export_async(token, resources, opts, callback) end
