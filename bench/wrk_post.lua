-- POST a fixed body read from a file: wrk -s bench/wrk_post.lua URL -- BODY_FILE [JSON_HEADER_LENGTH]
-- With a JSON header length, the body is a v2 binary request (Inference-Header-Content-Length).
-- At the end it prints one line of JSON, marked, for bench/run.py to read.

init = function(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.body = file:read("*a")
  file:close()
  if args[2] then
    wrk.headers["Inference-Header-Content-Length"] = args[2]
    wrk.headers["Content-Type"] = "application/octet-stream"
  else
    wrk.headers["Content-Type"] = "application/json"
  end
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "socket_errors": %d, "non_2xx": %d, ' ..
    '"p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration,
    errors.connect + errors.read + errors.write + errors.timeout, errors.status,
    latency:percentile(50), latency:percentile(99)))
end
