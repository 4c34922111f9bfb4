-- KEYS: lease, fence, index. ARGV: id, principal, reason, ttl_ms, resource,
-- changes channel. Returns {granted 0|1, TIME, lease} where lease is the new
-- lease or the holder's.
local now = redis.call('TIME')
local holder = lease_at(KEYS[1])
if #holder > 0 then return {0, now, holder} end
local fence = redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'principal', ARGV[2], 'reason', ARGV[3],
  'acquired_s', now[1], 'acquired_us', now[2], 'fence', fence)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[3], 0, ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[5])
return {1, now, lease_at(KEYS[1])}
