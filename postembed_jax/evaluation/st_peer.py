"""The peer a user would pick instead of us: a sentence-transformers multi-task fine-tune of the same base model on
the same tasks and pair budget, scored by the same evaluators.

Recipe (the library's own multi-task loop, ``SentenceTransformer.old_fit``): one DataLoader of positive pairs per
task, MultipleNegativesRankingLoss (in-batch negatives, so batches are single-task), round-robin over the tasks
(one batch of each task per step, each its own update), AdamW with linear warm-up and decay, and a Dense projection
to our width plus normalisation, so both models are judged at the same number of dimensions.

``launch/evaluate.py --config.model=st_mtl:all-MiniLM-L6-v2`` trains it once into ``<output_dir>/peers/<key>``
(the key hashes the recipe) and scores it; a second command reuses the trained model.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from postembed_jax.data import config as data_config_lib
from postembed_jax.data import examples as data_examples
from postembed_jax.data.lists import as_list
from postembed_jax.models import hf_io

PEER_NAME = re.compile(r"^st_mtl:(.+)$")
RECIPE_FIELDS = ("tasks", "steps", "batch_size", "lr", "warmup_steps", "max_length", "embed_dim", "scale", "seed")


def parse_peer_name(name: str) -> str | None:
  """``"st_mtl:all-MiniLM-L6-v2"`` -> ``"all-MiniLM-L6-v2"``; None for any other name."""
  match = PEER_NAME.match(name)
  return match.group(1) if match else None


class SentenceTransformerEmbedder:
  """A sentence-transformers model behind the evaluators' interface (``embed``, ``dim``, ``name``)."""

  def __init__(self, model, *, name: str, batch_size: int = 64):
    self.model, self.name, self.batch_size = model, name, batch_size
    self.dim = int(model.get_embedding_dimension())

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    if not len(texts):
      return np.zeros((0, self.dim), np.float32)
    return np.asarray(
      self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False),
      np.float32,
    )


def recipe_key(base: str, peer_config) -> str:
  recipe = {"base": base, **{f: peer_config[f] for f in RECIPE_FIELDS}}
  return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]


def train_peer(base: str, peer_config, data_config, out_dir: str | Path) -> Path:
  """Fine-tunes ``base`` as described in the module docstring and saves it to ``out_dir`` (written to a temporary
  directory first, so a killed run leaves no half-saved model behind)."""
  import torch
  from sentence_transformers import InputExample, SentenceTransformer
  from sentence_transformers.sentence_transformer import losses, modules
  from torch.utils.data import DataLoader

  out_dir = Path(out_dir)
  torch.manual_seed(int(peer_config.seed))
  model = SentenceTransformer(str(hf_io.resolve_model_dir(base)), device="cpu")
  model.max_seq_length = int(peer_config.max_length)
  width = model.get_embedding_dimension()
  if peer_config.embed_dim and peer_config.embed_dim != width:
    model.append(modules.Dense(width, int(peer_config.embed_dim), activation_function=torch.nn.Identity()))
  model.append(modules.Normalize())
  config = data_config_lib.default_data_config()
  config.update({k: data_config[k] for k in data_config.keys() if k in config})
  config.neg_ratio, config.max_examples_per_task = 0.0, 0  # MNRL takes positives; negatives are in-batch
  objectives = []
  for name in as_list(peer_config.tasks):
    task = data_config_lib.resolve_tasks(config, [name])[name]
    pairs = data_examples.task_examples(task, "train", config, seed=int(peer_config.seed))
    rows = [InputExample(texts=[p["left"], p["right"]]) for p in pairs if p["label"] > 0]
    loader = DataLoader(rows, shuffle=True, batch_size=int(peer_config.batch_size), drop_last=True)
    objectives.append((loader, losses.MultipleNegativesRankingLoss(model, scale=float(peer_config.scale))))
  start = time.perf_counter()
  model.old_fit(
    train_objectives=objectives,
    epochs=1,
    steps_per_epoch=int(peer_config.steps),
    warmup_steps=int(peer_config.warmup_steps),
    optimizer_params={"lr": float(peer_config.lr)},
    show_progress_bar=True,
  )
  partial = out_dir.with_name(out_dir.name + ".partial")
  model.save(str(partial))
  (partial / "peer.json").write_text(
    json.dumps(
      {
        "base": base,
        "recipe": {f: peer_config[f] for f in RECIPE_FIELDS},
        "train_seconds": round(time.perf_counter() - start, 1),
      },
      indent=2,
      default=str,
    )
  )
  partial.rename(out_dir)
  return out_dir


def load_peer(base: str, config) -> SentenceTransformerEmbedder:
  """The trained peer of ``base`` under ``config.peer`` (trained first if ``config.output_dir`` lacks it)."""
  from sentence_transformers import SentenceTransformer

  path = Path(config.output_dir).expanduser() / "peers" / recipe_key(base, config.peer)
  if not path.is_dir():
    train_peer(base, config.peer, config.data, path)
  return SentenceTransformerEmbedder(
    SentenceTransformer(str(path), device="cpu"), name=f"st_mtl:{base}", batch_size=config.batch_size
  )
