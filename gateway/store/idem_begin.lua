-- Begin an idempotent request: take the lock, or say why not, in one atomic step.
-- KEYS[1] the record (a hash). ARGV[1] fingerprint, ARGV[2] lock token, ARGV[3] now (ms),
-- ARGV[4] lock lifetime (ms).
-- Returns {"acquired"} | {"mismatch"} | {"in_flight"} | {"replay", response}
local state = redis.call('HGET', KEYS[1], 'state')
if state then
  if redis.call('HGET', KEYS[1], 'fp') ~= ARGV[1] then
    return {'mismatch'}
  end
  if state == 'done' then
    return {'replay', redis.call('HGET', KEYS[1], 'response')}
  end
  if tonumber(redis.call('HGET', KEYS[1], 'lock_until')) > tonumber(ARGV[3]) then
    return {'in_flight'}
  end
end
-- Free, or held by a holder whose lock ran out (a crashed gateway): take it.
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'in_flight', 'fp', ARGV[1], 'token', ARGV[2],
  'lock_until', tonumber(ARGV[3]) + tonumber(ARGV[4]))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {'acquired'}
