"""Every launcher takes its settings one way (an ml_collections config file and --config.FIELD overrides, through
config_overrides.define_config_flag), lists them in --help, and fails at once on a mistyped argument."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCHERS = sorted(p for p in (REPO / "launch").glob("*.py") if p.name != "__init__.py")


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
  assert "--[no]verbose: On an error, print the full traceback" in result.stdout  # launching.run's flag
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


def test_packages_in_pyproject_are_the_tree():
  """pyproject.toml lists the packages by hand (launch/ and configs/ are mapped into the package); a new subpackage
  left off the list would be missing from every non-editable install."""
  tomllib = pytest.importorskip("tomllib")
  setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
  tree = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "postembed_jax").rglob("__init__.py")}
  mapped = {"postembed_jax.launch": "launch", "postembed_jax.configs": "configs"}
  assert setuptools["package-dir"] == mapped
  assert sorted(setuptools["packages"]) == sorted(tree | set(mapped))
  assert all((REPO / d / "__init__.py").is_file() for d in mapped.values())


def _launch_elsewhere(cwd, module, *args, env=None):
  return subprocess.run(
    [sys.executable, "-m", f"postembed_jax.launch.{module}", *args],
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )


def test_launchers_run_as_modules_from_outside_the_repository(tmp_path):
  """`python -m postembed_jax.launch.X` from another directory: `configs/NAME.py` is found in the package's copy."""
  help_ = _launch_elsewhere(tmp_path, "embed", "--config", "configs/embed.py:quick", "--help")
  assert "Fields of configs/embed.py:quick" in help_.stdout and "config.max_length = 128" in help_.stdout
  # Past flag parsing into the job (the default config, loaded by ml_collections from the installed copy).
  failed = _launch_elsewhere(tmp_path, "embed", "--config.input=posts.jsonl", "--config.output=emb.parquet")
  assert failed.returncode == 1 and "config.input: posts.jsonl does not exist" in failed.stderr, failed.stderr
  missing = _launch_elsewhere(tmp_path, "train", "--config", "configs/nope.py")
  assert missing.returncode == 1 and "No config file 'configs/nope.py'" in missing.stderr


def test_a_non_editable_install_runs_the_launchers(tmp_path):
  """The wheel holds the launchers and configs: installed into a directory of its own (first on sys.path) from a
  copy of the sources, it runs a launcher from an unrelated directory with no clone in sight."""
  src = tmp_path / "src"
  for name in ("pyproject.toml", "README.md", "LICENSE"):
    (src / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / name, src / name)
  ignore = shutil.ignore_patterns("__pycache__")
  for name in ("postembed_jax", "launch", "configs"):
    shutil.copytree(REPO / name, src / name, ignore=ignore)
  site = tmp_path / "site"
  pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", f"--target={site}"]
  built = subprocess.run([*pip, str(src)], capture_output=True, text=True, timeout=300)
  assert built.returncode == 0, built.stderr[-3000:]
  assert (site / "postembed_jax/launch/train.py").is_file() and (site / "postembed_jax/configs/mtl.py").is_file()
  work = tmp_path / "work"
  work.mkdir()
  env = dict(os.environ, PYTHONPATH=str(site))
  where = subprocess.run(
    [sys.executable, "-c", "import postembed_jax.launch.train as m; print(m.__file__)"],
    cwd=work,
    capture_output=True,
    text=True,
    env=env,
  )
  assert where.stdout.strip() == str(site / "postembed_jax/launch/train.py"), where.stderr
  result = _launch_elsewhere(work, "build_data", "--config=configs/data.py", "--help", env=env)
  assert "config.release = 'bookworm'" in result.stdout, result.stderr[-3000:]


