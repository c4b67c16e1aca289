// A plain Node `ws` broadcast server: the peer every fan-out figure of
// notify-bench is measured against (scripts/bench-bridge starts it pinned to
// the bridge's core). It stores nothing and checks no token; it speaks just
// enough of the bridge's protocol for the same load tool: `welcome` on
// connect, `subscribe` → `subscribed`, and `POST /publish?topic=T` with a
// JSON body → a `message` frame to every subscriber of T. The frame is
// encoded once per message, as a careful Node server would.
//
//   node ws-broadcast.mjs WS_PORT HTTP_PORT
import http from 'node:http';
import { WebSocketServer } from 'ws';

const [wsPort, httpPort] = process.argv.slice(2).map(Number);
process.title = 'ws-peer'; // what notify-bench finds it by in /proc

const topics = new Map(); // topic -> Set of sockets
let seq = 0;

const wss = new WebSocketServer({ port: wsPort, perMessageDeflate: false });
wss.on('connection', (ws) => {
  ws.send('{"type":"welcome"}');
  ws.on('message', (raw) => {
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    if (frame.action === 'subscribe' && typeof frame.topic === 'string') {
      let set = topics.get(frame.topic);
      if (!set) topics.set(frame.topic, (set = new Set()));
      set.add(ws);
      ws.send(JSON.stringify({ type: 'subscribed', topic: frame.topic }));
    }
  });
  ws.on('close', () => {
    for (const set of topics.values()) set.delete(ws);
  });
});

http
  .createServer((req, res) => {
    const url = new URL(req.url, 'http://peer');
    if (req.method !== 'POST' || url.pathname !== '/publish') {
      res.writeHead(404).end();
      return;
    }
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const topic = url.searchParams.get('topic') ?? '';
      const data = Buffer.concat(chunks).toString();
      const frame = Buffer.from(
        `{"type":"message","seq":${++seq},"topic":${JSON.stringify(topic)},"event":"bench","data":${data}}`,
      );
      for (const ws of topics.get(topic) ?? []) ws.send(frame, { binary: false });
      res.writeHead(204).end();
    });
  })
  .listen(httpPort, '127.0.0.1');
