"""The NATS JetStream side of the near-line service (``config.queue="nats"``): the stream that is the log of
submitted posts, the workers' durable pull consumer, the message format, and the dead-letter stream.

A post's message goes to ``<subject>.<hash of its id>`` and carries ``Nats-Msg-Id`` = hash(id, text), so the broker
drops a resend of the same text within ``duplicate_window_s``. The broker acknowledges a publish once the message
is in the stream (on disk with the server's ``sync_interval: always``, serving/nats_server.py); only then does the
API answer 202. A reverted text (A, B, A) would look like a resend of A: when the broker calls a publish a
duplicate, the API reads the post's latest message, and if its text differs it publishes again under an id made
unique by that message's sequence number.

Messages that cannot be decoded or break the API's limits, and messages delivered ``max_deliveries`` times without
being stored, are republished to the dead-letter stream (with the reason in a header) and terminated, so they never
block the stream; that stream's message count is the dead-letter counter.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Sequence

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from postembed_jax.serving.store import Post
from postembed_jax.serving.texts import check_text

log = logging.getLogger(__name__)

REASON_HEADER = "Dead-Letter-Reason"
_MAX_ID_CHARS = 256


class BrokerUnavailable(Exception):
  """The broker did not confirm a publish: nothing is acknowledged, and resending is safe."""


class BadMessage(ValueError):
  """A message the workers cannot store: it goes to the dead-letter stream."""


@dataclasses.dataclass(frozen=True)
class Message:
  """A decoded message: a post version, or a deletion when ``text`` is None."""

  id: str
  text: str | None
  timestamp: float | None
  submitted_at: float  # when the API accepted it (its clock)
  log_seq: int  # the message's stream sequence: orders a post's versions and deletions

  @property
  def is_delete(self) -> bool:
    return self.text is None

  @property
  def post(self) -> Post:
    return Post(self.id, self.text, self.timestamp, log_seq=self.log_seq)


def post_subject(config, post_id: str) -> str:
  """One subject per post, so the broker can answer "what is this post's latest message"."""
  return f"{config.subject}.{hashlib.sha256(post_id.encode()).hexdigest()[:32]}"


def message_id(post_id: str, text: str | None) -> str:
  return hashlib.sha256(json.dumps([post_id, text]).encode()).hexdigest()


def encode(post_id: str, text: str | None, timestamp: float | None, submitted_at: float) -> bytes:
  return json.dumps(dict(id=post_id, text=text, timestamp=timestamp, submitted_at=submitted_at)).encode()


def decode(data: bytes, log_seq: int, *, max_text_chars: int) -> Message:
  """The message, checked by the API's rules for a post; raises BadMessage naming what is wrong."""
  try:
    body = json.loads(data)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise BadMessage(f"not JSON: {e}") from None
  if not isinstance(body, dict) or set(body) != {"id", "text", "timestamp", "submitted_at"}:
    raise BadMessage("not an object with exactly the fields id, text, timestamp, submitted_at")
  post_id, text, timestamp, submitted_at = body["id"], body["text"], body["timestamp"], body["submitted_at"]
  if not isinstance(post_id, str) or not 1 <= len(post_id) <= _MAX_ID_CHARS:
    raise BadMessage(f"id must be a string of 1 to {_MAX_ID_CHARS} characters")
  if text is not None:
    if not isinstance(text, str) or len(text) > max_text_chars:
      raise BadMessage(f"text must be a string of at most {max_text_chars} characters (config.max_text_chars)")
    try:
      check_text(text)
    except ValueError as e:
      raise BadMessage(str(e)) from None
  if timestamp is not None and not _finite(timestamp):
    raise BadMessage("timestamp must be a finite number or null")
  if not _finite(submitted_at):
    raise BadMessage("submitted_at must be a finite number")
  return Message(post_id, text, timestamp, float(submitted_at), log_seq)


def _finite(value) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


async def connect(config, *, name: str, retry_for_s: float = 0.0) -> nats.NATS:
  """A connection that reconnects forever once made; the first connect is tried for ``retry_for_s`` (at least 2 s)."""

  async def disconnected():
    log.warning("Disconnected from the broker (%s).", config.url)

  async def reconnected():
    log.warning("Reconnected to the broker (%s).", config.url)

  try:
    # nats-py retries a first connect as often as a reconnect, here forever: the deadline bounds it.
    connecting = nats.connect(
      config.url,
      name=name,
      connect_timeout=2,
      reconnect_time_wait=0.5,
      max_reconnect_attempts=-1,
      error_cb=_log_error,
      disconnected_cb=disconnected,
      reconnected_cb=reconnected,
    )
    return await asyncio.wait_for(connecting, timeout=max(retry_for_s, 2.0))
  except (OSError, nats.errors.NoServersError, asyncio.TimeoutError) as e:
    raise ConnectionError(f"config.broker.url={config.url}: no NATS server answers ({type(e).__name__}).") from None


async def _log_error(e: Exception) -> None:
  log.warning("Broker connection: %s: %s", type(e).__name__, e)  # one line; nats-py's default prints a traceback


