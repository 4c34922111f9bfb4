-- KEYS: lease, evicted. ARGV: id, ttl_ms, resource, changes channel.
-- Returns {1, TIME, lease} when renewed, else {0, TIME, eviction} with
-- eviction {id, actor, reason}.
local now = redis.call('TIME')
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PUBLISH', ARGV[4], ARGV[3])
  return {1, now, lease_at(KEYS[1])}
end
return {0, now, redis.call('HMGET', KEYS[2], 'id', 'actor', 'reason')}
