-- Create an org only if its slug is free: one atomic step.
-- KEYS[1] org record, KEYS[2] slug -> id, KEYS[3] zset of org ids by creation time
-- ARGV[1] id, ARGV[2] record (JSON), ARGV[3] created_at
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 1
