-- KEYS: lease, evicted[, python]. ARGV: [marker]. Returns {TIME, lease,
-- eviction, python lock} as one snapshot.
return {redis.call('TIME'), lease_at(KEYS[1]), redis.call('HMGET', KEYS[2], 'id', 'actor', 'reason'),
  python_lock(KEYS[3], ARGV[1])}
