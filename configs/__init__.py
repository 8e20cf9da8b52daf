"""The config files, also installed as postembed_jax.configs: a `configs/NAME.py` path that does not exist relative to
the working directory names the installed copy (postembed_jax/config_overrides.py)."""
