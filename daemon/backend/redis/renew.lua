-- KEYS: lease, evicted[, python]. ARGV: id, ttl_ms, resource, changes
-- channel[, marker]. Returns {1, TIME, lease} when renewed, else
-- {0, TIME, eviction} with eviction {id, actor, reason}. The lease's mirror
-- is extended too, and written again if it is missing.
local now = redis.call('TIME')
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then
  -- Raises for a Python key of the wrong type before anything is written.
  python_fields(KEYS[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[1], 'ttl_ms', ARGV[2])
  local lease = lease_at(KEYS[1])
  mirror(KEYS[3], ARGV[1], lease[2], python_time(lease[4], lease[5]), ARGV[2], ARGV[5])
  redis.call('PUBLISH', ARGV[4], ARGV[3])
  return {1, now, lease}
end
return {0, now, redis.call('HMGET', KEYS[2], 'id', 'actor', 'reason')}
