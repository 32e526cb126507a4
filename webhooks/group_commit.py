"""Group commit: deliveries arriving together are written in one transaction, one commit.

A commit is an fsync (SQLite with ``synchronous=FULL``) or a round trip to PostgreSQL; made
once per request, under load the requests queue behind each other's commits (and, on SQLite,
behind each other's write lock). Here one writer thread owns the writes: while it commits a
batch, the deliveries that arrive meanwhile wait in a queue and become the next batch, so
the number of commits follows the disk's pace rather than the request rate. No delivery waits
for a batch to fill: an idle writer takes a lone delivery at once.

Durability is unchanged: ``add`` returns only after the transaction holding ITS row has
committed, and raises ``StoreError`` for every delivery of a batch whose commit failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from webhooks.store_model import Delivery, DeliveryStore, StoreError

logger = logging.getLogger("gantry.webhooks.store")

# Enough to absorb a burst in one commit; small enough that one transaction stays short.
MAX_BATCH = 256


class GroupCommit:
    """``await add(delivery)``: True once committed, False for a duplicate id, else StoreError."""

    def __init__(self, store: DeliveryStore, max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: list[tuple[Delivery, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None
        # One thread: writes never race each other for the store's lock, and the default
        # thread pool (readiness probes, the dispatcher's reads) never delays a write.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="delivery-writer")
        self.commits = 0

    async def add(self, delivery: Delivery) -> bool:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bool] = loop.create_future()
        self._queue.append((delivery, answer))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write(), name="delivery-writer")
        return await answer

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            deliveries = [delivery for delivery, _ in batch]
            try:
                results = await loop.run_in_executor(self._executor, self._commit, deliveries)
            except StoreError as exc:
                logger.error("could not record %d deliveries: %s", len(batch), exc)
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(StoreError(str(exc)))
                continue
            except BaseException as exc:
                # Cancelled (shutdown) or a bug: nobody may wait forever, nor hear 202.
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(StoreError(f"delivery not recorded: {exc!r}"))
                raise
            for (_, answer), result in zip(batch, results, strict=True):
                # A request whose client went away was cancelled; its row stays recorded.
                if answer.done():
                    continue
                if isinstance(result, StoreError):
                    answer.set_exception(result)
                else:
                    answer.set_result(result)

    def _commit(self, deliveries: Sequence[Delivery]) -> list[bool | StoreError]:
        try:
            results: list[bool | StoreError] = list(self.store.add_many(deliveries))
            self.commits += 1
            return results
        except StoreError:
            if len(deliveries) == 1:
                raise
        # The batch failed as a whole: one by one, so that a delivery the store cannot take
        # fails alone. Each still answers only after its own commit. A second failure says
        # the store itself is failing (full, locked, gone): the rest fail at once rather
        # than each waiting out the store's timeouts.
        results = []
        failures: list[StoreError] = []
        for delivery in deliveries:
            if len(failures) >= 2:
                results.append(StoreError(str(failures[-1])))
                continue
            try:
                results.append(self.store.add(delivery))
                self.commits += 1
            except StoreError as exc:
                failures.append(exc)
                results.append(exc)
        return results

    async def close(self) -> None:
        """Finish what is queued, then stop the writer thread."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        self._executor.shutdown(wait=True)
