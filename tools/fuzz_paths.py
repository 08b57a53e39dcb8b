"""Hostile paths, zero-sized dims and the model-zoo seeds of `tools/fuzz.py`: one generator
per class, as in `tools/fuzz_cases.py` (which imports them into its CLASSES).

Paths: every path the command line takes (the model, diff's A and B, -o, --report,
--html, --json, --plan, --calib file or folder, --inputs, --latency-table, profile and
sweep outputs, external-data locations inside the model) as a loop of symbolic links, a
name too long (one component past 255 bytes, or the whole path past 4096), a folder, a
FIFO (which must never be opened: that blocks), a file that cannot be read (mode 000; the
suite drops root's capability to ignore that, so root sees what a user sees), a missing
folder, a file where a folder belongs, a dangling link, a device, a NUL byte (possible only
inside a model: argv cannot hold one). Each must be refused in one line; a name of exactly
255 bytes is valid and must work.
"""

from __future__ import annotations

import glob
import os
import random

import numpy as np
import onnx
from fuzz_cases import BASE, MODEL, PRUNE, Case, _bytes, _command, _files, _npz, _valid
from fuzz_models import BASES, DATA_FILE, MUTATIONS, ZERO_DIMS, externalize

LONG_NAME = "n" * 256  # one component past NAME_MAX (255 bytes on Linux filesystems)
NAME_MAX = 255  # a name of exactly this many bytes is valid
LONG_PATH = "/".join(["d" * 200] * 21)  # past PATH_MAX (4096): refused before any lookup
ZOO_FOLDER = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
# The model-zoo classics that onnx ships weight-free (IR 3, opset 9; ConstantOfShape makes
# the weights), smallest first. The largest take seconds per command and 2 GB of memory
# (VGG-19: 11 s alone, past a minute on a loaded machine): they get this long.
ZOO = sorted(glob.glob(os.path.join(ZOO_FOLDER, "*.onnx")), key=os.path.getsize)
ZOO_TIMEOUT_S = 300.0


def _hostile_input(rng: random.Random, valid: bytes, name: str) -> tuple[str, str, Case]:
    """A hostile path where a readable file `name` (holding `valid`) belongs: what it is,
    the path, and a Case holding only what to lay out for it."""
    kind = rng.choice(
        ["loop", "loop of two", "long name", "long path", "folder", "fifo", "unreadable",
         "locked folder", "missing folder", "file as folder", "dangling link", "link to fifo",
         "device", "null device"]
    )  # fmt: skip
    path = {"long name": LONG_NAME, "long path": LONG_PATH, "device": "/dev/zero",
            "null device": "/dev/null", "locked folder": f"locked/{name}",
            "missing folder": f"nowhere/{name}", "file as folder": f"afile/{name}",
            }.get(kind, name)  # fmt: skip
    layout = Case("", "", [])
    if kind == "loop":
        layout.links[name] = name
    elif kind == "loop of two":
        layout.links[name] = "other"
        layout.links["other"] = name
    elif kind == "folder":
        layout.files[f"{name}/inside"] = valid
    elif kind in ("fifo", "link to fifo"):
        layout.fifos = ("pipe",) if kind == "link to fifo" else (name,)
        if kind == "link to fifo":
            layout.links[name] = "pipe"
    elif kind == "unreadable":
        layout.files[name] = valid
        layout.modes[name] = 0o000
    elif kind == "locked folder":
        layout.files[path] = valid
        layout.modes["locked"] = 0o000
    elif kind == "file as folder":
        layout.files["afile"] = valid
    elif kind == "dangling link":
        layout.links[name] = "nothing-here"
    return kind, path, layout


def input_paths(rng: random.Random) -> Case:
    """A hostile path for one input: the model (of analyze, profile, sweep), diff's A or
    B, --plan, --calib (the path, or a file in its folder), --inputs, --latency-table."""
    files, base = _valid(rng)
    info = base.graph.input[0]
    shape = tuple(d.dim_value or 1 for d in info.type.tensor_type.shape.dim)
    npz = _npz(**{info.name: np.ones(shape, np.float32)})
    target = rng.choice(["model", "A", "B", "--plan", "--calib", "--calib folder", "--inputs",
                         "--latency-table", "profile", "sweep"])  # fmt: skip
    valid = {"--plan": b'{"groups": []}', "--latency-table": b"{}"}.get(target, files[MODEL])
    if target in ("--calib", "--calib folder", "--inputs"):
        valid = npz
    kind, path, layout = _hostile_input(rng, valid, "a.npz" if "calib" in target else "x.bin")
    if target == "--calib folder":  # the folder itself is fine, what is in it is not
        layout = _inside_folder(layout)
        path = "calib_dir"
    argv = {
        "model": ["analyze", path, "--json"],
        "A": ["diff", path, MODEL],
        "B": ["diff", BASE, path, "--validate"],
        "profile": ["profile", path, "-o", "t.json", "--repeats", "1"],
        "sweep": ["sweep", path, "-o", "s.json", "--ratios", "0.3", "--repeats", "1"],
        "--plan": [*PRUNE, "--plan", path],
        "--inputs": [*PRUNE, "--ratio", "0.3", "--inputs", path],
        "--latency-table": [*PRUNE, "--target-latency", "0.8", "--latency-table", path],
    }.get(target, [*PRUNE, "--ratio", "0.3", "--criterion", "activation", "--calib", path])
    files.update(layout.files)
    return Case("input_paths", f"{target}: {kind}", argv, files, layout.links, must_fail=True,
                fifos=layout.fifos, modes=layout.modes)  # fmt: skip


