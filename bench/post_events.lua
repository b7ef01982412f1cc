-- wrk script: POST unique Mailjet events (a fresh MessageID each), EVENTS per body (env, default 1).
local n = tonumber(os.getenv("EVENTS") or "1")
local auth = os.getenv("AUTH")
local counter = 0
local thread_seed = math.random(1, 1000000)
-- time advances as in real traffic (Mailjet groups the events of the last second)
local template = '{"event":"open","time":%d,"MessageID":%d,' ..
  '"Message_GUID":"1ab23cd4-e567-8901-2345-6789f0gh1i2j","email":"user%d@example.com",' ..
  '"mj_campaign_id":7173,"mj_contact_id":320,"customcampaign":"","CustomID":"helloworld",' ..
  '"Payload":"","ip":"127.0.0.1","geo":"US",' ..
  '"agent":"Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0"}'

request = function()
  local parts = {}
  for i = 1, n do
    counter = counter + 1
    parts[i] = string.format(template, 1700000000 + math.floor(counter / 200),
                             thread_seed * 100000000 + counter, counter % 5000)
  end
  local body = parts[1]
  if n > 1 then body = "[" .. table.concat(parts, ",") .. "]" end
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Basic " .. auth}
  return wrk.format("POST", "/webhooks/mailjet", headers, body)
end
