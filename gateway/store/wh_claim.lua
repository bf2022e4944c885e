-- Lease up to limit due deliveries to one caller. A claimed delivery's score in the due queue
-- becomes the end of its lease: if the caller dies, it is due again then.
-- KEYS: the due queue. ARGV: now, lease_until, limit, token, delivery key prefix.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local claimed = {}
for _, id in ipairs(ids) do
  local key = ARGV[5] .. id
  if redis.call('EXISTS', key) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    redis.call('HSET', key, 'lease_until', ARGV[2], 'token', ARGV[4])
    claimed[#claimed + 1] = redis.call('HGETALL', key)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return claimed
