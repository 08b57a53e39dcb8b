"""Stage 1, models in and out: loading (external data, unique node names, folding of
values known before the run), shape inference, the checker gate, atomic saving."""

from .checks import check_model
from .loading import load_model
from .saving import save_model, write_text_atomically
from .shapes import Shape, infer_shapes

__all__ = ["Shape", "check_model", "infer_shapes", "load_model", "save_model",
           "write_text_atomically"]  # fmt: skip
