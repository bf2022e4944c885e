-- Move last-used times forward only: instances flush at different moments.
-- KEYS[1] hash of key id -> last used time; ARGV pairs: id, time
for i = 1, #ARGV, 2 do
  local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > current then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
