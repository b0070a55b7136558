-- wrk script for the write test: every request is a PUT /contexts/bench_put_<n> (n random in
-- 1..contexts, like pgbench's random(1, 64)) whose data differs from every earlier one (a run
-- tag, the thread number and a per-thread counter), so each 2xx makes a new version.
--
--   wrk ... -s bench/put.lua http://HOST:PORT -- PAYLOAD_FILE [CONTEXTS] [RUN_TAG]
--
-- PAYLOAD_FILE holds one compact JSON object (~1 KB): the rest of the data.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "stats.lua")

local headers = { ["Content-Type"] = "application/json" }
local contexts, inner, run_tag, counter = 64, nil, "run", 0

function init(args)
   assert(args[1], "usage: wrk ... -s put.lua URL -- PAYLOAD_FILE [CONTEXTS] [RUN_TAG]")
   local f = assert(io.open(args[1], "r"))
   local payload = f:read("*a")
   f:close()
   inner = assert(payload:match("^%s*{(.*)}%s*$"), "the payload must be one JSON object")
   contexts = tonumber(args[2]) or contexts
   run_tag = args[3] or run_tag
   math.randomseed(os.time() + 7919 * tid)
end

function request()
   counter = counter + 1
   local body = '{"data":{"run":"' .. run_tag .. '","writer":' .. tid .. ',"seq":' .. counter
      .. ',' .. inner .. '},"source":"factory"}'
   return wrk.format("PUT", "/contexts/bench_put_" .. math.random(contexts), headers, body)
end
