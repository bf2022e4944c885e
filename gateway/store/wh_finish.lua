-- Record an attempt and the delivery's next state, if the caller still holds its lease.
-- KEYS: the delivery, its attempt log, the due index, the index of endpoints, its
--       endpoint's queue.
-- ARGV: token, id, status, next_at, attempts, last_status, now, attempt record, keep (ms).
if ARGV[1] == '' or redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'attempts', ARGV[5], 'next_at', ARGV[4],
  'last_status', ARGV[6], 'updated_at', ARGV[7], 'lease_until', '0', 'token', '', 'manual', '0')
redis.call('RPUSH', KEYS[2], ARGV[8])
local endpoint = redis.call('HGET', KEYS[1], 'endpoint_id')
local queue = KEYS[5]
if ARGV[3] == 'pending' then
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
  redis.call('ZADD', queue, ARGV[4], ARGV[2])
else
  redis.call('ZREM', KEYS[3], ARGV[2])
  redis.call('ZREM', queue, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[9])
  redis.call('PEXPIRE', KEYS[2], ARGV[9])
end
local first = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
if first[1] then
  redis.call('ZADD', KEYS[4], first[2], endpoint)
else
  redis.call('ZREM', KEYS[4], endpoint)
end
return 1
