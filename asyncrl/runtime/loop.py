"""The loop host: one asyncio event loop (uvloop when installed) in a daemon thread of the
calling process, a task set with structured shutdown, and ``call`` for blocking callers.

Owns the thread and the loop only; what runs on it (sockets, the registry, flow control)
belongs to the roles that schedule their coroutines here. Must not know a message type.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from asyncrl.runtime.transport import install_event_loop

log = logging.getLogger("asyncrl.coordinator")


class LoopHost:
    """``start(setup, teardown)`` runs ``setup()`` on a new loop in a thread, then the loop
    until ``stop()``; ``teardown()`` runs after the loop stops, once every task in the set was
    cancelled and awaited. ``spawn(coro)`` adds a task to the set (a failed task is logged,
    never lost); ``call(coro)`` runs a coroutine from another thread and waits for it."""

    def __init__(self, name: str = "asyncrl-coordinator"):
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._tasks: set[asyncio.Task] = set()
        self.stopping = False  # set by the owner when failures of tasks are expected

    def start(
        self,
        setup: Callable[[], Awaitable[None]],
        teardown: Callable[[], Awaitable[None]],
        timeout: float = 30.0,
    ) -> None:
        # torch's intra-op thread count is per thread (OpenMP's setting is thread-local): a
        # new thread would use one thread per core whatever the caller set, and on a busy
        # machine each tiny forward pass then costs milliseconds of spinning. Pass it on.
        torch = sys.modules.get("torch")
        threads = torch.get_num_threads() if torch is not None else 0
        self._thread = threading.Thread(
            target=self._main, args=(setup, teardown, threads), name=self.name, daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the {self.name} event loop did not start")
        if self._start_error is not None:
            raise self._start_error

    def _main(self, setup, teardown, threads: int) -> None:
        if threads:
            sys.modules["torch"].set_num_threads(threads)
        install_event_loop()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self.loop = loop
        try:
            loop.run_until_complete(setup())
        except BaseException as e:  # noqa: BLE001 - reported to start()
            self._start_error = e if isinstance(e, Exception) else RuntimeError(str(e))
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._cancel_tasks())
            loop.run_until_complete(teardown())
            loop.close()

    async def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    @property
    def running(self) -> bool:
        return self.loop is not None and self.loop.is_running()

    def spawn(self, coro) -> asyncio.Task:
        """On the loop: start ``coro`` as a task of the set (cancelled at stop)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self.stopping:
            log.error("%s task failed: %r", self.name, task.exception())

    def call(self, coro, timeout: float | None = None) -> Any:
        """From another thread: run ``coro`` on the loop and wait for its result."""
        if self.loop is None:
            coro.close()
            raise RuntimeError(f"the {self.name} loop is not started")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def call_soon(self, fn: Callable, *args: Any) -> None:
        """From any thread: run ``fn(*args)`` on the loop soon (dropped once it is closed)."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # closed meanwhile
                pass

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop (tasks cancelled, then teardown) and join the thread."""
        if self.loop is not None and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