def _inside_folder(layout: Case) -> Case:
    """The same layout one folder down, in calib_dir (links keep their relative targets);
    a folder without .npz files when there is nothing to lay out."""
    moved = Case("", "", [])
    moved.files = {f"calib_dir/{path}": data for path, data in layout.files.items()}
    moved.links = {f"calib_dir/{path}": target for path, target in layout.links.items()}
    moved.fifos = tuple(f"calib_dir/{path}" for path in layout.fifos)
    moved.modes = {f"calib_dir/{path}": mode for path, mode in layout.modes.items()}
    if not (moved.files or moved.links or moved.fifos):
        moved.files["calib_dir/readme.txt"] = b"no .npz here"
    return moved


def output_hostile(rng: random.Random) -> Case:
    """A hostile path for one output (-o, --report, --html, diff's --json and --html,
    profile's and sweep's outputs): refused in one line; a name of exactly 255 bytes works."""
    files, _ = _valid(rng)
    kind = rng.choice(
        ["loop", "long name", "long path", "longest valid name", "folder", "fifo",
         "read-only folder", "locked folder", "missing folder", "file as folder",
         "loop as folder"]
    )  # fmt: skip
    tool, option = rng.choice(
        [("prune", "-o"), ("prune", "--report"), ("prune", "--html"), ("analyze", "--html"),
         ("diff", "--json"), ("diff", "--html"), ("profile", "-o"), ("sweep", "-o")]
    )  # fmt: skip
    suffix = ".html" if option == "--html" else ".onnx" if tool == "prune" and option == "-o" \
        else ".json"
    name = f"out{suffix}"
    path = {"long name": LONG_NAME + suffix, "long path": LONG_PATH + suffix,
            "longest valid name": "n" * (NAME_MAX - len(suffix)) + suffix,
            "read-only folder": f"ro/{name}", "locked folder": f"locked/{name}",
            "missing folder": f"nowhere/{name}", "file as folder": f"afile/{name}",
            "loop as folder": f"loopdir/{name}"}.get(kind, name)  # fmt: skip
    case = Case("output_hostile", f"{tool} {option}: {kind}", [], files, must_fail=True)
    if kind == "loop":
        case.links[name] = name
    elif kind == "folder":
        case.files[f"{name}/inside"] = b""
    elif kind == "fifo":
        case.fifos = (name,)
    elif kind in ("read-only folder", "locked folder"):
        folder = path.split("/")[0]
        case.files[f"{folder}/keep"] = b""
        case.modes[folder] = 0o555 if folder == "ro" else 0o000
    elif kind == "file as folder":
        case.files["afile"] = b"a file"
    elif kind == "loop as folder":
        case.links["loopdir"] = "loopdir"
    argv = {
        "prune": [*PRUNE[:3], "out.onnx", "--ratio", "0.3", "--quiet"],
        "analyze": ["analyze", MODEL],
        "diff": ["diff", BASE, MODEL],
        "profile": ["profile", MODEL, "-o", "t.json", "--repeats", "1", "--threads", "1"],
        "sweep": ["sweep", MODEL, "-o", "s.json", "--ratios", "0.3", "--repeats", "1",
                  "--threads", "1"],
    }[tool]  # fmt: skip
    if option in argv:
        argv[argv.index(option) + 1] = path
    else:
        argv += [option, path]
    case.argv = argv
    if kind == "longest valid name":
        case.must_fail, case.must_succeed = False, True
        written = ("out.onnx", "t.json", "s.json", path)
        case.outputs = tuple(a for a in argv if a in written)
    return case


def external_paths(rng: random.Random) -> Case:
    """The conv net with external data, one tensor's location hostile: a NUL byte, a loop
    of links, a name too long, a folder, a FIFO, an unreadable file, a missing folder, a
    file as folder, a dangling link. All inside the model's folder, all refused."""
    base = BASES["conv"]()
    model, blob = externalize(base)
    tensor = rng.choice(list(model.graph.initializer))
    kind = rng.choice(["nul", "loop", "long name", "long path", "folder", "fifo", "unreadable",
                       "missing folder", "file as folder", "dangling link"])  # fmt: skip
    location = {"nul": "w\0.bin", "long name": LONG_NAME, "long path": LONG_PATH,
                "missing folder": "nowhere/w.bin", "file as folder": f"{DATA_FILE}/w.bin",
                }.get(kind, "w.bin")  # fmt: skip
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = location
    files = _files(_bytes(model), base, **{f"m/{DATA_FILE}": blob})
    case = Case("external_paths", f"external location: {kind} ({tensor.name})", [], files,
                must_fail=True)  # fmt: skip
    if kind == "loop":
        case.links["m/w.bin"] = "w.bin"
    elif kind == "folder":
        case.files["m/w.bin/inside"] = blob
    elif kind == "fifo":
        case.fifos = ("m/w.bin",)
    elif kind == "unreadable":
        case.files["m/w.bin"] = blob
        case.modes["m/w.bin"] = 0o000
    elif kind == "dangling link":
        case.links["m/w.bin"] = "nothing-here"
    case.argv, case.outputs = _command(rng)
    return case


