-- KEYS: lease, fence, index[, python]. ARGV: id, principal, reason, ttl_ms,
-- resource, changes channel[, marker]. Returns {granted 0|1, TIME, lease}
-- where lease is the new lease or the holder's, or {2, TIME, python lock}
-- when Python stormlock holds the resource (see python.lua).
local now = redis.call('TIME')
local holder = lease_at(KEYS[1])
if #holder > 0 then return {0, now, holder} end
local python = python_lock(KEYS[4], ARGV[7])
if #python > 0 then return {2, now, python} end
local fence = redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'principal', ARGV[2], 'reason', ARGV[3],
  'acquired_s', now[1], 'acquired_us', now[2], 'fence', fence, 'ttl_ms', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
mirror(KEYS[4], ARGV[1], ARGV[2], python_time(now[1], now[2]), ARGV[4], ARGV[7])
redis.call('ZADD', KEYS[3], 0, ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[5])
return {1, now, lease_at(KEYS[1])}
