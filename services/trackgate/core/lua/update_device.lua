-- Update a device's status hash after a packet was stored.
--
-- KEYS[1]  the device hash
-- ARGV[1]  seen_at (ms)          ARGV[2]  peer
-- ARGV[3]  transport             ARGV[4]  records in the packet
-- ARGV[5]  unused (0)            ARGV[6]  lag of the newest record (ms) or ""
-- ARGV[7]  newest record timestamp (ms) or ""
-- ARGV[8..13] latitude, longitude, altitude, angle, speed, satellites of it
-- ARGV[14] imei                  ARGV[15] 1 when this packet is a burst
--
-- The position fields only move forward in device time: a packet of old
-- records never replaces a newer position.
redis.call('HSET', KEYS[1], 'imei', ARGV[14], 'seen_at', ARGV[1], 'peer', ARGV[2],
  'transport', ARGV[3])
if tonumber(ARGV[4]) > 0 then
  redis.call('HINCRBY', KEYS[1], 'records_received', ARGV[4])
end
if ARGV[15] == '1' then
  redis.call('HINCRBY', KEYS[1], 'bursts_total', 1)
end
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'last_lag_ms', ARGV[6])
  local last = tonumber(redis.call('HGET', KEYS[1], 'last_timestamp') or '-1')
  if tonumber(ARGV[7]) > last then
    redis.call('HSET', KEYS[1], 'last_timestamp', ARGV[7],
      'last_latitude', ARGV[8], 'last_longitude', ARGV[9], 'last_altitude', ARGV[10],
      'last_angle', ARGV[11], 'last_speed', ARGV[12], 'last_satellites', ARGV[13])
  end
end
return 1