async def ensure_streams(js, config) -> None:
  """Creates the post stream and the dead-letter stream unless they exist (every API and worker calls this)."""
  streams = (
    (config.stream, [f"{config.subject}.>"], config.duplicate_window_s),
    (config.dead_letter_stream, [config.dead_letter_subject], config.duplicate_window_s),
  )
  for name, subjects, window in streams:
    try:
      await js.stream_info(name)
    except nats.js.errors.NotFoundError:
      await js.add_stream(
        api.StreamConfig(
          name=name, subjects=subjects, storage=api.StorageType.FILE, num_replicas=1, duplicate_window=window
        )
      )


async def subscribe(js, config):
  """The workers' shared durable pull consumer: every message goes to one of them and is redelivered (to any)
  when it is not acknowledged within ``ack_wait_s``. The server never gives up on a message (max_deliver -1):
  the workers dead-letter it themselves after ``max_deliveries``, so nothing disappears unrecorded."""
  return await js.pull_subscribe(
    f"{config.subject}.>",
    durable=config.durable,
    stream=config.stream,
    config=api.ConsumerConfig(
      ack_policy=api.AckPolicy.EXPLICIT, ack_wait=config.ack_wait_s, max_deliver=-1, max_ack_pending=10_000
    ),
  )


async def dead_letter(js, config, msg, reason: str) -> None:
  """Moves ``msg`` to the dead-letter stream (deduplicated by its sequence, so a crash in between is harmless)."""
  seq = msg.metadata.sequence.stream
  await js.publish(
    config.dead_letter_subject,
    msg.data,
    headers={
      "Nats-Msg-Id": f"dead-{config.stream}-{seq}",
      REASON_HEADER: reason.replace("\r", " ").replace("\n", " ")[:500],
      "Original-Subject": msg.subject,
      "Original-Sequence": str(seq),
    },
  )
  await msg.term()
  log.warning("Dead-lettered message %d of %s: %s", seq, config.stream, reason)


async def dead_letter_count(js, config) -> int:
  return (await js.stream_info(config.dead_letter_stream)).state.messages


class Publisher:
  """The API's connection to the broker, for its (threaded, synchronous) request handlers: an asyncio loop on a
  thread of its own, and blocking calls that return once the broker has stored the messages."""

  def __init__(self, config, *, connect_for_s: float = 10.0):
    self.config = config
    self._loop = asyncio.new_event_loop()
    self._thread = threading.Thread(target=self._loop.run_forever, name="nats-publisher", daemon=True)
    self._thread.start()
    try:
      self._nc = self._call(connect(config, name="postembed-api", retry_for_s=connect_for_s), connect_for_s + 10)
      self._js = self._nc.jetstream(timeout=config.publish_timeout_s)
      self._call(ensure_streams(self._js, config), config.publish_timeout_s)
    except BaseException:
      self._stop_loop()
      raise

  @property
  def connected(self) -> bool:
    return self._nc.is_connected

  def publish(self, posts: Sequence[Post]) -> list[bool]:
    """Publishes every post (concurrently); per post, True if the broker held that text as its latest already.

    Raises BrokerUnavailable when any publish is unconfirmed; some may be stored then, and a resend is harmless.
    """
    return self._call_confirmed(self._publish_all(posts, time.time()), len(posts))

  def delete(self, post_id: str) -> None:
    """Publishes a deletion, ordered after every earlier message of the post; the workers apply it."""
    self._call_confirmed(self._publish(post_id, None, None, time.time()), 1)

  def dead_letter_count(self) -> int:
    return self._call_confirmed(dead_letter_count(self._js, self.config), 1)

  def close(self) -> None:
    try:
      self._call(self._nc.close(), 10)
    except Exception as e:  # closing after the broker went away
      log.info("Closing the broker connection: %s", e)
    self._stop_loop()

  async def _publish_all(self, posts: Sequence[Post], submitted_at: float) -> list[bool]:
    return list(await asyncio.gather(*(self._publish(p.id, p.text, p.timestamp, submitted_at) for p in posts)))

  async def _publish(self, post_id: str, text: str | None, timestamp: float | None, submitted_at: float) -> bool:
    subject, data = post_subject(self.config, post_id), encode(post_id, text, timestamp, submitted_at)
    msg_id = message_id(post_id, text)
    ack = await self._js.publish(subject, data, stream=self.config.stream, headers={"Nats-Msg-Id": msg_id})
    if not ack.duplicate:
      return False
    latest = await self._js.get_last_msg(self.config.stream, subject)
    if json.loads(latest.data)["text"] == text:
      return True  # a resend: this text is the post's latest version already
    # A revert to a text sent within the duplicate window: unique under the sequence of the version it replaces.
    await self._js.publish(
      subject, data, stream=self.config.stream, headers={"Nats-Msg-Id": f"{msg_id}-after-{latest.seq}"}
    )
    return False

  def _call(self, coro, timeout: float):
    return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

  def _call_confirmed(self, coro, n: int):
    # Each publish waits publish_timeout_s for its ack; the gather of n of them is bounded by the slowest.
    try:
      return self._call(coro, self.config.publish_timeout_s * 2 + 1)
    except (TimeoutError, asyncio.TimeoutError, nats.errors.Error, nats.js.errors.Error, ConnectionError) as e:
      raise BrokerUnavailable(
        f"The broker ({self.config.url}) did not confirm {n} message(s): {type(e).__name__}: {e}"
      ) from None

  def _stop_loop(self) -> None:
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join(10)
