"""The hostile cases of `tools/fuzz.py`: one generator per mutation class, each turning a
seeded `random.Random` into a `Case` (the files to lay out in a fresh folder and the
graphprune command line to run there).

Layout of a case folder (the command's working directory): the model under test in
`m/model.onnx` (external data next to it), the unmutated model in `m/base.onnx`,
`secret.bin` outside the model's folder (what traversing external data paths would read),
and any other input files at the top. Outputs go to the top.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from fuzz_models import BASES, DATA_FILE, MUTATIONS, externalize, loop_net

MODEL = "m/model.onnx"
BASE = "m/base.onnx"
SECRET = "secret.bin"
# onnxruntime runs are cut after this many seconds in the Loop cases, well below the hang limit.
RUN_TIMEOUT_S = "5"


@dataclass
class Case:
    """Files to write (relative path -> bytes), symbolic links (path -> target), the
    command's arguments after `python -m graphprune`, and the outputs it may create."""

    kind: str
    name: str
    argv: list[str]
    files: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    must_fail: bool = False  # a refusal (exit 1 or 2) is the only right answer
    must_succeed: bool = False  # exit 0 is the only right answer
    readonly: tuple[str, ...] = ()  # folders made read-only
    fifos: tuple[str, ...] = ()  # named pipes to create
    modes: dict[str, int] = field(default_factory=dict)  # chmod after laying out (000...)
    timeout: float | None = None  # seconds before it counts as a hang (None: fuzz.HANG_S)


def _bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


def _base(rng: random.Random, names=("conv", "attention")) -> tuple[str, onnx.ModelProto]:
    name = rng.choice(list(names))
    return name, BASES[name]()


def _files(model: bytes, base: onnx.ModelProto, **extra: bytes) -> dict[str, bytes]:
    return {MODEL: model, BASE: _bytes(base), SECRET: b"\x00" * 4096, **extra}


def _command(rng: random.Random, model: str = MODEL) -> tuple[list[str], tuple[str, ...]]:
    """A representative command on `model` and the outputs it writes."""
    choice = rng.randrange(6)
    if choice == 0:
        return ["analyze", model, "--json"], ()
    if choice == 1:
        return ["analyze", model, "--html", "a.html"], ("a.html",)
    if choice == 2:
        argv = ["prune", model, "-o", "out.onnx", "--ratio", "0.3", "--quiet"]
        return [*argv, "--report", "r.json", "--html", "p.html"], ("out.onnx", "r.json", "p.html")
    if choice == 3:
        argv = ["prune", model, "-o", "out.onnx", "--target-macs", "0.6", "--criterion", "flap"]
        return [*argv, "--compensate", "lsq", "--calib-random", "4", "--quiet"], ("out.onnx",)
    if choice == 4:
        return ["diff", BASE, model, "--validate", "--json", "d.json"], ("d.json",)
    return ["diff", model, BASE, "--html", "d.html"], ("d.html",)


def model_case(kind: str) -> Callable[[random.Random], Case]:
    """A mutation of `fuzz_models` applied to a base model, run through some command."""

    def make(rng: random.Random) -> Case:
        name, base = _base(rng, list(BASES))
        if kind == "subgraph":
            name, base = _base(rng, ("if", "loop"))
        mutated = MUTATIONS[kind](base, rng)
        data = mutated if isinstance(mutated, bytes) else _bytes(mutated)
        argv, outputs = _command(rng)
        return Case(kind, f"{kind} of {name}", argv, _files(data, base), outputs=outputs)

    return make


def _external(rng: random.Random, edit: Callable[[onnx.TensorProto, int], str]) -> Case:
    """The conv net with external data, one tensor's entry changed by `edit`."""
    base = BASES["conv"]()
    model, blob = externalize(base)
    tensor = rng.choice(list(model.graph.initializer))
    what = edit(tensor, len(blob))
    argv, outputs = _command(rng)
    files = _files(_bytes(model), base, **{f"m/{DATA_FILE}": blob})
    return Case("external", what, argv, files, outputs=outputs)


