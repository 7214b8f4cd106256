-- Records the orb's status and sends its message to every replica with members in the room
-- (the sender's too), in one step: a member joining at the same moment either is listed here
-- (and gets the message) or joins after it (and reads the status in the join script).
-- KEYS[1] the room hash. ARGV: inbox channel prefix, status, the Deliver event JSON.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'ai', ARGV[2])
tell_replicas(ARGV[1], read_room(KEYS[1]), ARGV[3])
return 1
