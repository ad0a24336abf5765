-- Update a device's status hash after a packet was stored.
--
-- KEYS[1]  the device hash
-- ARGV[1]  seen_at (ms)          ARGV[2]  peer
-- ARGV[3]  transport             ARGV[4]  records in the packet
-- ARGV[5]  lag of the newest record (ms) or ""
-- ARGV[6]  newest record timestamp (ms) or ""
-- ARGV[7..12] latitude, longitude, altitude, angle, speed, satellites of it
-- ARGV[13] imei                  ARGV[14] 1 when this packet is a burst
--
-- The position fields only move forward in device time: a packet of old
-- records never replaces a newer position. One HSET writes everything.
-- Returns `last_timestamp` as it is now ("-1" when there is none), which a
-- caller writing the next packets without this script needs.
local fields = {'imei', ARGV[13], 'seen_at', ARGV[1], 'peer', ARGV[2],
  'transport', ARGV[3]}
local newest = redis.call('HGET', KEYS[1], 'last_timestamp') or '-1'
if ARGV[6] ~= '' then
  fields[#fields + 1] = 'last_lag_ms'
  fields[#fields + 1] = ARGV[5]
  if tonumber(ARGV[6]) > tonumber(newest) then
    local names = {'last_timestamp', 'last_latitude', 'last_longitude',
      'last_altitude', 'last_angle', 'last_speed', 'last_satellites'}
    for k = 1, 7 do
      fields[#fields + 1] = names[k]
      fields[#fields + 1] = ARGV[5 + k]
    end
    newest = ARGV[6]
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
if tonumber(ARGV[4]) > 0 then
  redis.call('HINCRBY', KEYS[1], 'records_received', ARGV[4])
end
if ARGV[14] == '1' then
  redis.call('HINCRBY', KEYS[1], 'bursts_total', 1)
end
return newest
