"""The files of a team deployment: the nginx site, the systemd unit of a replica, its settings.

``deploy/nginx.conf``, ``deploy/safereview@.service`` and ``deploy/safereview.env`` are the
default output of the functions below (``tests/test_deploy.py`` compares them), and the
tests run nginx and the replicas from the same text with their own ports and folders, so
the shipped files, ``docs/deploy.md`` and the tests cannot drift apart::

    python -m safereview.deploy nginx --replica 127.0.0.1:8501 --replica 127.0.0.1:8502 \\
        --server-name review.example.org > /etc/nginx/conf.d/safereview.conf
    python -m safereview.deploy systemd --venv /opt/safereview/.venv > /etc/systemd/system/safereview@.service
    python -m safereview.deploy env > /etc/safereview/safereview.env   # then fill in the database
    python -m safereview.deploy write                                 # re-render deploy/* in a checkout

Why the nginx site looks the way it does (docs/deploy.md has the long form):

* **Sticky by the app's own cookie.** A Streamlit session (the websocket, session state, an
  upload in progress) lives in one replica process, so a browser must keep reaching one
  replica. The app gives every browser a random id cookie (``safereview_browser``) on its
  first page load, and every later request, the websocket included, carries it: nginx
  hashes it (``hash ... consistent``). The first request has no cookie yet; it is keyed by
  the client address instead. Whichever replica answers it only sets the cookie (no
  session exists before the websocket opens), so it does not matter that the websocket may
  then land elsewhere.
* **Failover.** ``max_fails=1 fail_timeout=10s`` and ``proxy_next_upstream``: a replica that
  refuses connections is skipped for 10 s and its browsers are spread over the others by
  the consistent hash (the others' browsers stay where they are). A browser whose replica
  died reconnects, gets a new Streamlit session on a live replica and is signed in again
  from its session cookie (sessions are rows in the database); its lease on the item on
  screen is still its own.
* **Origin check.** The app lets a websocket in only when its ``Origin`` equals the
  ``Host`` header, port included, so the proxy forwards ``$http_host`` (``$host`` drops the
  port).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

REPLICA_PORTS = (8501, 8502, 8503)


@dataclass(frozen=True)
class Site:
    """What varies between nginx sites: the replicas, where nginx listens, the URL path."""

    replicas: tuple[str, ...] = tuple(f"127.0.0.1:{p}" for p in REPLICA_PORTS)
    listen: str = "80"
    server_name: str = "review.example.org"
    base_url_path: str = ""  # SAFEREVIEW_BASE_URL_PATH of the replicas ("" = the whole host)
    max_upload_mb: int = 200  # SAFEREVIEW_MAX_UPLOAD_MB of the replicas
    access_log: str = "/var/log/nginx/safereview.access.log"
    tls_certificate: str = ""  # both set: TLS on `listen` (and plain HTTP redirected from `redirect_http`)
    tls_certificate_key: str = ""
    redirect_http: str = ""  # e.g. "80": a server there redirects to https (only with TLS)
    fail_timeout_s: int = 10


def nginx_site(site: Site = Site()) -> str:
    """The nginx site (``http`` context: maps, upstream, servers) for ``site``."""
    prefix = f"/{site.base_url_path.strip('/')}" if site.base_url_path.strip("/") else ""
    tls = bool(site.tls_certificate and site.tls_certificate_key)
    servers = "\n".join(f"    server {r} max_fails=1 fail_timeout={site.fail_timeout_s}s;" for r in site.replicas)
    lines = [
        "# safereview behind nginx: several `safereview serve` replicas under one origin.",
        "# Rendered by `python -m safereview.deploy nginx` (safereview/deploy.py); the tests run nginx on",
        "# this text. Debian: copy it to /etc/nginx/conf.d/safereview.conf (nginx.conf includes conf.d/*.conf",
        "# inside its http block), change the lines marked EDIT, then `nginx -t && systemctl reload nginx`.",
        "",
        "# Websocket: ask the replica for an upgrade only when the browser asked for one (otherwise an",
        '# empty Connection header, so plain requests can reuse the "keepalive" connections below).',
        "map $http_upgrade $safereview_connection {",
        "    default upgrade;",
        '    ""      "";',
        "}",
        "",
        "# Stickiness key. A Streamlit session lives in one replica process, so a browser must keep",
        "# reaching the same replica. The app sets a random browser-id cookie (safereview_browser) on the",
        "# first page load and every later request carries it, the websocket included. The first request",
        "# has none yet and is keyed by the client's address; the replica answering it only sets the",
        "# cookie (no session exists before the websocket opens), so where it lands does not matter.",
        "map $cookie_safereview_browser $safereview_sticky {",
        '    ""      $remote_addr;',
        "    default $cookie_safereview_browser;",
        "}",
        "",
        "# Which replica served each request (upstream=...): the first thing to look at after a failover.",
        "log_format safereview '$remote_addr [$time_local] \"$request\" $status $body_bytes_sent '",
        "                      'upstream=$upstream_addr upstream_status=$upstream_status rt=$request_time';",
        "",
        "upstream safereview {",
        "    # Consistent hash: when a replica is down only its browsers move, spread over the others.",
        "    hash $safereview_sticky consistent;",
        "    # EDIT: one line per replica (`safereview serve --port N`, systemd unit safereview@N).",
        "    # A replica refusing connections is skipped for fail_timeout, then tried again.",
        servers,
        "    keepalive 32;",
        "}",
        "",
    ]
    if tls and site.redirect_http:
        lines += [
            "server {",
            f"    listen {site.redirect_http};",
            f"    server_name {site.server_name};",
            "    return 301 https://$host$request_uri;",
            "}",
            "",
        ]
    lines += [
        "server {",
        "    # EDIT: address and name. Without TLS here, terminate TLS in front of this proxy: the app marks",
        "    # its cookies Secure when X-Forwarded-Proto says https and the proxy is in SAFEREVIEW_TRUSTED_PROXIES.",
        f"    listen {site.listen}{' ssl' if tls else ''};",
        f"    server_name {site.server_name};",
    ]
    if tls:
        lines += [
            f"    ssl_certificate {site.tls_certificate};",
            f"    ssl_certificate_key {site.tls_certificate_key};",
        ]
    lines += [
        f"    access_log {site.access_log} safereview;",
        "    absolute_redirect off;",
        "",
        "    # SAFEREVIEW_MAX_UPLOAD_MB of the replicas, plus room for the form around the file.",
        f"    client_max_body_size {site.max_upload_mb + 1}m;",
        "",
        "    proxy_http_version 1.1;",
        "    # $http_host keeps the port: the app lets a websocket in only when its Origin equals this Host.",
        "    proxy_set_header Host $http_host;",
        "    # The client's address for the sign-in limits (replicas: SAFEREVIEW_TRUSTED_PROXIES=127.0.0.1).",
        "    # The client's own X-Forwarded-For is dropped; behind another proxy use $proxy_add_x_forwarded_for",
        "    # and list that proxy in SAFEREVIEW_TRUSTED_PROXIES too.",
        "    proxy_set_header X-Forwarded-For $remote_addr;",
        "    proxy_set_header X-Forwarded-Proto $scheme;",
        "    proxy_set_header Upgrade $http_upgrade;",
        "    proxy_set_header Connection $safereview_connection;",
        "    # Failover: a dead replica refuses at once (same host) or within 2 s (another host); the",
        "    # request then goes to the next replica. POSTs and uploads are never sent twice.",
        "    proxy_connect_timeout 2s;",
        "    proxy_next_upstream error timeout http_502 http_503;",
        "    proxy_next_upstream_tries 3;",
        "",
    ]
    if prefix:
        lines += [
            f"    # SAFEREVIEW_BASE_URL_PATH={prefix.lstrip('/')}: forwarded unchanged (no URI after proxy_pass).",
            f"    location = {prefix} {{",
            f"        return 301 {prefix}/;",
            "    }",
            "",
        ]
    lines += [
        f"    location {prefix}/ {{",
        "        proxy_pass http://safereview;",
        "    }",
        "",
        "    # The websocket: one long-lived connection per browser tab. The replica pings it every 30 s;",
        "    # the long timeouts only bound a connection whose replica hangs without closing it.",
        f"    location = {prefix}/_stcore/stream {{",
        "        proxy_pass http://safereview;",
        "        proxy_read_timeout 1h;",
        "        proxy_send_timeout 1h;",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def nginx_standalone(site_conf: Path, prefix: Path) -> str:
    """A whole ``nginx.conf`` that runs ``site_conf`` from the folder ``prefix`` (pid, logs and temp
    files inside it; ``nginx -p PREFIX -c PREFIX/nginx.conf``): Debian's ``/etc/nginx/nginx.conf``
    stand-in for the tests, the benchmark and a try-out without root."""
    import os

    prefix = Path(prefix)
    temps = "\n".join(
        f"    {kind}_temp_path {prefix / 'temp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""  # workers may enter the folder
    return (
        f"{user}worker_processes 1;\n"
        f"pid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'logs' / 'error.log'} notice;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"    access_log {prefix / 'logs' / 'access.log'};\n"
        f"{temps}\n"
        f"    include {site_conf};\n"
        "}\n"
    )


# ---------------------------------------------------------------------------------------
# systemd
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """A templated systemd unit: ``safereview@8501`` is the replica on port 8501."""

    venv: str = "/opt/safereview/.venv"
    user: str = "safereview"
    env_file: str = "/etc/safereview/safereview.env"
    work_dir: str = "/var/lib/safereview"
    media_root: str = "/srv/safereview/media"
    memory_max: str = "1G"


def serve_command(unit: Unit = Unit(), port: str = "%i") -> list[str]:
    """The replica's command line (``ExecStart``): ``safereview serve`` on a local port."""
    return [f"{unit.venv}/bin/safereview", "serve", "--host", "127.0.0.1", "--port", port]