def _set(tensor: onnx.TensorProto, key: str, value: str) -> None:
    for entry in tensor.external_data:
        if entry.key == key:
            entry.value = value
            return
    entry = tensor.external_data.add()
    entry.key, entry.value = key, value


def external_range(rng: random.Random) -> Case:
    """Offsets and lengths that are negative, past the end, not numbers, or not a whole
    number of elements."""
    key = rng.choice(["offset", "length"])
    value = rng.choice(["-1", "-4096", "3", "99999999", str(2**63), "abc", "1.5", ""])

    def edit(tensor: onnx.TensorProto, size: int) -> str:
        _set(tensor, key, value)
        return f"external {key}={value!r} on {tensor.name}"

    return _external(rng, edit)


def external_missing(rng: random.Random) -> Case:
    case = _external(rng, lambda tensor, size: "external data file missing")
    del case.files[f"m/{DATA_FILE}"]
    if rng.random() < 0.5:  # or a directory in its place
        case.files[f"m/{DATA_FILE}/x"] = b""
        case.name = "external data file is a directory"
    return case


def external_traversal(rng: random.Random) -> Case:
    """Locations outside the model's folder: `..`, absolute paths, a symbolic link."""
    location = rng.choice(
        ["../secret.bin", "/etc/passwd", "m/../../secret.bin", "sub/../../secret.bin", "link.bin",
         "/proc/self/environ", "."]
    )  # fmt: skip

    def edit(tensor: onnx.TensorProto, size: int) -> str:
        _set(tensor, "location", location)
        _set(tensor, "offset", "0")
        _set(tensor, "length", "16")
        return f"external location {location!r}"

    case = _external(rng, edit)
    case.links["m/link.bin"] = "../secret.bin"
    case.must_fail = True
    return case


def loop_hang(rng: random.Random) -> Case:
    """A Loop that would run for days: graphprune must stop it, not hang."""
    base = BASES["loop"]()
    trips = rng.choice([10**12, 2**62])
    argv = rng.choice(
        [
            ["prune", MODEL, "-o", "out.onnx", "--ratio", "0.3", "--quiet"],
            ["diff", BASE, MODEL, "--validate"],
        ]
    )
    argv = [*argv, "--run-timeout", RUN_TIMEOUT_S]
    files = _files(_bytes(loop_net(trips)), base)
    return Case("loop_hang", f"Loop of {trips} trips", argv, files, outputs=("out.onnx",))


def _valid(rng: random.Random) -> tuple[dict[str, bytes], onnx.ModelProto]:
    _, base = _base(rng)
    return _files(_bytes(base), base), base


PRUNE = ["prune", MODEL, "-o", "out.onnx", "--quiet"]


def bad_number(rng: random.Random) -> Case:
    """Ratios, targets and counts outside their domain, or not numbers at all."""
    option = rng.choice(
        ["--ratio", "--head-ratio", "--target-macs", "--target-params", "--max-group-ratio",
         "--round-to", "--min-keep", "--calib-random", "--calib-batch", "--damp", "--seed"]
    )  # fmt: skip
    value = rng.choice(["-1", "1", "1.5", "nan", "inf", "-inf", "abc", "", "0x10", "1e400"])
    if option in ("--round-to", "--min-keep", "--calib-random", "--calib-batch"):
        value = rng.choice(["0", "-1", "-3", "abc", "1.5", "nan"])
    if option == "--seed":
        value = rng.choice(["-1", "abc", "1.5"])
    if option == "--damp":
        value = rng.choice(["-1", "nan", "inf", "abc"])
    argv = [*PRUNE, option, value]
    if option not in ("--ratio", "--target-macs", "--target-params"):
        argv += ["--ratio", "0.3"]
    if option in ("--calib-batch", "--damp"):
        argv += ["--calib-random", "4", "--compensate", "lsq"]
    if option == "--max-group-ratio":
        argv += ["--global"]
    files, _ = _valid(rng)
    # Keeping all MACs or parameters, or letting --global take a whole group's worth, is valid.
    whole = option in ("--target-macs", "--target-params", "--max-group-ratio") and value == "1"
    return Case("bad_number", f"{option} {value!r}", argv, files, outputs=("out.onnx",),
                must_fail=not whole)  # fmt: skip


