"""`apply_plan`: the plan of a graphprune report applied to the PyTorch module it was
exported from.

1. The user's export (the report's `model`, or `model=`) is analysed again and the plan
   read from the report (`plan_from_json`): which channels of which layer go.
2. Each such layer's weight is found among the module's parameters
   (`graphprune.torch.transfer`): the plan as positions of parameter axes.
3. The module is exported once more, without fusions and with every constant traced to
   its parameter (`graphprune.torch.reference`), and analysed; its layers holding those
   parameters lose the same positions, and its edits, applied to positions instead of
   values, say what every parameter and buffer keeps (`graphprune.torch.state`).
4. The tensors are replaced and the layers' size attributes set
   (`graphprune.torch.modules`).

The module's own export then computes what graphprune's pruned model computes (the tests
compare both in onnxruntime).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..api import analyze, load
from ..core.rewrite import PLAN_METADATA_KEY
from ..errors import GraphpruneError
from ..planning.plan import plan_from_json
from .modules import fix_attributes
from .reference import reference_export
from .state import kept_state, replace_state
from .transfer import reference_keep, removed_by_parameter

Source = str | os.PathLike | onnx.ModelProto


def apply_plan(
    module: Any,
    report: dict | str | os.PathLike | onnx.ModelProto,
    example_inputs: tuple | Any,
    *,
    model: Source | None = None,
    kwargs: dict | None = None,
    inplace: bool = False,
) -> Any:
    """The module pruned as `report` prunes its export.

    `report`: a `graphprune prune --report` JSON (path or dict), its "plan", or the pruned
    ONNX model (path or proto; its metadata holds the plan). `model`: the ONNX file the
    plan was made on (default: the report's "model"). `example_inputs` (and `kwargs`): the
    module's inputs, as for `torch.onnx.export`. The module is copied unless `inplace`."""
    record, recorded_model = plan_record(report)
    source = model if model is not None else recorded_model
    if source is None or (model is None and not Path(str(source)).is_file()):
        found = "names no model file" if source is None else f"names {source}, not a file"
        raise GraphpruneError(f"the plan {found}: pass model= (the export it was made on)")
    options = record.get("options", {}) if isinstance(record, dict) else {}
    if options.get("blocks") or options.get("drop_blocks"):
        raise GraphpruneError("apply_plan cannot drop residual blocks yet (a depth plan)")
    approximate = bool(options.get("approximate_norms", False))
    prune_outputs = bool(options.get("prune_outputs", False))
    exported = analyze(load(source), approximate_norms=approximate, prune_outputs=prune_outputs)
    plan = plan_from_json(exported, record)
    module = module if inplace else copy.deepcopy(module)
    was_training = module.training
    module.eval()
    state = _state_arrays(module)
    removed = removed_by_parameter(exported, plan.keep_atom(exported), state)
    if removed:
        args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        reference = reference_export(module, args, kwargs)
        analysis = analyze(
            load(reference.model), approximate_norms=approximate, prune_outputs=prune_outputs
        )
        shapes = _state_shapes(module)
        keep_atom = reference_keep(analysis, reference.origins, shapes, removed)
        replace_state(module, kept_state(analysis, reference, keep_atom, shapes))
        fix_attributes(module)
    module.train(was_training)
    return module


def plan_record(report: dict | str | os.PathLike | onnx.ModelProto) -> tuple[dict, Source | None]:
    """(the plan, the model it was made on when recorded) from a report, a plan or a pruned
    model."""
    if isinstance(report, onnx.ModelProto):
        return _from_metadata(report), None
    if isinstance(report, dict):
        data = report
    else:
        path = Path(report)
        if path.suffix == ".onnx":
            return _from_metadata(onnx.load(str(path), load_external_data=False)), None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise GraphpruneError(f"cannot read the report {path}: {error}") from None
    if not isinstance(data, dict):
        raise GraphpruneError("the report is not a JSON object")
    if "plan" not in data:
        return data, None
    recorded = data.get("model")
    usable = isinstance(recorded, str) and recorded != "<in memory>"
    return data["plan"], recorded if usable else None


def _from_metadata(model: onnx.ModelProto) -> dict:
    for prop in model.metadata_props:
        if prop.key == PLAN_METADATA_KEY:
            return json.loads(prop.value)
    raise GraphpruneError("the ONNX model holds no graphprune plan (is it a pruned model?)")


def _state_arrays(module: Any) -> dict[str, np.ndarray]:
    """The floating-point parameters and buffers as float32 arrays (no copy when they are
    float32 on the CPU already)."""
    arrays = {}
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point():
            arrays[name] = tensor.detach().float().cpu().numpy()
    return arrays


def _state_shapes(module: Any) -> dict[str, tuple[int, ...]]:
    return {
        name: tuple(t.shape) for name, t in [*module.named_parameters(), *module.named_buffers()]
    }
