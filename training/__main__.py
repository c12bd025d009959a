"""Train, export and publish models: python -m training [MODEL | SPEC.json ...].

Each model is fitted, exported to ONNX, checked, and written as the next version of
models/<name>/ (or --version N). Errors are one line on stderr and exit code 2; a failed
run leaves the repository as it was.

`python -m training import MODEL_FILE --name NAME ...` imports a Keras, SavedModel or ONNX
file instead (training/importer/; `python -m training import --help`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from training import TrainingError, quiet, specs
from training.repository import REPOSITORY


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training", description=__doc__.splitlines()[0],
        epilog="To import a model file instead: python -m training import MODEL_FILE --name NAME "
               "(see python -m training import --help).",
    )
    parser.add_argument("models", nargs="*",
                        help=f"built-in model names ({', '.join(specs.builtin_names())}) "
                             "or spec files; default: every built-in model")
    parser.add_argument("--repository", type=Path, default=REPOSITORY,
                        help="the model repository to write into (default: models/)")
    parser.add_argument("--version", type=int, default=None,
                        help="version number to write (default: the next free one)")
    parser.add_argument("--reports", type=Path, default=None,
                        help="also draw training plots into this folder")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    return parser.parse_args(argv)


def probe_writable(repository: Path, name: str, version: int | None) -> None:
    """Fail before training, not after, when the version cannot be written."""
    model_root = repository / name
    existed = model_root.exists()
    try:
        model_root.mkdir(parents=True, exist_ok=True)
        probe = model_root / f".probe-{time.time_ns()}"
        probe.mkdir()
        probe.rmdir()
    except OSError as error:
        raise OSError(f"cannot write into {model_root}: {error.strerror or error}") from None
    finally:
        if not existed and model_root.is_dir() and not any(model_root.iterdir()):
            shutil.rmtree(model_root, ignore_errors=True)
    if version is not None and (model_root / str(version)).exists():
        raise OSError(f"{model_root / str(version)} exists already; pick another --version")


def summary(results) -> str:
    header = f"{'model':<15}{'version':>8}{'test accuracy':>15}{'reference':>11}" \
             f"{'|keras-onnx|':>14}{'seconds':>9}"
    lines = [header, "-" * len(header)]
    for result in results:
        reference = result.metrics.get("bayes_rule_test_accuracy")
        lines.append(
            f"{result.spec['name']:<15}{result.path.name:>8}"
            f"{result.metrics['test_accuracy']:>15.4f}"
            f"{'' if reference is None else f'{reference:.4f}':>11}"
            f"{result.parity:>14.1e}{result.seconds:>9.1f}"
        )
    lines.append("reference: the generator's Bayes rule on the same test split (demand only)")
    return "\n".join(lines)


@quiet.filtered()  # TensorFlow's C++ start-up and tf.data chatter off the console
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["import"]:
        from training.importer import cli  # TensorFlow is loaded only for Keras files and SavedModels

        return cli.main(argv[1:])
    args = parse_args(argv)
    try:
        chosen = [specs.load(name) for name in (args.models or specs.builtin_names())]
        if args.version is not None and args.version < 1:
            raise specs.SpecError("--version must be a positive integer")
        for spec in chosen:
            probe_writable(args.repository, spec["name"], args.version)
        # Imported here so that argument and spec errors answer at once, without TensorFlow.
        from training import pipeline

        results = [
            pipeline.run(spec, args.repository, args.version, args.reports,
                         verbose=0 if args.quiet else 2)
            for spec in chosen
        ]
    except (TrainingError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
