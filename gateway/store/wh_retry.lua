-- Make a delivery due now (a manual retry). 0: unknown; -1: an attempt is in flight.
-- A finished delivery gets one attempt (manual); a pending one keeps what it was.
-- KEYS: the delivery, its attempt log, the due index, the index of endpoints, its endpoint's
--       queue.
-- ARGV: id, now, the endpoint's id.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local state = redis.call('HMGET', KEYS[1], 'status', 'token', 'lease_until', 'manual')
if state[1] == 'pending' and state[2] ~= '' and tonumber(state[3]) > tonumber(ARGV[2]) then
  return -1
end
local manual = state[4]
if state[1] ~= 'pending' then
  manual = '1'
end
redis.call('HSET', KEYS[1], 'status', 'pending', 'next_at', ARGV[2], 'manual', manual,
  'lease_until', '0', 'token', '')
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
local first = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
redis.call('ZADD', KEYS[4], first[2], ARGV[3])
return 1
