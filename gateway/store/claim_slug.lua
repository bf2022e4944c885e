-- An org's slug: claim it for a create in progress, make the claim final, or drop it.
-- KEYS[1] the slug's pointer: the org id once final, 'pending <org id> <ms>' while claimed.
-- ARGV[1] org id, ARGV[2] after how long a pending claim is stale (ms), ARGV[3] 'claim' |
-- 'commit' | 'drop'. Returns {1 when done (0 when the slug is not ours), the id of a create
-- whose stale claim this one took over ('' if none): its org must be removed}.
-- Time is the server's: instances' clocks may disagree.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local held = redis.call('GET', KEYS[1])
local pending, since
if held then
  pending, since = string.match(held, '^pending (%S+) (%d+)$')
end
if ARGV[3] == 'claim' then
  if pending == ARGV[1] or held == ARGV[1] then
    return {1, ''}  -- sent twice: ours already
  end
  -- Free, or claimed by a create that never finished (its process died): ours.
  if held and not (pending and tonumber(since) + tonumber(ARGV[2]) <= now) then
    return {0, ''}
  end
  redis.call('SET', KEYS[1], 'pending ' .. ARGV[1] .. ' ' .. now)
  return {1, pending or ''}
end
if ARGV[3] == 'commit' then
  if held == ARGV[1] then
    return {1, ''}
  end
  if pending ~= ARGV[1] then
    return {0, ''}
  end
  redis.call('SET', KEYS[1], ARGV[1])
  return {1, ''}
end
if pending == ARGV[1] or held == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return {1, ''}
end
return {0, ''}
