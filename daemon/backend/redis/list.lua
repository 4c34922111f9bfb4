-- KEYS: index. ARGV: lease key prefix, min and max (ZRANGEBYLEX syntax),
-- batch size, limit. Scans up to `batch` names, drops those whose lease has
-- expired from the index, and returns {TIME, {{name, lease}...}, last
-- scanned name or false, 1 if the range is exhausted}. The caller loops, so
-- one script never scans more than a batch.
local now = redis.call('TIME')
local batch = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local names = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], ARGV[3], 'LIMIT', 0, batch)
local found = {}
local last = false
local stopped = false
for _, name in ipairs(names) do
  last = name
  local lease = lease_at(ARGV[1] .. name)
  if #lease == 0 then
    redis.call('ZREM', KEYS[1], name)
  else
    found[#found + 1] = {name, lease}
    if #found >= limit then
      stopped = true
      break
    end
  end
end
local exhausted = 0
if not stopped and #names < batch then exhausted = 1 end
return {now, found, last, exhausted}
