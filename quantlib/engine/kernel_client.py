"""The kernel client nbclient gets for each stage notebook: jupyter_client's, ready without a 0.2 s wait.

jupyter_client's `wait_for_ready` ends by draining IOPub until it has been quiet for 0.2 s. nbclient makes
a new client for every notebook, so the book paid that 0.2 s on every stage of a run that shares one kernel
(most of a light stage's overhead). The drain only discards status messages of the `kernel_info` request;
nbclient ignores any IOPub message whose parent is not the request it sent, so leftovers are harmless and
the drain here takes what has already arrived and does not wait. The readiness check itself is
jupyter_client's: a `kernel_info` reply on shell, then one IOPub message (the subscription is live).
"""
from __future__ import annotations

import time
from queue import Empty

from jupyter_client.asynchronous.client import AsyncKernelClient

INFO_WAIT_S = 1.0  # for the kernel_info reply, per attempt (jupyter_client's)
IOPUB_WAIT_S = 0.2  # for the first IOPub message after it (jupyter_client's)


class ReadyClient(AsyncKernelClient):
    """`AsyncKernelClient` whose `wait_for_ready` does not wait for IOPub to fall quiet."""

    async def wait_for_ready(self, timeout: float | None = None) -> None:
        deadline = time.time() + (float("inf") if timeout is None else timeout)
        while True:
            self.kernel_info()
            try:
                msg = await self.shell_channel.get_msg(timeout=INFO_WAIT_S)
            except Empty:
                msg = None
            if msg is not None and msg["msg_type"] == "kernel_info_reply":
                try:
                    await self.iopub_channel.get_msg(timeout=IOPUB_WAIT_S)
                except Empty:
                    pass  # IOPub not connected yet: ask again
                else:
                    self._handle_kernel_info_reply(msg)
                    break
            if not await self._async_is_alive():
                raise RuntimeError("Kernel died before replying to kernel_info")
            if time.time() > deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout:.0f} seconds")
        while await self.iopub_channel.msg_ready():  # what has arrived already, without waiting
            await self.iopub_channel.get_msg(timeout=0)
