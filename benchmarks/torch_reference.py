"""The PyTorch fine-tuning loop a user would write with transformers, as benchmarks/train_throughput.py's
reference: AutoModel + mean pooling + Linear + normalise, BCE on scale * cos + bias, AdamW, shuffled DataLoaders."""

from __future__ import annotations

import collections
import math
import time
from pathlib import Path
from typing import Any

import numpy as np


class TorchTrainer:
  """What a user writes with transformers: AutoModel + mean pooling + Linear + normalise, one scale/bias pair per
  task, BCE on scale * cos + bias, AdamW (same learning rates, weight decay and schedule), clip_grad_norm_."""

  def __init__(self, model_dir: Path, config, task_names: list[str], *, threads: int = 0):
    import torch
    from transformers import AutoModel, AutoTokenizer

    self.torch = torch
    self.default_threads = torch.get_num_threads()
    if threads:
      torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    self.encoder = AutoModel.from_pretrained(str(model_dir))
    self.encoder.train()  # dropout on, as in our step
    hidden = self.encoder.config.hidden_size
    self.projection = torch.nn.Linear(hidden, config.embed_dim or hidden)
    self.scale = torch.nn.ParameterDict({t: torch.nn.Parameter(torch.tensor(10.0)) for t in task_names})
    self.bias = torch.nn.ParameterDict({t: torch.nn.Parameter(torch.tensor(-5.0)) for t in task_names})
    o = config.optim
    head_params = [*self.projection.parameters(), *self.scale.parameters(), *self.bias.parameters()]
    self.params = [*self.encoder.parameters(), *head_params]
    self.optimizer = torch.optim.AdamW(
      [{"params": list(self.encoder.parameters()), "lr": o.lr}, {"params": head_params, "lr": o.head_lr}],
      weight_decay=o.weight_decay,
    )
    decay_steps = max(config.total_steps - o.warmup_steps, 1)

    def schedule(step):  # linear warm-up, then cosine decay: optax's schedule of our optimizer
      if step < o.warmup_steps:
        return step / o.warmup_steps
      return 0.5 * (1 + math.cos(math.pi * min(step - o.warmup_steps, decay_steps) / decay_steps))

    self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
    self.clip_norm = o.clip_norm
    self.max_length = config.data.max_length
    self.batch_size = config.data.batch_size
    self.seed = config.seed
    self.load_s = time.perf_counter() - start
    self.attention = getattr(self.encoder.config, "_attn_implementation", "?")

  def collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
    """DataLoader collate_fn: tokenise each side, padded to its longest text."""
    kw = dict(padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
    left = self.tokenizer([e["left"] for e in examples], **kw)
    right = self.tokenizer([e["right"] for e in examples], **kw)
    return {
      "left_ids": left["input_ids"],
      "left_mask": left["attention_mask"],
      "right_ids": right["input_ids"],
      "right_mask": right["attention_mask"],
      "label": self.torch.tensor([e["label"] for e in examples], dtype=self.torch.float32),
    }

  def loaders(self, plan: list[dict[str, Any]]) -> dict[str, Any]:
    """One shuffled DataLoader per task over that task's examples in ``plan``."""
    from torch.utils.data import DataLoader

    pools = collections.defaultdict(list)
    for p in plan:
      pools[p["task"]].extend(p["examples"])
    return {
      task: iter(
        DataLoader(
          pool,
          batch_size=self.batch_size,
          shuffle=True,
          collate_fn=self.collate,
          generator=self.torch.Generator().manual_seed(self.seed + i),
        )
      )
      for i, (task, pool) in enumerate(sorted(pools.items()))
    }

  def _embed(self, ids, mask):
    states = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).to(states.dtype)
    pooled = (states * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return self.torch.nn.functional.normalize(self.projection(pooled), dim=-1)

  def train_step(self, task: str, batch: dict[str, Any]) -> float:
    torch = self.torch
    left = self._embed(batch["left_ids"], batch["left_mask"])
    right = self._embed(batch["right_ids"], batch["right_mask"])
    cos = (left * right).sum(-1) / (left.norm(dim=-1) * right.norm(dim=-1) + 1e-9)
    logits = self.scale[task] * cos + self.bias[task]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"])
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
    self.optimizer.step()
    self.scheduler.step()
    value = float(loss.detach())
    if not math.isfinite(value):
      raise FloatingPointError(f"non-finite torch loss on task {task!r}")
    return value

  def from_numpy(self, batch: dict[str, Any]) -> dict[str, Any]:
    """Our pipeline's batch as torch tensors (for the same-shapes control)."""
    t = self.torch
    return {
      k: t.from_numpy(np.asarray(batch[k], np.int64)) for k in ("left_ids", "left_mask", "right_ids", "right_mask")
    } | {"label": t.from_numpy(batch["label"])}


def calibrate_threads(
  reference: TorchTrainer, planned: dict[str, Any], candidates: list[int], *, warmup: int = 1, repeats: int = 1
) -> dict[int, float]:
  """Median step seconds of torch at each thread count on one planned batch (after ``warmup`` steps each). On a
  CPU shared with other jobs, OpenMP's barriers can make torch's multi-threaded steps several times slower than
  single-threaded ones, so the reference gets whichever count is faster now."""
  batch = reference.collate(planned["examples"])
  out = {}
  for threads in candidates:
    reference.torch.set_num_threads(threads)
    times = []
    for i in range(warmup + repeats):
      t0 = time.perf_counter()
      reference.train_step(planned["task"], batch)
      if i >= warmup:
        times.append(time.perf_counter() - t0)
    out[threads] = float(np.median(times))
  return out
