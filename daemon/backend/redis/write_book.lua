-- KEYS: book, books index. ARGV: expected version, body, resource.
-- Stores the book if its version is still `expected` (0 when there is no
-- book yet) and returns 1, else 0. Versions are decimal integers that
-- HINCRBY raises by one per write; books are never deleted, so none comes
-- back. Compared as text, so no version goes through a Lua number.
local version = redis.call('HGET', KEYS[1], 'version') or '0'
if version ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'body', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('ZADD', KEYS[2], 0, ARGV[3])
return 1
