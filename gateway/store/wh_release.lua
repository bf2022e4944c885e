-- Give a claimed delivery back unattempted, due again at ARGV[3], if ARGV[1] still holds it.
-- KEYS: the delivery, the due index, the index of endpoints, its endpoint's queue.
-- ARGV: token, id, due.
if ARGV[1] == '' or redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'lease_until', '0', 'token', '')
local endpoint = redis.call('HGET', KEYS[1], 'endpoint_id')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
redis.call('ZADD', KEYS[3], first[2], endpoint)
return 1
