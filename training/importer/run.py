"""One import, from the model file to the published version: load, compare with onnxruntime,
export, write with its card.

The card (docs/card.md) records source {"kind": "keras" (whatever TensorFlow ran: .keras, .h5,
SavedModel) or "onnx", "file": the file's name, "format": keras, h5, savedmodel or onnx}, the
signature in graph order (a `range` for integer inputs that feed an Embedding), --labels per
output, parity (with the rule and each output's difference), the sha256 of every file, the
libraries used, the opset and the time.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from training import card
from training.importer import forward_section
from training.importer.conversion import export_graph
from training.importer.formats import load
from training.importer.labels import check_labels
from training.importer.loaded import Loaded
from training.importer.parity import compare, onnx_outputs, onnx_session, reference_outputs
from training.importer.samples import GENERATED, generated_inputs, read_sample, rows_of
from training.repository import publish


def run(args: argparse.Namespace, labels: dict[str, list[str]], say: Callable[[str], None] = print) -> Path:
    loaded = load(args.model)
    say(f"loaded {loaded.path.name}: {len(loaded.inputs)} input{'s' * (len(loaded.inputs) != 1)} "
        f"({', '.join(t.describe() for t in loaded.inputs)}), {len(loaded.outputs)} "
        f"output{'s' * (len(loaded.outputs) != 1)} ({', '.join(t.describe() for t in loaded.outputs)})")
    check_labels(loaded, labels)
    if args.sample is not None:
        feeds = read_sample(args.sample, loaded.inputs)
        data = f"sample {args.sample.name}"
    else:
        feeds = generated_inputs(loaded.inputs)
        data = GENERATED
    rows = rows_of(feeds)
    files: dict[str, Callable[[Path], None]] = {}
    section = None
    if loaded.kind == "onnx":
        session = onnx_session(loaded, loaded.path.read_bytes())
        if args.sample is not None:  # a smoke test: nothing to compare with
            onnx_outputs(loaded, session, feeds)
        parity = card.parity_entry(None, "none: a plain ONNX file has nothing to compare with" + (
            f"; ran {rows} rows of {data} through onnxruntime" if args.sample else ""),
            rows if args.sample else 0, None, None)
        opset = opset_of(loaded.keep[0])
        files["model.onnx"] = lambda path: shutil.copyfile(loaded.path, path)
        say(f"checked {loaded.path.name} with onnx.checker and onnxruntime (opset {opset}); "
            "no reference to compare with")
    else:
        graph = export_graph(loaded)
        model_bytes = graph.SerializeToString()
        session = onnx_session(loaded, model_bytes)
        reference = reference_outputs(loaded, feeds)
        answers = onnx_outputs(loaded, session, feeds)
        differences = compare(loaded, reference, answers, args.tolerance, "onnxruntime")
        worst = max(differences.values(), default=0.0)
        parity = card.parity_entry(loaded.reference, data, rows, worst, args.tolerance, differences)
        opset = opset_of(graph)
        say(f"exported to ONNX opset {opset}: parity {worst:.1e} on {rows} "
            f"{'generated rows' if args.sample is None else f'rows of {args.sample.name}'} "
            f"(tolerance {args.tolerance:.0e})")
        files["model.onnx"] = lambda path: path.write_bytes(model_bytes)
        found = forward_section.extract(loaded)
        if found is not None:
            section, weights = found
            agreement = forward_section.check(loaded, section, weights, feeds, answers, args.tolerance)
            files["weights.npz"] = lambda path: np.savez(path, **weights)
            say(f"forward section: {section['preprocessing']['type']} preprocessing, "
                f"{len(section['layers'])} Dense layers; NumPy and onnxruntime agree to {agreement:.1e}")
    target = publish(
        args.repository, args.name, files,
        lambda version, digests: imported_card(args, loaded, labels, parity, section, opset, version,
                                               digests),
        args.version,
    )
    say(f"wrote {target}")
    return target


def opset_of(graph) -> int:
    return next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), 0)


def imported_card(args: argparse.Namespace, loaded: Loaded, labels: dict, parity: dict,
                  section: dict | None, opset: int, version: int, files: dict) -> dict:
    return card.build(
        name=args.name, version=version,
        description=args.description or f"Imported from {loaded.path.name}.",
        source={"kind": loaded.kind, "file": loaded.path.name, "format": loaded.format},
        inputs=[t.entry() for t in loaded.inputs],
        outputs=[t.entry(labels.get(t.name)) for t in loaded.outputs],
        forward=section, parity=parity, metrics={}, files=files, opset=opset,
    )
