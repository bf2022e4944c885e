-- Store a new key and its place in the org's list, and announce it: one atomic step, in the
-- org's slot (the pointers to it by id and by hash are written before, in their own slots).
-- KEYS[1] key record, KEYS[2] zset of the org's key ids by creation time
-- ARGV[1] record (JSON), ARGV[2] id, ARGV[3] created_at, ARGV[4] channel, ARGV[5] message,
-- ARGV[6] echo channel, ARGV[7] the write's nonce (see cas_set.lua)
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
