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
-- ARGV[6]  the entry's field names, joined by the unit separator (0x1f)
-- ARGV[7..] per record: its digest, then its values in the order of the
--          names, joined by 0x1f; an empty value leaves its field out
--
-- One joined argument per record instead of 30 keeps the client's command
-- packing, the largest cost of a write, small.
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

local SEP = '\31'
local names = {}
for name in string.gmatch(ARGV[6], '[^\31]+') do names[#names + 1] = name end

local function entry(values)
  local args, pos = {}, 1
  for k = 1, #names do
    local stop = string.find(values, SEP, pos, true)
    local value
    if stop then
      value = string.sub(values, pos, stop - 1)
      pos = stop + 1
    else
      value = string.sub(values, pos)
      pos = #values + 2
    end
    if value ~= '' then
      args[#args + 1] = names[k]
      args[#args + 1] = value
    end
  end
  return args
end

local stored, duplicates = 0, 0
local first_id, last_id = '', ''
local i = 7
while i <= #ARGV do
  local digest = ARGV[i]
  if seen(digest) then
    duplicates = duplicates + 1
  else
    last_id = redis.call('XADD', KEYS[1], '*', unpack(entry(ARGV[i + 1])))
    if first_id == '' then first_id = last_id end
    stored = stored + 1
    -- A packet may repeat a record; the second copy is a duplicate too.
    window = window .. digest
  end
  i = i + 2
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
