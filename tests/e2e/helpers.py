"""Assertions shared by the end-to-end tests."""

from __future__ import annotations

import aiohttp

from .support.api import ApiClient, wait_until
from .support.kernel_client import ExecResult, KernelConnection

WHERE = "import os; print(os.environ['MIXER_TEST_WHERE'])"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def channels_path(kernel_id: str) -> str:
    return f"/api/kernels/{kernel_id}/channels"


async def run(
    http: aiohttp.ClientSession,
    api: ApiClient,
    kernel_id: str,
    code: str,
    *,
    protocol: str = "legacy",
    timeout: float = 60,
) -> ExecResult:
    """Execute ``code`` on a kernel through ``api``'s websocket."""
    conn = await KernelConnection.open(
        http, api.ws_url(channels_path(kernel_id)), headers=api.auth(), protocol=protocol,
        timeout=timeout,
    )  # fmt: skip
    async with conn:
        return await conn.execute(code, timeout=timeout)


async def where(http: aiohttp.ClientSession, api: ApiClient, kernel_id: str, **kw) -> str:
    result = await run(http, api, kernel_id, WHERE, **kw)
    assert result.status == "ok", f"{api.name} kernel {kernel_id}: {result}"
    return result.stdout.strip()


async def wait_kernel_gone(api: ApiClient, kernel_id: str, timeout: float = 30) -> None:
    async def gone() -> bool:
        return kernel_id not in await api.kernel_ids()

    await wait_until(gone, timeout=timeout, what=f"kernel {kernel_id} gone from {api.name}")


def spec_names(specs: dict) -> set[str]:
    return set(specs["kernelspecs"])


def error_message(resp) -> str:
    """The ``message`` of a JSON error answer (fails the test if there is none)."""
    try:
        body = resp.json()
    except ValueError as e:
        raise AssertionError(f"error answer is not JSON: {resp.describe()}") from e
    assert isinstance(body, dict), resp.describe()
    message = body.get("message")
    assert isinstance(message, str), f"no 'message' in {resp.describe()}"
    assert message.strip(), f"empty 'message' in {resp.describe()}"
    return message
