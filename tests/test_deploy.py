"""The deployment files (``deploy/``) and Debian's nginx in front of two app replicas.

* The shipped files are the default rendering of ``safereview.deploy`` (so docs/deploy.md,
  the files and these tests are one text); ``nginx -t`` accepts the site as shipped (its log
  path moved into the test's folder), under a URL path and with TLS; ``systemd-analyze
  verify`` accepts the unit, whose ``ExecStart`` is the command the replica tests start.
* Through a running nginx (SQLite here; ``tests/test_deploy_replicas.py`` has PostgreSQL,
  three replicas and a SIGKILL): sign-in over the proxied websocket, from the client's own
  address as the sign-in limits see it (``X-Forwarded-For`` from the trusted proxy; the same
  header sent straight to a replica is ignored), the Origin check passing for the proxy's
  own origin only, media, one replica per browser, the upload size limit, and ``Secure``
  cookies behind TLS.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import app_support as A
import deploy_support as D
import pytest
import sqlalchemy as sa
from st_client import StreamlitClient

from safereview import deploy

fleet = D.fleet
REPO = D.REPO


# ---------------------------------------------------------------------------------------
# The files
# ---------------------------------------------------------------------------------------


def test_the_shipped_files_are_the_default_rendering() -> None:
    for name, render in deploy.SHIPPED.items():
        assert (REPO / "deploy" / name).read_text(encoding="utf-8") == render(), (
            f"deploy/{name} differs from safereview.deploy's rendering: run `python -m safereview.deploy write`"
        )


def test_the_env_file_sets_only_real_settings() -> None:
    from safereview.settings import SETTINGS

    names = {s.env for s in SETTINGS}
    variables = deploy.read_env_file((REPO / "deploy" / "safereview.env").read_text(encoding="utf-8"))
    assert variables and set(variables) <= names, set(variables) - names
    assert variables["SAFEREVIEW_TRUSTED_PROXIES"] == "127.0.0.1"  # nginx on the same host


def _nginx_t(binary: str, site_text: str, folder: Path) -> subprocess.CompletedProcess[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    (folder / "temp").mkdir(exist_ok=True)
    (folder / "safereview.conf").write_text(site_text, encoding="utf-8")
    (folder / "nginx.conf").write_text(deploy.nginx_standalone(folder / "safereview.conf", folder), encoding="utf-8")
    return subprocess.run(
        [binary, "-t", "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(folder / "logs/error.log")],
        capture_output=True,
        text=True,
        check=False,
    )


def _self_signed(folder: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (for the test's self-signed certificate)")
    cert, key = folder / "cert.pem", folder / "key.pem"
    args = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    subprocess.run(
        [openssl, *args, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.nginx
def test_nginx_accepts_the_site_as_shipped_under_a_path_and_with_tls(tmp_path: Path) -> None:
    binary = D.nginx_or_skip()
    shipped = (REPO / "deploy" / "nginx.conf").read_text(encoding="utf-8")
    log = str(tmp_path / "shipped" / "logs" / "safereview.access.log")
    moved = shipped.replace(deploy.Site.access_log, log)  # nginx -t opens the log: keep it out of /var/log
    assert moved.count(log) == 1 and moved == deploy.nginx_site(replace(deploy.Site(), access_log=log))
    r = _nginx_t(binary, moved, tmp_path / "shipped")
    assert r.returncode == 0, r.stderr
    assert "test is successful" in r.stderr

    path = deploy.nginx_site(replace(deploy.Site(), access_log=log, base_url_path="team/review"))
    assert "location /team/review/ {" in path and "location = /team/review/_stcore/stream {" in path
    r = _nginx_t(binary, path, tmp_path / "path")
    assert r.returncode == 0, r.stderr

    cert, key = _self_signed(tmp_path)
    tls = deploy.nginx_site(
        replace(
            deploy.Site(),
            access_log=log,
            listen="443",
            tls_certificate=str(cert),
            tls_certificate_key=str(key),
            redirect_http="80",
        )
    )
    assert "listen 443 ssl;" in tls and "return 301 https://$host$request_uri;" in tls
    r = _nginx_t(binary, tls, tmp_path / "tls")
    assert r.returncode == 0, r.stderr


def test_the_unit_starts_the_real_serve_command(tmp_path: Path) -> None:
    """``ExecStart`` is ``safereview serve`` on a local port (what the replica tests start), and
    ``systemd-analyze verify`` accepts the unit rendered for this machine where it exists."""
    from typer.testing import CliRunner

    from safereview.cli.main import app

    shipped = (REPO / "deploy" / "safereview@.service").read_text(encoding="utf-8")
    cmd = fleet.unit_command(shipped, 8501)
    assert cmd == [f"{sys.prefix}/bin/safereview", "serve", "--host", "127.0.0.1", "--port", "8501"]
    assert Path(cmd[0]).is_file()
    help_text = CliRunner().invoke(app, ["serve", "--help"]).output
    assert "--host" in help_text and "--port" in help_text

    verify = shutil.which("systemd-analyze")
    if verify is None:
        return  # the parse above is the check on machines without systemd
    unit = deploy.Unit(
        venv=sys.prefix,
        user="root",
        env_file=str(tmp_path / "safereview.env"),
        work_dir=str(tmp_path),
        media_root=str(tmp_path),
    )
    (tmp_path / "safereview.env").write_text(deploy.env_file(), encoding="utf-8")
    instance = tmp_path / "safereview@8501.service"
    instance.write_text(deploy.systemd_unit(unit), encoding="utf-8")
    r = subprocess.run([verify, "verify", str(instance)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert str(instance) not in r.stderr and "safereview@" not in r.stderr, r.stderr  # no warning about it


# ---------------------------------------------------------------------------------------
# A running proxy
# ---------------------------------------------------------------------------------------


@dataclass
class Stack:
    fx: A.Fixture
    replicas: list[fleet.Replica]
    proxy: fleet.Proxy
    base: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = D.nginx_or_skip()
    work = tmp_path_factory.mktemp("deploy")
    fx = A.build_fixture(f"sqlite:///{work / 'review.db'}", work / "media", n_plain=2)
    env = D.replica_env(fx.db_url, fx.media_root, SAFEREVIEW_MAX_UPLOAD_MB="1")
    replicas = [fleet.Replica(env, work).start() for _ in range(2)]
    proxy = None
    try:
        for r in replicas:
            r.wait_ready()
        site = deploy.Site(
            replicas=tuple(r.addr for r in replicas),
            listen=f"127.0.0.1:{fleet.free_port()}",
            server_name="127.0.0.1",
            max_upload_mb=1,
            access_log="logs/safereview.access.log",
        )
        proxy = fleet.Proxy(site, work / "nginx", binary).start()
        yield Stack(fx, replicas, proxy, f"http://{site.listen}")
    finally:
        if proxy is not None:
            proxy.stop()
        for r in replicas:
            r.stop()


def _attempts(db_url: str) -> list[tuple[str, bool, str]]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT username, ok, address FROM loginattempt ORDER BY id")).all()
    finally:
        engine.dispose()
    return [(str(u), bool(ok), str(a)) for u, ok, a in rows]


async def _sign_in(c: StreamlitClient, username: str, password: str) -> Any:
    await c.connect()
    await c.rerun()
    return await c.rerun(
        [
            c.state("signin_username", string_value=username),
            c.state("signin_password", string_value=password),
            c.state("submit:sign_in_form", trigger_value=True),
        ]
    )


@pytest.mark.nginx
@pytest.mark.slow
def test_sign_in_label_and_media_through_the_proxy_from_the_clients_address(stack: Stack) -> None:
    import httpx

    sha = stack.fx.media["image"]

    async def go() -> dict[str, Any]:
        wrong = StreamlitClient(stack.base, local_address="127.0.0.6")
        c = StreamlitClient(stack.base, local_address="127.0.0.5")
        try:
            await _sign_in(wrong, "ann1", "not the password at all")
            page = await _sign_in(c, "ann1", A.PASSWORDS["ann1"])
            assert c.has("rv_submit"), page.exceptions or page.texts
            first = c.item
            await c.click("rv_lab_0_0")
            await c.click("rv_lab_1_0")
            revealed = await c.click("rv_submit")  # blind collection: the verdict shows, same item
            assert not revealed.exceptions and c.item == first
            committed = await c.click("rv_submit")
            for _ in range(100):  # the ticket image sets the session cookie beside the run
                if c.http.cookies.get("safereview_session"):
                    break
                await asyncio.sleep(0.05)
            return {
                "first": first,
                "next": c.item,
                "exceptions": committed.exceptions,
                "media": (await c.http.get(f"{stack.base}/media-files/{sha}")).status_code,
                "stranger": httpx.get(f"{stack.base}/media-files/{sha}").status_code,
            }
        finally:
            await wrong.close()
            await c.close()

    out = asyncio.run(go())
    assert out["exceptions"] == [] and out["next"] not in (None, out["first"])
    assert (out["media"], out["stranger"]) == (200, 401)
    # the sign-in limits saw each client's own address (nginx's X-Forwarded-For, trusted), not the proxy's
    attempts = _attempts(stack.fx.db_url)
    assert ("ann1", False, "127.0.0.6") in attempts and ("ann1", True, "127.0.0.5") in attempts, attempts


@pytest.mark.nginx
@pytest.mark.slow
def test_a_replica_believes_forwarded_headers_only_from_the_proxy(stack: Stack) -> None:
    """Straight to a replica, ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed only from
    the proxy's address. Here the replicas trust 127.0.0.1 (the proxy), so a local process
    writing the headers from another loopback address is ignored. (Uvicorn believed them from
    127.0.0.1 whatever SAFEREVIEW_TRUSTED_PROXIES said; ``safereview serve`` now passes exactly
    that setting to it, nobody by default: see the next test.)"""
    import httpx

    direct = f"http://{stack.replicas[0].addr}"
    spoof = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}

    async def go() -> None:
        c = StreamlitClient(direct, local_address="127.0.0.9", headers=spoof)
        try:
            await _sign_in(c, "ann2", "still not the password")
        finally:
            await c.close()

    asyncio.run(go())
    assert ("ann2", False, "127.0.0.9") in _attempts(stack.fx.db_url)
    transport = httpx.HTTPTransport(local_address="127.0.0.9")
    with httpx.Client(transport=transport) as client:
        cookie = client.get(direct + "/", headers=spoof).headers.get("set-cookie", "")
    assert "safereview_browser=" in cookie and "Secure" not in cookie  # no https from a header of a stranger


@pytest.mark.slow
def test_without_trusted_proxies_no_forwarded_header_is_believed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A laptop install (SAFEREVIEW_TRUSTED_PROXIES empty): a local process connecting from
    127.0.0.1 cannot pick the address its sign-in guesses are counted under, nor claim https."""
    import httpx

    monkeypatch.delenv("SAFEREVIEW_TRUSTED_PROXIES", raising=False)
    fx = A.build_fixture(f"sqlite:///{tmp_path / 'review.db'}", tmp_path / "media", n_plain=1)
    spoof = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    with A.Server(fx) as srv:

        async def go() -> None:
            c = StreamlitClient(srv.base, headers=spoof)
            try:
                await _sign_in(c, "ann2", "still not the password")
            finally:
                await c.close()

        asyncio.run(go())
        cookie = httpx.get(srv.base + "/", headers=spoof).headers.get("set-cookie", "")
    assert [a for a in _attempts(fx.db_url) if a[0] == "ann2"] == [("ann2", False, "local")]
    assert "safereview_browser=" in cookie and "Secure" not in cookie


