"""The near-line embedding service: posts are accepted durably, embedded in micro-batches, readable by id, searchable
by text or vector, and retrievable for members through their interest clusters.

``Nearline`` wires store, index, worker and embedder together and works without HTTP; ``create_app`` puts the
FastAPI API in front of it; ``serve`` runs that under uvicorn (launch/serve.py calls it).

  POST /posts          {"id", "text", "timestamp"?}       -> 202 {"id", "status": created|updated|unchanged}
  POST /posts/batch    {"posts": [...]}                   -> 202 {"results": [{"id", "status"}, ...]}
  GET  /posts/{id}                                        -> {"id", "status": pending|embedded, "embedding", ...}
                                                             (embedded: /search finds it from then on)
  POST /search         {"text" | "vector", "k"}           -> {"results": [{"id", "score"}, ...]}
  POST /members/feed   {"engaged": [ids], "k", "max_clusters"} -> {"interests": [...], "results": [...]}
  GET  /health, GET /metrics
A submission is acknowledged only once it is committed to SQLite. When the queue is full the API answers 429 with
Retry-After and stores nothing of that request; resubmitting is always safe (same text: a no-op; new text: an edit).
"""

import contextlib
import logging
import math
import threading
from typing import Annotated

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from postembed_jax.models.dtypes import dtype_of
from postembed_jax.models.embedder import Embedder
from postembed_jax.serving import members
from postembed_jax.serving.index import open_index
from postembed_jax.serving.metrics import ServiceMetrics
from postembed_jax.serving.store import Post, PostStore, QueueFull
from postembed_jax.serving.texts import check_text
from postembed_jax.serving.worker import EmbedWorker

log = logging.getLogger(__name__)

_MAX_ID_CHARS = 256
_MAX_RETRY_AFTER_S = 60


class Nearline:
  """One database, its index, the embed worker and the model; ``close`` stops the worker and saves the index."""

  def __init__(self, config, embedder: Embedder | None = None):
    self.config = config
    self.embedder = embedder or Embedder.from_pretrained(
      config.model, max_length=config.max_length, batch_size=config.embed_batch_size, dtype=dtype_of(config.dtype)
    )
    self.store = PostStore(config.db_path, sync=config.sync)
    try:
      self.store.bind_model(self.embedder.name, self.embedder.dim)
      self.index = open_index(config.index_path, self.store, exact_below=config.exact_search_below)
      if config.warmup:
        self.embedder.warm_up(config.max_batch)
    except BaseException:
      self.store.close()
      raise
    self.metrics = ServiceMetrics()
    self._embed_lock = threading.Lock()  # the tokenizer is not thread-safe; the worker and queries share it
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
    self.store.close()

  def submit(self, posts: list[Post]) -> list[str]:
    """Durably stores posts; raises QueueFull (storing none of them) when the worker is too far behind."""
    try:
      statuses = self.store.submit(posts, max_queue=self.config.max_queue)
    except QueueFull:
      self.metrics.count("requests_rejected_busy")
      raise
    accepted = sum(s != "unchanged" for s in statuses)
    self.metrics.count("posts_accepted", accepted)
    self.metrics.count("posts_unchanged", len(statuses) - accepted)
    if accepted:
      self.worker.notify()
    return statuses

  def retry_after_s(self, depth: int) -> int:
    """Seconds the worker needs to drain ``depth`` posts at its recent speed."""
    rate = self.metrics.embed_rate or 1.0
    return int(min(max(math.ceil(depth / rate), 1), _MAX_RETRY_AFTER_S))

  def embed_queries(self, texts: list[str]) -> np.ndarray:
    with self._embed_lock:
      return self.embedder.embed(texts)

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
      return self.store.get(post_id)

  def health(self) -> dict:
    with self.worker.publish_lock:
      indexed, counts = len(self.index), self.store.counts()
    return dict(
      status="ok" if self.worker.alive else "worker stopped",
      model=self.embedder.name,
      dim=self.embedder.dim,
      indexed=indexed,
      worker_last_error=self.worker.last_error,
      **counts,
    )


def _request_models(config):
  """Request bodies, with limits from the config; strict types, unknown fields rejected."""
  strict = ConfigDict(strict=True, extra="forbid")
  PostId = Annotated[str, StringConstraints(min_length=1, max_length=_MAX_ID_CHARS)]
  # Empty or whitespace-only texts are refused by the rule the batch job applies too (serving/texts.py).
  Text = Annotated[str, StringConstraints(max_length=config.max_text_chars), AfterValidator(check_text)]

  class PostIn(BaseModel):
    model_config = strict
    id: PostId
    text: Text
    timestamp: float | None = None  # the post's creation time, Unix seconds

  class PostBatch(BaseModel):
    model_config = strict
    posts: list[PostIn] = Field(min_length=1, max_length=config.max_request_posts)

  class SearchQuery(BaseModel):
    model_config = strict
    text: Text | None = None
    vector: list[float] | None = None
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

  return PostIn, PostBatch, SearchQuery, MemberQuery


def create_app(config, *, embedder: Embedder | None = None) -> FastAPI:
  """The HTTP API over one ``Nearline``, built on startup and closed on shutdown (FastAPI lifespan)."""
  PostIn, PostBatch, SearchQuery, MemberQuery = _request_models(config)
  max_body_bytes = config.max_request_posts * (4 * config.max_text_chars + 4 * _MAX_ID_CHARS + 64) + 1024

  @contextlib.asynccontextmanager
  async def lifespan(app: FastAPI):
    app.state.nearline = Nearline(config, embedder)
    try:
      yield
    finally:
      app.state.nearline.close()

  app = FastAPI(title="postembed_jax near-line embeddings", lifespan=lifespan)

  def nearline() -> Nearline:
    return app.state.nearline

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

  @app.get("/health")
  def health():
    body = nearline().health()
    return JSONResponse(status_code=200 if body["status"] == "ok" else 503, content=body)

  @app.get("/metrics")
  def metrics():
    with nearline().worker.publish_lock:
      depth, indexed = nearline().store.queue_depth(), len(nearline().index)
    return dict(nearline().metrics.snapshot(), queue_depth=depth, indexed=indexed)

  return app


def serve(config) -> None:
  """Runs the service in this process until SIGINT/SIGTERM (then the worker finishes its batch and the index is
  saved; a SIGKILL loses nothing acknowledged either, only the index's cache of the latest batches)."""
  import uvicorn

  from postembed_jax import compilation_cache

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
