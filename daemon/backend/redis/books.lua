-- KEYS: books index. ARGV: book key prefix, min and max (ZRANGEBYLEX
-- syntax), batch size. Reads up to `batch` names and returns {{{name,
-- version, body}...}, last name read or false, 1 if the range is
-- exhausted}. A name whose book is gone (deleted by hand) is skipped. The
-- caller loops, so one script never reads more than a batch of books.
local batch = tonumber(ARGV[4])
local names = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], ARGV[3], 'LIMIT', 0, batch)
local found = {}
local last = false
for _, name in ipairs(names) do
  last = name
  local book = redis.call('HMGET', ARGV[1] .. name, 'version', 'body')
  if book[1] then found[#found + 1] = {name, book[1], book[2] or false} end
end
local exhausted = 0
if #names < batch then exhausted = 1 end
return {found, last, exhausted}
