-- Removes every member of a replica whose liveness key expired, telling the other replicas.
-- KEYS[1] the dead replica's liveness key, KEYS[2] its room set, KEYS[3] the replica set,
-- KEYS[4] the set of replicas that read the compact envelope.
-- ARGV: inbox channel prefix, room key prefix, dead replica id.
-- Idempotent: several replicas may sweep at once; only the first finds anything.
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local removed = 0
for _, room_id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local room = ARGV[2] .. room_id
  local gone, rest = {}, {}
  for _, m in ipairs(read_room(room)) do
    if m.replica == ARGV[3] then gone[#gone + 1] = m else rest[#rest + 1] = m end
  end
  for _, g in ipairs(gone) do
    redis.call('HDEL', room, g._field)
    local seq = redis.call('HINCRBY', room, 'seq', 1)
    tell_replicas(ARGV[1], rest,
      '{"k":"left","room":' .. cjson.encode(room_id) .. ',"seq":' .. seq .. ',"member":' .. g._json .. '}')
    removed = removed + 1
  end
  if #rest == 0 then redis.call('DEL', room) end
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[3])
redis.call('SREM', KEYS[4], ARGV[3])
return removed
