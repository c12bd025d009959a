"""The command line of `python -m training import`: its arguments, what can be refused before a
model is loaded, and the exit codes.

Every refusal is one line on stderr, `error: ...`, and exit code 2; the repository is left as
it was.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from modelcard.tables import NAME
from training import TrainingError
from training.importer.labels import parse_labels
from training.importer.loaded import ImportRefused
from training.importer.parity import TOLERANCE
from training.importer.run import run
from training.importer.samples import DYNAMIC, OTHER_INTEGERS, ROWS, SEED
from training.repository import REPOSITORY


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training import",
        description="Import a Keras (.keras, .h5), SavedModel or ONNX model file as the next version\n"
                    "of a model in the repository: exported to ONNX (opset 17) through the built-in\n"
                    "models' export, compared with onnxruntime, then written with its card\n"
                    "(docs/card.md).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL_FILE", type=Path,
                        help="a Keras 3 .keras file, a legacy Keras .h5 file, a TensorFlow "
                             "SavedModel folder (holding saved_model.pb) or an .onnx file")
    parser.add_argument("--name", required=True,
                        help="the model's name in the repository: 1 to 128 letters, digits, "
                             "'_', '.' or '-', starting with a letter or digit")
    parser.add_argument("--repository", type=Path, default=REPOSITORY, metavar="DIR",
                        help="the model repository to write into (default: models/)")
    parser.add_argument("--version", type=int, default=None, metavar="N",
                        help="version number to write; refused if it exists (default: the next "
                             "free one)")
    parser.add_argument("--sample", type=Path, default=None, metavar="FILE.npz",
                        help="inputs to compare the model and onnxruntime on: an .npz archive "
                             "with one array per model input, keyed by input name, rows first "
                             "(default: 16 generated rows, see below)")
    parser.add_argument("--labels", action="append", default=[], metavar="OUTPUT=a,b,c",
                        help="class labels of an output, comma-separated: as many as its last "
                             "dimension, or two for a last dimension of 1 (the probability of "
                             "the second); repeat for several outputs")
    parser.add_argument("--description", default=None, metavar="TEXT",
                        help="one line for people (default: 'Imported from MODEL_FILE.')")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, metavar="FLOAT",
                        help=f"largest |model - onnxruntime| allowed, times max(1, largest "
                             f"|output|) (default: {TOLERANCE:.0e}, see below)")
    return parser.parse_args(argv)


EPILOG = f"""\
generated inputs (without --sample): {ROWS} rows, seed {SEED}; floats standard normal, rank-4
  float inputs (images, N x H x W x C) uniform in [0, 1); integers that feed an Embedding
  uniform in [0, input_dim), other integers uniform in [0, {OTHER_INTEGERS}); booleans a fair coin;
  each dynamic dimension other than the first is {DYNAMIC}.
tolerance: every output must satisfy |model - onnxruntime| <= tolerance x max(1, largest
  |model output|). The default {TOLERANCE:.0e} is ten times the built-in models' bound: deeper
  networks sum in float32 in another order (measured: 1e-7 to 1e-6), while a wrong conversion
  differs by 1e-2 or more. Above it nothing is written and the exit code is 2.
a plain .onnx file is checked (onnx.checker, onnxruntime) and copied; it has no reference to
  compare with (parity.reference null in the card).
A forward section and weights.npz are written for plain stacks of Dense layers (sigmoid, relu,
  linear, softmax), optionally after a Rescaling or Normalization layer.
Errors: one line on stderr, exit code 2, the repository left as it was."""


def check_arguments(args: argparse.Namespace) -> dict[str, list[str]]:
    """Everything that can be refused before a model is loaded."""
    if not NAME.fullmatch(args.name):
        raise ImportRefused(f"--name {args.name!r}: a model name is 1 to 128 letters, digits, "
                            "'_', '.' or '-', starting with a letter or digit")
    if args.version is not None:
        if args.version < 1:
            raise ImportRefused("--version must be a positive integer")
        target = args.repository / args.name / str(args.version)
        if target.exists():
            raise ImportRefused(f"{target} exists already; pick another --version")
    if not (math.isfinite(args.tolerance) and args.tolerance > 0):
        raise ImportRefused(f"--tolerance {args.tolerance}: must be a positive number")
    if not args.model.exists():
        raise ImportRefused(f"{args.model}: no such file or folder")
    if args.sample is not None and not args.sample.is_file():
        raise ImportRefused(f"--sample {args.sample}: no such file")
    if args.repository.exists() and not args.repository.is_dir():
        raise ImportRefused(f"--repository {args.repository}: not a folder")
    return parse_labels(args.labels)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        labels = check_arguments(args)
        run(args, labels)
    except (TrainingError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
