"""Every launcher takes its settings one way (an ml_collections config file and --config.FIELD overrides, through
config_overrides.define_config_flag), lists them in --help, and fails at once on a mistyped argument."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAUNCHERS = sorted((REPO / "launch").glob("*.py"))


def _run(*args, timeout=300):
  return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_every_launcher_defines_its_config_through_config_overrides():
  assert LAUNCHERS
  for path in LAUNCHERS:
    source = path.read_text()
    assert "config_overrides.define_config_flag(" in source, f"{path.name}: define --config with define_config_flag"
    assert "argparse" not in source, f"{path.name}: flags are absl / ml_collections"


def test_help_lists_the_config_fields_and_arguments():
  result = _run("launch/build_data.py", "--help")  # absl exits 1 after printing the help
  assert "config.release = 'bookworm'" in result.stdout and "config.mirror = None (str)" in result.stdout
  assert "config.force = False" in result.stdout
  result = _run("launch/build_data.py", "--config=configs/data.py:quick")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith("--config configs/data.py:quick: Unknown config variant")


def test_evaluate_members_writes_its_report(tmp_path, fixture_data_config, tiny_model_dir):
  out = tmp_path / "reports" / "members.json"
  result = _run(
    "launch/evaluate_members.py",
    "--config",
    "configs/members.py",
    f"--config.model={tiny_model_dir}",
    "--config.split=train",
    "--config.n_members=6",
    "--config.max_length=32",
    f"--config.index_dir={fixture_data_config.index_dir}",
    f"--config.data_dir={fixture_data_config.data_dir}",
    f"--config.out={out}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert (report["members"], report["split"], report["max_length"]) == (6, "train", 32)
  assert report["posts"] > 100
  for metric in ("recall", "interest_precision"):
    assert 0.0 <= report[metric]["max_clusters=1"]["@10"]["mean"] <= 1.0
  assert json.loads(result.stdout[result.stdout.index("{\n") :]) == report  # printed too, after any build log
