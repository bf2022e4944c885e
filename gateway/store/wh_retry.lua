-- Make a delivery due now (a manual retry). 0: unknown; -1: an attempt is in flight.
-- KEYS: the delivery, its attempt log, the due queue. ARGV: id, now.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local state = redis.call('HMGET', KEYS[1], 'status', 'token', 'lease_until')
if state[1] == 'pending' and state[2] ~= '' and tonumber(state[3]) > tonumber(ARGV[2]) then
  return -1
end
local manual = '0'
if state[1] ~= 'pending' then
  manual = '1'
end
redis.call('HSET', KEYS[1], 'status', 'pending', 'next_at', ARGV[2], 'manual', manual,
  'lease_until', '0', 'token', '')
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
