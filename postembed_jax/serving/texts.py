"""The one rule for which texts are embedded, shared by the near-line service and the batch job.

A text with no characters besides whitespace tokenizes to nothing but the special tokens, so every such post gets
the same meaningless vector: the service refuses it (HTTP 422) and the batch job stops naming the file and line,
or skips and counts it with ``--config.skip_empty_texts=True``.
"""


class EmptyTextError(ValueError):
  """A text that is empty or only whitespace."""


def check_text(text: str) -> str:
  """Returns ``text`` unchanged; raises EmptyTextError when it has no non-whitespace character."""
  if not text.strip():
    raise EmptyTextError("text is empty or only whitespace; it would embed as the special tokens alone")
  return text
