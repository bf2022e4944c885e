-- Store an event and its deliveries; nothing when the event id is known already.
-- KEYS: the event's record, the due index, the index of endpoints with work, then per
--       delivery: its record, its endpoint's queue, its endpoint's history.
-- ARGV: event record, keep (ms), trim before (seconds), then per delivery:
--       id, endpoint_id, org_id, event_id, event_type, payload, created_at, next_at.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local k = 4
for i = 4, #ARGV, 8 do
  local id, endpoint, next_at = ARGV[i], ARGV[i + 1], ARGV[i + 7]
  local record, queue, history = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  k = k + 3
  redis.call('HSET', record,
    'id', id, 'endpoint_id', endpoint, 'org_id', ARGV[i + 2], 'event_id', ARGV[i + 3],
    'event_type', ARGV[i + 4], 'payload', ARGV[i + 5], 'created_at', ARGV[i + 6],
    'status', 'pending', 'attempts', '0', 'next_at', next_at, 'lease_until', '0',
    'token', '', 'manual', '0', 'last_status', '', 'updated_at', '')
  redis.call('ZADD', KEYS[2], next_at, id)
  redis.call('ZADD', queue, next_at, id)
  redis.call('ZADD', KEYS[3], 'LT', next_at, endpoint)
  redis.call('ZADD', history, ARGV[i + 6], id)
  -- Entries older than any kept delivery point to nothing: trimmed as new ones come.
  redis.call('ZREMRANGEBYSCORE', history, '-inf', '(' .. ARGV[3])
end
return 1
