"""Which node of model A is which node of model B.

Names come first, because a pruned model keeps every node name and two exports of one
model usually do too. Exporters do renumber, though (the dynamo exporter's `node_Conv_12`
shifts when one op is inserted upstream), and a user may rename everything, so names are
checked against structure and structure alone matches what names cannot:

1. a node whose name, op and structural hash agree in both models;
2. a structural hash that occurs exactly once in each model (its whole upstream and
   downstream cone is identical, which beats any name);
3. the same name and op;
4. equal structural hashes, paired in file order; then the upstream-only hash, then the
   downstream-only hash (one side of the node changed);
5. propagation from matched pairs: the unmatched producers (consumers) at the same input
   (output) slot of two matched nodes, when their ops agree.

Hashes ignore names and everything pruning changes (shapes, channel counts, `group`,
split sizes), so a pruned model matches its original node for node.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable

from .layers import Layer, ModelLayers

# Attributes that identify an op's role and that channel pruning never edits.
# Defaults are already dropped (`graphprune.layers`); `kernel_shape` is left out because
# exporters may omit it (it follows from the weight).
_STABLE_ATTRIBUTES = ("strides", "dilations", "perm", "axis", "transA", "transB", "mode",
                      "keepdims", "auto_pad")  # fmt: skip


def match(a: ModelLayers, b: ModelLayers) -> list[tuple[int, int]]:
    """Pairs (index in A, index in B), sorted by A's file order."""
    hashes_a, hashes_b = _Hashes(a), _Hashes(b)
    pairs: dict[int, int] = {}
    taken: set[int] = set()

    def pair(i: int, j: int) -> None:
        pairs[i] = j
        taken.add(j)

    by_name = {layer.name: layer.index for layer in b.layers}

    def name_match(layer: Layer) -> int | None:
        j = by_name.get(layer.name)
        if j is None or j in taken or not _same_op(layer, b.layers[j]):
            return None
        return j

    # 1. Name, op and structure agree.
    for layer in a.layers:
        j = name_match(layer)
        if j is not None and hashes_a.full[layer.index] == hashes_b.full[j]:
            pair(layer.index, j)
    # 2. Structure unique on both sides.
    unique_b = {key: j for j, key in _unique(hashes_b.full, taken).items()}
    for i, key in _unique(hashes_a.full, set(pairs)).items():
        j = unique_b.get(key)
        if j is not None and j not in taken:
            pair(i, j)
    # 3. Name and op.
    for layer in a.layers:
        if layer.index not in pairs:
            j = name_match(layer)
            if j is not None:
                pair(layer.index, j)
    # 4. Equal hashes in file order: full, then either side.
    for key_a, key_b in (
        (hashes_a.full, hashes_b.full),
        (hashes_a.forward, hashes_b.forward),
        (hashes_a.backward, hashes_b.backward),
    ):
        buckets: dict[int, deque[int]] = defaultdict(deque)
        for j in range(len(b.layers)):
            if j not in taken:
                buckets[key_b[j]].append(j)
        for i in range(len(a.layers)):
            if i not in pairs and buckets.get(key_a[i]):
                pair(i, buckets[key_a[i]].popleft())
    # 5. Propagation along edges from every matched pair.
    _propagate(a, b, hashes_a, hashes_b, pairs, taken)
    return sorted(pairs.items())


def _same_op(x: Layer, y: Layer) -> bool:
    return x.op == y.op and x.domain == y.domain


def _unique(keys: list[int], excluded: set[int]) -> dict[int, int]:
    """index -> key for keys that occur once among the indices not excluded."""
    counts: dict[int, int] = defaultdict(int)
    for index, key in enumerate(keys):
        if index not in excluded:
            counts[key] += 1
    return {i: k for i, k in enumerate(keys) if i not in excluded and counts[k] == 1}


