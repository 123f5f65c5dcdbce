"""App replicas behind a real nginx, and annotators that survive losing a replica.

Shared by ``bench/bench_replicas.py`` and ``tests/test_deploy_replicas.py``:

* :class:`Replica` runs one ``safereview serve`` with the command line of the shipped systemd
  unit (``deploy/safereview@.service``'s ``ExecStart``, the virtualenv and port filled in) and
  the variables of the shipped environment file, so what the test starts is what a team
  installs.
* :class:`Proxy` runs Debian's nginx on the shipped site (``safereview.deploy.nginx_site``)
  in a folder of its own (pid, logs and temp files inside it), in the foreground.
* :class:`Annotator` is one browser tab driven over the websocket (``bench/st_client.py``):
  sign in, then per item one label press per dimension and Submit, with think time. When
  its connection drops it does what Streamlit's frontend does: reconnect through the proxy
  (resuming its session id, which a new replica does not know, so it gets a new session),
  and it is signed in again from its session cookie, or signs in with its password when
  the cookie never reached it. A Submit whose answer never came is *in doubt* until the
  reconnect: the same item back on screen means it was not stored (the lease is still the
  annotator's own), another item means it was. Every label it believes stored is listed
  in ``stored`` for the caller to compare with the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_app import rss_mb as _rss_mb  # noqa: E402
from st_client import StreamlitClient  # noqa: E402

from safereview import deploy  # noqa: E402

SHIPPED_VENV = deploy.Unit().venv


def nginx_binary() -> str | None:
    """Debian's nginx (``/usr/sbin`` is not on every user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unit_command(unit_text: str, port: int, venv: str | Path | None = None) -> list[str]:
    """The ``ExecStart`` of a systemd unit for instance ``port``, with this virtualenv in place
    of the shipped one (``/opt/safereview/.venv``)."""
    line = next(line for line in unit_text.splitlines() if line.startswith("ExecStart="))
    venv = str(venv or sys.prefix)
    cmd = line.removeprefix("ExecStart=").replace("%i", str(port)).split()
    return [part.replace(SHIPPED_VENV, venv, 1) if part.startswith(SHIPPED_VENV) else part for part in cmd]


class Replica:
    """One ``safereview serve`` started by the shipped unit's command line."""

    def __init__(self, env: dict[str, str], work: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.work = work
        self.env = {**os.environ, **env}
        self.log_path = work / f"replica-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Replica:
        unit = (REPO / "deploy" / "safereview@.service").read_text(encoding="utf-8")
        cmd = unit_command(unit, self.port)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=str(self.work))
        log.close()
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        import httpx

        prefix = self.env.get("SAFEREVIEW_BASE_URL_PATH", "").strip("/")
        url = f"http://{self.addr}{'/' + prefix if prefix else ''}/_stcore/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.addr} exited: {self.log_tail()}")
            try:
                if httpx.get(url, timeout=2).text.strip() == "ok":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"replica {self.addr} not healthy: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, sockets are closed by the kernel."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rss_mb(self) -> float:
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        return _rss_mb(self.proc.pid)


