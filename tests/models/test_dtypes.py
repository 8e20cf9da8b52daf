"""The one table of compute dtypes that training, batch embedding and the service read config.dtype through."""

import jax.numpy as jnp
import pytest

from postembed_jax.models.dtypes import dtype_of


def test_names_map_to_dtypes():
  assert dtype_of("float32") is jnp.float32 and dtype_of("bfloat16") is jnp.bfloat16


def test_unknown_name_names_the_field_and_the_choices():
  with pytest.raises(ValueError, match=r"^config.dtype='fp16'; choose one of \['bfloat16', 'float32'\]\.$"):
    dtype_of("fp16")
  with pytest.raises(ValueError, match=r"^embed.dtype='half';"):
    dtype_of("half", "embed.dtype")
