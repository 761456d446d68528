"""nginx as the websocket relay anchor: what a mature C proxy costs on this machine.

Started as a child of the benchmark with a configuration of its own (one worker, on a
free loopback port, logs and temporary files in the run's folders), in front of the
same fake backend as the mixer, and stopped by its pid. Absent nginx (``apt-get install
nginx``), the anchor is left out and the report says so.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bench.driver import Bench
from notebook_kernels_mixer.processes import Process, free_port

CONFIG = """\
# Written by bench/nginx.py: a websocket relay in front of one backend.
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        tcp_nodelay on;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 4 64k;
            proxy_busy_buffers_size 128k;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


async def start_nginx(bench: Bench, backend_port: int) -> tuple[Process, int] | None:
    """nginx relaying 127.0.0.1:<free port> to ``backend_port``; None without nginx."""
    binary = nginx_binary()
    if binary is None:
        bench.log("  nginx not found (apt-get install nginx): no nginx anchor")
        return None
    prefix = bench.tmp / f"nginx-{backend_port}"
    prefix.mkdir(exist_ok=True)
    port = free_port()
    # As root, the worker would switch to an unprivileged user that cannot write here.
    user = "user root;" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(CONFIG.format(prefix=prefix, backend=backend_port, port=port, user=user))
    cmd = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return await bench.procs.launch("ref-nginx", cmd, port=port), port

