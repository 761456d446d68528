"""The Go original (GoogleCloudPlatform/notebook-kernels-mixer) as a reference relay.

Given the original's source (``--go-original DIR``, default ``$MIXER_GO_ORIGINAL_SRC``;
none of its code is in this repository), it is built once with Debian's Go toolchain
and Go library packages (``apt-get install golang-go golang-github-gorilla-websocket-dev
golang-golang-x-oauth2-dev``) in GOPATH mode with ``/usr/share/gocode`` and no module
proxy, into a cache directory keyed by the source's contents and the Go version. It
then runs in front of the same fake backends as the mixer (its flags ``--port
--jupyter-port --remote-url``; it listens on ``[::1]`` only and runs ``gcloud config
config-helper`` for the remote's token: the run's stand-in gcloud is first on its
PATH) and relays the local fake's kernel websocket. Where it cannot be built or run,
the bench leaves its column out and says why in one line.

A source tree from a git mirror of the original::

    git --git-dir=MIRROR archive a67728f | tar -x -C /tmp/go-original

Its later commits (2025) need Go >= 1.23 (``slices.SortedStableFunc``); Debian 12's Go
is 1.19, and the websocket path (``httputil.ReverseProxy``) is the same in both.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.e2e.support.fake_gcloud import FakeGcloud

from bench.driver import XSRF, Bench
from notebook_kernels_mixer.processes import Process, free_port

IMPORT_PATH = "github.com/GoogleCloudPlatform/notebook-kernels-mixer"
GOCODE = "/usr/share/gocode"  # Debian's golang-*-dev packages
NAME = "ref-go"


def source_dir(option: str | None) -> Path | None:
    value = option or os.environ.get("MIXER_GO_ORIGINAL_SRC")
    return Path(value).expanduser().resolve() if value else None


def go_binary() -> str | None:
    return shutil.which("go") or next(
        (p for p in ("/usr/lib/go/bin/go", "/usr/local/go/bin/go") if Path(p).exists()), None
    )


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "notebook-kernels-mixer-bench" / "go-original"


def source_key(src: Path, go_version: str) -> str:
    """A hash of the Go sources, go.mod and the toolchain's version."""
    h = hashlib.sha256(go_version.encode())
    for path in sorted(src.rglob("*")):
        if path.is_file() and (path.suffix == ".go" or path.name in ("go.mod", "go.sum")):
            if ".git" in path.parts:
                continue
            h.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def why_not(output: str, go_version: str) -> str:
    """One line from a failed build: the first error, and what to do about it."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip() and not ln.startswith("#")]
    first = lines[0] if lines else "no output"
    if 'cannot find package "slices"' in output or 'cannot find package "cmp"' in output:
        return (
            f"needs a newer Go than {go_version} (standard packages cmp/slices); "
            f"export an older commit, e.g. a67728f ({first})"
        )
    if "cannot find package" in output:
        return f"a Go library is missing (install its Debian golang-*-dev package): {first}"
    return first


def build(src: Path) -> tuple[Path | None, str]:
    """The original's binary (built once per source and Go version), or None and why."""
    if not (src / "mixer.go").is_file():
        return None, f"{src} has no mixer.go (not the Go original's source)"
    go = go_binary()
    if go is None:
        return (
            None,
            "go not found (apt-get install golang-go golang-github-gorilla-websocket-dev "
            "golang-golang-x-oauth2-dev)",
        )
    version = subprocess.run([go, "version"], capture_output=True, text=True, timeout=30).stdout.strip()
    out_dir = cache_root() / source_key(src, version)
    binary = out_dir / "mixer"
    if binary.is_file():
        return binary, f"cached build {binary} ({version})"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="go-original-build-") as tmp:
        pkg = Path(tmp, "src", IMPORT_PATH)
        shutil.copytree(src, pkg, ignore=shutil.ignore_patterns(".git"))
        env = {
            **os.environ,
            "GO111MODULE": "off",
            "GOPATH": f"{tmp}{os.pathsep}{GOCODE}",
            "GOPROXY": "off",
            "GOFLAGS": "",
            "GOTOOLCHAIN": "local",
            "GOCACHE": str(cache_root() / "gocache"),
            "CGO_ENABLED": "0",
        }
        tmp_binary = out_dir / f"mixer.{os.getpid()}.tmp"
        try:
            done = subprocess.run(
                [go, "build", "-o", str(tmp_binary), "."],
                cwd=pkg,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"go build failed: {type(exc).__name__}: {exc}"
        if done.returncode != 0:
            return None, f"go build failed: {why_not(done.stderr + done.stdout, version)}"
        tmp_binary.replace(binary)
    return binary, f"built {binary} ({version})"


async def wait_listed(bench: Bench, url: str, kernel: str, timeout: float = 15) -> None:
    """Until ``kernel`` is in the original's ``GET /api/kernels`` (it routes a kernel
    websocket only to a backend whose listing showed that kernel)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            async with bench.http.get(url + "/api/kernels", headers=go_headers()) as r:
                body = await r.json(content_type=None)
                if r.status == 200 and any(k.get("id") == kernel for k in body):
                    return
                last = f"HTTP {r.status}"
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the Go original does not list the kernel ({last or 'no answer'})")


def go_headers() -> dict[str, str]:
    """No credential: the fakes need none, and the original logs every websocket
    request with its headers."""
    return {"Cookie": f"_xsrf={XSRF}", "X-XSRFToken": XSRF}


async def start_go_original(
    bench: Bench, local_port: int, remote_port: int, kernel: str
) -> tuple[tuple[Process, str] | None, str]:
    """The original relaying [::1]:<free port> to the fakes: ((process, its URL), what
    was used), or (None, one line saying why) when it cannot be built or run."""
    src = source_dir(getattr(bench.args, "go_original", None))
    if src is None:
        return None, "Go original left out: no source (--go-original DIR or MIXER_GO_ORIGINAL_SRC)"
    binary, info = await asyncio.to_thread(build, src)
    if binary is None:
        return None, f"Go original left out: {info}"
    port = free_port()
    state = bench.tmp / f"gcloud-go-{port}"
    gcloud = FakeGcloud(state, state / "token", expiry_seconds=3600)
    cmd = [str(binary), "--port", str(port), "--jupyter-port", str(local_port),
           "--remote-url", f"http://127.0.0.1:{remote_port}"]  # fmt: skip
    env = {**os.environ, "PATH": gcloud.path_env()}
    url = f"http://[::1]:{port}"
    proc: Process | None = None
    try:
        proc = await bench.procs.launch(NAME, cmd, env, port=port, host="::1")
        await wait_listed(bench, url, kernel)
    except Exception as exc:
        if proc is not None:
            bench.procs.stop(proc)
        return None, f"Go original left out: it does not run: {exc}"[:300]
    return (proc, url), f"Go original ({NAME}): {source_note(src)}, {info}"


def source_note(src: Path) -> str:
    """Where the source came from (a commit when the folder says so)."""
    commit = src / "COMMIT"
    if commit.is_file():
        return f"{src} at {commit.read_text().strip()[:40]}"
    return str(src)


def export(git_dir: Path, commit: str, dest: Path) -> str:
    """``git archive COMMIT`` of a mirror into ``dest`` (outside the repository), with
    the full commit id in ``dest/COMMIT``; returns that id."""
    full = subprocess.run(
        ["git", "--git-dir", str(git_dir), "rev-parse", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "--git-dir", str(git_dir), "archive", full], capture_output=True, check=True, timeout=120
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=120)
    (dest / "COMMIT").write_text(full + "\n")
    return full


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Export and build the Go original for the bench.")
    parser.add_argument("--export", metavar="GIT_DIR", help="a (bare) git mirror of the original")
    parser.add_argument("--commit", default="a67728f", help="commit to export (default a67728f)")
    parser.add_argument("dir", help="the source folder (written by --export)")
    args = parser.parse_args(argv)
    dest = Path(args.dir).expanduser().resolve()
    if args.export:
        print(f"exported {export(Path(args.export), args.commit, dest)} to {dest}")
    binary, info = build(dest)
    print(info)
    if binary is not None:
        print(f"run the bench with --go-original {dest} (or MIXER_GO_ORIGINAL_SRC={dest})")
    return 0 if binary is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
