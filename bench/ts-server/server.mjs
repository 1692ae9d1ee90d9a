// Baseline for bench/run.sh: the same `add` tool as tools::McpServer, served by the official
// TypeScript MCP SDK's Streamable HTTP transport with stateful sessions, on plain node:http
// (no Express, so the baseline pays only for the SDK). Follows the SDK's
// examples/server/jsonResponseStreamableHttp.js session handling.
//
//   node server.mjs --listen 127.0.0.1:8791 [--sse] [--stateless]
//   prints http://127.0.0.1:8791/mcp on stdout when listening; stops on SIGTERM/SIGINT.
//
// By default POST answers are application/json (`enableJsonResponse: true`), as the cluster's
// gateway answers a single-response request; `--sse` keeps the SDK's default SSE answers.
// `--stateless`: the SDK's stateless mode (examples/server/simpleStatelessStreamableHttp.js): no
// session ids, a fresh server and transport for every POST, no initialize needed; the baseline
// of the cluster's stateless (2026-07-28) path.
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import * as z from 'zod/v4';

const MCP_PATH = '/mcp';
const MAX_BODY_BYTES = 4 * 1024 * 1024;

const args = process.argv.slice(2);
const listenArg = args.includes('--listen') ? args[args.indexOf('--listen') + 1] : '127.0.0.1:8791';
const jsonResponse = !args.includes('--sse');
const stateless = args.includes('--stateless');
const [host, portText] = listenArg.split(':');
const port = Number(portText);

/** A fresh MCP server per session, as the SDK examples do. */
function newServer() {
  const server = new McpServer({ name: 'bench-ts-server', version: '1.0.0' });
  server.registerTool(
    'add',
    {
      description: 'Add two numbers and return the sum.',
      inputSchema: {
        a: z.number().describe('First addend'),
        b: z.number().describe('Second addend'),
      },
    },
    // String(3) is "3", as tools/src/add.rs prints whole numbers.
    async ({ a, b }) => ({ content: [{ type: 'text', text: String(a + b) }] }),
  );
  return server;
}

/** session id → transport */
const sessions = new Map();

function sendJsonError(res, status, code, message) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new Error('body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** The request's JSON body; undefined (400 sent) when it does not parse. */
async function readJson(req, res) {
  try {
    return JSON.parse((await readBody(req)).toString('utf8'));
  } catch {
    sendJsonError(res, 400, -32700, 'Parse error');
    return undefined;
  }
}

async function handleStateless(req, res) {
  if (req.method !== 'POST') {
    sendJsonError(res, 405, -32000, 'Method not allowed: stateless server');
    return;
  }
  const body = await readJson(req, res);
  if (body === undefined) return;
  const server = newServer();
  const transport = new StreamableHTTPServerTransport({
    sessionIdGenerator: undefined,
    enableJsonResponse: jsonResponse,
  });
  res.on('close', () => {
    transport.close().catch(() => {});
    server.close().catch(() => {});
  });
  await server.connect(transport);
  await transport.handleRequest(req, res, body);
}

async function handle(req, res) {
  const path = (req.url ?? '/').split('?')[0];
  if (path !== MCP_PATH) {
    res.writeHead(404).end();
    return;
  }
  if (stateless) {
    await handleStateless(req, res);
    return;
  }
  const sessionId = req.headers['mcp-session-id'];
  const existing = sessionId ? sessions.get(sessionId) : undefined;
  if (req.method !== 'POST') {
    // GET (standalone SSE stream) and DELETE go to the session's transport.
    if (!existing) {
      sendJsonError(res, sessionId ? 404 : 400, -32000, 'Session not found');
      return;
    }
    await existing.handleRequest(req, res);
    return;
  }
  const body = await readJson(req, res);
  if (body === undefined) return;
  if (existing) {
    await existing.handleRequest(req, res, body);
    return;
  }
  if (sessionId) {
    sendJsonError(res, 404, -32001, 'Session not found');
    return;
  }
  if (!isInitializeRequest(body)) {
    sendJsonError(res, 400, -32000, 'Bad Request: No valid session ID provided');
    return;
  }
  const transport = new StreamableHTTPServerTransport({
    sessionIdGenerator: () => randomUUID(),
    enableJsonResponse: jsonResponse,
    onsessioninitialized: (id) => {
      sessions.set(id, transport);
    },
  });
  transport.onclose = () => {
    if (transport.sessionId) sessions.delete(transport.sessionId);
  };
  await newServer().connect(transport);
  await transport.handleRequest(req, res, body);
}

const httpServer = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    console.error('request failed:', err);
    if (!res.headersSent) sendJsonError(res, 500, -32603, 'Internal error');
    else res.end();
  });
});
httpServer.keepAliveTimeout = 60_000;

httpServer.listen(port, host, () => {
  const addr = httpServer.address();
  console.log(`http://${addr.address}:${addr.port}${MCP_PATH}`);
});

function stop() {
  for (const transport of sessions.values()) transport.close().catch(() => {});
  httpServer.close(() => process.exit(0));
  httpServer.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
