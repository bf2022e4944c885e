-- Store an event and its deliveries, due at once; nothing when the event id is known already.
-- KEYS: the event's record, the due queue.
-- ARGV: event record, keep (ms), key prefix, then per delivery:
--       id, endpoint_id, org_id, event_id, event_type, payload, created_at, next_at.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local prefix = ARGV[3]
for i = 4, #ARGV, 8 do
  local id = ARGV[i]
  redis.call('HSET', prefix .. 'dlv:' .. id,
    'id', id, 'endpoint_id', ARGV[i + 1], 'org_id', ARGV[i + 2], 'event_id', ARGV[i + 3],
    'event_type', ARGV[i + 4], 'payload', ARGV[i + 5], 'created_at', ARGV[i + 6],
    'status', 'pending', 'attempts', '0', 'next_at', ARGV[i + 7], 'lease_until', '0',
    'token', '', 'manual', '0', 'last_status', '', 'updated_at', '')
  redis.call('ZADD', KEYS[2], ARGV[i + 7], id)
  redis.call('ZADD', prefix .. 'epdlv:' .. ARGV[i + 1], ARGV[i + 6], id)
end
return 1
