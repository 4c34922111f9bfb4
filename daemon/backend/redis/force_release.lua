-- KEYS: lease, index, evicted[, python]. ARGV: actor, reason, resource,
-- changes channel. Returns {TIME, lease} with the broken lease, or
-- {TIME, {}} when the resource was free. A Python stormlock lock is left
-- alone; the broken lease's mirror goes with it.
local now = redis.call('TIME')
local lease = lease_at(KEYS[1])
if #lease > 0 then
  unmirror(KEYS[4], lease[1])
  redis.call('HSET', KEYS[3], 'id', lease[1], 'actor', ARGV[1], 'reason', ARGV[2])
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('PUBLISH', ARGV[4], ARGV[3])
end
return {now, lease}
