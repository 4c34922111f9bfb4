-- Shared by every script, which the daemon prepends to them: lease_at(key) is the live lease in hash `key` as {id, principal,
-- reason, acquired_s, acquired_us, fence, pttl, ttl_ms}, or {} when there is
-- none. A missing field or a key without expiry comes back as such and is
-- reported as a corrupt record by the daemon, except ttl_ms (the TTL it was
-- granted or last renewed with), which leases of older versions lack.
local function lease_at(key)
  local pttl = redis.call('PTTL', key)
  if pttl == -2 then return {} end
  local h = redis.call('HMGET', key, 'id', 'principal', 'reason', 'acquired_s', 'acquired_us', 'fence', 'ttl_ms')
  return {h[1], h[2], h[3], h[4], h[5], h[6], pttl, h[7]}
end
