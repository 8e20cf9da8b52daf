"""The launchers, also installed as postembed_jax.launch: `python -m postembed_jax.launch.train --config configs/mtl.py`
runs from any directory (pyproject.toml maps this directory into the package)."""