def output_paths(rng: random.Random) -> Case:
    """Outputs onto an input, onto each other, into a missing or unwritable folder."""
    files, _ = _valid(rng)
    files["afile"] = b"not a folder"
    variants = [
        [*PRUNE[:3], MODEL, "--ratio", "0.3"],
        ["prune", MODEL, "-o", "m/../m/model.onnx", "--ratio", "0.3"],
        [*PRUNE, "--ratio", "0.3", "--html", MODEL],
        [*PRUNE, "--ratio", "0.3", "--report", MODEL],
        [*PRUNE, "--ratio", "0.3", "--html", "out.onnx"],
        [*PRUNE, "--ratio", "0.3", "--report", "out.onnx"],
        [*PRUNE, "--ratio", "0.3", "--report", "r.json", "--html", "r.json"],
        [*PRUNE, "--ratio", "0.3", "--report", "./r.json", "--html", "r.json"],
        ["analyze", MODEL, "--html", MODEL],
        ["diff", BASE, MODEL, "--html", BASE],
        ["diff", BASE, MODEL, "--json", MODEL],
        ["diff", BASE, MODEL, "--json", "d.json", "--html", "d.json"],
        ["prune", MODEL, "-o", "missing/out.onnx", "--ratio", "0.3"],
        ["prune", MODEL, "-o", "afile/out.onnx", "--ratio", "0.3"],
        ["prune", MODEL, "-o", "m", "--ratio", "0.3"],
        ["prune", MODEL, "-o", "/proc/graphprune-fuzz.onnx", "--ratio", "0.3"],
        ["analyze", MODEL, "--html", "missing/a.html"],
        ["prune", MODEL, "-o", "", "--ratio", "0.3"],
        # Refused for root too: the cases run without root's override of permissions.
        ["prune", MODEL, "-o", "ro/out.onnx", "--ratio", "0.3"],
    ]
    argv = rng.choice(variants)
    return Case("output_paths", " ".join(argv), argv, files, must_fail=True, readonly=("ro",))


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _bad_arrays(rng: random.Random, shape: tuple[int, ...]) -> tuple[str, bytes, bool]:
    """An NPZ (or not) for an input 'x' of `shape`: its description, bytes, and whether a
    run with it must fail."""
    good = np.ones(shape, np.float32)
    variants: list[tuple[str, bytes, bool]] = [
        ("not an NPZ", b"hello world\n", True),
        ("empty file", b"", True),
        ("a zip of garbage", b"PK\x03\x04" + bytes(64), True),
        ("truncated NPZ", _npz(x=good)[:100], True),
        ("wrong name", _npz(y=good), True),
        ("extra name", _npz(x=good, extra=good), True),
        ("wrong rank", _npz(x=good.reshape(-1)), True),
        ("wrong size", _npz(x=np.ones((*shape[:-1], shape[-1] + 3), np.float32)), True),
        ("zero samples", _npz(x=np.ones((0, *shape[1:]), np.float32)), True),
        ("scalar", _npz(x=np.float32(1)), True),
        ("strings", _npz(x=np.full(shape, "a")), True),
        ("complex", _npz(x=good.astype(np.complex64)), True),
        ("objects", _npz(x=np.array([object()] * shape[0], dtype=object)), True),
        ("int64", _npz(x=good.astype(np.int64)), False),
        ("float64", _npz(x=good.astype(np.float64)), False),
        ("nan", _npz(x=np.full(shape, np.nan, np.float32)), False),
        ("no arrays", _npz(), True),
    ]
    return rng.choice(variants)


def calib_file(rng: random.Random) -> Case:
    files, base = _valid(rng)
    shape = (4, *_input_shape(base)[1:])
    what, data, must_fail = _bad_arrays(rng, shape)
    target = rng.choice(["calib.npz", "calib_dir"])
    files["calib.npz" if target == "calib.npz" else "calib_dir/a.npz"] = data
    argv = [*PRUNE, "--ratio", "0.3", "--criterion", "activation", "--calib", target]
    argv += rng.choice([[], ["--compensate", "lsq"], ["--compensate", "bias"]])
    return Case("calib_file", f"--calib {what}", argv, files, outputs=("out.onnx",),
                must_fail=must_fail)  # fmt: skip