@pytest.mark.nginx
@pytest.mark.slow
def test_the_websocket_origin_check_passes_through_the_proxy(stack: Stack) -> None:
    """nginx forwards the Host with its port ($http_host), so the proxy's own origin is the app's."""
    import websockets

    netloc = stack.base.removeprefix("http://")

    async def handshake(origin: str) -> int | None:
        try:
            ws = await websockets.connect(f"ws://{netloc}/_stcore/stream", subprotocols=["streamlit"], origin=origin)
        except websockets.InvalidStatus as exc:
            return exc.response.status_code
        await ws.close()
        return None

    assert asyncio.run(handshake(stack.base)) is None  # type: ignore[arg-type]
    for origin in ("https://evil.example", f"http://{stack.replicas[0].addr}", "http://127.0.0.1"):
        assert asyncio.run(handshake(origin)) == 403, origin  # type: ignore[arg-type]


@pytest.mark.nginx
@pytest.mark.slow
def test_each_browser_keeps_to_one_replica_and_uploads_are_capped(stack: Stack) -> None:
    import httpx

    seen: dict[int, set[str]] = {}
    for b in range(24):
        with httpx.Client() as browser:
            first = browser.get(stack.base + "/")
            assert first.status_code == 200 and browser.cookies.get("safereview_browser"), first.headers
            for k in range(4):
                tag = f"sticky-{b}-{k}-{time.monotonic_ns()}"
                assert browser.get(f"{stack.base}/_stcore/health?{tag}").status_code == 200
                seen.setdefault(b, set()).add(stack.proxy.upstream_of(tag) or "?")
    assert all(len(s) == 1 and "?" not in s for s in seen.values()), seen
    assert {next(iter(s)) for s in seen.values()} == {r.addr for r in stack.replicas}  # both replicas in use

    big = httpx.put(
        f"{stack.base}/_stcore/upload_file/0123456789abcdef/abc",
        files={"file": ("big.bin", b"x" * (3 << 20), "application/octet-stream")},
    )
    assert big.status_code == 413 and "nginx" in big.text  # refused by the proxy, before any replica


@pytest.mark.nginx
@pytest.mark.slow
def test_cookies_are_secure_behind_tls(stack: Stack, tmp_path: Path) -> None:
    """TLS at nginx: X-Forwarded-Proto https from the trusted proxy marks the cookies Secure."""
    import httpx

    cert, key = _self_signed(tmp_path)
    site = replace(
        stack.proxy.site,
        listen=f"127.0.0.1:{fleet.free_port()}",
        tls_certificate=str(cert),
        tls_certificate_key=str(key),
    )
    tls = fleet.Proxy(site, tmp_path / "nginx-tls", stack.proxy.binary).start()
    try:
        first = httpx.get(f"https://{site.listen}/", verify=False)
    finally:
        tls.stop()
    cookie = first.headers.get("set-cookie", "")
    assert first.status_code == 200 and re.search(r"safereview_browser=[^;]+;.*Secure", cookie), cookie
    plain = httpx.get(stack.base + "/").headers.get("set-cookie", "")
    assert "safereview_browser=" in plain and "Secure" not in plain
