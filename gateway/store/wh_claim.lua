-- Lease due deliveries to one caller, endpoint by endpoint: the endpoints whose oldest due
-- delivery is oldest go first, and each gives at most as many as the caller may still send
-- to it. An endpoint with a long backlog therefore never holds up the others.
-- A claimed delivery is re-scored to the end of its lease: if the caller dies, it is due then.
-- KEYS: the shard's index of endpoints with work, its due index.
-- The only script that names keys it was not given: which endpoints' queues and deliveries it
-- reads is known only from the index. It builds them on the key prefix of the shard, whose
-- hash tag the two keys given carry too, so all are in their slot.
-- ARGV: now, lease_until, limit, token, the shard's key prefix, per-endpoint cap,
--       then pairs of (endpoint id, attempts the caller has in flight to it).
local now, lease, limit, token = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local prefix, per_endpoint = ARGV[5], tonumber(ARGV[6])
local busy, busy_count = {}, 0
for i = 7, #ARGV, 2 do
  busy[ARGV[i]] = tonumber(ARGV[i + 1])
  busy_count = busy_count + 1
end
local candidates = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit + busy_count)
-- Endpoints the caller sends nothing to yet come first: backlogs at endpoints it is already
-- busy with (however many) cannot take every slot from the rest.
local endpoints = {}
for _, endpoint in ipairs(candidates) do
  if not busy[endpoint] then
    endpoints[#endpoints + 1] = endpoint
  end
end
for _, endpoint in ipairs(candidates) do
  if busy[endpoint] then
    endpoints[#endpoints + 1] = endpoint
  end
end
local claimed = {}
for _, endpoint in ipairs(endpoints) do
  if limit <= 0 then
    break
  end
  local allowed = math.min(limit, per_endpoint - (busy[endpoint] or 0))
  if allowed > 0 then
    local queue = prefix .. 'q:' .. endpoint
    local ids = redis.call('ZRANGEBYSCORE', queue, '-inf', now, 'LIMIT', 0, allowed)
    for _, id in ipairs(ids) do
      local key = prefix .. 'dlv:' .. id
      if redis.call('EXISTS', key) == 1 then
        redis.call('ZADD', queue, lease, id)
        redis.call('ZADD', KEYS[2], lease, id)
        redis.call('HSET', key, 'lease_until', lease, 'token', token)
        claimed[#claimed + 1] = redis.call('HGETALL', key)
        limit = limit - 1
      else
        redis.call('ZREM', queue, id)
        redis.call('ZREM', KEYS[2], id)
      end
    end
    local first = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
    if first[1] then
      redis.call('ZADD', KEYS[1], first[2], endpoint)
    else
      redis.call('ZREM', KEYS[1], endpoint)
    end
  end
end
return claimed
