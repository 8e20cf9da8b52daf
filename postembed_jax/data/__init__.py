"""Data: the Debian package corpus (TFDS), paper-style tasks, user files and
the grain input pipeline. See docs/data.md."""
