-- wrk script for bench/store.py: POST .npy fits (?output=false) round-robin over session ids.
-- A C load generator, so that on a 2-core machine the servers get the CPU, not the clients.
-- Read from the environment (wrk passes no arguments to setup):
--   BENCH_BODY      path of the .npy body
--   BENCH_SESSIONS  comma-separated session ids
--   BENCH_PORTS     comma-separated loopback ports; wrk thread k targets port k mod n, which
--                   is how one wrk spreads its connections over replicas
--   BENCH_IDEMPOTENCY  "1": a unique Idempotency-Key on every fit
--   BENCH_ORDER     "rr": each thread walks the sessions in order (threads one session apart,
--                   so replicas meet on every session); "random": each fit picks a session;
--                   "affine": as "rr" over the sessions of the thread's replica only (session
--                   j on replica j mod n, as behind a balancer that hashes the session id)
-- done() prints one JSON line that bench/store.py parses.

local function split(s)
  local out = {}
  for item in string.gmatch(s or "", "[^,]+") do
    out[#out + 1] = item
  end
  return out
end

local count = 0

function setup(thread)
  local ports = split(os.getenv("BENCH_PORTS"))
  thread.addr = wrk.lookup("127.0.0.1", ports[(count % #ports) + 1])[1]
  thread:set("tid", count)
  thread:set("replica", count % #ports)
  thread:set("replicas", #ports)
  count = count + 1
end

function init(args)
  sessions = split(os.getenv("BENCH_SESSIONS"))
  if os.getenv("BENCH_ORDER") == "affine" then
    local own = {}
    for j, sid in ipairs(sessions) do
      if (j - 1) % replicas == replica then
        own[#own + 1] = sid
      end
    end
    if #own > 0 then -- fewer sessions than replicas (the hot case): every thread shares them
      sessions = own
    end
  end
  local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
  body = f:read("*a")
  f:close()
  idempotent = os.getenv("BENCH_IDEMPOTENCY") == "1"
  i = tid -- threads start at different sessions
  random_order = os.getenv("BENCH_ORDER") == "random"
  math.randomseed(tid * 7919 + os.time())
end

function request()
  local sid = sessions[(i % #sessions) + 1]
  if random_order then
    sid = sessions[math.random(#sessions)]
  end
  i = i + 1
  local headers = { ["Content-Type"] = "application/x-npy" }
  if idempotent then
    headers["Idempotency-Key"] = string.format("wrk-%d-%d-%d", tid, i, math.random(1e9))
  end
  return wrk.format("POST", "/v1/sessions/" .. sid .. "/fit?output=false", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "http_errors": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
