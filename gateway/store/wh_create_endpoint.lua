-- Add a webhook endpoint unless its org already has cap of them (cap < 0: no cap).
-- KEYS: the endpoint's record, the org's endpoint index. ARGV: id, record, created_at, cap.
local cap = tonumber(ARGV[4])
if cap >= 0 and redis.call('ZCARD', KEYS[2]) >= cap then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
