"""The event files MetricsWriter writes (with tensorboardX) are read by TensorBoard's own reader, the one behind
`tensorboard --logdir <workdir>` that docs/training.md points to; the JSONL log holds the same numbers."""

import numpy as np
from tensorboard.backend.event_processing import event_accumulator

from postembed_jax.train.metrics_writer import MetricsWriter, read_metrics


def test_tensorboard_reads_the_scalars_we_write(tmp_path):
  writer = MetricsWriter(tmp_path)
  writer.write(0, {"val/interest/pair_auc": 0.701, "train/loss": 0.69, "vector": np.zeros(3)})
  writer.write(200, {"val/interest/pair_auc": 0.816, "train/loss": 0.41})
  writer.write_matrix(200, "affinity", np.array([[0.0, 0.5], [-0.25, 0.0]]), ["search", "hashtag"])
  writer.close()

  (run,) = (tmp_path / "tensorboard").iterdir()
  acc = event_accumulator.EventAccumulator(str(run))
  acc.Reload()
  scalars = acc.Tags()["scalars"]
  assert "vector" not in scalars
  assert sorted(scalars) == sorted(
    ["val/interest/pair_auc", "train/loss"]
    + [f"affinity/{a}_to_{b}" for a in ("search", "hashtag") for b in ("search", "hashtag")]
  )
  auc = acc.Scalars("val/interest/pair_auc")
  assert [e.step for e in auc] == [0, 200]
  np.testing.assert_allclose([e.value for e in auc], [0.701, 0.816], rtol=1e-6)
  assert acc.Scalars("affinity/hashtag_to_search")[0].value == -0.25
  assert [r["step"] for r in read_metrics(tmp_path)] == [0, 200, 200]
