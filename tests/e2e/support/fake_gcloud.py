"""A stand-in ``gcloud`` for the mixer, put first on its PATH.

``gcloud config config-helper --format=json`` prints what the real one prints, with
``credential.access_token`` taken from the same file the bearer-only remote server
reads on every request, and a short ``credential.token_expiry`` (ISO 8601, ``Z``).
The tests can rotate the token, make the command fail, and count its runs.

Like the real one, it reads the account from a gcloud configuration directory
(``CLOUDSDK_CONFIG``, else its own ``config/``): ``active_config`` names the active
configuration, ``configurations/config_<name>`` holds ``account = …``. A test switches
the account there (and the remote then accepts only the new identity's token), makes a
run hang, and finds each run's PID in ``runs()``.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import uuid
from pathlib import Path

_SCRIPT = """#!{python}
# stand-in gcloud written by the notebook-kernels-mixer end-to-end tests
import datetime, json, os, sys, time
STATE = {state!r}
CONFIG = os.environ.get("CLOUDSDK_CONFIG") or {config!r}
def read(path, default=""):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default
active = os.environ.get("CLOUDSDK_ACTIVE_CONFIG_NAME") or read(os.path.join(CONFIG, "active_config"))
active = active or "default"
account = ""
for line in read(os.path.join(CONFIG, "configurations", "config_" + active)).splitlines():
    key, _, value = line.partition("=")
    if key.strip() == "account":
        account = value.strip()
args = sys.argv[1:]
with open(os.path.join(STATE, "runs.jsonl"), "a") as f:
    gce = {{k: v for k, v in os.environ.items() if k.startswith("GCE_METADATA")}}
    f.write(json.dumps({{"argv": args, "gce": gce, "pid": os.getpid(), "account": account}}) + "\\n")
time.sleep(float(read(os.path.join(STATE, "hang"), "0") or 0))
fail = os.path.join(STATE, "fail")
if os.path.exists(fail):
    with open(fail) as f:
        sys.stderr.write(f.read())
    sys.exit(1)
fmt_json = "--format=json" in args or ("--format" in args and "json" in args)
if args[:2] != ["config", "config-helper"] or not fmt_json:
    sys.stderr.write("ERROR: (gcloud) stand-in only knows config config-helper --format=json\\n")
    sys.exit(2)
with open({token_file!r}) as f:
    token = f.read().strip()
with open(os.path.join(STATE, "expiry_seconds")) as f:
    seconds = float(f.read().strip())
now = datetime.datetime.now(datetime.timezone.utc)
expiry = (now + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
print(json.dumps({{
    "configuration": {{
        "active_configuration": active,
        "properties": {{"core": {{"account": account, "project": "e2e-project"}}}},
    }},
    "credential": {{"access_token": token, "id_token": "", "token_expiry": expiry}},
    "sentinels": {{"config_sentinel": os.path.join(CONFIG, "config_sentinel")}},
}}, indent=2))
"""

DEFAULT_FAILURE = (
    "ERROR: (gcloud.config.config-helper) There was a problem refreshing your current auth "
    "tokens: stand-in failure for the e2e tests\n"
)


DEFAULT_ACCOUNT = "e2e@example.com"


def new_token() -> str:
    return "ya29." + uuid.uuid4().hex


class FakeGcloud:
    def __init__(self, directory: Path, token_file: Path, expiry_seconds: float = 600) -> None:
        self.dir = Path(directory)
        self.bin_dir = self.dir / "bin"
        self.token_file = Path(token_file)
        self.config_dir = self.dir / "config"
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "configurations").mkdir(parents=True, exist_ok=True)
        (self.config_dir / "active_config").write_text("default")
        self._write_account("default", DEFAULT_ACCOUNT)
        self.tokens: list[str] = []  # every token ever issued, oldest first
        self.set_expiry(expiry_seconds)
        self.hang(0)
        self.rotate()
        script = self.bin_dir / "gcloud"
        script.write_text(_SCRIPT.format(
            python=sys.executable, state=str(self.dir), token_file=str(token_file),
            config=str(self.config_dir),
        ))  # fmt: skip
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.script = script

    # -- control -------------------------------------------------------------------------

    @property
    def token(self) -> str:
        return self.tokens[-1]

    def rotate(self) -> str:
        """Issue a new token: the remote accepts only it from now on."""
        token = new_token()
        tmp = self.token_file.with_suffix(".tmp")
        tmp.write_text(token + "\n")
        os.replace(tmp, self.token_file)
        self.tokens.append(token)
        return token

    def fail(self, message: str = DEFAULT_FAILURE) -> None:
        (self.dir / "fail").write_text(message)

    def succeed(self) -> None:
        (self.dir / "fail").unlink(missing_ok=True)

    @property
    def failing(self) -> bool:
        return (self.dir / "fail").exists()

    def set_expiry(self, seconds: float) -> None:
        (self.dir / "expiry_seconds").write_text(str(seconds))

    def hang(self, seconds: float) -> None:
        """Make every run wait ``seconds`` before it answers (0: answer at once)."""
        (self.dir / "hang").write_text(str(seconds))

    def switch_account(self, account: str) -> str:
        """``gcloud config set account`` after a login: the active configuration names
        ``account``, and the remote accepts only its (new) token. Returns that token."""
        active = (self.config_dir / "active_config").read_text().strip() or "default"
        self._write_account(active, account)
        return self.rotate()

    def _write_account(self, configuration: str, account: str) -> None:
        path = self.config_dir / "configurations" / f"config_{configuration}"
        path.write_text(f"[core]\naccount = {account}\nproject = e2e-project\n")

    def env(self) -> dict[str, str]:
        """Environment for a mixer that should watch this stand-in's configuration."""
        return {"CLOUDSDK_CONFIG": str(self.config_dir)}

    # -- observation ---------------------------------------------------------------------

    def runs(self) -> list[dict]:
        try:
            lines = (self.dir / "runs.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def run_count(self) -> int:
        return len(self.runs())

    @property
    def account(self) -> str:
        """The account of the last run."""
        runs = self.runs()
        return runs[-1].get("account", "") if runs else ""

    def path_env(self, base_path: str | None = None) -> str:
        """A PATH with this stand-in first."""
        rest = base_path if base_path is not None else os.environ.get("PATH", "")
        return f"{self.bin_dir}{os.pathsep}{rest}" if rest else str(self.bin_dir)
