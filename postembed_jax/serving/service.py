"""The near-line embedding service: posts are accepted durably, embedded in micro-batches, readable by id, searchable
by text or vector, and retrievable for members through their interest clusters.

``Nearline`` wires store, index, worker and embedder together and works without HTTP; ``create_app`` puts the
FastAPI API in front of it; ``serve`` runs that under uvicorn (launch/serve.py calls it).

  POST /posts          {"id", "text", "timestamp"?}       -> 202 {"id", "status": created|updated|unchanged}
  POST /posts/batch    {"posts": [...]}                   -> 202 {"results": [{"id", "status"}, ...]}
  GET  /posts/{id}                                        -> {"id", "status": pending|embedded, "embedding", ...}
                                                             (embedded: /search finds it from then on)
  DELETE /posts/{id}                                      -> {"id", "status": "deleted"} (store, index, tombstone)
  POST /search         {"text" | "vector", "k"}           -> {"results": [{"id", "score"}, ...]}
  POST /members/feed   {"engaged": [ids], "k", "max_clusters"} -> {"interests": [...], "results": [...]}
  POST /v1/embeddings  OpenAI's request and answer        -> {"object": "list", "data": [...], "model", "usage"}
  GET  /health (never needs a token), GET /metrics (Prometheus text), GET /stats (the same figures as JSON)
A submission is acknowledged only once it is committed to SQLite. When the queue is full the API answers 429 with
Retry-After and stores nothing of that request; resubmitting is always safe (same text: a no-op; new text: an edit).
With ``config.queue="nats"`` a submission is acknowledged once the broker has it on disk ("accepted"), embed worker
processes store it (serving/broker_worker.py) and this process's index follows the store (serving/follower.py).
With ``config.auth_token_file`` every route but /health needs ``Authorization: Bearer <token>``; without it the
service refuses to listen beyond loopback.
"""

import base64
import contextlib
import hmac
import ipaddress
import logging
import math
import threading
import time
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from postembed_jax.models.dtypes import dtype_of
from postembed_jax.models.embedder import Embedder
from postembed_jax.serving import members, vectors
from postembed_jax.serving.broker import BrokerUnavailable, Publisher
from postembed_jax.serving.follower import IndexFollower
from postembed_jax.serving.index import open_index
from postembed_jax.serving.metrics import ServiceMetrics
from postembed_jax.serving.store import Post, PostStore, QueueFull
from postembed_jax.serving.texts import check_text
from postembed_jax.serving.worker import EmbedWorker

log = logging.getLogger(__name__)

_MAX_ID_CHARS = 256
_MAX_RETRY_AFTER_S = 60
_MAX_TIMESTAMP = 253402300799.0  # 9999-12-31T23:59:59Z, the last second a datetime can hold
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_LOOPBACK_NAMES = ("localhost",)
_OPEN_PATHS = ("/health",)  # answered without a token: liveness probes carry none


