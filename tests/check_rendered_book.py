"""Open every page of the built book in headless Chromium, offline, and check what a reader sees.

    python tests/check_rendered_book.py            # after `jupyter-book build .`
    python tests/check_rendered_book.py --full-page --html _build/html --shots _build/screenshots

The book in ``_build/html`` is served on 127.0.0.1 by a small HTTP server inside this script and
opened page by page in Debian's ``chromium``, driven through the DevTools protocol over a pipe
(``--remote-debugging-pipe``: no port, no extra Python package). The browser has no network: host
names do not resolve and every other request goes to a dead proxy, so a page that still needs a CDN
shows it. For every page listed in ``_toc.yml`` it fails when

* the page was not built, is blank, or does not open with its title (a notebook cell above the
  ``<h1>`` means a Colab setup cell lost its ``remove-cell`` tag);
* any request left 127.0.0.1, failed, or answered an HTTP error; a script raised an error;
* an ``<img>`` did not load (``naturalWidth == 0``);
* math is not typeset: a ``.math`` element without MathJax output, a MathJax error, or raw TeX
  (``$$``, ``\\(``, ``\\[``, ``$...\\cmd...$``) left in the visible text outside code;
* a Jupyter widget is neither rendered from its saved state nor backed by a static figure in the
  same cell;
* a notebook page has no code cell, or its Colab link is not its own notebook on the repository's
  branch (``_config.yml``).

A screenshot of each page goes to ``_build/screenshots/`` (git-ignored). Exit status: 0 when every
check passes, 1 with one ``FAIL`` line per problem, 2 when the check could not run (no Chromium,
no build). Not a pytest test on purpose (pytest collects ``test_*.py`` only): CI runs it after the
book build, from the README's test command.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import functools
import http.server
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PAGE_TIMEOUT_S = 60.0
# Console messages that are not a rendering problem. pydata-sphinx-theme (under sphinx-book-theme)
# logs this on a reader's first visit, before it has stored a light/dark choice.
HARMLESS_CONSOLE = ("Got invalid theme mode: . Resetting to auto.",)
# Requests the browser makes on its own, not the page.
BROWSER_REQUESTS = ("/favicon.ico",)
WIDTH, HEIGHT = 1280, 900


class CheckError(RuntimeError):
    """The check itself could not run (as opposed to a page failing it)."""


# --------------------------------------------------------------------------------------------
# The book: which pages, where they come from


def toc_docnames(toc_path: Path) -> list[str]:
    """Every document named in a jupyter-book ``_toc.yml`` (root first), in reading order."""
    toc = yaml.safe_load(toc_path.read_text())
    names = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                names.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return [str(Path(n).with_suffix("")) for n in names]


def colab_url(config_path: Path, docname: str) -> str:
    """The launch link jupyter-book should give a notebook page, from ``_config.yml``."""
    config = yaml.safe_load(config_path.read_text())
    repo = config["repository"]
    owner_name = urlsplit(repo["url"]).path.strip("/")
    branch = repo.get("branch", "main")
    prefix = (repo.get("path_to_book") or "").strip("/")
    path = f"{prefix}/{docname}.ipynb" if prefix else f"{docname}.ipynb"
    colab = config.get("launch_buttons", {}).get("colab_url", "https://colab.research.google.com")
    return f"{colab.rstrip('/')}/github/{owner_name}/blob/{branch}/{path}"


# --------------------------------------------------------------------------------------------
# A local HTTP server for _build/html


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".json": "application/json",
        ".svg": "image/svg+xml",
        ".woff": "font/woff",
        ".woff2": "font/woff2",
        ".ttf": "font/ttf",
        ".otf": "font/otf",
    }

    def log_message(self, *args):  # the check reports failures itself
        pass


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


# --------------------------------------------------------------------------------------------
# Chromium through the DevTools protocol, over --remote-debugging-pipe


def find_chromium() -> str:
    for name in ([os.environ["CHROMIUM"]] if os.environ.get("CHROMIUM") else []) + list(BROWSERS):
        path = shutil.which(name)
        if path:
            return path
    raise CheckError("no Chromium found (apt-get install chromium, or set CHROMIUM=/path/to/it)")


class Browser:
    """Headless Chromium with no network, spoken to in CDP messages (JSON, NUL-terminated).

    Chromium reads commands from its fd 3 and writes replies and events to its fd 4.
    """

    def __init__(self, executable: str):
        self.profile = tempfile.mkdtemp(prefix="cait-edu-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def child_fds():  # runs in the child: put the pipe ends on fds 3 and 4
            high_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 100)
            high_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 100)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        args = [
            executable,
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            f"--window-size={WIDTH},{HEIGHT}",
            # no network: nothing resolves, and anything not on loopback goes to a dead proxy
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--proxy-server=http://127.0.0.1:9",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--mute-audio",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        args.append("about:blank")
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=child_fds,
            pass_fds=(3, 4),
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._lock = threading.Lock()
        self._replies: dict[int, queue.Queue] = {}
        self.events: dict[str | None, list[dict]] = {}
        self._event_arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_chrome, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                for q in list(self._replies.values()):
                    q.put({"error": {"message": "Chromium closed the DevTools pipe"}})
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    q = self._replies.get(message["id"])
                    if q is not None:
                        q.put(message)
                else:
                    with self._event_arrived:
                        self.events.setdefault(message.get("sessionId"), []).append(message)
                        self._event_arrived.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            self._replies[ident] = q = queue.Queue()
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        try:
            reply = q.get(timeout=timeout)
        except queue.Empty:
            raise CheckError(f"Chromium did not answer {method} within {timeout:.0f} s") from None
        finally:
            self._replies.pop(ident, None)
        if "error" in reply:
            raise CheckError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def wait_event(self, session: str, method: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._event_arrived:
            while True:
                if any(e["method"] == method for e in self.events.get(session, [])):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._event_arrived.wait(left)

    def evaluate(self, session: str, expression: str, timeout: float = PAGE_TIMEOUT_S):
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=session,
            timeout=timeout + 5,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CheckError(f"the check's own script failed in the page: {text}")
        return result["result"].get("value")

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except CheckError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# What runs inside each page

# Wait until the page has settled: every image loaded or failed, MathJax done, widgets drawn.
WAIT_JS = r"""
(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const deadline = Date.now() + %(budget_ms)d;
  for (const img of document.images) { if (img.loading === 'lazy') img.loading = 'eager'; }
  while (Date.now() < deadline && [...document.images].some(i => !i.complete)) await sleep(100);
  const hasMath = document.querySelector('.math, script[src*="mathjax" i]') !== null;
  if (hasMath) {
    // MathJax is a deferred script, so it has run by now if it loaded at all: give it 3 s more
    const mathDeadline = Math.min(deadline, Date.now() + 3000);
    while (Date.now() < mathDeadline && !(window.MathJax && MathJax.startup && MathJax.startup.promise))
      await sleep(100);
    if (window.MathJax && MathJax.startup && MathJax.startup.promise)
      await Promise.race([MathJax.startup.promise.catch(() => null), sleep(deadline - Date.now())]);
  }
  const views = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')];
  const drawn = s => { const p = s.previousElementSibling;
                       return p && p.classList.contains('widget-subarea') && p.children.length > 0; };
  // the html-manager draws them once RequireJS has loaded it; without RequireJS nothing will
  const widgetDeadline = Math.min(deadline, Date.now() + 30000);
  while (views.length && typeof window.require === 'function' && Date.now() < widgetDeadline
         && views.some(s => !drawn(s))) await sleep(200);
  if (document.fonts) await Promise.race([document.fonts.ready, sleep(3000)]);
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return true;
})()
"""

# Everything the checks need to know about the settled page.
INSPECT_JS = r"""
(() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main')
                  || document.body;
  const visible = el => { const r = el.getBoundingClientRect();
                          const s = getComputedStyle(el);
                          return r.width > 0 && r.height > 0 && s.visibility !== 'hidden'; };
  const out = {};
  out.textLength = (article.innerText || '').trim().length;
  out.bodyTextLength = (document.body.innerText || '').trim().length;

  // the title comes first: the first <h1> of the article precedes every notebook cell
  const h1 = article.querySelector('h1');
  const firstCell = article.querySelector('div.cell');
  out.h1 = h1 ? h1.textContent.replace(/#$/, '').trim() : null;
  out.cellBeforeTitle = !!(h1 && firstCell &&
      (h1.compareDocumentPosition(firstCell) & Node.DOCUMENT_POSITION_PRECEDING));
  out.cellBeforeTitleText = out.cellBeforeTitle ? firstCell.innerText.slice(0, 80) : null;

  out.images = [...document.images].map(i => ({
      src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0, alt: i.alt || ''}));

  // math: Sphinx wraps every formula in .math; MathJax puts an mjx-container inside it
  const maths = [...article.querySelectorAll('.math')];
  out.mathCount = maths.length;
  out.mathUntypeset = maths.filter(m => !m.querySelector('mjx-container'))
                           .map(m => m.textContent.trim().slice(0, 60));
  out.mathErrors = [...document.querySelectorAll('mjx-merror')]
                       .map(e => (e.getAttribute('data-mjx-error') || e.textContent).slice(0, 80));
  out.mathjaxVersion = (window.MathJax && MathJax.version) || null;

  // raw TeX left in the visible text, outside code and outside MathJax's own output
  const skip = 'pre, code, script, style, noscript, textarea, mjx-container, .highlight';
  const walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
  const raw = [];
  const patterns = [/\$\$/, /\\\(/, /\\\)/, /\\\[/, /\\\]/, /\\begin\{/, /\$[^$\n]*\\[A-Za-z]+[^$\n]*\$/];
  let text = '';
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const parent = n.parentElement;
    if (!parent || parent.closest(skip) || !visible(parent)) continue;
    text += n.textContent + '\n';
  }
  for (const p of patterns) { const m = text.match(p);
    if (m) raw.push(text.slice(Math.max(0, m.index - 30), m.index + 40).replace(/\s+/g, ' ')); }
  out.rawTex = raw;

  // widgets: each saved view is drawn by the html-manager just before its <script>
  out.widgetState = document.querySelector('script[type="application/vnd.jupyter.widget-state+json"]') !== null;
  out.widgets = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')]
    .map((s, k) => {
      const area = s.previousElementSibling;
      const drawn = !!(area && area.classList.contains('widget-subarea') && area.children.length > 0
                       && visible(area));
      const error = drawn && /Error displaying widget|Failed to load model/i.test(area.innerText);
      const cell = s.closest('.cell, .cell_output, .output') || s.parentElement;
      const fallback = [...cell.querySelectorAll('img')].some(
          i => !(area && area.contains(i)) && i.complete && i.naturalWidth > 0);
      let model = null;
      try { model = JSON.parse(s.textContent).model_id; } catch (e) {}
      return {index: k, model, drawn, error, fallback};
    });

  out.codeCells = article.querySelectorAll('div.cell div.cell_input').length;
  out.links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  return out;
})()
"""


# --------------------------------------------------------------------------------------------
# Checking one page


def is_local(url: str, base: str) -> bool:
    return url.startswith(base) or url.split(":", 1)[0] in ("data", "blob", "about")


def check_page(browser: Browser, base: str, docname: str, shots: Path,
               notebook: bool, expected_colab: str, full_page: bool) -> list[str]:
    failures: list[str] = []
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    try:
        for domain in ("Page", "Runtime", "Network", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
                     session=session)
        started = time.monotonic()
        nav = browser.send("Page.navigate", {"url": base + f"{docname}.html"}, session=session)
        if nav.get("errorText"):
            return [f"could not open the page: {nav['errorText']}"]
        if not browser.wait_event(session, "Page.loadEventFired", PAGE_TIMEOUT_S):
            failures.append(f"the page did not finish loading within {PAGE_TIMEOUT_S:.0f} s")
        budget = max(5.0, PAGE_TIMEOUT_S - (time.monotonic() - started))
        browser.evaluate(session, WAIT_JS % {"budget_ms": int(budget * 1000)}, timeout=budget)
        facts = browser.evaluate(session, INSPECT_JS)

        shot = shots / (docname.replace("/", "__") + ".png")
        params = {"format": "png"}
        if full_page:
            size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": WIDTH,
                                "height": min(size["height"], 16000), "scale": 1})
        png = base64.b64decode(browser.send("Page.captureScreenshot", params, session=session)["data"])
        shot.write_bytes(png)
    finally:
        try:
            browser.send("Target.closeTarget", {"targetId": target})
        except CheckError:
            pass

    # network, script errors, console errors
    requests: dict[str, str] = {}
    seen: set[str] = set()
    for event in browser.events.pop(session, []):
        method, params = event["method"], event.get("params", {})
        message = None
        if method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            requests[params["requestId"]] = url
            if not is_local(url, base):
                message = f"requests {url} from the network (the book must render offline)"
        elif method == "Network.responseReceived":
            status = params["response"]["status"]
            if status >= 400 and not params["response"]["url"].endswith(BROWSER_REQUESTS):
                message = f"HTTP {status} for {params['response']['url']}"
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            url = requests.get(params["requestId"], "?")
            if is_local(url, base) and not url.endswith(BROWSER_REQUESTS):
                message = f"failed to load {url}: {params.get('errorText')}"
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            message = f"JavaScript error: {str(text).splitlines()[0]}"
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            if args not in HARMLESS_CONSOLE:
                message = f"console error: {args[:200]}"
        if message and message not in seen:
            seen.add(message)
            failures.append(message)

    # what the reader sees
    if facts["textLength"] < 100:
        failures.append(f"blank page: the article holds {facts['textLength']} characters of text")
    if not facts["h1"]:
        failures.append("no title: the article has no <h1>")
    if facts["cellBeforeTitle"]:
        failures.append("does not open with its title: a code cell comes before the <h1> "
                        f"({facts['cellBeforeTitleText']!r}...); tag it remove-cell")
    for img in facts["images"]:
        if not img["ok"]:
            failures.append(f"image did not load: {img['src']} (alt {img['alt']!r})")
    if facts["mathCount"]:
        if not facts["mathjaxVersion"]:
            failures.append(f"{facts['mathCount']} formulas but MathJax did not load")
        if facts["mathUntypeset"]:
            failures.append(f"{len(facts['mathUntypeset'])} of {facts['mathCount']} formulas not "
                            f"typeset, e.g. {facts['mathUntypeset'][0]!r}")
    for error in facts["mathErrors"]:
        failures.append(f"MathJax error: {error}")
    for snippet in facts["rawTex"]:
        failures.append(f"raw TeX in the visible text: ...{snippet}...")
    for widget in facts["widgets"]:
        name = f"widget {widget['index']} (model {widget['model']})"
        if widget["error"]:
            failures.append(f"{name} shows an error instead of the widget")
        elif not widget["drawn"] and not widget["fallback"]:
            state = "" if facts["widgetState"] else "; the notebook has no saved widget state"
            failures.append(f"{name} not rendered and no static figure beside it{state}")
    if notebook:
        if facts["codeCells"] == 0:
            failures.append("notebook page without a single code cell")
        if expected_colab not in facts["links"]:
            found = [u for u in facts["links"] if "colab" in u]
            failures.append(f"Colab link should be {expected_colab}, found {found or 'none'}")
    return failures


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--shots", type=Path, default=ROOT / "_build" / "screenshots")
    parser.add_argument("--toc", type=Path, default=ROOT / "_toc.yml")
    parser.add_argument("--config", type=Path, default=ROOT / "_config.yml")
    parser.add_argument("--full-page", action="store_true", help="screenshot whole pages")
    args = parser.parse_args(argv)

    started = time.monotonic()
    try:
        if not (args.html / "index.html").is_file():
            raise CheckError(f"no built book in {args.html} (run `jupyter-book build .` first)")
        executable = find_chromium()
        docnames = toc_docnames(args.toc)
        args.shots.mkdir(parents=True, exist_ok=True)
        server, base = serve(args.html)
        browser = Browser(executable)
    except CheckError as exc:
        print(f"check_rendered_book: cannot run: {exc}", file=sys.stderr)
        return 2

    results: dict[str, list[str]] = {}
    try:
        version = browser.send("Browser.getVersion")["product"]
        print(f"check_rendered_book: {len(docnames)} pages from {args.html} in {version}, offline")
        for docname in docnames:
            page = args.html / f"{docname}.html"
            if not page.is_file():
                results[docname] = [f"listed in {args.toc.name} but not built ({page} missing)"]
                continue
            notebook = (args.html / "_sources" / f"{docname}.ipynb").is_file()
            try:
                results[docname] = check_page(
                    browser, base, docname, args.shots, notebook,
                    colab_url(args.config, docname), args.full_page)
            except CheckError as exc:
                results[docname] = [f"could not be checked: {exc}"]
            status = "ok" if not results[docname] else f"{len(results[docname])} failure(s)"
            print(f"  {docname}: {status}")
    finally:
        browser.close()
        server.shutdown()

    failures = [(doc, msg) for doc, msgs in results.items() for msg in msgs]
    for doc, msg in failures:
        print(f"FAIL {doc}: {msg}")
    elapsed = time.monotonic() - started
    print(f"check_rendered_book: {len(results)} pages, {len(failures)} failures, "
          f"{elapsed:.1f} s; screenshots in {args.shots}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
