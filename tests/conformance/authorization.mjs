// Run `conformance authorization` against an OAuth authorization server and walk the browser
// part for it. Started by run-authorization.sh (which installs Node 22 and the suite); no npm
// dependencies, Node >= 22.
//
//   node authorization.mjs --cli SUITE/dist/index.js --issuer URL --out DIR
//        [--resource URI] [--port N] [--client-id ID [--client-secret S]]
//        [--username alice --password alice-dev-password] [--timeout SECONDS]
//
// What the suite needs (tests/conformance/README.md, "Authorization server"): a pre-registered
// client whose redirect URI is http://127.0.0.1:<port>/callback, and someone to open the
// authorization URL it prints and get a browser to that callback. This script
//   1. registers a public client with RFC 7591 (unless --client-id is given),
//   2. runs the suite with --client-id/--port/--resource, copying its output,
//   3. when the suite prints the authorization URL, walks it like a browser without JavaScript
//      (cookie jar, redirects, the consent form's Approve, the static-users login form) until the
//      redirect to the callback, which it then requests, so the suite gets its code,
//   4. reads each scenario's checks.json and prints PASS/FAIL per scenario.
// Exit status 0 only when every scenario ran and none has a FAILURE or SKIPPED check.

import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import readline from "node:readline";

const SCENARIOS = ["authorization-server-metadata-endpoint", "authorization-code-grant"];
// Most navigations the browser walk makes before it gives up (consent, login, redirects).
const MAX_STEPS = 20;
// Milliseconds one HTTP request of the walk may take.
const REQUEST_TIMEOUT_MS = 15000;
// Tries (100 ms apart) of the request to the suite's callback server.
const CALLBACK_ATTEMPTS = 50;

function parseArgs(argv) {
    const o = {
        port: 0, username: "alice", password: "alice-dev-password", timeout: 300,
    };
    for (let i = 0; i < argv.length; i++) {
        const k = argv[i];
        const v = () => {
            if (i + 1 >= argv.length) throw new Error(`${k} needs a value`);
            return argv[++i];
        };
        switch (k) {
            case "--cli": o.cli = v(); break;
            case "--issuer": o.issuer = v(); break;
            case "--resource": o.resource = v(); break;
            case "--port": o.port = Number(v()); break;
            case "--client-id": o.clientId = v(); break;
            case "--client-secret": o.clientSecret = v(); break;
            case "--username": o.username = v(); break;
            case "--password": o.password = v(); break;
            case "--out": o.out = v(); break;
            case "--timeout": o.timeout = Number(v()); break;
            default: throw new Error(`unknown argument ${k}`);
        }
    }
    for (const k of ["cli", "issuer", "out"]) if (!o[k]) throw new Error(`--${k} is required`);
    return o;
}

const say = (...a) => console.error("authorization:", ...a);

function freePort() {
    return new Promise((resolve, reject) => {
        const s = net.createServer();
        s.on("error", reject);
        s.listen(0, "127.0.0.1", () => {
            const { port } = s.address();
            s.close(() => resolve(port));
        });
    });
}

