-- A replica's liveness, and the epoch that tells whether Redis kept its data.
-- KEYS[1] the epoch key, KEYS[2] this replica's liveness key, KEYS[3] the replica set,
-- KEYS[4] the set of replicas that read the compact envelope (this one does).
-- ARGV: a fresh epoch (used only if Redis has none), replica id, liveness TTL in ms.
-- Returns {epoch, previous liveness value or false}: a missing previous value means this replica
-- was swept as dead or Redis lost its data, and the replica must restore its members.
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
local prev = redis.call('SET', KEYS[2], epoch, 'PX', ARGV[3], 'GET')
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[4], ARGV[2])
return { epoch, prev }
