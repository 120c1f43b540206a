-- wrk script for bench/run.sh.
--
-- BENCH_RANDOM_IDS=N  each request is GET /users/<random id in 1..N>; unset = wrk's static
--                     request (the URL given on the command line).
-- BENCH_PARTITIONS=K  with BENCH_RANDOM_IDS: a random one of K Authorization tokens per request.
-- The done hook prints one machine-readable line that run.sh parses:
--   WRK_RESULT rps=.. p50_us=.. p99_us=.. requests=.. non2xx=.. sockerr=.. timeouts=..
-- (wrk's "status" error counter is every response with a status >= 400.)

local max_id = tonumber(os.getenv("BENCH_RANDOM_IDS") or "")

-- Each wrk thread (-tN, scenario 8 uses -t2) gets its index as the global thread_index, so
-- threads started in the same microsecond still draw different ids.
local started = 0
function setup(thread)
  started = started + 1
  thread:set("thread_index", started)
end

if max_id then
  function init(args)
    -- seeded per wrk thread
    math.randomseed(os.time() + math.floor(os.clock() * 1e6) + 7919 * (thread_index or 0))
  end

  -- BENCH_PARTITIONS=K: each request also carries "Authorization: Bearer t<random 1..K>" (K
  -- callers' credentials, so K partitions; bench/scaleout.sh).
  local partitions = tonumber(os.getenv("BENCH_PARTITIONS") or "")
  function request()
    local path = "/users/" .. math.random(1, max_id)
    if partitions and partitions > 0 then
      return wrk.format("GET", path, {["Authorization"] = "Bearer t" .. math.random(1, partitions)})
    end
    return wrk.format("GET", path)
  end
end

function done(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT rps=%.1f p50_us=%d p99_us=%d requests=%d non2xx=%d sockerr=%d timeouts=%d\n",
    summary.requests / seconds, latency:percentile(50), latency:percentile(99),
    summary.requests, e.status, e.connect + e.read + e.write, e.timeout))
end
