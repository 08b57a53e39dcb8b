"""Recovery after pruning: knowledge distillation of the pruned model towards the dense
one on the user's unlabelled inputs (`graphprune finetune`, `prune --recover`).

The engine is our own lowering of ONNX onto torch (`lowering`: an interpreter that walks the
graph in order, one small torch function per op in `ops_*`), trained with torch autograd;
the teacher runs in onnxruntime (`teacher`), the loop is `distill`, and `writeback` puts the
trained values into the pruned model's own initializers, so the written graph is the pruned
one exactly. torch is optional for graphprune: only the modules that train import it, and
`require_torch` refuses in one line where it is missing.
"""

from __future__ import annotations

import importlib.util

from ..errors import GraphpruneError

INSTALL_HINT = "pip install 'graphprune[train]'"


def require_torch() -> None:
    """Refuse (one line) where torch is not installed: recovery trains with it."""
    if importlib.util.find_spec("torch") is None:
        raise GraphpruneError(f"recovery (finetune, --recover) needs torch: {INSTALL_HINT}")
