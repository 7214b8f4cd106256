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
local mine, any = false, false
local told = {}
local event = '{"k":"left","room":' .. cjson.encode(ARGV[2]) .. ',"seq":' .. seq .. ',"member":' .. cur .. '}'
local flat = redis.call('HGETALL', room)
for i = 1, #flat, 2 do
  if string.sub(flat[i], 1, 2) == 'm:' then
    any = true
    local other = cjson.decode(flat[i + 1])
    if other.replica == ARGV[4] then mine = true end
    if not told[other.replica] then
      told[other.replica] = true
      redis.call('PUBLISH', ARGV[1] .. other.replica, event)
    end
  end
end
if not mine then redis.call('SREM', KEYS[2], ARGV[2]) end
-- An empty room is forgotten with its orb request, as a single process forgets it.
if not any then redis.call('DEL', room) end
return seq
