-- wrk: exactly COUNT lookups of student ids drawn from a fixed SEED, then stop. The same
-- (COUNT, SEED) asks for the same ids again: the cold-cache step's "same pass, now warm".
-- wrk itself runs for its whole -d: once COUNT answers are in, this creates the file DONE, and
-- bench/report.py then ends wrk with SIGINT (wrk still prints its summary).
--   wrk -t1 -c256 -d120s -s bench/student_pass.lua URL -- LOW HIGH COUNT SEED DONE
local low, high, count, seed, marker = 10000, 674823, 10000, 1, nil
local ids, sent, answered = {}, 0, 0
function init(args)
  if #args >= 4 then
    low, high, count, seed = tonumber(args[1]), tonumber(args[2]), tonumber(args[3]), tonumber(args[4])
  end
  marker = args[5]
  math.randomseed(seed)
  for i = 1, count do ids[i] = math.random(low, high) end
end
function request()
  sent = sent + 1
  return wrk.format("GET", "/students/" .. ids[((sent - 1) % count) + 1])
end
function response(status, headers, body)
  answered = answered + 1
  if answered == count then
    if marker then io.open(marker, "w"):close() end
    wrk.thread:stop()
  end
end
function done(summary, latency, requests)
  io.write(string.format("JSON {\"requests\": %d, \"seconds\": %.3f, \"non_2xx\": %d, \"socket_errors\": %d, \"p50_ms\": %.3f, \"p95_ms\": %.3f, \"p99_ms\": %.3f}\n",
    summary.requests, summary.duration / 1e6,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
