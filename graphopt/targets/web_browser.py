"""Headless Chromium for the web targets: one browser per process, driven by Playwright from a thread of
its own, and a static file server per artifact folder on 127.0.0.1.

Why a thread: Playwright's sync API is bound to the thread that started it and refuses to run inside an
asyncio loop; a Stream may be stepped from any thread (and from a notebook's loop), so every call is handed
to the browser's thread and waited for. Streams share the browser (starting Chromium takes a second or
two); each has its own page, closed when the Stream is closed or garbage collected, and the browser is
closed with the last Stream (graphopt.release and bench hold no Streams open).

What a page may reach: its artifact folder's server only. Every request to another host is aborted and
recorded (`Page.blocked`), so nothing is fetched from a CDN or sent anywhere. The server answers with the
COOP/COEP headers that make the page cross-origin isolated (WASM threads need SharedArrayBuffer), serves
regular files inside the folder only (no links out, no listings), and GET/HEAD only.
"""
from __future__ import annotations

import atexit
import functools
import http.server
import os
import queue
import shutil
import threading
import weakref
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM_FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")
CALL_TIMEOUT_S = 600.0  # one call into the browser (loading a model, a clip of steps)
LOCAL_HOSTS = ("127.0.0.1", "localhost")


def chromium_path() -> str | None:
    """The Chromium the web targets drive: $GRAPHOPT_CHROMIUM, else Debian's /usr/bin/chromium, else
    `chromium` on PATH."""
    given = os.environ.get("GRAPHOPT_CHROMIUM")
    if given:
        return given if os.access(given, os.X_OK) else None
    for p in ("/usr/bin/chromium", shutil.which("chromium") or ""):
        if p and os.access(p, os.X_OK):
            return p
    return None


def available() -> tuple[bool, str]:
    """Whether this machine runs web artifacts: Playwright for Python and a Chromium executable."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False, "playwright is not installed (pip install playwright; see requirements.txt)"
    if chromium_path() is None:
        return False, ("Chromium is not installed (apt-get install chromium, which `make venv` does as root; or set "
                       "GRAPHOPT_CHROMIUM to a Chromium executable)")
    return True, ""


class BrowserError(RuntimeError):
    """Chromium could not be started or a call into a page failed outside the model (message says why)."""


class _Box:
    def __init__(self):
        self.done = threading.Event()
        self.result = self.error = None


def _serve_calls(calls: queue.Queue, started: _Box, args: tuple) -> None:
    """The browser's thread: start Playwright and Chromium, then run the calls handed over until None."""
    try:
        from playwright.sync_api import sync_playwright
        pw = sync_playwright().start()
        try:
            browser = pw.chromium.launch(executable_path=chromium_path(), headless=True,
                                         args=list(CHROMIUM_FLAGS) + list(args))
        except BaseException:
            pw.stop()
            raise
    except BaseException as e:  # noqa: BLE001  (handed to the caller)
        started.error = e
        started.done.set()
        return
    started.done.set()
    try:
        while True:
            item = calls.get()
            if item is None:
                break
            fn, box = item
            try:
                box.result = fn(browser)
            except BaseException as e:  # noqa: BLE001
                box.error = e
            if box is not None:
                box.done.set()
    finally:
        try:
            browser.close()
        finally:
            pw.stop()


class Browser:
    """A handle on a Chromium (the shared one, see the module docstring, or one of its own started with extra
    command-line flags, e.g. a fake camera); its thread stops when no handle is left."""

    def __init__(self, args: tuple[str, ...] = ()):
        self._calls: queue.Queue = queue.Queue()
        started = _Box()
        self._thread = threading.Thread(target=_serve_calls, args=(self._calls, started, tuple(args)), daemon=True,
                                        name="graphopt-chromium")
        self._thread.start()
        started.done.wait()
        if started.error is not None:
            e = started.error
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise BrowserError(f"Chromium ({chromium_path()}) did not start: {first}")
        weakref.finalize(self, self._calls.put, None)
        _LIVE.add(self)

    def call(self, fn, timeout: float = CALL_TIMEOUT_S):
        """Run fn(browser) on the browser's thread and return what it returns (its exception re-raised)."""
        if threading.current_thread() is self._thread:
            raise BrowserError("a call into the browser from its own thread (a Stream stepped from a page callback)")
        if not self._thread.is_alive():
            raise BrowserError("the browser's thread has stopped; open the Stream again")
        box = _Box()
        self._calls.put((fn, box))
        if not box.done.wait(timeout):
            raise BrowserError(f"the browser did not answer within {timeout:.0f} s")
        if box.error is not None:
            raise box.error
        return box.result

    def post(self, fn) -> None:
        """Hand fn(browser) to the browser's thread without waiting (used by finalizers, which may run on
        any thread, that one included)."""
        self._calls.put((lambda b: _quietly(fn, b), _Box()))