# Every launcher ends through launching.run: an expected error is one line on stderr and status 1. One cheap
# mistake per launcher, each caught before any real work.
USER_ERRORS = {
  "ablate.py": ("--config.regimes=bogus", "--config.workdir={tmp}/ablation"),
  "build_data.py": ("--config.index_dir={tmp}/bogus", "--config.data_dir={tmp}/tfds"),
  "embed.py": ("--config.input={tmp}/bogus.jsonl", "--config.output={tmp}/out.parquet"),
  "embed_worker.py": ("--config.queue=bogus", "--config.db_path={tmp}/posts.sqlite3"),
  "evaluate.py": ("--config.model={tmp}/bogus", "--config.output_dir={tmp}/out"),
  "evaluate_members.py": ("--config.model={tmp}/bogus",),
  "serve.py": ("--config.model={tmp}/bogus", "--config.db_path={tmp}/posts.sqlite3"),
  "train.py": ("--config.model={tmp}/bogus", "--workdir={tmp}/run"),
}


def test_every_launcher_ends_through_launching_run():
  assert sorted(USER_ERRORS) == [p.name for p in LAUNCHERS]
  for path in LAUNCHERS:
    source = path.read_text()
    assert "launching.run(main)" in source and "app.run(" not in source, f"{path.name}: end with launching.run"


@pytest.mark.parametrize("launcher", sorted(USER_ERRORS))
def test_a_user_error_is_one_line_and_status_1(launcher, tmp_path):
  result = _run(f"launch/{launcher}", *(a.format(tmp=tmp_path) for a in USER_ERRORS[launcher]))
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"{launcher}: error: ") and "bogus" in last, last


def test_verbose_adds_the_traceback(tmp_path):
  result = _run("launch/build_data.py", f"--config.index_dir={tmp_path}/bogus", "--verbose")
  assert result.returncode == 1
  assert "Traceback (most recent call last)" in result.stderr and "FileNotFoundError" in result.stderr
  assert (
    result.stderr.strip().splitlines()[-1] == f"build_data.py: error: No InRelease or Release file in {tmp_path}/bogus"
  )


# A launcher whose main raises what the command line names: internal (a library's error), user, or preempted.
RAISING_LAUNCHER = """
import ml_collections
from postembed_jax import launching
from postembed_jax.data import config as data_config

def main(argv):
  if argv[1] == "internal":
    ml_collections.ConfigDict({"a": 1}).b
  if argv[1] == "user":
    data_config.resolve_tasks(data_config.default_data_config(), "bogus")
  raise launching.Preempted("Preempted by SIGTERM at step 3 of 9; saved it in run/checkpoints/3.")

launching.run(main)
"""


def test_exit_statuses_of_the_wrapper(tmp_path):
  from postembed_jax import launching

  script = tmp_path / "job.py"
  script.write_text(RAISING_LAUNCHER)
  internal = _run(script, "internal")
  assert internal.returncode == launching.EXIT_INTERNAL_ERROR == 70
  assert internal.stderr.strip().splitlines() == [
    f"job.py: internal error in ml_collections ({script}:8, main): AttributeError: \"'b'\" "
    "(rerun with --verbose for the traceback)"
  ]
  verbose = _run(script, "internal", "--verbose")
  assert verbose.returncode == 70 and "Traceback (most recent call last)" in verbose.stderr
  assert verbose.stderr.strip().splitlines()[-1].endswith("(the traceback is above)")
  user = _run(script, "user")
  assert user.returncode == launching.EXIT_USER_ERROR == 1
  (line,) = user.stderr.strip().splitlines()  # the package's own message, whole, on one line
  assert line.startswith("job.py: error: Unknown task 'bogus'; valid tasks: ['debtags', 'hashtag', "), line
  preempted = _run(script, "preempted", "--noverbose")
  assert preempted.returncode == launching.EXIT_PREEMPTED == 75
  assert preempted.stderr.strip().splitlines() == [
    "job.py: Preempted by SIGTERM at step 3 of 9; saved it in run/checkpoints/3. Run the same command again to "
    f"resume: python {script} preempted --noverbose"
  ]
