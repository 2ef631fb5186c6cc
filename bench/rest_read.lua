-- wrk script for bench/rest_read.py: GET /v1/profiles/<random seeded id>.
-- KEEL_BENCH_IDS: file with one profile id per line. KEEL_BENCH_TOKEN: API key (optional).
local ids = {}
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  for line in io.lines(os.getenv("KEEL_BENCH_IDS")) do
    if line ~= "" then ids[#ids + 1] = line end
  end
  assert(#ids > 0, "no ids in KEEL_BENCH_IDS")
  math.randomseed(os.time() * 100 + (thread_number or 0))
  local token = os.getenv("KEEL_BENCH_TOKEN")
  if token and token ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. token
  end
end

function request()
  return wrk.format("GET", "/v1/profiles/" .. ids[math.random(#ids)])
end
