-- Renew or finish an idempotent request, only if this holder still has the lock (fencing).
-- KEYS[1] the record. ARGV[1] lock token, ARGV[2] "renew", "complete" or "release",
-- ARGV[3] response (complete) or the new lock deadline in ms (renew),
-- ARGV[4] lifetime in ms: of the stored response (complete) or of the lock (renew).
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'renew' then
  redis.call('HSET', KEYS[1], 'lock_until', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return 1
end
if ARGV[2] == 'release' then
  redis.call('DEL', KEYS[1])
  return 1
end
redis.call('HSET', KEYS[1], 'state', 'done', 'response', ARGV[3])
redis.call('HDEL', KEYS[1], 'token', 'lock_until')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
