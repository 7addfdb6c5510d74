-- wrk script: POST request bodies read from a pool file (one body per line), each at most once, in order.
-- Usage: wrk -s bench/post.lua <url> -- <pool file> <first line> <lines> [path]
-- Counters are globals so done() can read them from each thread. When the run outlasts the pool the script starts over (then bodies repeat; `wrapped` says how often),
-- so the harness sizes each run to its pool. done() prints one JSON line the harness parses.
requests = {}
n = 0
i = 0
wrapped = 0
bad = 0
dup = 0
first_bad = ""
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file, start, count = args[1], tonumber(args[2] or "0"), tonumber(args[3] or "1000000000")
  local path = args[4] or "/api/v1/events"
  local headers = { ["Content-Type"] = "application/json" }
  local lineno = 0
  for line in io.lines(file) do
    if lineno >= start then
      n = n + 1
      requests[n] = wrk.format("POST", path, headers, line)
      if n >= count then break end
    end
    lineno = lineno + 1
  end
  if n == 0 then
    error("no request bodies in " .. file .. " from line " .. start)
  end
end

function request()
  i = i + 1
  if i > n then
    i = 1
    wrapped = wrapped + 1
  end
  return requests[i]
end

function response(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
    if first_bad == "" then first_bad = status .. " " .. string.sub(body or "", 1, 200) end
  elseif body and string.find(body, '"duplicates":', 1, true) and not string.find(body, '"duplicates":0', 1, true) then
    dup = dup + 1
  end
end

function done(summary, latency, reqs)
  local w, b, d, fb, sent = 0, 0, 0, "", 0
  for _, t in ipairs(threads) do
    w = w + t:get("wrapped")
    b = b + t:get("bad")
    d = d + t:get("dup")
    sent = sent + t:get("i") + t:get("wrapped") * t:get("n")
    if fb == "" then fb = t:get("first_bad") end
  end
  io.write(string.format(
    '\nBENCH {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"timeouts":%d,"status_errors":%d,"non_200":%d,"duplicate_answers":%d,' ..
    '"wrapped":%d,"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d,"first_bad":"%s"}\n',
    summary.requests, summary.duration, summary.bytes, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, summary.errors.status, b, d, w,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    string.gsub(fb, '[^%w%s%p]', '?'):gsub('["\\]', "'")))
end
