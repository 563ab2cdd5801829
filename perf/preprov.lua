-- wrk script: device inquiries for random registered device IDs (aa + 10 hex digits).
local devices = tonumber(os.getenv("DEVICES") or "1000000")
math.randomseed(os.time())
request = function()
  return wrk.format("GET", string.format("/v1/contact/aa%010x", math.random(0, devices - 1)))
end