_LIVE: "weakref.WeakSet[Browser]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """At exit, close every browser still open and wait for its thread (a Playwright thread left running
    while the interpreter tears down can crash it)."""
    for b in list(_LIVE):
        b._calls.put(None)
        b._thread.join(timeout=10)


def _quietly(fn, arg):
    try:
        fn(arg)
    except Exception:  # noqa: BLE001  (closing a page that is already gone)
        pass


_SHARED: "weakref.ReferenceType[Browser] | None" = None
_SHARED_LOCK = threading.Lock()


def shared_browser() -> Browser:
    """The process's Browser, started on first use and kept while a Stream holds it."""
    global _SHARED
    with _SHARED_LOCK:
        b = _SHARED() if _SHARED is not None else None
        if b is None or not b._thread.is_alive():
            b = Browser()
            _SHARED = weakref.ref(b)
        return b


class Page:
    """A page of the shared browser, alone in its browser context, that reaches 127.0.0.1 only.
    requests: every URL it asked for; blocked: those to another host (aborted); console: its messages."""

    def __init__(self, browser: Browser, url: str):
        self.browser = browser
        self.requests: list[str] = []  # shared with the page's handlers (which must not hold the Page)
        self.blocked: list[str] = []
        self.console: list[str] = []
        log = _Log(self.requests, self.blocked, self.console)
        self._handles = browser.call(functools.partial(_open_page, url=url, log=log))
        self._finalizer = weakref.finalize(self, browser.post, functools.partial(_close_page, handles=self._handles))

    def close(self) -> None:
        """Close the page (its browser context) without waiting; else done when the Page is collected."""
        self._finalizer()

    def evaluate(self, script: str, arg=None, timeout: float = CALL_TIMEOUT_S):
        page = self._handles[1]
        return self.browser.call(lambda _: page.evaluate(script, arg), timeout)

    def screenshot(self, path: str) -> None:
        page = self._handles[1]
        self.browser.call(lambda _: page.screenshot(path=path, full_page=True))


class _Log:
    def __init__(self, requests: list, blocked: list, console: list):
        self.requests, self.blocked, self.console = requests, blocked, console


def _open_page(browser, url: str, log: _Log):
    context = browser.new_context()

    def route(r):
        host = urlsplit(r.request.url).hostname
        log.requests.append(r.request.url)
        if host in LOCAL_HOSTS:
            r.continue_()
        else:
            log.blocked.append(r.request.url)
            r.abort()
    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda m: log.console.append(f"{m.type}: {m.text}"[:500]))
    page.on("pageerror", lambda e: log.console.append(f"pageerror: {e}"[:500]))
    try:
        page.goto(url, wait_until="load")
    except BaseException:
        context.close()
        raise
    return context, page


def _close_page(browser, handles) -> None:
    handles[0].close()


# ---- the static file server ---------------------------------------------------------------------------

class _Handler(http.server.SimpleHTTPRequestHandler):
    """Regular files inside the served folder, with the headers of a cross-origin isolated page."""
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
                      ".html": "text/html; charset=utf-8"}

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def send_head(self):
        root = Path(self.directory).resolve()
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        target = (root / rel).resolve()
        if (target != root and root not in target.parents) or not target.is_file():
            self.send_error(404, "not a file of this artifact")
            return None
        return super().send_head()

    def list_directory(self, path):
        self.send_error(404, "no listings")
        return None

    def log_message(self, *args):
        pass


class Server:
    """A static file server for one folder on 127.0.0.1 (a free port), stopped by close() or when collected."""

    def __init__(self, folder: Path):
        handler = functools.partial(_Handler, directory=str(folder))
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
                         name="graphopt-web-server").start()
        self._finalizer = weakref.finalize(self, _stop_server, self._httpd)

    def close(self) -> None:
        self._finalizer()


def _stop_server(httpd) -> None:
    threading.Thread(target=lambda: (httpd.shutdown(), httpd.server_close()), daemon=True).start()
