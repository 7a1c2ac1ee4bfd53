-- wrk: lookups with every answer sorted by status, for the overload and soak steps of
-- bench/report.py.
--
--   wrk ... -s bench/statuses.lua URL -- LOW HIGH [pace=MS] [mix=FILE]
--
-- By default GET /students/{id} with random ids in LOW..HIGH, as fast as the connections go.
--   pace=MS   each connection waits a random, exponentially distributed time of MS ms on
--             average before each request, as independent users would: C connections then
--             send about C * 1000 / (MS + latency) requests a second.
--   expect=N  an answer with status N is expected too (404 for the unknown-id flood).
--   mix=FILE  the soak's mix, as k6/lib/requests.js's MIX_WEIGHTS: 75% students, 15% bookings
--             (ids from FILE, the JSON array k6/export_ids.py writes), 4% unknown student ids,
--             2% unknown booking ids, 2% malformed of each; 400 and 404 are then expected.
-- A refusal (429 or 503) counts as proper only with a Retry-After header and a problem+json
-- body; any other answer than 200 (and 400/404 in the mix) counts as `other`.
local low, high, pace, bookings = 10000, 674823, nil, nil
local expected = {}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local function random_hex(n)
  local out = {}
  for i = 1, n do out[i] = string.format("%x", math.random(0, 15)) end
  return table.concat(out)
end

local function unknown_booking()
  return random_hex(8) .. "-" .. random_hex(4) .. "-4" .. random_hex(3) .. "-8" .. random_hex(3) .. "-" .. random_hex(12)
end

function init(args)
  low, high = tonumber(args[1] or low), tonumber(args[2] or high)
  for i = 3, #args do
    local key, value = args[i]:match("^(%w+)=(.*)$")
    if key == "pace" then pace = tonumber(value) end
    if key == "expect" then expected[tonumber(value)] = true end
    if key == "mix" then
      bookings = {}
      local file = io.open(value)
      for id in file:read("*a"):gmatch('"([%x%-]+)"') do table.insert(bookings, id) end
      file:close()
    end
  end
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0))
  counts = { ok = 0, expected_4xx = 0, refused = 0, refused_bare = 0, other = 0 }
  statuses = {}
end

function delay()
  if not pace then return 0 end
  return -pace * math.log(1 - math.random())
end

function request()
  if not bookings then
    return wrk.format("GET", "/students/" .. math.random(low, high))
  end
  local r = math.random(100)
  local path
  if r <= 75 then path = "/students/" .. math.random(low, high)
  elseif r <= 90 then path = "/bookings/" .. bookings[math.random(#bookings)]
  elseif r <= 94 then path = "/students/" .. math.random(high + 1, 999999999)
  elseif r <= 96 then path = "/bookings/" .. unknown_booking()
  elseif r <= 98 then path = "/students/0" .. math.random(low, high)
  else path = "/bookings/not-a-uuid-" .. math.random(1000) end
  return wrk.format("GET", path)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 200 then
    counts.ok = counts.ok + 1
  elseif expected[status] or (bookings and (status == 400 or status == 404)) then
    counts.expected_4xx = counts.expected_4xx + 1
  elseif status == 429 or status == 503 then
    local retry = headers["Retry-After"] or headers["retry-after"]
    if retry and body and body:find('"status":' .. status, 1, true) then
      counts.refused = counts.refused + 1
    else
      counts.refused_bare = counts.refused_bare + 1
    end
  else
    counts.other = counts.other + 1
  end
end

function done(summary, latency, requests)
  local total = { ok = 0, expected_4xx = 0, refused = 0, refused_bare = 0, other = 0 }
  local by_status = {}
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("counts")) do total[k] = total[k] + v end
    for k, v in pairs(thread:get("statuses")) do by_status[k] = (by_status[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(by_status) do table.insert(parts, string.format("\"%d\": %d", k, v)) end
  io.write(string.format("JSON {\"requests\": %d, \"seconds\": %.3f, \"non_2xx\": %d, \"socket_errors\": %d, \"timeouts\": %d, \"p50_ms\": %.3f, \"p95_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f, \"ok\": %d, \"expected_4xx\": %d, \"refused\": %d, \"refused_bare\": %d, \"other\": %d, \"statuses\": {%s}}\n",
    summary.requests, summary.duration / 1e6,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000,
    total.ok, total.expected_4xx, total.refused, total.refused_bare, total.other, table.concat(parts, ", ")))
end
