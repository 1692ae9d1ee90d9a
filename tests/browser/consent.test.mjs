// The auth-service's consent and login pages in a real browser (Debian's chromium, headless,
// driven by playwright-core), walked as a person would, against a running cluster:
//
//   MCP_ISSUER=http://localhost:8788 MCP_URL=http://localhost:8788/mcp \
//     node --test tests/browser/consent.test.mjs
//   node tests/browser/consent.test.mjs --issuer URL [--resource URI] [--artifacts DIR]
//
// Settings (argv wins over the environment):
//   --issuer / MCP_ISSUER             the OAuth issuer (required)
//   --resource / MCP_URL              the MCP resource (default ISSUER/mcp)
//   --artifacts / BROWSER_ARTIFACTS   where screenshots go (default tests/browser/artifacts)
//   BROWSER_USER / BROWSER_PASSWORD   static-users login (default alice / alice-dev-password)
//   CHROMIUM                          the browser (default /usr/bin/chromium)
//
// The contract is auth-service/README.md ("Pages", "Cookies"): consent `form#consent` with
// `#approve`/`#deny`, `#client-name`, `#scopes`, `#redirect-host`; static-users login
// `form#login` with `#sign-in`; error pages with `#error` and 400/403; every page with CSP
// `frame-ancestors 'none'`, `X-Frame-Options: DENY`, `Cache-Control: no-store`,
// `Referrer-Policy: no-referrer`.
//
// The test serves two things itself on loopback: the client's redirect URI
// (http://127.0.0.1:<port>/cb) and, on another port, a page that frames the consent page.

import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));

function setting(flag, env, fallback) {
    const i = process.argv.indexOf(flag);
    if (i >= 0 && i + 1 < process.argv.length) return process.argv[i + 1];
    return process.env[env] || fallback;
}

const ISSUER = setting("--issuer", "MCP_ISSUER", "");
const RESOURCE = setting("--resource", "MCP_URL", ISSUER ? `${ISSUER.replace(/\/$/, "")}/mcp` : "");
const ARTIFACTS = path.resolve(setting("--artifacts", "BROWSER_ARTIFACTS", path.join(here, "artifacts")));
const USERNAME = process.env.BROWSER_USER || "alice";
const PASSWORD = process.env.BROWSER_PASSWORD || "alice-dev-password";
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
// Flags without which Chromium stalls on a machine with no network.
const CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
];
// Milliseconds one browser action or navigation may take.
const ACTION_TIMEOUT_MS = 20000;

if (!ISSUER) {
    console.error("consent.test.mjs: set MCP_ISSUER or pass --issuer URL");
    process.exit(64);
}

const b64url = (buf) => Buffer.from(buf).toString("base64url");

// --- the test's own loopback servers ----------------------------------------------------------

function listen(handler) {
    return new Promise((resolve, reject) => {
        const server = http.createServer(handler);
        server.on("error", reject);
        server.listen(0, "127.0.0.1", () => resolve(server));
    });
}

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

