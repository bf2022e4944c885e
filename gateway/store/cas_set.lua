-- Replace a record only if it is still what the caller read, and announce the change in the
-- same atomic step (a script, not MULTI: a Redis Cluster refuses PUBLISH in a transaction).
-- KEYS[1] the record
-- ARGV[1] the value read, ARGV[2] the new value, ARGV[3] channel, ARGV[4] message ('' for
-- none), ARGV[5] echo channel, ARGV[6] the write's nonce there, after the message: the writer
-- knows its own announcement has been heard when the nonce comes back
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[3], ARGV[4])
  redis.call('PUBLISH', ARGV[5], ARGV[6])
end
return 1
