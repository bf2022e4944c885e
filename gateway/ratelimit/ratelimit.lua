-- Decide several limits for one request in one atomic step: the same arithmetic as
-- gateway/ratelimit/policy.py, in integer microseconds (exact in Lua's doubles below 2^53).
-- All KEYS share one hash tag (the org), so this also runs on a Redis Cluster. Nothing is
-- written unless every limit allows the request: refused requests are never counted.
--
-- ARGV[1] now (us), ARGV[2] cost, then per key: kind ("g" or "w"), capacity,
-- interval in us (g) or window end in us (w), ttl in ms.
-- Returns: {allowed, then per key: allowed, remaining, reset (us), retry_after (us)}
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local results = {}
local news = {}
local all = 1
for i = 1, #KEYS do
  local base = 2 + (i - 1) * 4
  local kind = ARGV[base + 1]
  local capacity = tonumber(ARGV[base + 2])
  local param = tonumber(ARGV[base + 3])
  local current = tonumber(redis.call('GET', KEYS[i]))
  local allowed, remaining, reset, retry, new
  if kind == 'g' then
    local tolerance = capacity * param
    local tat = current
    if tat == nil or tat < now then tat = now end
    local new_tat = tat + cost * param
    if new_tat - now <= tolerance then
      allowed = 1
      remaining = math.floor((tolerance - (new_tat - now)) / param)
      reset = new_tat - now
      retry = 0
      new = new_tat
    else
      allowed = 0
      remaining = math.max(0, math.floor((tolerance - (tat - now)) / param))
      reset = tat - now
      retry = new_tat - tolerance - now
    end
  else
    local used = current or 0
    reset = math.max(0, param - now)
    if used + cost <= capacity then
      allowed = 1
      remaining = capacity - used - cost
      retry = 0
      new = used + cost
    else
      allowed = 0
      remaining = math.max(0, capacity - used)
      retry = reset
    end
  end
  if allowed == 0 then all = 0 end
  news[i] = new
  local at = 1 + (i - 1) * 4
  results[at + 1] = string.format('%d', allowed)
  results[at + 2] = string.format('%.0f', remaining)
  results[at + 3] = string.format('%.0f', reset)
  results[at + 4] = string.format('%.0f', retry)
end
results[1] = string.format('%d', all)
if all == 1 and cost > 0 then
  for i = 1, #KEYS do
    local ttl = tonumber(ARGV[2 + (i - 1) * 4 + 4])
    redis.call('SET', KEYS[i], string.format('%.0f', news[i]), 'PX', ttl)
  end
end
return results
