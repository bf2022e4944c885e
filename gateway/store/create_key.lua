-- Store a new key, its hash index and its place in the org's list, and announce it: one
-- atomic step.
-- KEYS[1] key record, KEYS[2] hash -> id, KEYS[3] zset of the org's key ids by creation time
-- ARGV[1] record (JSON), ARGV[2] id, ARGV[3] created_at, ARGV[4] channel, ARGV[5] message,
-- ARGV[6] echo channel, ARGV[7] the write's nonce (see cas_set.lua)
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
