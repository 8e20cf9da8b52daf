"""Compute dtypes by config name: one table for training, batch embedding and the service, so every launcher accepts
the same names and rejects the same typos."""

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_of(name: str, field: str = "config.dtype"):
  """The JAX dtype named ``name``; a one-line ValueError naming ``field`` and the valid choices otherwise."""
  if name not in DTYPES:
    raise ValueError(f"{field}={name!r}; choose one of {sorted(DTYPES)}.")
  return DTYPES[name]
