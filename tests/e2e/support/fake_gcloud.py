"""A stand-in ``gcloud`` for the mixer, put first on its PATH.

``gcloud config config-helper --format=json`` prints what the real one prints, with
``credential.access_token`` taken from the same file the bearer-only remote server
reads on every request, and a short ``credential.token_expiry`` (ISO 8601, ``Z``).
The tests can rotate the token, make the command fail, and count its runs.
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
import datetime, json, os, sys
STATE = {state!r}
args = sys.argv[1:]
with open(os.path.join(STATE, "runs.jsonl"), "a") as f:
    gce = {{k: v for k, v in os.environ.items() if k.startswith("GCE_METADATA")}}
    f.write(json.dumps({{"argv": args, "gce": gce}}) + "\\n")
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
        "active_configuration": "default",
        "properties": {{"core": {{"account": "e2e@example.com", "project": "e2e-project"}}}},
    }},
    "credential": {{"access_token": token, "id_token": "", "token_expiry": expiry}},
    "sentinels": {{"config_sentinel": os.path.join(STATE, "sentinel")}},
}}, indent=2))
"""

DEFAULT_FAILURE = (
    "ERROR: (gcloud.config.config-helper) There was a problem refreshing your current auth "
    "tokens: stand-in failure for the e2e tests\n"
)


def new_token() -> str:
    return "ya29." + uuid.uuid4().hex


class FakeGcloud:
    def __init__(self, directory: Path, token_file: Path, expiry_seconds: float = 600) -> None:
        self.dir = Path(directory)
        self.bin_dir = self.dir / "bin"
        self.token_file = Path(token_file)
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        self.tokens: list[str] = []  # every token ever issued, oldest first
        self.set_expiry(expiry_seconds)
        self.rotate()
        script = self.bin_dir / "gcloud"
        script.write_text(
            _SCRIPT.format(python=sys.executable, state=str(self.dir), token_file=str(token_file))
        )
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

    # -- observation ---------------------------------------------------------------------

    def runs(self) -> list[dict]:
        try:
            lines = (self.dir / "runs.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def run_count(self) -> int:
        return len(self.runs())

    def path_env(self, base_path: str | None = None) -> str:
        """A PATH with this stand-in first."""
        rest = base_path if base_path is not None else os.environ.get("PATH", "")
        return f"{self.bin_dir}{os.pathsep}{rest}" if rest else str(self.bin_dir)
