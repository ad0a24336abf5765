-- Store one packet's records, skipping those already stored (resends).
--
-- KEYS[1]  records stream of the device's shard
-- KEYS[2]  the device's dedup hash: `window` holds its recent 8-byte record
--          digests, `stored` and `duplicates` count records, `seq` changes
--          with every write of the device's records (see below)
-- ARGV[1]  window size in bytes (a multiple of 8)
-- ARGV[2]  TTL of the window in seconds
-- ARGV[3]  trim strategy: "none", "maxlen" or "minid"
-- ARGV[4]  trim threshold (entry count for maxlen, an entry id for minid)
-- ARGV[5]  0 or 1: the trim is approximate ("~")
-- ARGV[6]  where `seq` starts when the hash has none: a random number, so
--          that a hash lost and made again never repeats an old `seq`
-- ARGV[7]  1: return the window too (the caller keeps a copy), else 0
-- ARGV[8..] per record: its digest, the count n of what follows, then n
--          arguments: the entry's field names and values, alternating
--
-- The entry's arguments go to XADD as they came (unpack of a range of
-- ARGV): no string is split or built per record on the server.
--
-- `seq` is what lets the gateway write without this script: a session that
-- knows the window as of `seq` decides itself what is new, and its write
-- is refused (WATCH) if `seq` moved meanwhile. So every write of records
-- moves it, here and there.
--
-- Returns {stored, duplicates, first id or "", last id or "", seq or 0,
-- window or "", the hash's stored and duplicates totals}.
local call = redis.call
local argv = ARGV
local window = call('HGET', KEYS[2], 'window') or ''

-- A digest is only a match on an 8-byte boundary of the window.
local function seen(digest)
  local start = 1
  while true do
    local pos = string.find(window, digest, start, true)
    if pos == nil then return false end
    if (pos - 1) % 8 == 0 then return true end
    start = pos + 1
  end
end

local stored, duplicates = 0, 0
local first_id, last_id = '', ''
-- Digests stored by this call: a packet may repeat a record, and the second
-- copy is a duplicate too. The window grows once, at the end.
local added, fresh = {}, {}
local i = 8
local last = #argv
local stream = KEYS[1]
while i <= last do
  local digest = argv[i]
  local n = tonumber(argv[i + 1])
  if fresh[digest] or seen(digest) then
    duplicates = duplicates + 1
  else
    last_id = call('XADD', stream, '*', unpack(argv, i + 2, i + 1 + n))
    if first_id == '' then first_id = last_id end
    stored = stored + 1
    added[stored] = digest
    fresh[digest] = true
  end
  i = i + 2 + n
end

if duplicates > 0 then
  call('HINCRBY', KEYS[2], 'duplicates', duplicates)
end
if stored > 0 then
  window = window .. table.concat(added)
  if #window > tonumber(ARGV[1]) then
    window = string.sub(window, #window - tonumber(ARGV[1]) + 1)
  end
  call('HSET', KEYS[2], 'window', window)
  call('HINCRBY', KEYS[2], 'stored', stored)
end
local seq = 0
if stored + duplicates > 0 then
  if not call('HGET', KEYS[2], 'seq') then
    call('HSET', KEYS[2], 'seq', ARGV[6])
  end
  seq = call('HINCRBY', KEYS[2], 'seq', 1)
  call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
else
  seq = tonumber(call('HGET', KEYS[2], 'seq') or '0')
end
if stored > 0 then
  if ARGV[3] == 'maxlen' or ARGV[3] == 'minid' then
    if ARGV[5] == '1' then
      call('XTRIM', KEYS[1], string.upper(ARGV[3]), '~', ARGV[4])
    else
      call('XTRIM', KEYS[1], string.upper(ARGV[3]), '=', ARGV[4])
    end
  end
end
if ARGV[7] ~= '1' then window = '' end
local totals = call('HMGET', KEYS[2], 'stored', 'duplicates')
return {stored, duplicates, first_id, last_id, seq, window,
  totals[1] or '0', totals[2] or '0'}
