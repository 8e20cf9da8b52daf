"""Data: the Debian package corpus (debian/, TFDS), paper-style tasks, user files, and the grain input pipeline
(config -> examples -> tokenize -> mixture). See docs/data.md."""