class _Hashes:
    """Structural hashes of every node: upstream cone, downstream cone, and both."""

    def __init__(self, model: ModelLayers) -> None:
        self.model = model
        layers = model.layers
        self.consumers: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for layer in layers:
            for slot, name in enumerate(layer.inputs):
                if name:
                    self.consumers[name].append((layer.index, slot))
        order = _topological(model, self.consumers)
        inputs = {name: k for k, name in enumerate(model.graph_inputs)}
        outputs: dict[str, list[int]] = defaultdict(list)
        for k, name in enumerate(model.graph_outputs):
            outputs[name].append(k)
        own = [hash((x.op, x.domain, _stable_attributes(x))) for x in layers]

        self.forward = [0] * len(layers)
        for i in order:
            parts = []
            for name in layers[i].inputs:
                parts.append(self._source(name, inputs))
            self.forward[i] = hash((own[i], tuple(parts)))

        self.backward = [0] * len(layers)
        for i in reversed(order):
            parts = []
            for name in layers[i].outputs:
                uses = sorted((self.backward[c], slot) for c, slot in self.consumers.get(name, ()))
                parts.append((tuple(uses), tuple(outputs.get(name, ()))))
            self.backward[i] = hash((own[i], len(layers[i].inputs), tuple(parts)))
        self.full = [hash(pair) for pair in zip(self.forward, self.backward, strict=True)]

    def _source(self, name: str, inputs: dict[str, int]) -> tuple:
        if not name:
            return ("none",)
        if name in self.model.producer and name not in self.model.constants:
            index, slot = self.model.producer[name]
            return ("node", self.forward[index], slot)
        if name in self.model.constants:
            return ("constant",)
        return ("input", inputs.get(name, -1))


def _stable_attributes(layer: Layer) -> tuple:
    attributes = layer.attributes
    stable = [(key, repr(attributes[key])) for key in _STABLE_ATTRIBUTES if key in attributes]
    return tuple(stable)


def _topological(model: ModelLayers, consumers: dict[str, list[tuple[int, int]]]) -> list[int]:
    """Node indices producers-first (file order where it is already valid)."""
    layers = model.layers
    pending = [0] * len(layers)
    for layer in layers:
        pending[layer.index] = sum(1 for name in layer.inputs if name and name in model.producer)
    ready = deque(i for i, count in enumerate(pending) if count == 0)
    order = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for name in layers[i].outputs:
            for consumer, _ in consumers.get(name, ()):
                pending[consumer] -= 1
                if pending[consumer] == 0:
                    ready.append(consumer)
    if len(order) < len(layers):  # a cycle (invalid model): keep file order for the rest
        seen = set(order)
        order += [i for i in range(len(layers)) if i not in seen]
    return order


def _propagate(
    a: ModelLayers,
    b: ModelLayers,
    hashes_a: _Hashes,
    hashes_b: _Hashes,
    pairs: dict[int, int],
    taken: set[int],
) -> None:
    work = deque(sorted(pairs.items()))
    while work:
        i, j = work.popleft()
        x, y = a.layers[i], b.layers[j]
        candidates: list[tuple[int, int]] = []
        for name_a, name_b in zip(x.inputs, y.inputs, strict=False):
            pa, pb = a.producer.get(name_a), b.producer.get(name_b)
            if pa and pb and pa[1] == pb[1]:
                candidates.append((pa[0], pb[0]))
        for name_a, name_b in zip(x.outputs, y.outputs, strict=False):
            uses_b = hashes_b.consumers.get(name_b, [])
            for consumer_a, slot in hashes_a.consumers.get(name_a, []):
                candidates.extend(
                    (consumer_a, consumer_b)
                    for consumer_b, slot_b in uses_b
                    if slot_b == slot and consumer_b not in taken
                )
        for ci, cj in _first_free(candidates, pairs, taken):
            if _same_op(a.layers[ci], b.layers[cj]):
                pairs[ci] = cj
                taken.add(cj)
                work.append((ci, cj))


def _first_free(
    candidates: Iterable[tuple[int, int]], pairs: dict[int, int], taken: set[int]
) -> Iterable[tuple[int, int]]:
    for ci, cj in candidates:
        if ci not in pairs and cj not in taken:
            yield ci, cj
