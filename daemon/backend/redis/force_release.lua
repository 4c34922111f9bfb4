-- KEYS: lease, index, evicted[, python]. ARGV: actor, reason, resource,
-- changes channel[, marker]. Returns {TIME, lease} with the broken lease,
-- {TIME, {}, python lock} with a Python stormlock lock it broke (when no
-- Stormlock lease held the resource), or {TIME, {}} when the resource was
-- free. The broken lease's mirror goes with it.
local now = redis.call('TIME')
local lease = lease_at(KEYS[1])
if #lease > 0 then
  unmirror(KEYS[4], lease[1])
  redis.call('HSET', KEYS[3], 'id', lease[1], 'actor', ARGV[1], 'reason', ARGV[2])
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('PUBLISH', ARGV[4], ARGV[3])
  return {now, lease}
end
-- Python's own release deletes its hash; so does breaking it. Its holder's
-- next renewal finds no lock.
local python = python_lock(KEYS[4], ARGV[5])
if #python > 0 then
  redis.call('DEL', KEYS[4])
  redis.call('PUBLISH', ARGV[4], ARGV[3])
  return {now, {}, python}
end
return {now, lease}
