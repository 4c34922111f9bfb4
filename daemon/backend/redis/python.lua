-- Python stormlock 0.4.1 compatibility (`python_stormlock = true`), which
-- the daemon prepends to every script. Python stormlock keeps the lock on
-- resource R in a hash at key R: `id` (16 random bytes), `p` (principal),
-- `c` (creation time, seconds since the epoch as text), expiring with the
-- lock. A script gets that key as its last KEYS entry only when the mode is
-- on; otherwise `key` is nil and every function here does nothing. `marker`
-- is the daemon's key prefix: the hashes written for Stormlock's own leases
-- (mirrors) carry it in a field `stormlockd`, which Python never reads.

-- The 16 bytes of a 32-hex-digit lease id, the form of Python's ids; nil
-- for anything else (a corrupt record, reported by the daemon).
local function id_bytes(hex)
  if type(hex) ~= 'string' or not string.match(hex, '^%x+$') or #hex ~= 32 then return nil end
  return (string.gsub(hex, '..', function(pair) return string.char(tonumber(pair, 16)) end))
end

-- A time as Python stores it (seconds, as text) from TIME's two parts.
local function python_time(s, us)
  return tostring(tonumber(s) or 0) .. '.' .. string.format('%06d', tonumber(us) or 0)
end

-- {id, p, c, stormlockd} of the hash at `key`, or nil when there is none or
-- it has no `id` (Python takes such a hash for a free lock). A key of
-- another type is some other application's data: an error, which every
-- script raises before it writes anything.
local function python_fields(key)
  if not key then return nil end
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then return nil end
  if kind ~= 'hash' then
    error({err = 'ERR key ' .. key .. ' holds a ' .. kind ..
      ', not a Python stormlock lock (python_stormlock = true)'})
  end
  local h = redis.call('HMGET', key, 'id', 'p', 'c', 'stormlockd')
  if not h[1] then return nil end
  return h
end

-- The Python stormlock lock at `key` as {id, p, c, pttl}, or {} when there
-- is none or it is a mirror of this deployment's own lease.
local function python_lock(key, marker)
  local h = python_fields(key)
  if not h or h[4] == marker then return {} end
  return {h[1], h[2], h[3], redis.call('PTTL', key)}
end

-- Writes the mirror of lease `hex` (principal, creation time `c`, expiring
-- in `pttl` ms) at `key`, unless a Python lock that is not a mirror of
-- ours holds it.
local function mirror(key, hex, principal, c, pttl, marker)
  if not key or not id_bytes(hex) or type(principal) ~= 'string' then return end
  if #python_lock(key, marker) > 0 then return end
  redis.call('DEL', key)
  redis.call('HSET', key, 'id', id_bytes(hex), 'p', principal, 'c', c, 'stormlockd', marker)
  redis.call('PEXPIRE', key, pttl)
end

-- Deletes the mirror of lease `hex` at `key`, if that is what it holds.
local function unmirror(key, hex)
  local h = python_fields(key)
  if h and id_bytes(hex) and h[1] == id_bytes(hex) then redis.call('DEL', key) end
end
