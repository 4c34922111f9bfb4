-- KEYS: book. Returns {version, body}, both nil when there is no book.
return redis.call('HMGET', KEYS[1], 'version', 'body')
