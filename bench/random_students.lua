-- wrk: GET /students/{id} with ids drawn uniformly over the default dataset (10,000..674,823),
-- the range the original load test drew from. Override with: wrk ... -- LOW HIGH
local low, high = 10000, 674823
function init(args)
  if #args >= 2 then low, high = tonumber(args[1]), tonumber(args[2]) end
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0))
end
function request()
  return wrk.format("GET", "/students/" .. math.random(low, high))
end
function done(summary, latency, requests)
  io.write(string.format("JSON {\"requests\": %d, \"seconds\": %.3f, \"non_2xx\": %d, \"socket_errors\": %d, \"p50_ms\": %.3f, \"p95_ms\": %.3f, \"p99_ms\": %.3f}\n",
    summary.requests, summary.duration / 1e6,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