class Proxy:
    """nginx in the foreground on a rendered site, everything it writes inside ``prefix``."""

    def __init__(self, site: deploy.Site, prefix: Path, binary: str | None = None) -> None:
        self.site = site
        self.prefix = prefix
        self.binary = binary or nginx_binary() or "nginx"
        for sub in ("logs", "temp"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        self.site_conf = prefix / "safereview.conf"
        self.conf = prefix / "nginx.conf"
        self.site_conf.write_text(deploy.nginx_site(site), encoding="utf-8")
        self.conf.write_text(deploy.nginx_standalone(self.site_conf, prefix), encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    def args(self, *extra: str) -> list[str]:
        return [
            self.binary,
            "-p",
            str(self.prefix),
            "-c",
            str(self.conf),
            "-e",
            str(self.prefix / "logs/error.log"),
            *extra,
        ]

    def test(self) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on the configuration."""
        return subprocess.run(self.args("-t"), capture_output=True, text=True, check=False)

    def start(self, timeout: float = 20.0) -> Proxy:
        host, _, port = self.site.listen.rpartition(":")
        log = (self.prefix / "logs" / "stdout.log").open("ab")
        self.proc = subprocess.Popen(self.args("-g", "daemon off;"), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.error_log()}")
            try:
                with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"nginx did not listen: {self.error_log()}")

    def error_log(self) -> str:
        path = self.prefix / "logs" / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def access_log(self) -> list[str]:
        path = Path(self.site.access_log)
        if not path.is_absolute():
            path = self.prefix / path
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def upstream_of(self, probe: str, wait_s: float = 2.0) -> str | None:
        """The replica that served the request whose URL carried ``probe`` (from the access log,
        which nginx writes just after the response has gone out: hence the short wait)."""
        deadline = time.monotonic() + wait_s
        while True:
            for line in reversed(self.access_log()):
                if probe in line and (m := re.search(r"upstream=(\S+)", line)):
                    return m.group(1).split(",")[-1].strip()  # after a failover: "dead:port, live:port"
            if time.monotonic() > deadline:
                return None
            time.sleep(0.01)

    def rss_mb(self) -> float:
        """Resident memory of nginx: the master and its workers."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        pids = [self.proc.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                    pids.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return sum(_rss_mb(pid) for pid in pids)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish requests, then exit
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------------
# Annotators
# ---------------------------------------------------------------------------------------

DISCONNECTED = (OSError, asyncio.TimeoutError, EOFError)  # plus websockets' ConnectionClosed, added below
try:
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    DISCONNECTED = (*DISCONNECTED, ConnectionClosed, InvalidHandshake)
except ImportError:  # pragma: no cover
    pass

LEASE_LOST = "went back to the queue"


@dataclass
class Submit:
    """One Submit press and what came of it."""

    username: str
    item: str
    labels: dict[str, str]
    sent: float  # time.monotonic() when pressed
    seconds: float | None = None  # submit → next item rendered; None when no answer came
    outcome: str = "stored"  # stored | in-doubt | stored-after-reconnect | not-stored | lease-lost


@dataclass
class Annotator:
    """One browser tab: signs in, labels items until told to stop, reconnects when dropped."""

    base: str  # the proxy (scheme, host, port and base path)
    username: str
    password: str
    dims: list[tuple[str, list[str]]]  # (dimension, its labels) in taxonomy order
    think_s: float
    rng: random.Random
    local_address: str = ""  # the annotator's own machine, e.g. 127.0.0.12 (the proxy forwards it)
    leave_on_disconnect: bool = False  # walks away when the connection drops (never reconnects)
    submits: list[Submit] = field(default_factory=list)
    presses: list[tuple[float, float]] = field(default_factory=list)  # label presses: (pressed at, seconds)
    reconnects: list[float] = field(default_factory=list)  # seconds from the drop to the next item shown
    password_sign_ins: int = 0
    throttled: int = 0  # sign-ins answered "Too many sign-in attempts" (then retried after the wait)
    cookie_sign_ins: int = 0
    drops: int = 0
    left: bool = False
    items_after_reconnect: int = 0
    last_item_before_drop: str | None = None
    first_item_after_reconnect: str | None = None
    error: str = ""
    client: StreamlitClient | None = None
    deadline: float = float("inf")

    @property
    def stored(self) -> dict[str, dict[str, str]]:
        """item → labels, for every submit this annotator believes stored."""
        return {s.item: s.labels for s in self.submits if s.outcome in ("stored", "stored-after-reconnect")}

    @property
    def in_doubt(self) -> list[Submit]:
        return [s for s in self.submits if s.outcome == "in-doubt"]

    async def _open(self, resume: str = "") -> None:
        """Connect (through the proxy) and get to the review page, signing in if the cookie does not."""
        c = self.client
        if c is None:
            c = self.client = StreamlitClient(self.base, local_address=self.local_address)
        c.widgets.clear()
        c.item = None
        await c.connect(resume_session=resume)
        first = await c.rerun()
        if c.has("rv_submit"):
            self.cookie_sign_ins += 1
            return
        if not c.has("signin_username"):
            raise RuntimeError(f"{self.username}: neither review page nor sign-in form: {first.texts[-5:]}")
        for _attempt in range(4):
            run = await c.rerun(
                [
                    c.state("signin_username", string_value=self.username),
                    c.state("signin_password", string_value=self.password),
                    c.state("submit:sign_in_form", trigger_value=True),
                ]
            )
            wait = re.search(r"Try again in (\d+) second", " ".join(run.texts).replace("\\", ""))
            if c.has("rv_submit") or wait is None:
                break
            self.throttled += 1  # as a person would: wait as told, then press Sign in again
            await asyncio.sleep(int(wait.group(1)))
        if not c.has("rv_submit"):
            raise RuntimeError(f"{self.username}: no review page after sign-in: {run.exceptions or run.texts[-5:]}")
        self.password_sign_ins += 1
        for _ in range(100):  # the ticket image sets the session cookie beside the run
            if c.http.cookies.get("safereview_session"):
                break
            await asyncio.sleep(0.02)

    async def _reconnect(self, dropped_at: float) -> bool:
        """Reconnect until a replica answers (as Streamlit's frontend retries); False when out of time."""
        assert self.client is not None
        old = self.client.session_id
        with_pause = 0.1
        while time.monotonic() < self.deadline:
            if self.client.ws is not None:
                with contextlib.suppress(Exception):
                    await self.client.ws.close()
            try:
                await self._open(resume=old)
                self.reconnects.append(time.monotonic() - dropped_at)
                self.first_item_after_reconnect = self.client.item
                return True
            except DISCONNECTED:
                await asyncio.sleep(with_pause)
                with_pause = min(2.0, with_pause * 2)
        return False

    def _resolve_doubt(self) -> None:
        """After a reconnect: the in-doubt submit's item back on screen means it was not stored."""
        assert self.client is not None
        for s in self.in_doubt:
            s.outcome = "not-stored" if self.client.item == s.item else "stored-after-reconnect"

    def stop(self) -> None:
        """End the shift: the press in hand finishes, no new one starts."""
        self.deadline = min(self.deadline, time.monotonic())

    async def run(self, stop_at: float, start_delay: float = 0.0) -> None:
        """Work until ``stop_at`` (``time.monotonic()``) or :meth:`stop`."""
        self.deadline = stop_at
        await asyncio.sleep(start_delay)
        try:
            await self._run()
        except Exception as exc:  # reported by the caller; one broken client must not hide the others
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            if self.client is not None:
                with contextlib.suppress(Exception):
                    await self.client.close()

    async def _run(self) -> None:
        dropped: float | None = None
        try:
            await self._open()
        except DISCONNECTED:  # the replica died while this tab was loading or signing in
            self.drops += 1
            dropped = time.monotonic()
        assert self.client is not None
        c = self.client
        reconnected = False
        while time.monotonic() < self.deadline:
            if dropped is not None:
                if self.leave_on_disconnect:
                    self.left = True
                    return
                if not await self._reconnect(dropped):
                    return
                self._resolve_doubt()
                reconnected, dropped = True, None
            item = c.item
            labels: dict[str, str] = {}
            try:
                for di, (dim, names) in enumerate(self.dims):
                    await asyncio.sleep(self.rng.expovariate(1 / self.think_s))
                    li = self.rng.randrange(len(names))
                    pressed = time.monotonic()
                    await c.click(f"rv_lab_{di}_{li}")
                    self.presses.append((pressed, time.monotonic() - pressed))
                    labels[dim] = names[li]
                await asyncio.sleep(self.rng.expovariate(1 / self.think_s))
                if time.monotonic() >= self.deadline:
                    return
                sub = Submit(self.username, str(item), labels, time.monotonic(), outcome="in-doubt")
                self.submits.append(sub)
                run = await c.click("rv_submit")
            except DISCONNECTED:
                self.drops += 1
                self.last_item_before_drop = item
                dropped = time.monotonic()
                continue
            sub.seconds = time.monotonic() - sub.sent
            shown = " ".join(run.texts)
            if LEASE_LOST in shown:
                sub.outcome = "lease-lost"
            elif run.exceptions or c.item in (None, item):
                raise RuntimeError(f"{self.username}: submit did not bring the next item: {run.exceptions or shown}")
            else:
                sub.outcome = "stored"
                if reconnected:
                    self.items_after_reconnect += 1


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else float("nan")


def uni_safebench_dims() -> list[tuple[str, list[str]]]:
    from safereview.db import taxonomy

    return [(d["name"], list(d["labels"])) for d in taxonomy.preset("uni-safebench")["dimensions"]]


async def probe_replicas(annotators: list[Annotator], proxy: Proxy) -> dict[str, str]:
    """Which replica each annotator's requests go to: a request with its cookies, found in the access log."""
    out: dict[str, str] = {}
    for a in annotators:
        if a.client is None or a.client.http.is_closed:
            continue
        tag = f"probe-{a.username}-{random.randrange(10**9)}"
        await a.client.http.get(f"{a.base}/_stcore/health?{tag}")
        for _ in range(100):
            up = proxy.upstream_of(tag, wait_s=0)
            if up:
                out[a.username] = up
                break
            await asyncio.sleep(0.02)
    return out


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def stored_labels(db_url: str) -> dict[tuple[str, str], dict[str, str]]:
    """(username, item external id) → labels of every annotation in the database (each pair once)."""
    from sqlmodel import Session, select

    from safereview.db.engine import make_engine
    from safereview.db.models import Annotation, Item, User

    engine = make_engine(db_url)
    try:
        with Session(engine) as s:
            rows = s.exec(
                select(User.username, Item.external_id, Annotation.labels)
                .join(User, User.id == Annotation.user_id)  # type: ignore[arg-type]
                .join(Item, Item.id == Annotation.item_id)  # type: ignore[arg-type]
            ).all()
    finally:
        engine.dispose()
    out: dict[tuple[str, str], dict[str, str]] = {}
    for username, ext, labels in rows:
        key = (str(username), str(ext))
        if key in out:
            raise AssertionError(f"two annotations for {key}")
        out[key] = dict(labels)
    return out