// The client's redirect URI: records every hit, shows the query as a page.
const callbacks = [];
async function startCallbackServer() {
    return listen((req, res) => {
        const url = new URL(req.url, "http://127.0.0.1");
        if (url.pathname !== "/cb") {
            res.writeHead(404).end();
            return;
        }
        callbacks.push(url);
        const rows = [...url.searchParams].map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td id="${escapeHtml(k)}">${escapeHtml(v)}</td></tr>`);
        res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
        res.end(`<!doctype html><title>callback</title><h1>Client callback</h1><table>${rows.join("")}</table>`);
    });
}

// Another origin that tries to frame whatever `?src=` names.
async function startFramerServer() {
    return listen((req, res) => {
        const url = new URL(req.url, "http://127.0.0.1");
        const src = url.searchParams.get("src") ?? "about:blank";
        res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
        res.end(`<!doctype html><title>framer</title><h1>A page of another site framing the consent page</h1>
<iframe id="victim" src="${escapeHtml(src)}" width="900" height="500"></iframe>`);
    });
}

// --- OAuth helpers ------------------------------------------------------------------------------

let metadata;
let cbServer;
let framer;
let redirectUri;
let context;
let userDataDir;
// The client approved by the first test, whose approval this browser now remembers.
let approvedClient;

async function register(name) {
    const endpoint = metadata.registration_endpoint ?? `${ISSUER}/register`;
    const r = await fetch(endpoint, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
            client_name: name,
            redirect_uris: [redirectUri],
            grant_types: ["authorization_code", "refresh_token"],
            response_types: ["code"],
            token_endpoint_auth_method: "none",
            application_type: "native",
        }),
    });
    const text = await r.text();
    assert.equal(r.status, 201, `POST ${endpoint}: ${text}`);
    const reg = JSON.parse(text);
    assert.equal(typeof reg.client_id, "string");
    return { ...reg, client_name: name };
}

function authorization(clientId) {
    const state = b64url(crypto.randomBytes(24));
    const verifier = b64url(crypto.randomBytes(48));
    const challenge = b64url(crypto.createHash("sha256").update(verifier).digest());
    const q = new URLSearchParams({
        response_type: "code",
        client_id: clientId,
        redirect_uri: redirectUri,
        state,
        code_challenge: challenge,
        code_challenge_method: "S256",
        resource: RESOURCE,
    });
    return { url: `${metadata.authorization_endpoint}?${q}`, state, verifier };
}

// A fresh client and a browser with no cookies: every flow starts from scratch.
async function freshFlow(label) {
    await context.clearCookies();
    const client = await register(`Browser test ${label} ${b64url(crypto.randomBytes(4))}`);
    const page = await context.newPage();
    page.setDefaultTimeout(ACTION_TIMEOUT_MS);
    page.setDefaultNavigationTimeout(ACTION_TIMEOUT_MS);
    return { client, page, auth: authorization(client.client_id) };
}

async function shot(page, name) {
    await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

// Every page of the auth-service carries these headers (README "Pages").
function assertPageHeaders(resp, what) {
    const h = resp.headers();
    const csp = h["content-security-policy"] ?? "";
    assert.match(csp, /frame-ancestors 'none'/, `${what}: CSP ${csp}`);
    assert.match(csp, /default-src 'none'/, `${what}: CSP ${csp}`);
    assert.match(csp, /form-action /, `${what}: CSP ${csp}`);
    assert.equal((h["x-frame-options"] ?? "").toUpperCase(), "DENY", `${what}: X-Frame-Options`);
    assert.match(h["cache-control"] ?? "", /no-store/, `${what}: Cache-Control`);
    assert.equal(h["referrer-policy"], "no-referrer", `${what}: Referrer-Policy`);
}

async function openConsent(page, auth) {
    const resp = await page.goto(auth.url);
    assert.ok(resp, "no response for /authorize");
    assert.equal(resp.status(), 200, `GET /authorize: ${resp.status()} ${await page.content()}`);
    assertPageHeaders(resp, "consent page");
    await page.locator("form#consent").waitFor();
    return resp;
}

// Submit the consent form (edited or not) with a button and return the POST's response.
async function submitConsent(page, button) {
    const [resp] = await Promise.all([
        page.waitForResponse((r) => r.request().method() === "POST" && new URL(r.url()).pathname.endsWith("/consent")),
        page.click(button),
    ]);
    await page.waitForLoadState("load");
    return resp;
}

// --- the tests ----------------------------------------------------------------------------------

describe(`consent and login pages of ${ISSUER} in ${CHROMIUM}`, () => {
    before(async () => {
        fs.mkdirSync(ARTIFACTS, { recursive: true });
        const m = await fetch(`${ISSUER.replace(/\/$/, "")}/.well-known/oauth-authorization-server`);
        assert.equal(m.status, 200, "authorization server metadata");
        metadata = await m.json();
        cbServer = await startCallbackServer();
        framer = await startFramerServer();
        redirectUri = `http://127.0.0.1:${cbServer.address().port}/cb`;
        userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "mcp-browser-test-"));
        context = await chromium.launchPersistentContext(userDataDir, {
            executablePath: CHROMIUM,
            headless: true,
            args: CHROMIUM_ARGS,
            viewport: { width: 1000, height: 700 },
        });
    });

    after(async () => {
        await context?.close();
        cbServer?.close();
        framer?.close();
        if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
    });

    it("approve: consent page, static-users login, callback with code, state and iss; the code buys a token", async () => {
        const { client, page, auth } = await freshFlow("approve");
        await openConsent(page, auth);
        assert.equal((await page.textContent("#client-name")).trim(), client.client_name);
        const scopes = await page.locator("#scopes li").allTextContents();
        assert.ok(scopes.length >= 1, "the consent page lists the requested access");
        assert.equal((await page.textContent("#redirect-host")).trim(), "127.0.0.1");
        await shot(page, "consent");

        // Approve → the static-users login page.
        const loginPage = page.waitForResponse(
            (r) => r.request().method() === "GET" && new URL(r.url()).pathname.endsWith("/login"),
        );
        const approve = await submitConsent(page, "#approve");
        assert.ok(approve.status() >= 300 && approve.status() < 400, `POST /consent approve: ${approve.status()}`);
        const loginResp = await loginPage;
        assert.equal(loginResp.status(), 200, "GET /login");
        assertPageHeaders(loginResp, "login page");
        await page.locator("form#login").waitFor();
        assert.match(new URL(page.url()).pathname, /\/login$/);
        await shot(page, "login");

        await page.fill("form#login input[name=username]", USERNAME);
        await page.fill("form#login input[name=password]", PASSWORD);
        await Promise.all([
            page.waitForURL((u) => u.toString().startsWith(redirectUri)),
            page.click("#sign-in"),
        ]);
        await page.locator("h1").waitFor();
        await shot(page, "callback");

        const cb = new URL(page.url());
        assert.equal(cb.searchParams.getAll("state").length, 1);
        assert.equal(cb.searchParams.get("state"), auth.state);
        assert.equal(cb.searchParams.get("error"), null, `callback error: ${cb.search}`);
        const code = cb.searchParams.get("code");
        assert.ok(code, "callback has a code");
        assert.equal(cb.searchParams.get("iss"), metadata.issuer, "RFC 9207 iss is the issuer");

        // The client's half: the code and the PKCE verifier buy an access token.
        const tok = await fetch(metadata.token_endpoint, {
            method: "POST",
            headers: { "content-type": "application/x-www-form-urlencoded" },
            body: new URLSearchParams({
                grant_type: "authorization_code", code, redirect_uri: redirectUri,
                code_verifier: auth.verifier, client_id: client.client_id, resource: RESOURCE,
            }),
        });
        const body = await tok.json();
        assert.equal(tok.status, 200, `POST /token: ${JSON.stringify(body)}`);
        assert.equal(typeof body.access_token, "string");
        assert.match(tok.headers.get("cache-control") ?? "", /no-store/);
        approvedClient = client;
        await page.close();
    });

    it("the browser's cookies: HttpOnly, SameSite=Lax, no Secure or __Host- on an http issuer; the approval is remembered", async () => {
        assert.ok(approvedClient, "needs the approve test's client");
        const host = new URL(ISSUER).hostname;
        const cookies = (await context.cookies()).filter((c) => c.domain.replace(/^\./, "") === host);
        const names = cookies.map((c) => c.name);
        assert.ok(names.includes("mcp_approved"), `cookies of ${host}: ${names.join(", ")}`);
        for (const c of cookies) {
            assert.equal(c.httpOnly, true, `${c.name} is HttpOnly`);
            assert.equal(c.sameSite, "Lax", `${c.name} SameSite`);
            if (ISSUER.startsWith("http:")) {
                assert.equal(c.secure, false, `${c.name} is not Secure over http`);
                assert.ok(!c.name.startsWith("__Host-"), `${c.name}: no __Host- prefix over http`);
            }
        }

        // The same client again in this browser: no consent page, straight to the login page.
        const page = await context.newPage();
        page.setDefaultTimeout(ACTION_TIMEOUT_MS);
        const auth = authorization(approvedClient.client_id);
        await page.goto(auth.url);
        assert.match(new URL(page.url()).pathname, /\/login$/, `remembered client landed on ${page.url()}`);
        assert.equal(await page.$("form#consent"), null);
        await page.fill("form#login input[name=username]", USERNAME);
        await page.fill("form#login input[name=password]", PASSWORD);
        await Promise.all([
            page.waitForURL((u) => u.toString().startsWith(redirectUri)),
            page.click("#sign-in"),
        ]);
        const cb = new URL(page.url());
        assert.equal(cb.searchParams.get("state"), auth.state);
        assert.ok(cb.searchParams.get("code"), `callback: ${cb.search}`);
        await page.close();
    });

    it("a sign-in started in one browser cannot be finished in another (its cookies gone): 403", async () => {
        const { page, auth } = await freshFlow("other-browser");
        await openConsent(page, auth);
        await context.clearCookies();
        const before = callbacks.length;
        const resp = await submitConsent(page, "#approve");
        assert.equal(resp.status(), 403, `POST /consent from another browser: ${resp.status()}`);
        assert.ok((await page.textContent("#error"))?.trim());
        await shot(page, "error-other-browser");
        assert.equal(callbacks.length, before);
        await page.close();
    });

    it("deny: the client gets error=access_denied with its state, and no code", async () => {
        const { page, auth } = await freshFlow("deny");
        await openConsent(page, auth);
        await Promise.all([
            page.waitForURL((u) => u.toString().startsWith(redirectUri)),
            page.click("#deny"),
        ]);
        await page.locator("h1").waitFor();
        await shot(page, "deny-callback");
        const cb = new URL(page.url());
        assert.equal(cb.searchParams.get("error"), "access_denied");
        assert.equal(cb.searchParams.get("state"), auth.state);
        assert.equal(cb.searchParams.get("code"), null);
        const iss = cb.searchParams.get("iss");
        if (iss !== null) assert.equal(iss, metadata.issuer);
        await page.close();
    });

    for (const [name, edit] of [
        ["missing-csrf", (form) => form.querySelector("input[name=csrf]").remove()],
        ["wrong-csrf", (form) => {
            const input = form.querySelector("input[name=csrf]");
            input.value = input.value.split("").reverse().join("") + "x";
        }],
    ]) {
        it(`consent POST with ${name.replace("-", " ")} is refused with a 403 page and reaches no callback`, async () => {
            const { page, auth } = await freshFlow(name);
            await openConsent(page, auth);
            // The page has no scripts (CSP default-src 'none' forbids them); edit the DOM from
            // the test, as a forged or tampered form would arrive.
            const hadCsrf = await page.$eval("form#consent", (form) => !!form.querySelector("input[name=csrf]"));
            assert.ok(hadCsrf, "the consent form has a csrf field");
            await page.$eval("form#consent", edit);
            const before = callbacks.length;
            const resp = await submitConsent(page, "#approve");
            assert.equal(resp.status(), 403, `POST /consent (${name}): ${resp.status()}`);
            assertPageHeaders(resp, `error page (${name})`);
            const err = (await page.textContent("#error"))?.trim();
            assert.ok(err, "the error page says what went wrong in #error");
            await shot(page, `error-${name}`);
            assert.ok(!page.url().startsWith(redirectUri));
            assert.equal(callbacks.filter((u) => u.searchParams.get("state") === auth.state).length, 0);
            assert.equal(callbacks.length, before);
            await page.close();
        });
    }

    it("the consent page cannot be framed by another site", async () => {
        const { page, auth } = await freshFlow("framed");
        const messages = [];
        page.on("console", (m) => messages.push(m.text()));
        const framerOrigin = `http://127.0.0.1:${framer.address().port}`;

        // Control: the same framing page does render a frameable page of another origin (the
        // test's callback page), so a missing consent form below means the browser blocked it.
        const control = `${redirectUri}?control=framing`;
        await page.goto(`${framerOrigin}/?src=${encodeURIComponent(control)}`);
        const controlFrame = await (await page.$("#victim")).contentFrame();
        await controlFrame.locator("h1").waitFor();
        assert.equal(controlFrame.url(), control);

        const [framed] = await Promise.all([
            page.waitForResponse((r) => r.url() === auth.url),
            page.goto(`${framerOrigin}/?src=${encodeURIComponent(auth.url)}`),
        ]);
        // The server answered the framed request, with headers that forbid framing …
        assert.equal(framed.status(), 200);
        assertPageHeaders(framed, "framed consent page");
        // … and the browser did not render it: Chromium's error page instead, no consent form.
        const frame = await (await page.$("#victim")).contentFrame();
        await page.waitForLoadState("load");
        await frame.waitForLoadState("load").catch(() => {});
        assert.ok(
            frame.url().startsWith("chrome-error://"),
            `framed consent page was loaded as ${frame.url()}; console: ${messages.join(" | ")}`,
        );
        for (const f of page.frames()) {
            const found = await f.$("form#consent").catch(() => null);
            assert.equal(found, null, `consent form rendered inside a frame (${f.url()})`);
        }
        await shot(page, "framed");
        await page.close();
    });
});
