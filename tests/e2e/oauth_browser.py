"""A headless "browser" for OAuth flows: enough of one to log in and consent, no JavaScript.

It follows redirects across hosts with httpx, keeps cookies itself (a small jar keyed by host
name and path, like a browser's; `Secure` is ignored because everything here is loopback
http), parses pages with `html.parser`, and submits forms the way a browser does: the form's
successful controls, plus the one submit button pressed. It stops at a redirect whose URL
starts with `stop_at` (the MCP client's redirect URI) without fetching it, and hands back the
`code`, `state`, `iss` or `error` found there.

    browser = Browser(stop_at="http://127.0.0.1:5555/callback")
    cb = browser.authorize(url, username="alice", password="alice-dev-password")
    cb.code, cb.state, cb.iss

`authorize` knows the pages of this cluster's auth-service (consent `form#consent` with
`#approve`/`#deny`, static-users login `form#login`) and of npm `oidc-provider`'s development
interactions (a login form with `login`/`password`, then a consent form).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from typing import Literal
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx

# Most redirects one navigation may follow (a browser gives up at about 20).
MAX_REDIRECTS = 20
# Most pages `authorize` will act on before it gives up (consent, login, upstream login, …).
MAX_STEPS = 12

# ---------------------------------------------------------------------------------------------
# Pages and forms
# ---------------------------------------------------------------------------------------------


@dataclass
class Button:
    name: str | None
    value: str
    id: str | None


@dataclass
class Form:
    id: str | None
    action: str  # absolute
    method: str  # "GET" or "POST"
    fields: list[tuple[str, str]] = field(default_factory=list)
    buttons: list[Button] = field(default_factory=list)

    def field_names(self) -> set[str]:
        return {name for name, _ in self.fields}

    def value(self, name: str) -> str | None:
        for n, v in self.fields:
            if n == name:
                return v
        return None


@dataclass
class Page:
    """A page the browser landed on (not a redirect)."""

    url: str
    status: int
    headers: httpx.Headers
    text: str
    forms: list[Form]
    # Text content of every element with an id; lists of `<li>` texts under elements with an id.
    texts: dict[str, str]
    items: dict[str, list[str]]

    def form(self, form_id: str | None = None) -> Form:
        """The form with this id, or the only form on the page."""
        if form_id is not None:
            for f in self.forms:
                if f.id == form_id:
                    return f
            raise BrowserError(f"no form#{form_id} on {self.url}", self)
        if len(self.forms) != 1:
            raise BrowserError(f"{len(self.forms)} forms on {self.url}; name one", self)
        return self.forms[0]

    def has_form(self, form_id: str) -> bool:
        return any(f.id == form_id for f in self.forms)

    def error_text(self) -> str | None:
        return self.texts.get("error")


@dataclass
class Callback:
    """The redirect to the client's redirect URI, not fetched."""

    url: str
    status: int  # status of the redirect that pointed here

    @property
    def params(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.url).query, keep_blank_values=True).items()}

    @property
    def code(self) -> str | None:
        return self.params.get("code")

    @property
    def state(self) -> str | None:
        return self.params.get("state")

    @property
    def iss(self) -> str | None:
        return self.params.get("iss")

    @property
    def error(self) -> str | None:
        return self.params.get("error")


Step = Page | Callback


class BrowserError(AssertionError):
    """The flow went somewhere the browser cannot go on from; carries the page it stopped on."""

    def __init__(self, message: str, page: Page | None = None) -> None:
        detail = ""
        if page is not None:
            err = page.error_text()
            detail = f" [{page.status} {page.url}" + (f", #error: {err!r}" if err else "") + "]"
        super().__init__(message + detail)
        self.page = page


_VOID = {"input", "br", "img", "meta", "link", "hr", "source", "wbr", "col", "area", "base", "embed"}


