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

-- No response() callback: with one, wrk hands every answer (headers and body) to Lua, which
-- costs the client CPU that the node on the same two cores would otherwise get. wrk counts
-- answers that are not 2xx/3xx itself ("Non-2xx or 3xx responses"), which scripts/wrk-bench
-- reads.
