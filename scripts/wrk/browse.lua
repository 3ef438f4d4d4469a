-- wrk script: the browse mix of `loadgen browse`. Three requests in four are
-- GET /v1/merchants/{id} of a random merchant; the fourth is GET /v1/merchants?near= around a
-- random spot of the city (open merchants within 2 km, a page of 20). Set by scripts/wrk-bench
-- through the environment: WRK_TOKEN (a customer token), WRK_MERCHANTS (ids, comma-separated).
local token = os.getenv("WRK_TOKEN")
local ids = {}
for id in string.gmatch(os.getenv("WRK_MERCHANTS") or "", "[^,]+") do
  ids[#ids + 1] = id
end
local headers = { ["Authorization"] = "Bearer " .. token }
local n = 0

request = function()
  n = n + 1
  local path
  if n % 4 == 0 then
    local lat = 31.2304 + (math.random() - 0.5) * 0.06
    local lng = 121.4737 + (math.random() - 0.5) * 0.06
    path = string.format("/v1/merchants?near=%.5f,%.5f&radius_m=2000&open=true&limit=20", lat, lng)
  else
    path = "/v1/merchants/" .. ids[math.random(#ids)]
  end
  return wrk.format("GET", path, headers)
end

-- No response() callback (see create.lua): wrk's own "Non-2xx or 3xx responses" count is read.