class _Parser(HTMLParser):
    def __init__(self, base_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self.forms: list[Form] = []
        self._form: Form | None = None
        self._button: dict[str, str | None] | None = None
        self._textarea: tuple[str, list[str]] | None = None
        self._select: tuple[str, list[tuple[str, bool]]] | None = None
        # Open elements: (tag, id); texts collected for every open element that has an id.
        self._stack: list[tuple[str, str | None]] = []
        self._text: dict[str, list[str]] = {}
        self.texts: dict[str, str] = {}
        self.items: dict[str, list[str]] = {}
        self._li: list[str] | None = None

    # -- elements -------------------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v if v is not None else "") for k, v in attrs}
        el_id = a.get("id") or None
        if tag not in _VOID:
            self._stack.append((tag, el_id))
            if el_id is not None:
                self._text[el_id] = []
        if tag == "form":
            method = (a.get("method") or "get").upper()
            self._form = Form(
                id=el_id,
                action=urljoin(self.base_url, a.get("action") or self.base_url),
                method="POST" if method == "POST" else "GET",
            )
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None:
            kind = (a.get("type") or "text").lower()
            name = a.get("name")
            if kind in ("submit", "image"):
                self._form.buttons.append(Button(name or None, a.get("value", ""), el_id))
            elif kind in ("checkbox", "radio"):
                if name and "checked" in a:
                    self._form.fields.append((name, a.get("value", "on")))
            elif kind not in ("button", "reset", "file") and name and "disabled" not in a:
                self._form.fields.append((name, a.get("value", "")))
        elif tag == "button" and self._form is not None:
            kind = (a.get("type") or "submit").lower()
            if kind == "submit":
                self._button = {"name": a.get("name") or None, "value": a.get("value", ""), "id": el_id}
        elif tag == "textarea" and self._form is not None and a.get("name"):
            self._textarea = (a["name"], [])
        elif tag == "select" and self._form is not None and a.get("name"):
            self._select = (a["name"], [])
        elif tag == "option" and self._select is not None:
            self._select[1].append((a.get("value", ""), "selected" in a))
        elif tag == "li":
            self._li = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        elif tag == "button" and self._button is not None and self._form is not None:
            b = self._button
            self._form.buttons.append(Button(b["name"], b["value"] or "", b["id"]))
            self._button = None
        elif tag == "textarea" and self._textarea is not None and self._form is not None:
            self._form.fields.append((self._textarea[0], "".join(self._textarea[1])))
            self._textarea = None
        elif tag == "select" and self._select is not None and self._form is not None:
            name, options = self._select
            chosen = [v for v, sel in options if sel] or [v for v, _ in options[:1]]
            self._form.fields.extend((name, v) for v in chosen)
            self._select = None
        elif tag == "li" and self._li is not None:
            text = " ".join("".join(self._li).split())
            for _, el_id in self._stack:
                if el_id is not None:
                    self.items.setdefault(el_id, []).append(text)
            self._li = None
        # Close up to the matching open element (HTML is forgiving about missing end tags).
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                for _, el_id in self._stack[i:]:
                    if el_id is not None and el_id in self._text:
                        self.texts[el_id] = " ".join("".join(self._text.pop(el_id)).split())
                del self._stack[i:]
                break

    def handle_data(self, data: str) -> None:
        for _, el_id in self._stack:
            if el_id is not None and el_id in self._text:
                self._text[el_id].append(data)
        if self._textarea is not None:
            self._textarea[1].append(data)
        if self._li is not None:
            self._li.append(data)

    def close(self) -> None:
        super().close()
        for el_id, parts in self._text.items():
            self.texts.setdefault(el_id, " ".join("".join(parts).split()))
        self._text.clear()


def parse_page(url: str, status: int, headers: httpx.Headers, text: str) -> Page:
    p = _Parser(url)
    p.feed(text)
    p.close()
    return Page(url, status, headers, text, p.forms, p.texts, p.items)


# ---------------------------------------------------------------------------------------------
# Cookies
# ---------------------------------------------------------------------------------------------


@dataclass
class _Cookie:
    value: str
    path: str
    expires: float | None  # epoch seconds; None = session cookie


class CookieJar:
    """Cookies by (host name, path, name). Ports do not separate cookies (as in browsers);
    `Domain` widening and `Secure` are ignored: every host here is a loopback name."""

    def __init__(self) -> None:
        self._jar: dict[str, dict[tuple[str, str], _Cookie]] = {}

    def store(self, url: str, response: httpx.Response) -> None:
        host = (urlsplit(url).hostname or "").lower()
        default_path = urlsplit(url).path.rsplit("/", 1)[0] or "/"
        for header in response.headers.get_list("set-cookie"):
            parts = [p.strip() for p in header.split(";")]
            if not parts or "=" not in parts[0]:
                continue
            name, value = parts[0].split("=", 1)
            path, expires = default_path, None
            for attr in parts[1:]:
                key, _, val = attr.partition("=")
                key = key.strip().lower()
                if key == "path" and val.startswith("/"):
                    path = val
                elif key == "max-age":
                    try:
                        expires = time.time() + int(val)
                    except ValueError:
                        pass
                elif key == "expires" and expires is None:
                    try:
                        expires = parsedate_to_datetime(val).timestamp()
                    except (TypeError, ValueError):
                        pass
            cookies = self._jar.setdefault(host, {})
            if expires is not None and expires <= time.time():
                cookies.pop((path, name.strip()), None)
            else:
                cookies[(path, name.strip())] = _Cookie(value.strip(), path, expires)

    def header_for(self, url: str) -> str | None:
        parts = urlsplit(url)
        host, path = (parts.hostname or "").lower(), parts.path or "/"
        now = time.time()
        out: list[tuple[int, str, str]] = []
        for (cpath, name), c in list(self._jar.get(host, {}).items()):
            if c.expires is not None and c.expires <= now:
                del self._jar[host][(cpath, name)]
                continue
            if path == cpath or path.startswith(cpath.rstrip("/") + "/") or cpath == "/":
                out.append((len(cpath), name, c.value))
        if not out:
            return None
        out.sort(key=lambda t: -t[0])  # longer paths first, as browsers send them
        return "; ".join(f"{n}={v}" for _, n, v in out)

    def names(self, host: str) -> set[str]:
        return {name for (_, name) in self._jar.get(host.lower(), {})}

    def clear(self) -> None:
        self._jar.clear()


# ---------------------------------------------------------------------------------------------
# The browser
# ---------------------------------------------------------------------------------------------


def _origin(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}"


class Browser:
    def __init__(self, stop_at: str | None = None, timeout: float = 15.0) -> None:
        self.stop_at = stop_at
        self.cookies = CookieJar()
        # (method, url, status) of every request made, for assertions and failure messages.
        self.history: list[tuple[str, str, int]] = []
        self._http = httpx.Client(follow_redirects=False, timeout=timeout, trust_env=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- navigation -------------------------------------------------------------------------------
    def _stops(self, url: str) -> bool:
        return self.stop_at is not None and url.startswith(self.stop_at)

    def request(
        self,
        method: str,
        url: str,
        data: list[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Step:
        """One navigation: send, then follow redirects until a page or the client's callback."""
        for _ in range(MAX_REDIRECTS + 1):
            if self._stops(url):
                # Reached without a redirect (e.g. the caller navigated to it): not fetched either.
                return Callback(url, 0)
            h = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8", "User-Agent": "mcp-cluster-e2e-browser"}
            h.update(headers or {})
            cookie = self.cookies.header_for(url)
            if cookie:
                h["Cookie"] = cookie
            if method == "POST":
                h.setdefault("Content-Type", "application/x-www-form-urlencoded")
                resp = self._http.request("POST", url, content=urlencode(data or []), headers=h)
            else:
                resp = self._http.request("GET", url, headers=h)
            self._http.cookies.clear()  # the jar above is the only cookie store
            self.history.append((method, url, resp.status_code))
            self.cookies.store(url, resp)
            location = resp.headers.get("location")
            if resp.status_code in (301, 302, 303, 307, 308) and location:
                target = urljoin(url, location)
                if self._stops(target):
                    return Callback(target, resp.status_code)
                if resp.status_code in (301, 302, 303):
                    method, data = "GET", None
                # A redirect is a new navigation: no Origin/Content-Type carried over.
                headers = {}
                url = target
                continue
            return parse_page(str(resp.url), resp.status_code, resp.headers, resp.text)
        raise BrowserError(f"more than {MAX_REDIRECTS} redirects, last {url}")

    def get(self, url: str) -> Step:
        return self.request("GET", url)

    def submit(
        self,
        page: Page,
        form_id: str | None = None,
        *,
        overrides: dict[str, str | None] | None = None,
        button: str | tuple[str, str] | None = None,
    ) -> Step:
        """Submit a form of `page` (by id, or the only one).

        `overrides` sets fields (a value of None removes the field). `button` is the submit
        button pressed: its id, or a (name, value) pair; default the form's first button.
        """
        form = page.form(form_id)
        fields = list(form.fields)
        for name, value in (overrides or {}).items():
            fields = [(n, v) for n, v in fields if n != name]
            if value is not None:
                fields.append((name, value))
        pressed: Button | None = None
        if isinstance(button, str):
            pressed = next((b for b in form.buttons if b.id == button), None)
            if pressed is None:
                raise BrowserError(f"no button#{button} in form#{form.id}", page)
        elif isinstance(button, tuple):
            pressed = next((b for b in form.buttons if (b.name, b.value) == button), None)
            if pressed is None:
                raise BrowserError(f"no button {button[0]}={button[1]} in form#{form.id}", page)
        elif form.buttons:
            pressed = form.buttons[0]
        if pressed is not None and pressed.name:
            fields.append((pressed.name, pressed.value))
        if form.method == "GET":
            sep = "&" if urlsplit(form.action).query else "?"
            return self.request("GET", form.action + (sep + urlencode(fields) if fields else ""))
        # Browsers send the page's origin with a form POST.
        return self.request("POST", form.action, data=fields, headers={"Origin": _origin(page.url)})

    # -- the whole dance --------------------------------------------------------------------------
    def authorize(
        self,
        url: str,
        *,
        username: str = "alice",
        password: str = "alice-dev-password",
        consent: Literal["approve", "deny"] = "approve",
    ) -> Callback:
        """Open an authorization URL and act on each page until the client's callback:
        consent (ours: approve or deny; oidc-provider's: continue), login (ours or
        oidc-provider's) with `username`/`password`. Raises BrowserError on any other page."""
        step = self.get(url)
        for _ in range(MAX_STEPS):
            if isinstance(step, Callback):
                return step
            step = self.act(step, username=username, password=password, consent=consent)
        raise BrowserError(f"no callback after {MAX_STEPS} pages", step if isinstance(step, Page) else None)

    def act(self, page: Page, *, username: str, password: str, consent: Literal["approve", "deny"]) -> Step:
        """Do what a user would on one page of the flow."""
        if page.has_form("consent"):
            return self.submit(page, "consent", button=consent)
        if page.has_form("login"):
            return self.submit(page, "login", overrides={"username": username, "password": password})
        # npm oidc-provider's development interactions: forms with a hidden `prompt`.
        for form in page.forms:
            if form.value("prompt") == "login" and "login" in form.field_names():
                return self._submit_form(page, form, {"login": username, "password": password})
            if form.value("prompt") == "consent":
                return self._submit_form(page, form, {})
        raise BrowserError("page with nothing to do", page)

    def _submit_form(self, page: Page, form: Form, overrides: dict[str, str | None]) -> Step:
        """Submit one form of a page whether or not it has an id (oidc-provider's have none)."""
        single = Page(page.url, page.status, page.headers, page.text, [form], page.texts, page.items)
        return self.submit(single, overrides=overrides)
