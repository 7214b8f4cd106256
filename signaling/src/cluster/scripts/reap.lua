-- Removes every member of a replica whose liveness key expired, telling the other replicas.
-- KEYS[1] the dead replica's liveness key, KEYS[2] its room set, KEYS[3] the replica set.
-- ARGV: inbox channel prefix, room key prefix, dead replica id.
-- Idempotent: several replicas may sweep at once; only the first finds anything.
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local removed = 0
for _, room_id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local room = ARGV[2] .. room_id
  local flat = redis.call('HGETALL', room)
  local gone, rest = {}, {}
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 2) == 'm:' then
      local m = cjson.decode(flat[i + 1])
      if m.replica == ARGV[3] then
        gone[#gone + 1] = { field = flat[i], json = flat[i + 1] }
      else
        rest[#rest + 1] = m
      end
    end
  end
  for _, g in ipairs(gone) do
    redis.call('HDEL', room, g.field)
    local seq = redis.call('HINCRBY', room, 'seq', 1)
    local event = '{"k":"left","room":' .. cjson.encode(room_id) .. ',"seq":' .. seq .. ',"member":' .. g.json .. '}'
    local told = {}
    for _, m in ipairs(rest) do
      if not told[m.replica] then
        told[m.replica] = true
        redis.call('PUBLISH', ARGV[1] .. m.replica, event)
      end
    end
    removed = removed + 1
  end
  if #rest == 0 then redis.call('DEL', room) end
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[3])
return removed
