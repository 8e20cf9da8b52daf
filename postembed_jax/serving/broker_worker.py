"""An embed worker process in broker mode (``config.queue="nats"``; launch/embed_worker.py): fetch a micro-batch
from the durable pull consumer, embed it, store it, then acknowledge it. Run any number of them beside the API's
database (SQLite: one machine's disk), each reaching the broker at ``broker.url``.

A batch goes when it is full (``max_batch``) or its oldest post has waited ``max_wait_ms``, as in the one-process
worker. Nothing is acknowledged before it is committed to the store, so a worker killed at any point loses
nothing: its unacknowledged messages go to another worker after ``broker.ack_wait_s``, and the store absorbs the
redelivery (``PostStore.save_versions`` writes a version once). A lost broker connection is retried forever; the
fetches fail meanwhile and resume on reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import nats.errors
import nats.js.errors
import numpy as np

from postembed_jax.serving import broker
from postembed_jax.serving.store import PostStore

log = logging.getLogger(__name__)

_IDLE_FETCH_S = 1.0
_MAX_BACKOFF_S = 10.0
READY_LINE = "Embed worker ready"  # logged once subscribed (the tests and the benchmark wait for it)


class BrokerWorker:
  """One consumer of the stream; ``run`` returns after ``stop`` once the batch in flight is acknowledged."""

  def __init__(self, config, embedder, store: PostStore):
    self.config, self.broker_config = config, config.broker
    self._embedder, self._store = embedder, store
    self._stopping = asyncio.Event()
    self.counts = dict(stored=0, unchanged=0, stale=0, deleted=0, redelivered=0, dead_lettered=0, errors=0)

  def stop(self) -> None:
    self._stopping.set()

  async def run(self) -> None:
    nc = await broker.connect(self.broker_config, name="postembed-embed-worker", retry_for_s=60)
    js = nc.jetstream()
    await broker.ensure_streams(js, self.broker_config)
    sub = await broker.subscribe(js, self.broker_config)
    log.info("%s: consumer %s of %s.", READY_LINE, self.broker_config.durable, self.broker_config.stream)
    backoff = 0.5
    try:
      while not self._stopping.is_set():
        try:
          msgs = await self._next_batch(sub)
          if msgs:
            await self._process(js, msgs)
            await nc.flush()  # the acks are on the wire before the next fetch
          backoff = 0.5
        except (nats.errors.Error, nats.js.errors.Error, OSError) as e:  # the broker went away: it comes back
          self.counts["errors"] += 1
          log.warning("Broker: %s: %s; retrying in %.1f s.", type(e).__name__, e, backoff)
          await asyncio.sleep(backoff)
          backoff = min(2 * backoff, _MAX_BACKOFF_S)
    finally:
      log.info("Embed worker stopping: %s.", self.counts)
      await nc.close()  # the acks were flushed after each batch

  async def _next_batch(self, sub) -> list:
    try:
      msgs = await sub.fetch(self.config.max_batch, timeout=_IDLE_FETCH_S)
    except (asyncio.TimeoutError, nats.errors.TimeoutError):
      return []
    if not msgs:  # the fetch ended without messages (the connection closing)
      return []
    oldest = min(_submitted_at(m) for m in msgs)
    while len(msgs) < self.config.max_batch and not self._stopping.is_set():
      wait = self.config.max_wait_ms / 1000 - (time.time() - oldest)
      if wait <= 0.001:
        break
      try:
        msgs += await sub.fetch(self.config.max_batch - len(msgs), timeout=wait)
      except (asyncio.TimeoutError, nats.errors.TimeoutError):
        break
    return msgs

  async def _process(self, js, msgs) -> None:
    good = []
    for msg in msgs:
      self.counts["redelivered"] += msg.metadata.num_delivered > 1  # its first worker died or failed
      if msg.metadata.num_delivered > self.broker_config.max_deliveries:
        await self._dead_letter(js, msg, f"delivered {msg.metadata.num_delivered - 1} times without being stored")
        continue
      try:
        seq = msg.metadata.sequence.stream
        good.append((msg, broker.decode(msg.data, seq, max_text_chars=self.config.max_text_chars)))
      except broker.BadMessage as e:
        await self._dead_letter(js, msg, str(e))
    if not good:
      return
    loop = asyncio.get_running_loop()
    # The model and SQLite block: off the event loop, so pings and the connection stay served meanwhile.
    try:
      await loop.run_in_executor(None, self._embed_and_store, [m for _, m in good])
    except Exception as e:  # e.g. the database is locked: nothing is acknowledged, so the batch comes back
      self.counts["errors"] += 1
      log.exception("Storing a batch of %d failed (%s); it is redelivered in 1 s.", len(good), e)
      for msg, _ in good:
        await msg.nak(delay=1.0)
      return
    for msg, _ in good:
      await msg.ack()

  def _embed_and_store(self, messages: list[broker.Message]) -> None:
    """Applies the batch in stream order: the versions between two deletions in one transaction each."""
    versions = [m for m in messages if not m.is_delete]
    vectors = iter(self._embedder.embed([m.text for m in versions]) if versions else [])
    run: list[broker.Message] = []
    for message in [*messages, None]:
      if message is not None and not message.is_delete:
        run.append(message)
        continue
      if run:
        statuses = self._store.save_versions(
          [m.post for m in run], [m.submitted_at for m in run], np.stack([next(vectors) for _ in run])
        )
        for status in statuses:
          self.counts[status] += 1
        run = []
      if message is not None:
        self._store.delete(message.id, log_seq=message.log_seq)
        self.counts["deleted"] += 1

  async def _dead_letter(self, js, msg, reason: str) -> None:
    await broker.dead_letter(js, self.broker_config, msg, reason)
    self.counts["dead_lettered"] += 1


def _submitted_at(msg) -> float:
  """When the API accepted the message, by the broker's timestamp (a message need not decode to have one)."""
  return msg.metadata.timestamp.timestamp()


def run(config) -> None:
  """A worker process until SIGINT/SIGTERM (then the batch in flight is stored and acknowledged)."""
  from postembed_jax import compilation_cache
  from postembed_jax.models.dtypes import dtype_of
  from postembed_jax.models.embedder import Embedder

  logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  if config.queue != "nats":
    raise ValueError(f"config.queue={config.queue!r}: embed workers consume a broker; set config.queue=nats.")
  compilation_cache.enable(config.compilation_cache_dir, min_compile_secs=0)
  embedder = Embedder.from_pretrained(
    config.model, max_length=config.max_length, batch_size=config.embed_batch_size, dtype=dtype_of(config.dtype)
  )
  store = PostStore(config.db_path, sync=config.sync, shared=True)
  try:
    store.bind_model(embedder.name, embedder.dim)
    if config.warmup:
      embedder.warm_up(config.max_batch)
    worker = BrokerWorker(config, embedder, store)

    async def main():
      loop = asyncio.get_running_loop()
      for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.stop)
      await worker.run()

    asyncio.run(main())
  finally:
    store.close()
