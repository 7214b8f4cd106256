// Serves the seed's signaling on 127.0.0.1:$PORT for `cargo bench -p orb-signaling --bench relay`.
import http from 'node:http';
import { initEnhancedWebSocket } from './websocket-simple-enhanced.mjs';

const server = http.createServer((_req, res) => {
  res.writeHead(404);
  res.end();
});
initEnhancedWebSocket(server);
server.listen(Number(process.env.PORT), '127.0.0.1');
