// Node `--import` preload: adds `Authorization: Bearer $MCP_BEARER_TOKEN` to every
// HTTP request the conformance suite makes, because the suite has no token option.
//
// Three paths carry the suite's requests: the global `fetch` (the MCP TypeScript
// SDK's transports and most scenarios) and the npm `undici` package's `request`
// (a few raw-HTTP scenarios). Both are covered:
//   1. `globalThis.fetch` is wrapped;
//   2. undici's global dispatcher (shared by Node's built-in fetch and the npm
//      package through the same global symbol) is composed with an interceptor;
//   3. `node:http` / `node:https` `request` (the SEP-2243 header scenarios send
//      raw requests with them) get the header added to their options.
// A request that already carries an Authorization header is left alone.
// Without MCP_BEARER_TOKEN this module does nothing.
import { createRequire } from 'node:module';
import http from 'node:http';
import https from 'node:https';

const token = process.env.MCP_BEARER_TOKEN;

function hasAuthorization(headers) {
  if (!headers) return false;
  if (typeof headers.has === 'function') return headers.has('authorization');
  if (Array.isArray(headers)) {
    // undici accepts a flat [name, value, name, value, ...] array or [[name, value], ...].
    if (headers.length > 0 && Array.isArray(headers[0])) {
      return headers.some(([k]) => String(k).toLowerCase() === 'authorization');
    }
    for (let i = 0; i < headers.length; i += 2) {
      if (String(headers[i]).toLowerCase() === 'authorization') return true;
    }
    return false;
  }
  if (typeof headers === 'object') {
    return Object.keys(headers).some((k) => k.toLowerCase() === 'authorization');
  }
  return false;
}

function withAuthorization(headers, value) {
  if (hasAuthorization(headers)) return headers;
  if (!headers) return { authorization: value };
  if (typeof headers.set === 'function') {
    const copy = new Headers(headers);
    copy.set('authorization', value);
    return copy;
  }
  if (Array.isArray(headers)) {
    if (headers.length > 0 && Array.isArray(headers[0])) return [...headers, ['authorization', value]];
    return [...headers, 'authorization', value];
  }
  return { ...headers, authorization: value };
}

if (token) {
  const value = `Bearer ${token}`;

  // 1. Global fetch.
  const originalFetch = globalThis.fetch;
  if (typeof originalFetch === 'function') {
    globalThis.fetch = function fetchWithAuthorization(input, init) {
      const fromRequest = typeof Request !== 'undefined' && input instanceof Request ? input.headers : undefined;
      const headers = new Headers(init?.headers ?? fromRequest);
      if (!headers.has('authorization')) headers.set('authorization', value);
      return originalFetch.call(this, input, { ...init, headers });
    };
  }

  // 2. undici's global dispatcher, resolved from the suite's own node_modules
  // (process.argv[1] is the suite's entry point).
  try {
    const require = createRequire(process.argv[1] ?? import.meta.url);
    const undici = require('undici');
    const base = undici.getGlobalDispatcher();
    const authorize = (dispatch) => (opts, handler) =>
      dispatch({ ...opts, headers: withAuthorization(opts.headers, value) }, handler);
    undici.setGlobalDispatcher(base.compose(authorize));
  } catch (error) {
    if (process.env.MCP_AUTH_PRELOAD_DEBUG) {
      console.error(`auth-preload: undici not patched: ${error}`);
    }
  }

  // 3. node:http and node:https request(options[, callback]) and request(url, options[, callback]).
  for (const mod of [http, https]) {
    const original = mod.request;
    mod.request = function requestWithAuthorization(...args) {
      const i = typeof args[0] === 'object' && !(args[0] instanceof URL) ? 0 : 1;
      if (typeof args[i] === 'object' && args[i] !== null && typeof args[i] !== 'function') {
        args[i] = { ...args[i], headers: withAuthorization(args[i].headers, value) };
      } else {
        args.splice(i, 0, { headers: { authorization: value } });
      }
      return original.apply(this, args);
    };
  }
}
