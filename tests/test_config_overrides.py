"""Mistyped overrides fail before any work, naming the valid fields."""

import subprocess
import sys
from pathlib import Path

from postembed_jax import config_overrides

REPO = Path(__file__).resolve().parents[1]


def test_unknown_nested_field_lists_valid_fields():
  config = config_overrides.load_config(str(REPO / "configs/mtl.py:quick"))
  assert config.total_steps == 60  # the :quick variant was applied
  message = config_overrides.unknown_override(config, ["--config.optim.lrr=3"])
  assert "config.optim has no field 'lrr'" in message and "head_lr, layer_decay, lr, schedule" in message
  assert config_overrides.unknown_override(config, ["--config.optim.lr=3", "--workdir=x"]) is None


def test_launcher_exits_with_the_message():
  result = subprocess.run(
    [sys.executable, "launch/train.py", "--config=configs/stl.py:search,quick", "--config.data.taks=search"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 1
  assert "config.data has no field 'taks'" in result.stderr and "tasks" in result.stderr


def test_ablation_variants_share_everything_but_their_budget():
  """The default ablation is the quick one's training setup at a larger budget; :long has the main job's batch
  and the full 128-token texts the main job cuts to 64 on a CPU."""
  default, quick, long = (
    config_overrides.load_config(str(REPO / f"configs/ablation.py{v}")) for v in ("", ":quick", ":long")
  )
  main_job = config_overrides.load_config(str(REPO / "configs/mtl.py"))
  assert (default.train.total_steps, quick.train.total_steps, long.train.total_steps) == (80, 40, 2000)
  assert default.train.data.max_length == quick.train.data.max_length == 64
  assert (long.train.data.max_length, long.train.data.batch_size) == (128, main_job.data.batch_size)
  assert main_job.data.max_length == 64
  assert len(default.tasks.split(",")) == 5 and len(default.seeds.split(",")) >= 3


def test_main_job_trains_the_text_to_text_tasks_with_infonce_and_weights_the_label_tasks_2():
  """The recipe chosen on validation (docs/recipes/results.md); :quick and the library defaults keep BCE at weight 1,
  and a single-task run keeps weight 1."""
  main_job, quick = (config_overrides.load_config(str(REPO / f"configs/mtl.py{v}")) for v in ("", ":quick"))
  pair = ("interest", "hashtag", "storyline", "search", "translation")
  assert [main_job.task_losses[t] for t in pair] == ["bce", "bce", "infonce", "infonce", "infonce"]
  assert [main_job.loss_weights[t] for t in pair] == [2.0, 2.0, 1.0, 1.0, 1.0]
  assert [quick.task_losses[t] for t in pair] == ["bce"] * 5 and [quick.loss_weights[t] for t in pair] == [1.0] * 5
  single = config_overrides.load_config(str(REPO / "configs/stl.py:interest"))  # no other task to weigh against
  assert single.loss_weights["interest"] == 1.0 and single.task_losses["search"] == "infonce"


def test_help_text_lists_every_field_with_its_default():
  text = config_overrides.config_help(str(REPO / "configs/stl.py:search,quick"), "Training config.")
  assert "task=interest|hashtag|" in text and "quick (flag, default off)" in text
  assert "config.total_steps = 60" in text and "config.optim.lr = 0.0001" in text
  assert "config.init_checkpoint = None (str)" in text and "config.data.tasks = 'search'" in text


def test_launcher_exits_on_an_unknown_config_variant():
  result = subprocess.run(
    [sys.executable, "launch/train.py", "--config=configs/mtl.py:quik"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 1
  assert result.stderr.strip() == (
    "--config configs/mtl.py:quik: Unknown config variant 'quik' in 'quik'; valid: quick (flag, default off)."
  )