class Nearline:
  """One database, its index, the embed worker and the model; ``close`` stops the worker and saves the index."""

  def __init__(self, config, embedder: Embedder | None = None):
    self.config = config
    self.embedder = embedder or Embedder.from_pretrained(
      config.model, max_length=config.max_length, batch_size=config.embed_batch_size, dtype=dtype_of(config.dtype)
    )
    if config.queue not in ("sqlite", "nats"):
      raise ValueError(f"config.queue={config.queue!r} is not one of sqlite, nats.")
    # With a broker, embed workers in other processes write the store; this process publishes and follows it.
    self.publisher = None
    self.store = PostStore(config.db_path, sync=config.sync, shared=config.queue == "nats")
    try:
      self.store.bind_model(self.embedder.name, self.embedder.dim)
      followed_from = self.store.last_embed_seq  # broker mode: workers may write while the index opens
      self.index = open_index(
        config.index_path, self.store, dtype=config.index_dtype, exact_below=config.exact_search_below
      )
      if config.warmup:
        self.embedder.warm_up(config.max_batch)
      if config.queue == "nats":
        self.publisher = Publisher(config.broker)
    except BaseException:
      self.store.close()
      raise
    self.matryoshka_widths = vectors.supported_widths(self.embedder.name)
    self.metrics = ServiceMetrics()
    self._embed_lock = threading.Lock()  # the tokenizer is not thread-safe; the worker and queries share it
    if self.publisher:
      self.worker = IndexFollower(
        self.store,
        self.index,
        since=followed_from,
        metrics=self.metrics,
        interval_s=config.broker.follow_interval_ms / 1000,
        index_path=config.index_path,
        index_save_every_s=config.index_save_every_s,
      )
    else:
      self.worker = EmbedWorker(
        self.store,
        self.index,
        self.embedder,
        embed_lock=self._embed_lock,
        metrics=self.metrics,
        max_batch=config.max_batch,
        max_wait_s=config.max_wait_ms / 1000,
        index_path=config.index_path,
        index_save_every_s=config.index_save_every_s,
      )
    self.worker.start()
    log.info(
      "Serving %s (dim %d): %s posts, %d in the index.",
      self.embedder.name,
      self.embedder.dim,
      self.store.counts(),
      len(self.index),
    )

  def close(self) -> None:
    self.worker.stop()
    if self.publisher:
      self.publisher.close()
    self.store.close()

  def submit(self, posts: list[Post]) -> list[str]:
    """Durably stores posts; raises QueueFull (storing none of them) when the worker is too far behind.

    With a broker: publishes them ("accepted", or "unchanged" for a resend); raises BrokerUnavailable."""
    if self.publisher:
      statuses = ["unchanged" if dup else "accepted" for dup in self.publisher.publish(posts)]
    else:
      statuses = self._store_submit(posts)
    accepted = sum(s != "unchanged" for s in statuses)
    self.metrics.count("posts_accepted", accepted)
    self.metrics.count("posts_unchanged", len(statuses) - accepted)
    if accepted:
      self.worker.notify()
    return statuses

  def _store_submit(self, posts: list[Post]) -> list[str]:
    try:
      statuses = self.store.submit(posts, max_queue=self.config.max_queue)
    except QueueFull:
      self.metrics.count("requests_rejected_busy")
      raise
    return statuses

  def retry_after_s(self, depth: int) -> int:
    """Seconds the worker needs to drain ``depth`` posts at its recent speed."""
    rate = self.metrics.embed_rate or 1.0
    return int(min(max(math.ceil(depth / rate), 1), _MAX_RETRY_AFTER_S))

  def embed_queries(self, texts: list[str]) -> np.ndarray:
    with self._embed_lock:
      return self.embedder.embed(texts)

  def embed_now(self, texts: list[str], width: int) -> tuple[np.ndarray, int]:
    """(vectors at ``width``, tokens the model read) for texts that are not stored: OpenAI's embeddings call.
    Vectors are the batch job's (launch/embed.py): the same embedder, and a Matryoshka width read as it reads it."""
    with self._embed_lock:
      tokens = sum(len(ids) for ids in self.embedder.tokenize(texts))
      out = self.embedder.embed(texts)
    self.metrics.count("texts_embedded_sync", len(texts))
    return (out if width == self.embedder.dim else vectors.truncate(out, width)), tokens

  def delete(self, post_id: str) -> bool:
    """Removes a post from the index and the store, leaving a tombstone (serving/store.py); False if unknown.

    The index goes first: a concurrent index save reads its watermark before writing the index, so a saved index
    never lacks a deletion its watermark covers (an older watermark only replays the deletion again).
    """
    with self.worker.publish_lock:
      post = self.store.get(post_id)
      if self.publisher:  # through the log, so it is ordered after every earlier version; the workers apply it
        self.publisher.delete(post_id)
        return post is not None
      if post is None:
        return False
      self.index.remove([post["key"]])
      try:
        self.store.delete(post_id)
      except BaseException:
        if post["embedding"] is not None:
          self.index.add([post["key"]], post["embedding"][None])
        raise
    self.metrics.count("posts_deleted")
    return True

  def search(self, vector: np.ndarray, k: int) -> list[dict]:
    ((keys, scores),) = self.index.search(vector, k)
    ids = self.store.ids(keys)
    return [dict(id=ids[int(key)], score=float(score)) for key, score in zip(keys, scores)]

  def member_feed(self, engaged: list[str], k: int, max_clusters: int) -> dict:
    """Ward interest clusters of the member's embedded engaged posts and the new posts they retrieve."""
    keys, vectors = self.store.embeddings(engaged)
    if not keys:
      raise LookupError("None of the engaged posts has an embedding yet.")
    interests = members.interest_clusters(vectors, max_clusters=max_clusters)
    hits = members.retrieve(self.index, interests, k, exclude=keys)
    ids = self.store.ids(keys + [h.key for h in hits])
    return dict(
      interests=[
        dict(size=int(size), engaged=[ids[key] for key, label in zip(keys, interests.labels) if label == c])
        for c, size in enumerate(interests.sizes)
      ],
      results=[dict(id=ids[h.key], score=h.score, interest=h.cluster) for h in hits],
      not_embedded=sorted(set(engaged) - {ids[key] for key in keys}),
    )

  def get(self, post_id: str) -> dict | None:
    with self.worker.publish_lock:  # so "embedded" is only ever said of a post search can find
      post = self.store.get(post_id)
      if self.publisher:
        self.worker.catch_up()  # what the workers stored up to the read above is in the index
      return post

  def health(self) -> dict:
    """Constant time: the store's counts are kept by triggers, not counted."""
    with self.worker.publish_lock:
      indexed, counts = len(self.index), self.store.counts()
    status = "ok" if self.worker.alive else "worker stopped"
    if self.publisher and not self.publisher.connected:
      status = "broker unreachable"
    return dict(
      status=status,
      model=self.embedder.name,
      dim=self.embedder.dim,
      indexed=indexed,
      worker_last_error=self.worker.last_error,
      **counts,
    )

  def stats(self) -> dict:
    """Sets the queue and index gauges and returns every figure (the JSON of /stats)."""
    with self.worker.publish_lock:
      self.metrics.set_gauge("queue_depth", self.store.queue_depth())
      self.metrics.set_gauge("indexed", len(self.index))
    return self.metrics.snapshot()


