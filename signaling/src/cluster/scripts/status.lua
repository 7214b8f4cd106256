-- Records the orb's status and sends its message to every replica with members in the room
-- (the sender's too), in one step: a member joining at the same moment either is listed here
-- (and gets the message) or joins after it (and reads the status in the join script).
-- KEYS[1] the room hash. ARGV: inbox channel prefix, status, the Deliver event JSON.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'ai', ARGV[2])
local told = {}
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  if string.sub(flat[i], 1, 2) == 'm:' then
    local m = cjson.decode(flat[i + 1])
    if not told[m.replica] then
      told[m.replica] = true
      redis.call('PUBLISH', ARGV[1] .. m.replica, ARGV[3])
    end
  end
end
return 1
