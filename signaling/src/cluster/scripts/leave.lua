-- Removes a member if it is still the given connection (a rejoin elsewhere replaced it otherwise).
-- KEYS[1] the room hash, KEYS[2] the leaving replica's room set.
-- ARGV: inbox channel prefix, room id, user id, replica, connection id.
-- Returns the new membership sequence, or 0 when the member was not that connection.
local room, field = KEYS[1], 'm:' .. ARGV[3]
local cur = redis.call('HGET', room, field)
if not cur then return 0 end
local m = cjson.decode(cur)
if m.replica ~= ARGV[4] or tostring(m.conn) ~= ARGV[5] then return 0 end
redis.call('HDEL', room, field)
local seq = redis.call('HINCRBY', room, 'seq', 1)
local rest = read_room(room)
tell_replicas(ARGV[1], rest,
  '{"k":"left","room":' .. cjson.encode(ARGV[2]) .. ',"seq":' .. seq .. ',"member":' .. cur .. '}')
local mine = false
for _, other in ipairs(rest) do
  if other.replica == ARGV[4] then mine = true end
end
if not mine then redis.call('SREM', KEYS[2], ARGV[2]) end
-- An empty room is forgotten with its orb request, as a single process forgets it.
if #rest == 0 then redis.call('DEL', room) end
return seq