async function fetchT(url, init = {}) {
    return fetch(url, { ...init, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
}

// --- 1. client registration (RFC 7591) -----------------------------------------------------------

async function register(issuer, redirectUri) {
    let endpoint = `${issuer.replace(/\/$/, "")}/register`;
    const meta = await fetchT(`${issuer.replace(/\/$/, "")}/.well-known/oauth-authorization-server`);
    if (meta.ok) {
        const m = await meta.json();
        if (typeof m.registration_endpoint === "string") endpoint = m.registration_endpoint;
    }
    const body = {
        client_name: "MCP conformance suite (authorization)",
        redirect_uris: [redirectUri],
        grant_types: ["authorization_code", "refresh_token"],
        response_types: ["code"],
        // The suite sends no secret when the server lists "none" (even with --client-secret),
        // so the client it drives is a public one.
        token_endpoint_auth_method: "none",
        application_type: "native",
    };
    const r = await fetchT(endpoint, {
        method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    });
    const text = await r.text();
    if (r.status !== 201 && r.status !== 200) {
        throw new Error(`POST ${endpoint} answered ${r.status}: ${text.slice(0, 500)}`);
    }
    const reg = JSON.parse(text);
    if (typeof reg.client_id !== "string") throw new Error(`registration has no client_id: ${text.slice(0, 500)}`);
    say(`registered client ${reg.client_id} at ${endpoint} (redirect ${redirectUri})`);
    return reg;
}

// --- 3. the browser walk -----------------------------------------------------------------------

class CookieJar {
    constructor() { this.byHost = new Map(); }

    store(url, res) {
        const host = new URL(url).hostname;
        const jar = this.byHost.get(host) ?? new Map();
        for (const line of res.headers.getSetCookie()) {
            const [pair, ...attrs] = line.split(";");
            const eq = pair.indexOf("=");
            if (eq < 0) continue;
            const name = pair.slice(0, eq).trim();
            const value = pair.slice(eq + 1).trim();
            const gone = attrs.some((a) => /^\s*max-age\s*=\s*(0|-)/i.test(a))
                || attrs.some((a) => /^\s*expires\s*=/i.test(a) && Date.parse(a.split("=")[1]) < Date.now());
            if (gone) jar.delete(name); else jar.set(name, value);
        }
        this.byHost.set(host, jar);
    }

    header(url) {
        const jar = this.byHost.get(new URL(url).hostname);
        if (!jar || jar.size === 0) return undefined;
        return [...jar].map(([k, v]) => `${k}=${v}`).join("; ");
    }
}

const unescapeHtml = (s) => s
    .replace(/&quot;/g, '"').replace(/&#x27;|&#39;/g, "'").replace(/&lt;/g, "<").replace(/&gt;/g, ">")
    .replace(/&#x2F;|&#47;/g, "/").replace(/&amp;/g, "&");

function attrs(tag) {
    const out = {};
    for (const m of tag.matchAll(/([a-zA-Z_:][-a-zA-Z0-9_:.]*)\s*(?:=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?/g)) {
        out[m[1].toLowerCase()] = unescapeHtml(m[2] ?? m[3] ?? m[4] ?? "");
    }
    return out;
}

// The forms of an HTML page: id, action, method, hidden/text inputs and submit buttons.
function forms(html) {
    const out = [];
    for (const m of html.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/gi)) {
        const a = attrs(m[1]);
        const f = { id: a.id, action: a.action ?? "", method: (a.method ?? "get").toUpperCase(), fields: [], buttons: [] };
        for (const t of m[2].matchAll(/<(input|button)\b([^>]*)>/gi)) {
            const ta = attrs(t[2]);
            const type = (ta.type ?? (t[1].toLowerCase() === "button" ? "submit" : "text")).toLowerCase();
            if (type === "submit") f.buttons.push(ta);
            else if (ta.name) f.fields.push([ta.name, ta.value ?? ""]);
        }
        out.push(f);
    }
    return out;
}

function pageText(html, id) {
    const m = html.match(new RegExp(`id="${id}"[^>]*>([\\s\\S]*?)</`, "i"));
    return m ? unescapeHtml(m[1].replace(/<[^>]+>/g, "")).trim() : undefined;
}

// Walks from the authorization URL to the redirect that starts with `callback`, then requests
// that URL (the suite's callback server). Returns the callback URL.
async function walk(authorizationUrl, callback, username, password) {
    const jar = new CookieJar();
    let url = authorizationUrl;
    let init = { method: "GET" };
    const trail = [];
    for (let step = 0; step < MAX_STEPS; step++) {
        if (url.startsWith(callback)) {
            trail.push(`GET ${url.split("?")[0]} (callback)`);
            say(`walk: ${trail.join(" -> ")}`);
            // The suite prints the URL before its callback server listens: retry a refused
            // connection for a few seconds.
            for (let attempt = 1; ; attempt++) {
                try {
                    const r = await fetchT(url);
                    await r.text();
                    return url;
                } catch (e) {
                    if (attempt >= CALLBACK_ATTEMPTS) throw new Error(`callback ${callback}: ${e.cause?.code ?? e.message}`);
                    await new Promise((resolve) => setTimeout(resolve, 100));
                }
            }
        }
        const headers = { ...(init.headers ?? {}), accept: "text/html" };
        const cookie = jar.header(url);
        if (cookie) headers.cookie = cookie;
        const res = await fetchT(url, { ...init, headers, redirect: "manual" });
        jar.store(url, res);
        trail.push(`${init.method} ${new URL(url).pathname} ${res.status}`);
        if (res.status >= 300 && res.status < 400) {
            const loc = res.headers.get("location");
            if (!loc) throw new Error(`${res.status} without Location at ${url}`);
            url = new URL(loc, url).toString();
            init = { method: "GET" };
            await res.arrayBuffer();
            continue;
        }
        const html = await res.text();
        const all = forms(html);
        const consent = all.find((f) => f.id === "consent");
        const login = all.find((f) => f.id === "login");
        if (res.status === 200 && consent) {
            const approve = consent.buttons.find((b) => b.id === "approve");
            if (!approve) throw new Error(`consent form without #approve at ${url}`);
            const body = new URLSearchParams(consent.fields);
            body.append(approve.name ?? "action", approve.value ?? "approve");
            ({ url, init } = submit(url, consent, body));
        } else if (res.status === 200 && login) {
            const body = new URLSearchParams(login.fields.filter(([k]) => k !== "username" && k !== "password"));
            body.append("username", username);
            body.append("password", password);
            ({ url, init } = submit(url, login, body));
        } else {
            const err = pageText(html, "error");
            throw new Error(`stuck at ${url} (HTTP ${res.status})${err ? `: ${err}` : ""}; walk: ${trail.join(" -> ")}`);
        }
    }
    throw new Error(`no callback after ${MAX_STEPS} steps: ${trail.join(" -> ")}`);
}

function submit(pageUrl, form, body) {
    const action = new URL(form.action || pageUrl, pageUrl).toString();
    if (form.method === "POST") {
        return {
            url: action,
            init: {
                method: "POST",
                headers: {
                    "content-type": "application/x-www-form-urlencoded",
                    // What a browser sends with a form post (the pages set Referrer-Policy: no-referrer).
                    origin: new URL(pageUrl).origin,
                },
                body: body.toString(),
            },
        };
    }
    const u = new URL(action);
    u.search = body.toString();
    return { url: u.toString(), init: { method: "GET" } };
}

// --- 4. results ----------------------------------------------------------------------------------

function results(outDir) {
    const out = {};
    for (const d of fs.existsSync(outDir) ? fs.readdirSync(outDir) : []) {
        const f = path.join(outDir, d, "checks.json");
        if (!fs.existsSync(f)) continue;
        const name = SCENARIOS.find((s) => d.startsWith(`authorization-server-${s}-`));
        if (name) out[name] = JSON.parse(fs.readFileSync(f, "utf8"));
    }
    return out;
}

// --- main ----------------------------------------------------------------------------------------

async function main() {
    const o = parseArgs(process.argv.slice(2));
    const port = o.port || (await freePort());
    const callback = `http://127.0.0.1:${port}/callback`;
    fs.mkdirSync(o.out, { recursive: true });

    let clientId = o.clientId;
    let clientSecret = o.clientSecret;
    const problems = [];
    if (!clientId) {
        try {
            clientId = (await register(o.issuer, callback)).client_id;
        } catch (e) {
            problems.push(`registration failed: ${e.message}`);
            say(problems.at(-1));
        }
    }

    const args = [o.cli, "authorization", "--url", o.issuer, "--port", String(port), "-o", o.out];
    if (clientId) args.push("--client-id", clientId);
    if (clientSecret) args.push("--client-secret", clientSecret);
    if (o.resource) args.push("--resource", o.resource);
    say(`running ${["conformance", ...args.slice(1)].join(" ")}`);
    const log = fs.createWriteStream(path.join(o.out, "output.log"));
    const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
    child.stderr.on("data", (b) => { process.stderr.write(b); log.write(b); });

    let walking = null;
    let expectUrl = false;
    const lines = readline.createInterface({ input: child.stdout });
    lines.on("line", (line) => {
        process.stdout.write(`${line}\n`);
        log.write(`${line}\n`);
        if (expectUrl && /^https?:\/\//.test(line.trim())) {
            expectUrl = false;
            const url = line.trim();
            walking = walk(url, callback, o.username, o.password).catch((e) => {
                problems.push(`browser walk failed: ${e.message}`);
                say(problems.at(-1));
                // The suite would wait five minutes for a callback that will not come.
                child.kill("SIGTERM");
            });
        }
        if (line.includes("Access the following URL in your browser")) expectUrl = true;
    });

    const timer = setTimeout(() => {
        problems.push(`suite did not finish within ${o.timeout}s`);
        child.kill("SIGKILL");
    }, o.timeout * 1000);
    const code = await new Promise((resolve) => child.on("close", (c, sig) => resolve(c ?? sig)));
    clearTimeout(timer);
    if (walking) await walking;
    log.end();

    // Per scenario: PASS only with no FAILURE and no SKIPPED check.
    const res = results(o.out);
    let passed = 0;
    let failed = 0;
    console.log(`\n=== authorization server conformance against ${o.issuer} ===`);
    for (const s of SCENARIOS) {
        const checks = res[s];
        if (!checks) {
            failed++;
            console.log(`FAIL ${s}: did not run to completion (no checks.json)`);
            continue;
        }
        const bad = checks.filter((c) => c.status === "FAILURE" || c.status === "SKIPPED");
        const warn = checks.filter((c) => c.status === "WARNING");
        const ok = bad.length === 0 && checks.length > 0;
        ok ? passed++ : failed++;
        const n = (st) => checks.filter((c) => c.status === st).length;
        console.log(`${ok ? "PASS" : "FAIL"} ${s}: ${n("SUCCESS")} ok, ${n("FAILURE")} failed, ${n("SKIPPED")} skipped, ${warn.length} warnings`);
        for (const c of [...bad, ...warn]) {
            console.log(`     ${c.status} ${c.id}: ${c.errorMessage ?? c.description}`);
        }
    }
    for (const p of problems) console.log(`     ${p}`);
    if (code !== 0) console.log(`     suite exited ${code}`);
    console.log(`results: ${o.out}`);
    console.log(`authorization: ${passed} passed, ${failed} failed`);
    process.exit(failed === 0 && code === 0 && problems.length === 0 ? 0 : 1);
}

main().catch((e) => {
    say(e.stack ?? String(e));
    process.exit(2);
});