def inputs_file(rng: random.Random) -> Case:
    files, base = _valid(rng)
    what, data, must_fail = _bad_arrays(rng, _input_shape(base))
    files["inputs.npz"] = data
    argv, outputs = rng.choice(
        [([*PRUNE, "--ratio", "0.3", "--inputs", "inputs.npz"], ("out.onnx",)),
         (["diff", BASE, MODEL, "--inputs", "inputs.npz"], ())]
    )  # fmt: skip
    return Case("inputs_file", f"--inputs {what}", argv, files, outputs=outputs,
                must_fail=must_fail)  # fmt: skip


def _input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value or 1 for d in dims)


def input_shape(rng: random.Random) -> Case:
    files, base = _valid(rng)
    rank = len(_input_shape(base))
    value = rng.choice(
        ["x=abc", "x=1e3", "x=-1,3", "nosuchinput=1,2", "x=", "=1,2", "x", "x=1,,3",
         "x=" + ",".join(["0"] * rank), "x=" + ",".join(["100000"] * rank),
         "x=" + ",".join([str(10**20)] * rank), "x=1,2", "x=1x3x8x8x9", "x=1;3"]
    )  # fmt: skip
    argv = rng.choice(
        [[*PRUNE, "--ratio", "0.3"], ["diff", BASE, MODEL, "--validate"], [*PRUNE, "--target-macs",
         "0.5"]]
    )  # fmt: skip
    return Case("input_shape", f"--input-shape {value}", [*argv, "--input-shape", value], files,
                outputs=("out.onnx",), must_fail=True)  # fmt: skip


def plan_file(rng: random.Random) -> Case:
    """Plans for the conv net: corrupt, of the wrong shape, or of the attention net."""
    base = BASES["conv"]()
    files = _files(_bytes(base), base)
    group = {"name": "conv1", "sources": ["conv1"], "channels": 8, "removed": [0, 1]}
    variants: list[tuple[str, bytes]] = [
        ("not JSON", b"{not json"),
        ("empty", b""),
        ("binary", bytes(range(256))),
        ("a list", b"[1, 2]"),
        ("a number", b"3"),
        ("plan is a string", json.dumps({"plan": "x"}).encode()),
        ("groups is a dict", json.dumps({"groups": {"a": 1}}).encode()),
        ("group is a number", json.dumps({"groups": [7]}).encode()),
        ("group lacks keys", json.dumps({"groups": [{"name": "conv1"}]}).encode()),
        ("removed not ints", json.dumps({"groups": [{**group, "removed": ["a"]}]}).encode()),
        ("removed floats", json.dumps({"groups": [{**group, "removed": [0.5]}]}).encode()),
        ("removed out of range", json.dumps({"groups": [{**group, "removed": [99]}]}).encode()),
        ("removes everything", json.dumps({"groups": [{**group, "removed": [*range(8)]}]})
         .encode()),
        ("channels a string", json.dumps({"groups": [{**group, "channels": "8"}]}).encode()),
        ("options a list", json.dumps({"options": [1], "groups": []}).encode()),
        ("another model's plan", json.dumps({"plan": {"groups": [
            {"name": "up", "sources": ["up"], "channels": 32, "removed": [1]}]}}).encode()),
        ("deep nesting", b"[" * 100000 + b"]" * 100000),
        ("nan", b'{"groups": [{"name": "conv1", "sources": ["conv1"], "channels": NaN,'
                b' "removed": [0]}]}'),
    ]
    what, data = rng.choice(variants)
    files["plan.json"] = data
    argv = [*PRUNE, "--plan", "plan.json"]
    # Only a plan for exactly this model may succeed (removing all of a group's channels:
    # refused or kept, the outcome checks say which is allowed).
    must_fail = what != "removes everything"
    return Case("plan_file", f"--plan {what}", argv, files, outputs=("out.onnx",),
                must_fail=must_fail)  # fmt: skip


