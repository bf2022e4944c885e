-- Decide several limits for one request in one atomic step: the same arithmetic as
-- gateway/ratelimit/policy.py and window.py, in integer microseconds (exact in Lua's doubles
-- below 2^53). All KEYS share one hash tag (the org), so this also runs on a Redis Cluster.
-- Nothing is counted unless every limit allows the request: refused requests are never
-- counted, and every answer to a refusal reports the state as it stays.
--
-- ARGV[1] now (us), ARGV[2] cost, then per key: kind, capacity, two parameters, ttl in ms:
--   "g" (GCRA): interval in us, 0; "w" (calendar window): window end in us, 0;
--   "s" (sliding window): window length in us, sub-bucket length in us.
-- A GCRA key holds its TAT, a calendar window's its count. A sliding window's key is a hash:
-- "n" the units counted, "h" and "t" the sequence numbers of its oldest and newest
-- sub-buckets, and per sub-bucket i "a<i>" its end (us) and "c<i>" its units.
-- Returns: {allowed, then per key: allowed, remaining, reset (us), retry_after (us)}
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local fits, befores, afters = {}, {}, {}
local heads, tails, newests, ends = {}, {}, {}, {}
local all = 1

local function arg(i, n) return ARGV[2 + (i - 1) * 5 + n] end

-- A sliding window without the sub-buckets that no longer count at now: its count, its
-- oldest and newest sub-buckets, and the newest's end (nil when empty).
local function expire(key, per)
  local state = redis.call('HMGET', key, 'n', 'h', 't')
  local n, h, t = tonumber(state[1]) or 0, tonumber(state[2]) or 1, tonumber(state[3]) or 0
  if t < h then return 0, 1, 0, nil end
  local newest = tonumber(redis.call('HGET', key, 'a' .. t))
  if newest + per <= now then
    redis.call('DEL', key)  -- all of it has left the window
    return 0, 1, 0, nil
  end
  local oldest = h
  while tonumber(redis.call('HGET', key, 'a' .. h)) + per <= now do
    n = n - tonumber(redis.call('HGET', key, 'c' .. h))
    redis.call('HDEL', key, 'a' .. h, 'c' .. h)
    h = h + 1
  end
  if h ~= oldest then
    redis.call('HSET', key, 'n', string.format('%.0f', n), 'h', string.format('%.0f', h))
  end
  return n, h, t, newest
end

-- First: whether the cost fits each limit, and its state (TAT or count) before and after.
for i = 1, #KEYS do
  local kind = arg(i, 1)
  local capacity = tonumber(arg(i, 2))
  local param = tonumber(arg(i, 3))
  if kind == 's' then
    befores[i], heads[i], tails[i], newests[i] = expire(KEYS[i], param)
    afters[i] = befores[i] + cost
    fits[i] = afters[i] <= capacity
  else
    local current = tonumber(redis.call('GET', KEYS[i]))
    if kind == 'g' then
      local tat = current
      if tat == nil or tat < now then tat = now end
      befores[i] = tat
      afters[i] = tat + cost * param
      fits[i] = afters[i] - now <= capacity * param
    else
      befores[i] = current or 0
      afters[i] = befores[i] + cost
      fits[i] = afters[i] <= capacity
    end
  end
  if not fits[i] then all = 0 end
end
local counted = all == 1 and cost > 0

-- The end of the sub-bucket a request now is counted in: now rounded up (fmod is exact).
local function slot(granule)
  local over = math.fmod(now, granule)
  if over == 0 then return now end
  return now - over + granule
end

-- Then: what each limit reports, from the state that holds after the decision.
local results = {string.format('%d', all)}
for i = 1, #KEYS do
  local kind = arg(i, 1)
  local capacity = tonumber(arg(i, 2))
  local param = tonumber(arg(i, 3))
  local held = befores[i]
  if all == 1 then held = afters[i] end
  local remaining, reset, retry
  if kind == 'g' then
    local tolerance = capacity * param
    remaining = math.max(0, math.floor((tolerance - (held - now)) / param))
    reset = held - now
    retry = 0
    if not fits[i] then retry = held + cost * param - tolerance - now end
  elseif kind == 's' then
    local newest = newests[i]
    if counted then
      -- A clock behind another instance's may stamp a request before the newest sub-bucket:
      -- counted there, it counts longer, never shorter.
      newest = slot(tonumber(arg(i, 4)))
      if newests[i] ~= nil and newests[i] > newest then newest = newests[i] end
      ends[i] = newest
    end
    remaining = math.max(0, capacity - held)
    reset = 0
    if newest ~= nil then reset = newest + param - now end
    retry = 0
    if not fits[i] then
      -- Until enough of the oldest sub-buckets have left for the cost to fit.
      local need, freed = held + cost - capacity, 0
      retry = reset
      for j = heads[i], tails[i] do
        freed = freed + tonumber(redis.call('HGET', KEYS[i], 'c' .. j))
        if freed >= need then
          retry = tonumber(redis.call('HGET', KEYS[i], 'a' .. j)) + param - now
          break
        end
      end
    end
  else
    remaining = math.max(0, capacity - held)
    reset = math.max(0, param - now)
    retry = 0
    if not fits[i] then retry = reset end
  end
  local at = 1 + (i - 1) * 4
  results[at + 1] = fits[i] and '1' or '0'
  results[at + 2] = string.format('%.0f', remaining)
  results[at + 3] = string.format('%.0f', reset)
  results[at + 4] = string.format('%.0f', retry)
end

if counted then
  for i = 1, #KEYS do
    local key, ttl = KEYS[i], tonumber(arg(i, 5))
    if arg(i, 1) == 's' then
      local t = tails[i]
      if ends[i] == newests[i] then
        redis.call('HINCRBY', key, 'c' .. t, cost)
      else
        t = t + 1
        redis.call('HSET', key, 'a' .. t, string.format('%.0f', ends[i]), 'c' .. t, cost)
      end
      redis.call('HSET', key, 'n', string.format('%.0f', afters[i]),
        'h', string.format('%.0f', heads[i]), 't', string.format('%.0f', t))
      redis.call('PEXPIRE', key, ttl)
    else
      redis.call('SET', key, string.format('%.0f', afters[i]), 'PX', ttl)
    end
  end
end
return results
