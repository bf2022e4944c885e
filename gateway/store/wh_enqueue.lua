-- Store an event and its deliveries; nothing when the event id is known already.
-- KEYS: the event's record, the global due index, the index of endpoints with work.
-- ARGV: event record, keep (ms), key prefix, trim before (seconds), then per delivery:
--       id, endpoint_id, org_id, event_id, event_type, payload, created_at, next_at.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local prefix = ARGV[3]
for i = 5, #ARGV, 8 do
  local id, endpoint, next_at = ARGV[i], ARGV[i + 1], ARGV[i + 7]
  redis.call('HSET', prefix .. 'dlv:' .. id,
    'id', id, 'endpoint_id', endpoint, 'org_id', ARGV[i + 2], 'event_id', ARGV[i + 3],
    'event_type', ARGV[i + 4], 'payload', ARGV[i + 5], 'created_at', ARGV[i + 6],
    'status', 'pending', 'attempts', '0', 'next_at', next_at, 'lease_until', '0',
    'token', '', 'manual', '0', 'last_status', '', 'updated_at', '')
  redis.call('ZADD', KEYS[2], next_at, id)
  redis.call('ZADD', prefix .. 'q:' .. endpoint, next_at, id)
  redis.call('ZADD', KEYS[3], 'LT', next_at, endpoint)
  local history = prefix .. 'epdlv:' .. endpoint
  redis.call('ZADD', history, ARGV[i + 6], id)
  -- Entries older than any kept delivery point to nothing: trimmed as new ones come.
  redis.call('ZREMRANGEBYSCORE', history, '-inf', '(' .. ARGV[4])
end
return 1
