"""nginx ``empty_gif`` as the anchor: the least a server can do to answer a pixel.

One worker process, no access log, every file it writes in a temporary directory; the
43-byte GIF at ``/p.gif`` on a loopback port.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location = /p.gif {{
            empty_gif;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    """Path of nginx (often in /usr/sbin, which is not on a non-root PATH), or None."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def write_config(directory: Path, port: int) -> Path:
    """A minimal nginx.conf in ``directory``; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(_CONF.format(dir=directory, port=port))
    return conf


def command(conf: Path) -> list[str]:
    """The command line that runs nginx in the foreground with ``conf``."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed")
    # -e: the startup error log, before the configuration's error_log applies (nginx >= 1.19.5).
    return [binary, "-c", str(conf), "-p", str(conf.parent), "-e", str(conf.parent / "error.log")]
