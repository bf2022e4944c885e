-- Append a batch of request-log entries to one stream, each with its request's own time (in
-- microseconds) as the id's first part, so that the streams merge in time order. An entry
-- older than the stream's newest (another instance wrote a later one first) takes the
-- newest's time: it goes after everything already there, and never before its own time.
--
-- KEYS[1] the stream; ARGV[1] the cap (MAXLEN ~: Redis trims whole nodes, cheaply), or '' for
-- none (the audit log, kept by age alone); then pairs: the time in us (decimal digits), the
-- encoded entry. Returns how many were added.
-- The newest id the stream ever gave, which a trim that emptied it leaves in place.
local last_text, last = nil, -1
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      last_text = string.match(info[i + 1], '^(%d+)')
      last = tonumber(last_text)
    end
  end
end
for i = 2, #ARGV, 2 do
  local text = ARGV[i]
  local at = tonumber(text)  -- below 2^53: exact in Lua's doubles
  if at < last then
    text = last_text
  else
    last_text, last = text, at
  end
  if ARGV[1] == '' then
    redis.call('XADD', KEYS[1], text .. '-*', 'e', ARGV[i + 1])
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], text .. '-*', 'e', ARGV[i + 1])
  end
end
return (#ARGV - 1) / 2
