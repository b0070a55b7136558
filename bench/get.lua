-- wrk script for the read tests (GET /healthz, GET /contexts/bench_hot): the request is
-- wrk's static one (the URL on the command line); this only adds status counting and the
-- RESULT line from stats.lua.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "stats.lua")
