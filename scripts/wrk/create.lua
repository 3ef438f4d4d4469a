-- wrk script: POST /v1/orders with a bearer token and a small order, each request a new order
-- (no Idempotency-Key: the node gives each a fresh id). Set by scripts/wrk-bench through the
-- environment: WRK_TOKEN (a customer token), WRK_MERCHANT (merchant id), WRK_SKU.
local token = os.getenv("WRK_TOKEN")
local merchant = os.getenv("WRK_MERCHANT")
local sku = os.getenv("WRK_SKU") or "dish"

wrk.method = "POST"
wrk.path = "/v1/orders"
wrk.headers["Authorization"] = "Bearer " .. token
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.format(
  '{"merchant_id":"%s","items":[{"sku":"%s","qty":1}],"deliver_to":{"lat":31.2,"lng":121.5}}',
  merchant, sku)

local statuses = {}

response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  io.write("statuses:")
  for status, n in pairs(statuses) do
    io.write(string.format(" %d=%d", status, n))
  end
  io.write("\n")
end
