-- Store one packet's records, skipping those already stored (resends).
--
-- KEYS[1]  records stream of the device's shard
-- KEYS[2]  the device's dedup hash: `window` holds its recent 8-byte record
--          digests, `stored` and `duplicates` count records
-- ARGV[1]  window size in bytes (a multiple of 8)
-- ARGV[2]  TTL of the window in seconds
-- ARGV[3]  trim strategy: "none", "maxlen" or "minid"
-- ARGV[4]  trim threshold (entry count for maxlen, an entry id for minid)
-- ARGV[5]  0 or 1: the trim is approximate ("~")
-- ARGV[6..] per record: digest, field count n, then n field/value pairs
--
-- Returns {stored, duplicates, first id or "", last id or ""}.
local window = redis.call('HGET', KEYS[2], 'window') or ''
local window_bytes = tonumber(ARGV[1])

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
local i = 6
while i <= #ARGV do
  local digest = ARGV[i]
  local n = tonumber(ARGV[i + 1])
  if seen(digest) then
    duplicates = duplicates + 1
  else
    last_id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 2, i + 1 + 2 * n))
    if first_id == '' then first_id = last_id end
    stored = stored + 1
    -- A packet may repeat a record; the second copy is a duplicate too.
    window = window .. digest
  end
  i = i + 2 + 2 * n
end

if duplicates > 0 then
  redis.call('HINCRBY', KEYS[2], 'duplicates', duplicates)
end
if stored > 0 then
  if #window > window_bytes then
    window = string.sub(window, #window - window_bytes + 1)
  end
  redis.call('HSET', KEYS[2], 'window', window)
  redis.call('HINCRBY', KEYS[2], 'stored', stored)
end
if stored + duplicates > 0 then
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[2]))
end
if stored > 0 then
  if ARGV[3] == 'maxlen' or ARGV[3] == 'minid' then
    if ARGV[5] == '1' then
      redis.call('XTRIM', KEYS[1], string.upper(ARGV[3]), '~', ARGV[4])
    else
      redis.call('XTRIM', KEYS[1], string.upper(ARGV[3]), '=', ARGV[4])
    end
  end
end
return {stored, duplicates, first_id, last_id}
