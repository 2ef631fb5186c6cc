-- wrk script for bench/layout_compare.py: one operation per run, chosen by KEEL_BENCH_OP.
--   read_id, patch_field, patch_email: a profile id from KEEL_BENCH_IDS (one per line);
--   read_handle, read_email: a seeded profile's handle / email, bench_<n> / bench.<n>@example.com,
--     n random in 1..KEEL_BENCH_PROFILES;
--   list: the first page of 20; create: a new profile with a handle and an email of its own.
-- Writes never touch one profile twice at once: each thread takes ids from its own stride of
-- the file, in order, so no write waits for or conflicts with another (KEEL_BENCH_RUN keeps
-- created handles and emails apart between runs).
local op = os.getenv("KEEL_BENCH_OP")
local ids = {}
local threads = 0
local counter = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  for line in io.lines(os.getenv("KEEL_BENCH_IDS")) do
    if line ~= "" then ids[#ids + 1] = line end
  end
  assert(#ids > 0, "no ids in KEEL_BENCH_IDS")
  profiles = tonumber(os.getenv("KEEL_BENCH_PROFILES"))
  run = os.getenv("KEEL_BENCH_RUN")
  thread_count = tonumber(os.getenv("KEEL_BENCH_THREADS"))
  math.randomseed(os.time() * 100 + thread_number)
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEEL_BENCH_TOKEN")
  -- wrk.format's own headers replace wrk.headers: a write's carry the key too.
  json = {["Authorization"] = wrk.headers["Authorization"], ["Content-Type"] = "application/json"}
  merge_patch = {["Authorization"] = wrk.headers["Authorization"],
                 ["Content-Type"] = "application/merge-patch+json"}
end

local function next_id()
  counter = counter + 1
  local index = ((counter - 1) * thread_count + (thread_number - 1)) % #ids + 1
  return ids[index]
end

local function unique()
  counter = counter + 1
  return "r" .. run .. "t" .. thread_number .. "n" .. counter
end

function request()
  if op == "read_id" then
    return wrk.format("GET", "/v1/profiles/" .. ids[math.random(#ids)])
  elseif op == "read_handle" then
    return wrk.format("GET", "/v1/profiles?handle=bench_" .. math.random(profiles))
  elseif op == "read_email" then
    return wrk.format("GET", "/v1/profiles?email=bench." .. math.random(profiles) .. "%40example.com")
  elseif op == "list" then
    return wrk.format("GET", "/v1/profiles?limit=20")
  elseif op == "create" then
    local name = unique()
    local body = '{"handle":"c' .. name .. '","emails":[{"address":"c' .. name
      .. '@example.net","primary":true}],"display_name":"Created ' .. name .. '"}'
    return wrk.format("POST", "/v1/profiles", json, body)
  elseif op == "patch_field" then
    local body = '{"display_name":"Patched ' .. math.random(1000000000) .. '"}'
    return wrk.format("PATCH", "/v1/profiles/" .. next_id(), merge_patch, body)
  elseif op == "patch_email" then
    local id = next_id()
    local body = '{"emails":[{"address":"p' .. unique() .. '@example.net","primary":true}]}'
    return wrk.format("PATCH", "/v1/profiles/" .. id, merge_patch, body)
  end
  error("unknown KEEL_BENCH_OP " .. tostring(op))
end

local reported = false

function response(status, headers, body)
  -- The first refused request of each thread, on stderr: why a run was voided.
  if status >= 300 and not reported then
    reported = true
    io.stderr:write("KEEL_BENCH " .. op .. " answered " .. status .. ": " .. body .. "\n")
  end
end