# Numbers must be finite: FastAPI's JSON parser reads NaN, Infinity and 1e400 (as infinity).
_Timestamp = Annotated[float, Field(allow_inf_nan=False, ge=0.0, le=_MAX_TIMESTAMP)]


def _within_float32(x: float) -> float:
  if abs(x) > _FLOAT32_MAX:
    raise ValueError(f"{x:g} is beyond float32's range (magnitude at most {_FLOAT32_MAX:.4g})")
  return x


# A vector component: the index holds float32, where 1e39 is infinity.
_Float32 = Annotated[float, Field(allow_inf_nan=False), AfterValidator(_within_float32)]


def _request_models(config):
  """Request bodies, with limits from the config; strict types, unknown fields rejected."""
  strict = ConfigDict(strict=True, extra="forbid")
  PostId = Annotated[str, StringConstraints(min_length=1, max_length=_MAX_ID_CHARS)]
  # Empty or whitespace-only texts are refused by the rule the batch job applies too (serving/texts.py).
  Text = Annotated[str, StringConstraints(max_length=config.max_text_chars), AfterValidator(check_text)]
  Texts = Annotated[list[Text], Field(min_length=1, max_length=config.max_request_posts)]

  class PostIn(BaseModel):
    model_config = strict
    id: PostId
    text: Text
    timestamp: _Timestamp | None = None  # the post's creation time, Unix seconds

  class PostBatch(BaseModel):
    model_config = strict
    posts: list[PostIn] = Field(min_length=1, max_length=config.max_request_posts)

  class SearchQuery(BaseModel):
    model_config = strict
    text: Text | None = None
    vector: list[_Float32] | None = None
    k: int = Field(10, ge=1, le=config.max_search_k)

    @model_validator(mode="after")
    def one_query(self):
      if (self.text is None) == (self.vector is None):
        raise ValueError("give exactly one of 'text' or 'vector'")
      return self

  class MemberQuery(BaseModel):
    model_config = strict
    engaged: list[PostId] = Field(min_length=1, max_length=10_000)
    k: int = Field(10, ge=1, le=config.max_search_k)
    max_clusters: int = Field(5, ge=1, le=50)

  class EmbeddingsIn(BaseModel):
    """OpenAI's embeddings request (token-id inputs are not accepted; ``user`` is accepted and unused)."""

    model_config = strict
    input: Text | Texts
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

  return PostIn, PostBatch, SearchQuery, MemberQuery, EmbeddingsIn