def _zero_command(rng: random.Random) -> tuple[list[str], tuple[str, ...]]:
    """The representative commands, and options that reach every stage: calibrated
    criteria, compensation, global ranking, budgets, residual blocks."""
    if rng.random() < 0.5:
        return _command(rng)
    options = rng.choice(
        [["--ratio", "0.5", "--criterion", "wanda", "--compensate", "bias", "--calib-random", "4"],
         ["--ratio", "0.3", "--criterion", "activation", "--global", "--calib-random", "4"],
         ["--target-params", "0.7", "--criterion", "flap", "--compensate", "lsq",
          "--calib-random", "4", "--reduction", "max"],
         ["--ratio", "0.4", "--criterion", "bn", "--global", "--normalization", "max"],
         ["--ratio", "0.3", "--criterion", "l1", "--normalization", "sum", "--no-validate"],
         ["--drop-blocks", "1", "--block-criterion", "magnitude"]]
    )  # fmt: skip
    return [*PRUNE, *options, "--report", "r.json"], ("out.onnx", "r.json")


def zero_dims(rng: random.Random) -> Case:
    """A valid model with a zero-sized dim somewhere (`fuzz_models.ZERO_DIMS`) through
    analysis, planning, calibration and compensation: a valid result or one line."""
    name = rng.choice(sorted(ZERO_DIMS))
    model = ZERO_DIMS[name]()
    argv, outputs = _zero_command(rng)
    return Case("zero_dims", name, argv, _files(_bytes(model), BASES["conv"]()),
                outputs=outputs)  # fmt: skip


def _zoo_command(rng: random.Random) -> tuple[list[str], tuple[str, ...]]:
    choice = rng.randrange(5)
    if choice == 0:
        return ["analyze", MODEL, "--json"], ()
    if choice == 1:
        return [*PRUNE, "--ratio", "0.3", "--report", "r.json"], ("out.onnx", "r.json")
    if choice == 2:
        return [*PRUNE, "--ratio", "0.4", "--criterion", "l1", "--global"], ("out.onnx",)
    if choice == 3:
        argv = [*PRUNE, "--target-macs", "0.7", "--criterion", "activation", "--compensate"]
        return [*argv, "bias", "--calib-random", "2", "--calib-batch", "1"], ("out.onnx",)
    return ["diff", BASE, MODEL, "--json", "d.json"], ("d.json",)


def _zoo_model(rng: random.Random) -> tuple[str, onnx.ModelProto]:
    # The small ones more often: the largest cost seconds and gigabytes per command.
    path = rng.choice(ZOO[: len(ZOO) // 2 + 1] * 2 + ZOO)
    return os.path.basename(path)[len("light_"):-len(".onnx")], onnx.load(path)


def zoo(rng: random.Random) -> Case:
    """A model-zoo classic as it is: analysis, pruning (calibrated too) and diff, each of
    which must work (valid models, ordinary options: a refusal is a failure here)."""
    name, model = _zoo_model(rng)
    argv, outputs = _zoo_command(rng)
    return Case("zoo", name, argv, _files(_bytes(model), model), outputs=outputs,
                must_succeed=True, timeout=ZOO_TIMEOUT_S)  # fmt: skip


def zoo_mutation(rng: random.Random) -> Case:
    """One mutation of `fuzz_models` applied to a model-zoo classic."""
    name, model = _zoo_model(rng)
    kinds = [kind for kind in MUTATIONS if kind != "subgraph"]
    rng.shuffle(kinds)
    for kind in kinds:  # the first that applies to this model
        try:
            mutated = MUTATIONS[kind](model, rng)
        except (IndexError, TypeError, ValueError, StopIteration):
            continue
        break
    data = mutated if isinstance(mutated, bytes) else _bytes(mutated)
    argv, outputs = _zoo_command(rng)
    return Case("zoo_mutation", f"{kind} of {name}", argv, _files(data, model), outputs=outputs,
                timeout=ZOO_TIMEOUT_S)  # fmt: skip


PATH_CLASSES = {
    "input_paths": input_paths,
    "output_hostile": output_hostile,
    "external_paths": external_paths,
    "zero_dims": zero_dims,
    "zoo": zoo,
    "zoo_mutation": zoo_mutation,
}
