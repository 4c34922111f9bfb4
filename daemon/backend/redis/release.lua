-- KEYS: lease, index[, python]. ARGV: id, resource, changes channel.
-- Returns 1 if the lease was current (and is now gone), else 0. The
-- lease's mirror goes too, even when the lease itself already has.
unmirror(KEYS[3], ARGV[1])
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('PUBLISH', ARGV[3], ARGV[2])
  return 1
end
return 0