def _finite_json(value):
  """``value`` with non-finite floats as strings: a 422 quoting a NaN input must still be valid JSON."""
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  if isinstance(value, dict):
    return {k: _finite_json(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [_finite_json(v) for v in value]
  return value


def read_token(config) -> str | None:
  """The bearer token of ``config.auth_token_file`` (surrounding whitespace stripped), None when unset."""
  if not config.get("auth_token_file"):
    return None
  path = Path(config.auth_token_file).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"config.auth_token_file: {path} does not exist.")
  token = path.read_text().strip()
  if not token:
    raise ValueError(f"config.auth_token_file: {path} is empty.")
  return token


def check_exposure(config) -> None:
  """Refuses to listen beyond loopback without a token: anyone who reaches the port could rewrite any post."""
  if config.get("auth_token_file"):
    return
  try:
    loopback = ipaddress.ip_address(config.host).is_loopback
  except ValueError:
    loopback = config.host in _LOOPBACK_NAMES
  if not loopback:
    raise ValueError(
      f"config.host={config.host!r} is reachable beyond this machine; set config.auth_token_file (a file holding a "
      "bearer token) or listen on 127.0.0.1."
    )


def create_app(config, *, embedder: Embedder | None = None) -> FastAPI:
  """The HTTP API over one ``Nearline``, built on startup and closed on shutdown (FastAPI lifespan)."""
  PostIn, PostBatch, SearchQuery, MemberQuery, EmbeddingsIn = _request_models(config)
  max_body_bytes = config.max_request_posts * (4 * config.max_text_chars + 4 * _MAX_ID_CHARS + 64) + 1024
  token = read_token(config)
  expected_authorization = None if token is None else f"Bearer {token}".encode()

  @contextlib.asynccontextmanager
  async def lifespan(app: FastAPI):
    app.state.nearline = Nearline(config, embedder)
    try:
      yield
    finally:
      app.state.nearline.close()

  app = FastAPI(title="postembed_jax near-line embeddings", lifespan=lifespan)

  @app.exception_handler(BrokerUnavailable)
  async def broker_unavailable(request: Request, e: BrokerUnavailable):
    return JSONResponse(status_code=503, content=dict(detail=f"{e} Nothing was acknowledged; resending is safe."))

  def nearline() -> Nearline:
    return app.state.nearline

  @app.exception_handler(RequestValidationError)
  async def invalid_request(request: Request, e: RequestValidationError):
    return JSONResponse(status_code=422, content=_finite_json(jsonable_encoder({"detail": e.errors()})))

  @app.middleware("http")
  async def limit_body_size(request: Request, call_next):
    length = request.headers.get("content-length", "0")
    if not length.isdigit() or int(length) > max_body_bytes:
      return JSONResponse(
        status_code=413,
        content=dict(
          detail=f"Request body of {length} bytes; the limit is {max_body_bytes} "
          f"({config.max_request_posts} posts of {config.max_text_chars} characters)."
        ),
      )
    return await call_next(request)

  @app.middleware("http")
  async def authenticate(request: Request, call_next):
    if expected_authorization is None or request.url.path in _OPEN_PATHS:
      return await call_next(request)
    given = request.headers.get("authorization", "").encode()
    if not hmac.compare_digest(given, expected_authorization):  # constant time: no prefix of the token leaks
      return JSONResponse(
        status_code=401,
        content=dict(detail="This service needs 'Authorization: Bearer <token>' (config.auth_token_file)."),
        headers={"WWW-Authenticate": "Bearer"},
      )
    return await call_next(request)

  @app.middleware("http")
  async def time_requests(request: Request, call_next):
    start = time.perf_counter()
    response = await call_next(request)
    route = getattr(request.scope.get("route"), "path", "unmatched")  # the template: no per-id label
    nearline().metrics.observe_request(route, request.method, response.status_code, time.perf_counter() - start)
    return response

  def submit(posts) -> list[str]:
    try:
      return nearline().submit([Post(p.id, p.text, p.timestamp) for p in posts])
    except QueueFull as e:
      retry = nearline().retry_after_s(e.depth)
      raise HTTPException(
        429,
        detail=f"Embedding is behind: {e} Nothing from this request was stored; retry in {retry} s.",
        headers={"Retry-After": str(retry)},
      ) from None

  @app.post("/posts", status_code=202)
  def submit_post(post: PostIn):
    return dict(id=post.id, status=submit([post])[0])

  @app.post("/posts/batch", status_code=202)
  def submit_posts(batch: PostBatch):
    return dict(results=[dict(id=p.id, status=s) for p, s in zip(batch.posts, submit(batch.posts))])

  @app.get("/posts/{post_id:path}")
  def get_post(post_id: str):
    post = nearline().get(post_id)
    if post is None:
      raise HTTPException(404, detail=f"No post with id {post_id!r}.")
    post.pop("key")
    post["embedding"] = None if post["embedding"] is None else post["embedding"].tolist()
    return post

  @app.delete("/posts/{post_id:path}")
  def delete_post(post_id: str):
    if not nearline().delete(post_id):
      raise HTTPException(404, detail=f"No post with id {post_id!r}.")
    return dict(id=post_id, status="deleted")

  @app.post("/search")
  def search(query: SearchQuery):
    if query.vector is not None:
      if len(query.vector) != nearline().embedder.dim:
        raise HTTPException(
          422,
          detail=f"'vector' has {len(query.vector)} numbers; the model's embeddings have {nearline().embedder.dim}.",
        )
      vector = np.asarray(query.vector, np.float32)
    else:
      vector = nearline().embed_queries([query.text])[0]
    return dict(results=nearline().search(vector, query.k))

  @app.post("/members/feed")
  def member_feed(query: MemberQuery):
    try:
      return nearline().member_feed(query.engaged, query.k, query.max_clusters)
    except LookupError as e:
      raise HTTPException(404, detail=str(e)) from None

  def embedding_width(dimensions: int | None) -> int:
    """OpenAI's ``dimensions``: a Matryoshka width the export was trained at (serving/vectors.py), else 422."""
    n = nearline()
    if dimensions is None or dimensions == n.embedder.dim:
      return n.embedder.dim
    if not n.matryoshka_widths:
      raise HTTPException(
        422,
        detail=f"'dimensions'={dimensions}: {n.embedder.name} was not trained with Matryoshka widths; it embeds at "
        f"{n.embedder.dim} dimensions only.",
      )
    if dimensions not in n.matryoshka_widths:
      raise HTTPException(
        422,
        detail=f"'dimensions'={dimensions}: {n.embedder.name} was trained at widths "
        f"{', '.join(map(str, n.matryoshka_widths))}.",
      )
    return dimensions

  @app.post("/v1/embeddings")
  def embeddings(request: EmbeddingsIn):
    n = nearline()
    if request.model != n.embedder.name:
      raise HTTPException(422, detail=f"'model'={request.model!r}: this service embeds with {n.embedder.name!r}.")
    texts = [request.input] if isinstance(request.input, str) else request.input
    out, tokens = n.embed_now(texts, embedding_width(request.dimensions))
    if request.encoding_format == "base64":  # OpenAI's: the little-endian float32 bytes
      encoded = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in out]
    else:
      encoded = [v.tolist() for v in out]
    return dict(
      object="list",
      data=[dict(object="embedding", index=i, embedding=e) for i, e in enumerate(encoded)],
      model=n.embedder.name,
      usage=dict(prompt_tokens=tokens, total_tokens=tokens),
    )

  @app.get("/health")
  def health():
    body = nearline().health()
    return JSONResponse(status_code=200 if body["status"] == "ok" else 503, content=body)

  @app.get("/metrics")
  def metrics():
    nearline().stats()  # brings the gauges up to date
    return Response(nearline().metrics.prometheus_text(), media_type=CONTENT_TYPE_LATEST)

  @app.get("/stats")
  def stats():
    return nearline().stats()

  return app


def serve(config) -> None:
  """Runs the service in this process until SIGINT/SIGTERM (then the worker finishes its batch and the index is
  saved; a SIGKILL loses nothing acknowledged either, only the index's cache of the latest batches)."""
  import uvicorn

  from postembed_jax import compilation_cache

  check_exposure(config)
  read_token(config)  # a missing or empty token file fails here, before the model loads
  logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  # Every shape, however quick: a restarted service meets them all at once.
  compilation_cache.enable(config.compilation_cache_dir, min_compile_secs=0)
  # Loaded here rather than in the app's startup, where uvicorn would turn a bad --config.model into a traceback.
  embedder = Embedder.from_pretrained(
    config.model, max_length=config.max_length, batch_size=config.embed_batch_size, dtype=dtype_of(config.dtype)
  )
  uvicorn.run(
    create_app(config, embedder=embedder),
    host=config.host,
    port=config.port,
    log_level=config.log_level,
    access_log=config.access_log,
  )
