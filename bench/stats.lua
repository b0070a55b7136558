-- Shared by get.lua and put.lua (loaded with dofile): counts responses by status in every
-- wrk thread, and in done() prints one machine-readable RESULT line that run.sh parses:
-- throughput, exact latency percentiles (wrk records latency in microseconds), non-2xx
-- responses and socket errors.

local threads = {}

-- Runs in wrk's main Lua state, once per thread, before the threads start.
function setup(thread)
   thread:set("tid", #threads + 1)
   table.insert(threads, thread)
end

-- Per-thread state (every thread loads this file into its own Lua state).
statuses = {}      -- status code (as a string) -> count
first_error = nil  -- the first non-2xx response, for the report

function response(status, headers, body)
   local key = tostring(status)
   statuses[key] = (statuses[key] or 0) + 1
   if (status < 200 or status > 299) and first_error == nil then
      first_error = key .. " " .. string.sub(body or "", 1, 300)
   end
end

function done(summary, latency, requests)
   local counts, non2xx, sample = {}, 0, nil
   for _, t in ipairs(threads) do
      for code, n in pairs(t:get("statuses") or {}) do
         counts[code] = (counts[code] or 0) + n
         local c = tonumber(code)
         if c < 200 or c > 299 then non2xx = non2xx + n end
      end
      sample = sample or t:get("first_error")
   end
   local codes = {}
   for code, n in pairs(counts) do table.insert(codes, code .. ":" .. n) end
   table.sort(codes)
   local e = summary.errors
   local socket_errors = e.connect + e.read + e.write + e.timeout
   local seconds = summary.duration / 1e6
   io.write(string.format(
      "RESULT requests=%d rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f mean_ms=%.3f max_ms=%.3f"
         .. " non2xx=%d socket_errors=%d statuses=%s\n",
      summary.requests, summary.requests / seconds,
      latency:percentile(50) / 1000, latency:percentile(90) / 1000,
      latency:percentile(99) / 1000, latency.mean / 1000, latency.max / 1000,
      non2xx, socket_errors, table.concat(codes, ",")))
   if sample then
      io.write("FIRST_NON_2XX " .. string.gsub(sample, "\n", " ") .. "\n")
   end
end