def systemd_unit(unit: Unit = Unit()) -> str:
    return "\n".join(
        [
            "# safereview@.service: one review-app replica per instance; the instance is its port.",
            "# Rendered by `python -m safereview.deploy systemd` (safereview/deploy.py); the replica test",
            "# starts its replicas with this ExecStart line. Install as /etc/systemd/system/safereview@.service:",
            "#   systemctl enable --now safereview@8501 safereview@8502 safereview@8503",
            "[Unit]",
            "Description=safereview review app replica on port %i",
            "After=network-online.target postgresql.service",
            "Wants=network-online.target",
            "",
            "[Service]",
            "Type=exec",
            f"User={unit.user}",
            f"Group={unit.user}",
            "# SAFEREVIEW_DB, SAFEREVIEW_MEDIA_ROOT, SAFEREVIEW_TRUSTED_PROXIES, ... (docs/deploy.md)",
            f"EnvironmentFile={unit.env_file}",
            "StateDirectory=safereview",
            f"WorkingDirectory={unit.work_dir}",
            "# `safereview init` runs the migrations once before a (rolling) restart; serve finds the",
            "# schema current and starts at once.",
            "ExecStart=" + " ".join(serve_command(unit)),
            "Restart=always",
            "RestartSec=2",
            "TimeoutStopSec=20",
            "# ~200 MB per replica at rest; a burst of sign-ins (argon2, 64 MiB each) adds to it.",
            f"MemoryMax={unit.memory_max}",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            f"ReadWritePaths={unit.media_root}",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


@dataclass(frozen=True)
class Env:
    """The replicas' settings file (``EnvironmentFile=``): the same for every replica."""

    db_url: str = "postgresql+psycopg://safereview@/safereview"
    media_root: str = "/srv/safereview/media"
    trusted_proxies: str = "127.0.0.1"
    base_url_path: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def env_file(env: Env = Env()) -> str:
    lines = [
        "# /etc/safereview/safereview.env: read by every replica (systemd EnvironmentFile=) and by",
        "# `safereview init`. Rendered by `python -m safereview.deploy env` (safereview/deploy.py).",
        "# EDIT: the database. This one: PostgreSQL on this host over its socket, as the OS user safereview",
        "# (peer authentication, no password in this file).",
        f"SAFEREVIEW_DB={env.db_url}",
        "# One folder for every replica and every import: a local disk, or NFS when replicas run on",
        "# several hosts (docs/deploy.md, 'Media').",
        f"SAFEREVIEW_MEDIA_ROOT={env.media_root}",
        "# nginx on this host: its X-Forwarded-For names the client (sign-in limits count the client).",
        f"SAFEREVIEW_TRUSTED_PROXIES={env.trusted_proxies}",
        "# Serve under a path, e.g. review for https://host/review/ (render the nginx site with the same).",
        f"SAFEREVIEW_BASE_URL_PATH={env.base_url_path}",
    ]
    lines += [f"{k}={v}" for k, v in env.extra.items()]
    return "\n".join(lines) + "\n"


def read_env_file(text: str) -> dict[str, str]:
    """The variables of an environment file as systemd reads it (``KEY=value``, ``#`` comments)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out[key.strip()] = value.strip().strip('"')
    return out


# the files shipped in deploy/, each the default rendering
SHIPPED = {
    "nginx.conf": lambda: nginx_site(),
    "safereview@.service": lambda: systemd_unit(),
    "safereview.env": lambda: env_file(),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m safereview.deploy", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    n = sub.add_parser("nginx", help="the nginx site (http context)")
    n.add_argument("--replica", action="append", help="host:port of a replica (repeat; default 8501-8503)")
    n.add_argument("--listen", default=Site.listen)
    n.add_argument("--server-name", default=Site.server_name)
    n.add_argument("--base-url-path", default="", help="SAFEREVIEW_BASE_URL_PATH of the replicas")
    n.add_argument("--max-upload-mb", type=int, default=Site.max_upload_mb)
    n.add_argument("--access-log", default=Site.access_log)
    n.add_argument("--tls-certificate", default="")
    n.add_argument("--tls-certificate-key", default="")
    n.add_argument("--redirect-http", default="", help="with TLS: also redirect plain HTTP on this port")
    s = sub.add_parser("systemd", help="the templated unit safereview@.service")
    s.add_argument("--venv", default=Unit.venv)
    s.add_argument("--user", default=Unit.user)
    s.add_argument("--env-file", default=Unit.env_file)
    s.add_argument("--work-dir", default=Unit.work_dir)
    s.add_argument("--media-root", default=Unit.media_root)
    e = sub.add_parser("env", help="the replicas' environment file")
    e.add_argument("--db", default=Env.db_url)
    e.add_argument("--media-root", default=Env.media_root)
    e.add_argument("--base-url-path", default="")
    w = sub.add_parser("write", help="re-render the shipped files (deploy/ of a checkout)")
    w.add_argument("--dir", type=Path, default=Path("deploy"))
    args = ap.parse_args(argv)
    if args.what == "nginx":
        site = replace(
            Site(),
            listen=args.listen,
            server_name=args.server_name,
            base_url_path=args.base_url_path,
            max_upload_mb=args.max_upload_mb,
            access_log=args.access_log,
            tls_certificate=args.tls_certificate,
            tls_certificate_key=args.tls_certificate_key,
            redirect_http=args.redirect_http,
        )
        if args.replica:
            site = replace(site, replicas=tuple(args.replica))
        sys.stdout.write(nginx_site(site))
    elif args.what == "systemd":
        unit = Unit(
            venv=args.venv, user=args.user, env_file=args.env_file, work_dir=args.work_dir, media_root=args.media_root
        )
        sys.stdout.write(systemd_unit(unit))
    elif args.what == "env":
        sys.stdout.write(env_file(Env(db_url=args.db, media_root=args.media_root, base_url_path=args.base_url_path)))
    else:
        args.dir.mkdir(parents=True, exist_ok=True)
        for name, render in SHIPPED.items():
            (args.dir / name).write_text(render(), encoding="utf-8")
            print(args.dir / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
