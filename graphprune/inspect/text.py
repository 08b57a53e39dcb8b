"""The terminal view of a diff: a summary, then an aligned table of the layers that changed
(every layer with `all_layers`), removed and added nodes, and output deviations.

Values that did not change print once; changed ones print `before -> after`, so a reader
scans the arrows. Counts are abbreviated (1.2M) here; the JSON keeps exact integers.
"""

from __future__ import annotations

_NAME_WIDTH = 44
_COLUMNS = ("layer", "op", "in ch", "out ch", "output", "weight", "params", "MACs", "groups",
            "also changed")  # fmt: skip
# Changes the other columns already show; the rest (attributes, wiring...) are spelled out.
_SHOWN = {"in channels", "out channels", "input shape", "output shapes", "params", "macs"}


def diff_text(result: dict, all_layers: bool = False) -> str:
    """Render `graphprune.diff.diff_models`'s result for a terminal."""
    before, after, totals = result["before"], result["after"], result["totals"]
    lines = [
        f"A: {before['model']} ({before['nodes']} nodes)",
        f"B: {after['model']} ({after['nodes']} nodes)",
        f"matched {totals['matched']}, changed {totals['changed']}, removed "
        f"{totals['removed']}, added {totals['added']}, renamed {totals['renamed']}",
        _totals_line("params", totals["params"]) + ", " + _totals_line("MACs", totals["macs"]),
    ]
    rows = [row for row in result["layers"] if all_layers or row["changed"]]
    if rows:
        lines += ["", *_table([_cells(row) for row in rows])]
    hidden = len(result["layers"]) - len(rows)
    if hidden:
        lines.append(f"({hidden} unchanged layers not shown; --all shows them)")
    for sign, key in (("-", "removed"), ("+", "added")):
        if result[key]:
            lines.append("")
            lines += [f"{sign} {layer['name']} ({layer['op']})" for layer in result[key]]
    changed_outputs = [o for o in result["outputs"] if o["changed"]]
    for output in changed_outputs:
        lines.append(
            f"output {output['name'] or output['name_after']}: "
            f"{_shape(output['shape_before'])} -> {_shape(output['shape_after'])}"
        )
    if result.get("plan") is not None:
        pruned = sum(1 for g in result["groups"] if g["removed"])
        lines += ["", f"graphprune plan: {pruned} of {len(result['groups'])} groups pruned "
                  f"(attributed by {result['attribution']})"]  # fmt: skip
    validation = result.get("validation")
    if validation:
        lines += ["", f"validation on {validation['execution_provider']}:"]
        for output in validation["outputs"]:
            if output["max_abs"] is None:
                lines.append(
                    f"  {output['name']}: shape {_shape(output['shape_before'])} -> "
                    f"{_shape(output['shape_after'])}"
                )
            else:
                lines.append(
                    f"  {output['name']}: max abs {output['max_abs']:.3g}, "
                    f"max rel {output['max_rel']:.3g}"
                )
    if not rows and not result["removed"] and not result["added"]:
        lines += ["", "no structural change"]
    return "\n".join(lines)


def _totals_line(label: str, numbers: dict) -> str:
    return (
        f"{label} {numbers['before']:,} -> {numbers['after']:,} "
        f"({-numbers['removed_fraction']:+.1%})"
    )


def _cells(row: dict) -> list[str]:
    x, y = row["before"], row["after"]
    name = row["name"]
    if row["name_after"] != name:
        name = f"{name} = {row['name_after']}"
    return [
        _clip(name),
        row["op"],
        _pair(x["in_channels"], y["in_channels"], str),
        _pair(x["out_channels"], y["out_channels"], str),
        _pair(_first(x["output_shapes"]), _first(y["output_shapes"]), _shape),
        _pair(_main_weight(x), _main_weight(y), str),
        _pair(x["params"], y["params"], _count),
        _pair(x["macs"], y["macs"], _count),
        ",".join(row.get("groups") or []) or "",
        ", ".join(c for c in row["changes"] if _unseen(c, x, y)),
    ]


def _unseen(change: str, x: dict, y: dict) -> bool:
    """Whether the table's columns leave this change invisible."""
    if change == "weights":
        return _main_weight(x) == _main_weight(y)
    return change not in _SHOWN


def _first(shapes: list) -> list | None:
    return shapes[0] if shapes else None


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(c), *(len(r[k]) for r in rows)) for k, c in enumerate(_COLUMNS)]
    widths[-1] = 0  # the last column is not padded
    out = ["  ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return out


def _pair(before, after, show) -> str:
    if before is None and after is None:
        return ""
    text_before = "-" if before is None else show(before)
    if before == after:
        return text_before
    return f"{text_before} -> {'-' if after is None else show(after)}"


def _main_weight(facts: dict) -> str | None:
    """The input-1 constant (Conv/Gemm/MatMul weight, norm scale), else the first one."""
    weights = [w for w in facts["weights"] if "value" not in w]
    if not weights:
        return None
    weight = next((w for w in weights if w["input"] == 1), weights[0])
    return _shape(weight["shape"])


def _shape(shape) -> str:
    if shape is None:
        return "?"
    return "x".join(str(d) for d in shape) or "scalar"


def _count(value: int) -> str:
    for limit, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return str(value)


def _clip(name: str) -> str:
    if len(name) <= _NAME_WIDTH:
        return name
    half = (_NAME_WIDTH - 3) // 2
    return f"{name[:half]}...{name[-(_NAME_WIDTH - 3 - half) :]}"
