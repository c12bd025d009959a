-- POST a fixed JSON body and count answers by status: wrk -s bench/wrk_overload.lua URL -- BODY_FILE
-- Counts each status, the 503s that carried Retry-After, and at the end prints one line of JSON,
-- marked, for bench/overload.py: with wrk's --timeout as the client's deadline, answers later
-- than it are wrk's timeouts; the p99 is of answers other than 503 (refusals), taken as the faster.

local threads = {}

setup = function(thread)
  table.insert(threads, thread)
end

init = function(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.body = file:read("*a")
  wrk.headers["Content-Type"] = "application/json"
  file:close()
  statuses = {}
  retry_after = 0
end

response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 503 and (headers["Retry-After"] or headers["retry-after"]) then
    retry_after = retry_after + 1
  end
end

done = function(summary, latency, requests)
  local counts, hinted, refused = {}, 0, 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
    hinted = hinted + thread:get("retry_after")
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  refused = counts[503] or 0
  local completed = summary.requests - summary.errors.timeout
  -- the refusals are the fastest answers: the accepted ones' p99 lies above them
  local share = completed > 0 and refused / completed or 0
  local q = math.min(100, 100 - (1 - share))
  io.write(string.format(
    'WRK_OVERLOAD {"requests": %d, "duration_us": %d, "timeouts": %d, "socket_errors": %d, ' ..
    '"statuses": {%s}, "retry_after": %d, "p99_us": %d, "p99_all_us": %d}\n',
    summary.requests, summary.duration, summary.errors.timeout,
    summary.errors.connect + summary.errors.read + summary.errors.write,
    table.concat(parts, ", "), hinted, refused < completed and latency:percentile(q) or 0,
    latency:percentile(99)))
end
