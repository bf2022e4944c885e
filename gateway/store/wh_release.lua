-- Give a claimed delivery back unattempted, due again at ARGV[3], if ARGV[1] still holds it.
-- KEYS: the delivery, the due queue. ARGV: token, id, due.
if ARGV[1] == '' or redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'lease_until', '0', 'token', '')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return 1
