// Seed 001's signaling server (src/routes/websocket-simple-enhanced.js), unchanged: the reference
// the relay benchmark measures orb-signaling against. Not part of the product.
import { WebSocketServer } from 'ws';

const rooms = new Map(); // roomId -> Map<userId, participant>

export function initEnhancedWebSocket(httpServer) {
    const wss = new WebSocketServer({ noServer: true });

    httpServer.on('upgrade', (request, socket, head) => {
        const url = new URL(request.url, `http://${request.headers.host}`);
        const pathParts = url.pathname.split('/');
        
        if (pathParts[1] === 'ws-simple' && pathParts[2]) {
            const roomId = pathParts[2];
            
            wss.handleUpgrade(request, socket, head, (ws) => {
                wss.emit('connection', ws, request, roomId);
            });
        }
    });

    wss.on('connection', (ws, request, roomId) => {
        console.log(`[EnhancedWS] New connection for room ${roomId}`);
        
        let currentParticipant = null;

        if (!rooms.has(roomId)) {
            rooms.set(roomId, new Map());
        }
        const room = rooms.get(roomId);

        ws.on('message', (message) => {
            try {
                const data = JSON.parse(message);
                
                switch (data.type) {
                    case 'join':
                        handleJoin(ws, room, roomId, data);
                        currentParticipant = {
                            ws,
                            userId: data.userId,
                            userRole: data.userRole,
                            participantType: data.participantType || 'human'
                        };
                        room.set(data.userId, currentParticipant);
                        break;
                        
                    case 'offer':
                    case 'answer':
                    case 'ice-candidate':
                        handleSignaling(room, currentParticipant, data);
                        break;
                        
                    case 'leave':
                        handleLeave(room, roomId, currentParticipant);
                        break;
                        
                    case 'ping':
                        ws.send(JSON.stringify({ type: 'pong' }));
                        break;
                }
            } catch (err) {
                console.error('[EnhancedWS] Message error:', err);
            }
        });

        ws.on('close', () => {
            handleLeave(room, roomId, currentParticipant);
        });
    });

    function handleJoin(ws, room, roomId, data) {
        console.log(`[EnhancedWS] ${data.userRole} ${data.userName} joining room ${roomId}`);
        
        // Get existing participants
        const existingParticipants = Array.from(room.values())
            .filter(p => p.userId !== data.userId)
            .map(p => ({
                userId: p.userId,
                userRole: p.userRole,
                participantType: p.participantType
            }));

        // Send peer discovery to new participant
        ws.send(JSON.stringify({
            type: 'peer-discovery',
            peers: existingParticipants
        }));

        // Notify existing participants
        room.forEach(participant => {
            if (participant.userId !== data.userId && participant.ws.readyState === ws.OPEN) {
                participant.ws.send(JSON.stringify({
                    type: 'user-joined',
                    userId: data.userId,
                    userRole: data.userRole,
                    participantType: data.participantType || 'human',
                    shouldCreateOffer: shouldCreateOffer(participant, data)
                }));
            }
        });

        console.log(`[EnhancedWS] Room ${roomId} now has ${room.size + 1} participants`);
    }

    function shouldCreateOffer(existing, joining) {
        // Deterministic offer creation based on participant type and ID
        // AI always receives offers (never creates them)
        if (joining.participantType === 'ai') return true;
        if (existing.participantType === 'ai') return false;
        
        // For human-to-human, use ID comparison
        return existing.userId < joining.userId;
    }

    function handleSignaling(room, sender, data) {
        // Enhanced signaling for targeted peer connections
        const targetId = data.toId || data.targetId;
        
        if (targetId) {
            // Targeted signaling (for 3-way mesh)
            const target = room.get(targetId);
            if (target && target.ws.readyState === target.ws.OPEN) {
                target.ws.send(JSON.stringify({
                    ...data,
                    fromId: sender.userId
                }));
            }
        } else {
            // Broadcast to all other participants (legacy support)
            room.forEach(participant => {
                if (participant.userId !== sender.userId && 
                    participant.ws.readyState === participant.ws.OPEN) {
                    participant.ws.send(JSON.stringify({
                        ...data,
                        fromId: sender.userId
                    }));
                }
            });
        }
    }

    function handleLeave(room, roomId, participant) {
        if (!participant) return;
        
        room.delete(participant.userId);
        
        // Notify others
        room.forEach(p => {
            if (p.ws.readyState === p.ws.OPEN) {
                p.ws.send(JSON.stringify({
                    type: 'user-left',
                    userId: participant.userId,
                    userRole: participant.userRole
                }));
            }
        });
        
        console.log(`[EnhancedWS] ${participant.userRole} left room ${roomId}. Room size: ${room.size}`);
        
        // Clean up empty rooms
        if (room.size === 0) {
            rooms.delete(roomId);
            console.log(`[EnhancedWS] Room ${roomId} deleted (empty)`);
        }
    }

    console.log('[EnhancedWS] Enhanced WebSocket server initialized for 3-party mesh');
}
