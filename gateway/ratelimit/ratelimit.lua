-- Decide several limits for one request in one atomic step: the same arithmetic as
-- gateway/ratelimit/policy.py, in integer microseconds (exact in Lua's doubles below 2^53).
-- All KEYS share one hash tag (the org), so this also runs on a Redis Cluster. Nothing is
-- written unless every limit allows the request: refused requests are never counted, and
-- every answer to a refusal reports the state as it stays.
--
-- ARGV[1] now (us), ARGV[2] cost, then per key: kind ("g" or "w"), capacity,
-- interval in us (g) or window end in us (w), ttl in ms.
-- Returns: {allowed, then per key: allowed, remaining, reset (us), retry_after (us)}
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local fits, befores, afters = {}, {}, {}
local all = 1
-- First: whether the cost fits each limit, and its state (TAT or count) before and after.
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 4
  local kind = ARGV[base + 1]
  local capacity = tonumber(ARGV[base + 2])
  local param = tonumber(ARGV[base + 3])
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
  if not fits[i] then all = 0 end
end
-- Then: what each limit reports, from the state that holds after the decision.
local results = {string.format('%d', all)}
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 4
  local kind = ARGV[base + 1]
  local capacity = tonumber(ARGV[base + 2])
  local param = tonumber(ARGV[base + 3])
  local held = befores[i]
  if all == 1 then held = afters[i] end
  local remaining, reset, retry
  if kind == 'g' then
    local tolerance = capacity * param
    remaining = math.max(0, math.floor((tolerance - (held - now)) / param))
    reset = held - now
    retry = 0
    if not fits[i] then retry = held + cost * param - tolerance - now end
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
if all == 1 and cost > 0 then
  for i = 1, #KEYS do
    local ttl = tonumber(ARGV[2 + (i - 1) * 4 + 4])
    redis.call('SET', KEYS[i], string.format('%.0f', afters[i]), 'PX', ttl)
  end
end
return results
