-- KEYS: lease, evicted. Returns {TIME, lease, eviction} as one snapshot.
return {redis.call('TIME'), lease_at(KEYS[1]), redis.call('HMGET', KEYS[2], 'id', 'actor', 'reason')}
