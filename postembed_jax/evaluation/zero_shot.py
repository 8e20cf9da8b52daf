"""Frozen-embedding probes: k-NN and a linear classifier fitted on embeddings of training posts.

They score what an embedding already encodes about labels it was never trained on (the held-out tasks), and give
the classification tasks the same treatment, so every label metric reads "how locally / linearly separable are the
labels in this embedding", independent of any head the trainer learned. The linear probe is a ridge classifier with
its regularisation picked by efficient leave-one-out: closed form, so it costs the same on 50 or 4,000 dimensions
(an iterative logistic regression on standardised TF-IDF took minutes) and needs no tuning per model.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import RidgeClassifierCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MultiLabelBinarizer, StandardScaler

PROBES = ("knn", "linear")
RIDGE_ALPHAS = np.logspace(-1, 4, 6)


def label_matrix(labels: list[list[int]], num_labels: int) -> np.ndarray:
  """Lists of label ids -> [N, num_labels] 0/1 indicator matrix."""
  return MultiLabelBinarizer(classes=range(num_labels)).fit_transform(labels)


class FittedProbe:
  """A probe fitted on the labels present in its training data, answering for all ``num_labels`` labels."""

  def __init__(self, estimator, labels_seen: np.ndarray, num_labels: int, multilabel: bool):
    self.estimator = estimator
    self.labels_seen = labels_seen  # label ids, in the order of the estimator's outputs
    self.num_labels = num_labels
    self.multilabel = multilabel

  def scores(self, x: np.ndarray) -> np.ndarray:
    """[N, num_labels] scores (higher = more likely); a label unseen in training scores 0 for every post."""
    if isinstance(self.estimator[-1], KNeighborsClassifier):
      proba = self.estimator.predict_proba(x)
      if self.multilabel:  # one [N, n_classes] array per label, columns in classes_ order
        proba = np.stack(
          [p[:, list(c).index(1)] if 1 in c else np.zeros(len(x)) for p, c in zip(proba, self.estimator[-1].classes_)],
          axis=1,
        )
      seen = proba
    else:
      seen = self.estimator.decision_function(x)
      seen = seen[:, None] if seen.ndim == 1 else seen  # two classes: one margin, positive = second class
      if seen.shape[1] == 1 and len(self.labels_seen) == 2:
        seen = np.concatenate([-seen, seen], axis=1)
    out = np.zeros((len(x), self.num_labels), np.float64)
    out[:, self.labels_seen] = seen
    return out

  def predict(self, x: np.ndarray) -> np.ndarray:
    """Class ids [N] (multi-class) or an [N, num_labels] indicator matrix (multi-label)."""
    predicted = self.estimator.predict(x)
    if not self.multilabel:
      return self.labels_seen[predicted]
    out = np.zeros((len(x), self.num_labels), np.int64)
    out[:, self.labels_seen] = predicted > 0
    return out


def fit_probe(
  probe: str, train_x: np.ndarray, train_labels: list, *, num_labels: int, multilabel: bool, knn_k: int = 10
) -> FittedProbe:
  """Fits ``probe`` ("knn" or "linear") on embeddings and label ids (lists of ids when ``multilabel``)."""
  if probe not in PROBES:
    raise ValueError(f"Unknown probe {probe!r}; valid probes: {list(PROBES)}.")
  if multilabel:
    indicator = label_matrix(train_labels, num_labels)
    labels_seen = np.flatnonzero(indicator.sum(axis=0) > 0)
    target = indicator[:, labels_seen]
  else:
    labels_seen, target = np.unique(np.asarray(train_labels), return_inverse=True)
  if probe == "knn":
    estimator = make_pipeline(
      KNeighborsClassifier(n_neighbors=min(knn_k, len(train_x)), metric="cosine", weights="distance")
    )
  else:
    estimator = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=RIDGE_ALPHAS))
  return FittedProbe(estimator.fit(train_x, target), labels_seen, num_labels, multilabel)