def combined(rng: random.Random) -> Case:
    """Two to four structural mutations on one model."""
    name, model = _base(rng, list(BASES))
    structural = [k for k in MUTATIONS if k not in ("truncate", "bitflip", "subgraph")]
    kinds = rng.sample(structural, rng.randint(2, 4))
    for kind in kinds:
        try:
            model = MUTATIONS[kind](model, rng)
        except (IndexError, TypeError, ValueError, StopIteration):  # no longer applies
            continue
    argv, outputs = _command(rng)
    files = _files(_bytes(model), BASES[name]())
    return Case("combined", f"{' + '.join(kinds)} of {name}", argv, files, outputs=outputs)


def misuse(rng: random.Random) -> Case:
    """Model paths that are no model, and options that contradict each other."""
    files, _ = _valid(rng)
    files.update({"empty.onnx": b"", "plan.json": b"{}", "notes.json": b'{"a": 1}'})
    files["calib.npz"] = _npz(x=np.ones((2, 1), np.float32))
    variants: list[tuple[list[str], bool]] = [
        (["analyze", "nosuch.onnx"], True),
        (["analyze", "m"], True),
        (["analyze", "empty.onnx"], True),
        (["analyze", "notes.json"], True),
        (["diff", MODEL, "nosuch.onnx"], True),
        (["diff", MODEL, MODEL, "--exit-code"], False),
        ([*PRUNE, "--ratio", "0.3", "--plan", "plan.json"], False),
        ([*PRUNE, "--ratio", "0.3", "--target-macs", "0.5"], True),
        ([*PRUNE, "--target-macs", "0.5", "--target-params", "0.5"], True),
        ([*PRUNE, "--ratio", "0.3", "--calib", "calib.npz", "--calib-random", "4"], True),
        ([*PRUNE, "--ratio", "0.3", "--criterion", "flap"], True),
        ([*PRUNE, "--ratio", "0.3", "--compensate", "lsq"], True),
        ([*PRUNE, "--ratio", "0.3", "--ignore", "nosuch*"], True),
        ([*PRUNE, "--ratio", "0.3", "--ignore", "*"], False),
        ([*PRUNE, "--ratio", "0.3", "--only", "nosuch"], True),
        ([*PRUNE, "--ratio", "0.3", "--calib", "calib.npz", "--criterion", "wanda"], True),
        ([*PRUNE, "--ratio", "0.3", "--frobnicate"], True),
        (["prune", MODEL, "--ratio", "0.3"], True),
        ([*PRUNE, "--ratio", "0.3", "--run-timeout", "0"], True),
        ([*PRUNE, "--ratio", "0.3", "--run-timeout", "nan"], True),
        ([*PRUNE, "--ratio", "0.0", "--bench"], False),
        ([], True),
    ]
    argv, must_fail = rng.choice(variants)
    outputs = ("out.onnx",) if "-o" in argv else ()
    return Case("misuse", " ".join(argv), argv, files, outputs=outputs, must_fail=must_fail)


# Paths, zero-sized dims and the model-zoo seeds live in their own module, which builds on
# the helpers above (so it is imported here, after them).
from fuzz_paths import PATH_CLASSES  # noqa: E402

CLASSES: dict[str, Callable[[random.Random], Case]] = {
    **{kind: model_case(kind) for kind in MUTATIONS},
    "external_range": external_range,
    "external_missing": external_missing,
    "external_traversal": external_traversal,
    "loop_hang": loop_hang,
    "bad_number": bad_number,
    "output_paths": output_paths,
    "plan_file": plan_file,
    "calib_file": calib_file,
    "inputs_file": inputs_file,
    "input_shape": input_shape,
    "combined": combined,
    "misuse": misuse,
    **PATH_CLASSES,
}


def make_case(kind: str, index: int, seed: int) -> Case:
    """The index-th case of a class: the same (kind, index, seed) always gives the same case."""
    return CLASSES[kind](random.Random(f"{seed}:{kind}:{index}"))


def schedule(count: int, only: str | None = None) -> list[tuple[str, int]]:
    """`count` (class, index) pairs, classes taken in turn."""
    kinds = [only] if only else list(CLASSES)
    return [(kinds[i % len(kinds)], i // len(kinds)) for i in range(count)]

