"""Import a model file as the next version of a model: python -m training import MODEL_FILE --name NAME.

What it reads
  * a Keras 3 `.keras` file or a legacy Keras `.h5` file: keras.saving.load_model with
    compile=False and safe_mode=True (a Lambda layer's Python code is refused, never run);
  * a TensorFlow SavedModel folder (the one holding saved_model.pb): tf.saved_model.load and its
    `serving_default` signature. The signature's argument names become the ONNX input names and
    its output keys the output names (Keras' `model.export` calls them output_0, output_1, ...).
    tf.saved_model.load is used rather than keras.layers.TFSMLayer: the signature's names,
    dtypes and shapes are what the graph must keep, and TFSMLayer hides them behind one layer.
    Its layers are not Keras objects any more, so a SavedModel never gets a forward section;
  * a plain `.onnx` file: onnx.checker (full check), an onnxruntime load, the signature read from
    the graph (symbolic or missing dimensions become -1), copied unchanged as model.onnx. There
    is nothing to compare it with: the card's parity.reference is null. A scikit-learn
    classifier converted by skl2onnx imports when converted without ZipMap (its probabilities
    as a sequence of maps, which no card datatype declares; refused with how to convert).

Keras models and SavedModels go through training.export.to_onnx, the built-in models' path
(opset 17; ONNX input names = the model's input names, output names = its output names: the
output layers' names, a dict output's keys, or a Sequential model's last layer).

Parity: Keras (or the SavedModel's signature, run by TensorFlow) and onnxruntime run the same
inputs: --sample FILE.npz (one array per input, keyed by input name, converted to the input's
dtype when NumPy can do so without changing the kind of number), or else 16 generated rows
(seed 0): float inputs standard normal, except rank-4 float inputs (images, N x H x W x C),
uniform in [0, 1); integer inputs that feed an Embedding uniform in [0, input_dim), other
integers uniform in [0, 10); booleans a fair coin; a dynamic dimension other than the first is 8.
Every output is held to |Keras - onnxruntime| <= tolerance x max(1, largest |Keras output|):
absolute for probabilities and other outputs within [-1, 1], relative to the output's scale
for larger ones (float32 keeps about 7 digits, so an absolute bound means nothing for outputs
in the thousands). The default tolerance, 1e-4, is ten times the built-in models' 1e-5:
imported networks are deeper (convolutions, recurrences) and float32 sums taken in a
different order drift further, yet measured differences stay near 1e-7..1e-6, while a wrong
conversion (a missing layer, a transposed kernel, a wrong activation) differs by 1e-2 or more.
Above the tolerance nothing is published.

A forward section (and weights.npz: W1, b1, ..., W as inputs x units) is written only for a
Keras model that is a plain stack of Dense layers with activations among sigmoid, relu, linear
and softmax on one 2-D float input, optionally led by a Rescaling (scalar scale and offset) or a
Normalization layer, recorded as the card's `rescale` or `standardize` preprocessing exactly as
training/fit.py records a trained model's; it is checked with modelcard.forward.Network against
onnxruntime before anything is published.

The card (docs/card.md) records source {"kind": "keras" (whatever TensorFlow ran: .keras, .h5,
SavedModel) or "onnx", "file": the file's name, "format": keras, h5, savedmodel or onnx}, the
signature in graph order (a `range` for integer inputs that feed an Embedding), --labels per
output, parity (with the rule and each output's difference), the sha256 of every file, the
libraries used, the opset and the time.

Every refusal is one line on stderr, `error: ...`, and exit code 2; the repository is left as
it was.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelcard.tables import DATATYPE_OF, DATATYPE_OF_ONNX, NAME
from modelcard.tables import DATATYPES as V2_DATATYPES
from training import TrainingError, card, one_line, quiet
from training.repository import REPOSITORY, publish

ROWS = 16  # generated rows
DYNAMIC = 8  # the size of a generated dynamic dimension other than the first
OTHER_INTEGERS = 10  # generated integers that feed no Embedding: uniform in [0, 10)
SEED = 0
TOLERANCE = 1e-4
CHUNK = 256  # rows per Keras call when comparing on a sample

# The card's datatypes (v2 names) by NumPy type name; NumPy type names by onnxruntime's type.
DATATYPES = {dtype.name: name for dtype, name in DATATYPE_OF.items()}
ORT_TYPES = {onnx_type: V2_DATATYPES[name].name for onnx_type, name in DATATYPE_OF_ONNX.items()}
FORWARD_ACTIVATIONS = ("sigmoid", "relu", "linear", "softmax")


class ImportRefused(TrainingError):
    """The file cannot be imported as asked; the message names the file, layer or tensor."""


@dataclass(frozen=True)
class Tensor:
    """One input or output of the imported model, as the card records it."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 for a dynamic dimension
    range: tuple[int, int] | None = None  # the vocabulary of the Embedding an integer input feeds

    @property
    def datatype(self) -> str:
        return DATATYPES[self.dtype.name]

    def describe(self) -> str:
        return f"{self.name} {self.datatype} {list(self.shape)}"

    def entry(self, labels: list[str] | None = None) -> dict:
        return card.tensor_entry(self.name, self.datatype, self.shape, bounds=self.range, labels=labels)


@dataclass
class Loaded:
    """A model file, loaded: its signature, and for Keras and SavedModels the call that runs it."""

    path: Path
    format: str  # keras, h5, savedmodel, onnx
    inputs: list[Tensor]
    outputs: list[Tensor]
    call: Callable | None = None  # (*tensors in input order) -> {output name: tensor}
    model: object | None = None  # the keras.Model, when there is one
    keep: list = field(default_factory=list)  # objects the call needs alive (a loaded SavedModel)

    @property
    def kind(self) -> str:
        """The card's source.kind: keras for anything TensorFlow ran, onnx for a plain ONNX file."""
        return "onnx" if self.format == "onnx" else "keras"

    @property
    def reference(self) -> str | None:
        return {"keras": "keras", "h5": "keras", "savedmodel": "tensorflow"}.get(self.format)


# ------------------------------------------------------------------ command line


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


def parse_labels(values: list[str]) -> dict[str, list[str]]:
    labels: dict[str, list[str]] = {}
    for value in values:
        output, sep, text = value.partition("=")
        if not sep or not output:
            raise ImportRefused(f"--labels {value!r}: expected OUTPUT=a,b,c")
        names = text.split(",")
        if not text or any(not label.strip() for label in names):
            raise ImportRefused(f"--labels {value!r}: every label must be a non-empty name")
        if output in labels:
            raise ImportRefused(f"--labels names output {output!r} twice")
        if len(set(names)) != len(names):
            raise ImportRefused(f"--labels {value!r}: a label appears twice")
        labels[output] = [label.strip() for label in names]
    return labels


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


# ------------------------------------------------------------------ loading


def load(path: Path) -> Loaded:
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ImportRefused(f"{path.name}: a folder, but not a SavedModel (no saved_model.pb)")
        return load_savedmodel(path)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise ImportRefused(f"{path.name}: not a Keras model file (a .keras file is a zip archive)")
        return load_keras(path, "keras")
    if suffix in (".h5", ".hdf5"):
        check_h5(path)
        return load_keras(path, "h5")
    if suffix == ".onnx":
        return load_onnx(path)
    raise ImportRefused(f"{path.name}: unknown model format; expected a .keras, .h5 or .onnx file "
                        "or a SavedModel folder")


def check_h5(path: Path) -> None:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            has_model = "model_config" in h5.attrs
    except OSError:
        raise ImportRefused(f"{path.name}: not an HDF5 file") from None
    if not has_model:
        raise ImportRefused(f"{path.name}: an HDF5 file without a Keras model in it (weights only?)")


def load_keras(path: Path, fmt: str) -> Loaded:
    import keras

    try:
        with quiet.python_logs():
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises ValueError, TypeError, KeyError, OSError, ...
        raise ImportRefused(f"{path.name}: Keras cannot load it ({one_line(error)})") from None
    if not isinstance(model, keras.Model):
        raise ImportRefused(f"{path.name}: holds a {type(model).__name__}, not a Keras model")
    try:
        tensors = model.inputs
    except (AttributeError, ValueError):
        tensors = None
    if not tensors:
        raise ImportRefused(f"{path.name}: a subclassed model without a graph of layers; save it "
                            "as a functional or Sequential model")
    sequential = isinstance(model, keras.Sequential)
    in_structure = tensors[0] if sequential else model.input
    out_structure = model.outputs[0] if sequential else model.output

    if isinstance(in_structure, dict):
        in_names = keras.tree.flatten({key: key for key in in_structure})
    else:
        in_names = [tensor.name for tensor in tensors]
    if isinstance(out_structure, dict):
        out_names = keras.tree.flatten({key: key for key in out_structure})
    else:  # the layer that makes each output
        out_names = [tensor._keras_history[0].name for tensor in model.outputs]
        out_names = disambiguate(out_names)
    ranges = embedding_ranges(model, tensors)
    inputs = [keras_tensor(path, "input", name, tensor, ranges.get(id(tensor)))
              for name, tensor in zip(in_names, tensors, strict=True)]
    outputs = [keras_tensor(path, "output", name, tensor)
               for name, tensor in zip(out_names, model.outputs, strict=True)]
    unique_names(path, inputs, outputs)

    def call(*arguments):
        x = keras.tree.pack_sequence_as(in_structure, list(arguments))
        y = model(x, training=False)
        return dict(zip(out_names, keras.tree.flatten(y), strict=True))

    return Loaded(path, fmt, inputs, outputs, call, model)


def disambiguate(names: list[str]) -> list[str]:
    """A layer with several outputs (an RNN returning its state) names them name, name_1, ..."""
    seen: dict[str, int] = {}
    result = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        result.append(name if count == 0 else f"{name}_{count}")
    return result


def unique_names(path: Path, inputs: list[Tensor], outputs: list[Tensor]) -> None:
    names = [t.name for t in inputs + outputs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ImportRefused(f"{path.name}: tensor names {twice} are used twice; the card needs "
                            "distinct input and output names")


def keras_tensor(path: Path, role: str, name: str, tensor, bounds=None) -> Tensor:
    import keras

    dtype = keras.backend.standardize_dtype(tensor.dtype)
    if getattr(tensor, "sparse", False) or getattr(tensor, "ragged", False):
        raise ImportRefused(f"{path.name}: {role} {name!r} is a sparse or ragged tensor; "
                            "the card serves dense tensors only")
    if dtype == "string":
        raise ImportRefused(f"{path.name}: {role} {name!r} is a string tensor; the card serves "
                            f"numbers and booleans only ({', '.join(DATATYPES.values())})")
    if dtype not in DATATYPES:
        raise ImportRefused(f"{path.name}: {role} {name!r} has dtype {dtype}, which the card "
                            f"cannot declare ({', '.join(DATATYPES.values())})")
    shape = tuple(-1 if d is None else int(d) for d in tensor.shape)
    return Tensor(name, np.dtype(dtype), shape, bounds)


def embedding_ranges(model, tensors) -> dict[int, tuple[int, int]]:
    """[0, input_dim - 1] for each integer model input an Embedding layer reads directly (the
    smallest vocabulary when several do), keyed by the input tensor's id."""
    import keras

    ranges: dict[int, tuple[int, int]] = {}
    embeddings = [layer for layer in model.layers if isinstance(layer, keras.layers.Embedding)]
    for tensor in tensors:
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        if dtype not in DATATYPES or np.dtype(dtype).kind not in "iu":
            continue
        for layer in embeddings:
            if any(x is tensor for node in layer._inbound_nodes for x in node.input_tensors):
                high = int(layer.input_dim) - 1
                ranges[id(tensor)] = (0, min(high, ranges.get(id(tensor), (0, high))[1]))
    return ranges


def load_savedmodel(path: Path) -> Loaded:
    import tensorflow as tf

    try:
        with quiet.python_logs():
            saved = tf.saved_model.load(str(path))
    except Exception as error:
        raise ImportRefused(f"{path.name}: TensorFlow cannot load the SavedModel "
                            f"({one_line(error)})") from None
    signature = getattr(saved, "signatures", {}).get("serving_default")
    if signature is None:
        raise ImportRefused(f"{path.name}: the SavedModel has no serving_default signature")
    arguments, keywords = signature.structured_input_signature
    if arguments:
        raise ImportRefused(f"{path.name}: serving_default takes positional arguments; "
                            "expected named inputs")

    def tensor(role: str, name: str, spec) -> Tensor:
        if spec.dtype == tf.string:
            raise ImportRefused(f"{path.name}: {role} {name!r} is a string tensor; the card serves "
                                f"numbers and booleans only ({', '.join(DATATYPES.values())})")
        dtype = np.dtype(spec.dtype.as_numpy_dtype) if spec.dtype.is_numpy_compatible else None
        if dtype is None or dtype.name not in DATATYPES:
            raise ImportRefused(f"{path.name}: {role} {name!r} has dtype {spec.dtype.name}, which "
                                f"the card cannot declare ({', '.join(DATATYPES.values())})")
        if spec.shape.rank is None:
            raise ImportRefused(f"{path.name}: {role} {name!r} has no known rank")
        return Tensor(name, dtype, tuple(-1 if d is None else int(d) for d in spec.shape.as_list()))

    inputs = [tensor("input", name, spec) for name, spec in keywords.items()]
    if not isinstance(signature.structured_outputs, dict):
        raise ImportRefused(f"{path.name}: serving_default does not return named outputs")
    outputs = [tensor("output", name, spec) for name, spec in signature.structured_outputs.items()]
    unique_names(path, inputs, outputs)
    names = [t.name for t in inputs]

    def call(*arguments):
        return signature(**dict(zip(names, arguments, strict=True)))

    return Loaded(path, "savedmodel", inputs, outputs, call, keep=[saved, signature])


def load_onnx(path: Path) -> Loaded:
    import onnx
    import onnxruntime

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # DecodeError and friends
        raise ImportRefused(f"{path.name}: not an ONNX model ({one_line(error)})") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer):
        raise ImportRefused(f"{path.name}: keeps its weights in external data files; save it as "
                            "one .onnx file")
    try:
        onnx.checker.check_model(graph, full_check=True)
    except Exception as error:
        raise ImportRefused(f"{path.name}: onnx.checker refuses it ({one_line(error)})") from None
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ImportRefused(f"{path.name}: onnxruntime cannot load it ({one_line(error)})") from None

    def tensor(role: str, node) -> Tensor:
        if node.type == "tensor(string)":
            raise ImportRefused(f"{path.name}: {role} {node.name!r} is a string (BYTES) tensor; the "
                                f"card serves numbers and booleans only")
        if node.type not in ORT_TYPES:
            raise ImportRefused(f"{path.name}: {role} {node.name!r} has type {node.type}, which the "
                                f"card cannot declare ({', '.join(DATATYPES.values())})")
        if not isinstance(node.shape, list):
            raise ImportRefused(f"{path.name}: {role} {node.name!r} has no known rank")
        return Tensor(node.name, np.dtype(ORT_TYPES[node.type]),
                      tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape))

    # Before the tensors, so that a classifier trained on string classes hears of ZipMap first.
    for node in session.get_outputs():
        if node.type.startswith("seq(map("):
            raise ImportRefused(f"{path.name}: output {node.name!r} is a sequence of maps ({node.type}, "
                                "scikit-learn's ZipMap), which the card cannot declare; export it "
                                "without: pass options={'zipmap': False} to skl2onnx.to_onnx")
    inputs = [tensor("input", node) for node in session.get_inputs()]
    outputs = [tensor("output", node) for node in session.get_outputs()]
    unique_names(path, inputs, outputs)
    return Loaded(path, "onnx", inputs, outputs, keep=[graph])


# ------------------------------------------------------------------ inputs to compare on


def generated_inputs(inputs: list[Tensor], rows: int = ROWS, seed: int = SEED) -> dict[str, np.ndarray]:
    """See the module docstring: what each kind of input is drawn from."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for tensor in inputs:
        shape = [rows if axis == 0 and d == -1 else DYNAMIC if d == -1 else d
                 for axis, d in enumerate(tensor.shape)]
        kind = tensor.dtype.kind
        if kind == "b":
            values = rng.random(shape) < 0.5
        elif kind in "iu":
            low, high = tensor.range if tensor.range is not None else (0, OTHER_INTEGERS - 1)
            values = rng.integers(low, high + 1, size=shape)
        elif len(shape) == 4:
            values = rng.random(shape)
        else:
            values = rng.standard_normal(shape)
        feeds[tensor.name] = np.asarray(values).astype(tensor.dtype)
    return feeds


GENERATED = (f"{ROWS} generated rows (seed {SEED}): floats standard normal, rank-4 float inputs "
             f"uniform in [0, 1), integers feeding an Embedding uniform in [0, input_dim), other "
             f"integers uniform in [0, {OTHER_INTEGERS}), booleans a fair coin, dynamic dimensions "
             f"other than the first {DYNAMIC}")


def read_sample(path: Path, inputs: list[Tensor]) -> dict[str, np.ndarray]:
    """The sample's arrays, converted to the inputs' dtypes; refused when they do not fit."""
    where = f"sample {path.name}"
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ImportRefused(f"{where}: not a NumPy .npz archive ({one_line(error)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ImportRefused(f"{where}: a single array, not an .npz archive keyed by input name")
    try:
        with archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ImportRefused(f"{where}: cannot read it ({one_line(error)})") from None
    names = [t.name for t in inputs]
    unknown = [key for key in arrays if key not in names]
    missing = [name for name in names if name not in arrays]
    if unknown:
        raise ImportRefused(f"{where}: {', '.join(map(repr, unknown))} "
                            f"{'is not an input' if len(unknown) == 1 else 'are not inputs'} of the "
                            f"model; its inputs are {names}")
    if missing:
        raise ImportRefused(f"{where}: has no array for input {missing[0]!r}; its inputs are {names}")
    feeds = {}
    for tensor in inputs:
        array = arrays[tensor.name]
        at = f"{where}: input {tensor.name!r}"
        if array.dtype.kind not in "biuf":
            raise ImportRefused(f"{at} holds {array.dtype}, not numbers or booleans")
        if not np.can_cast(array.dtype, tensor.dtype, casting="same_kind"):
            raise ImportRefused(f"{at} holds {array.dtype} values, which do not convert to "
                                f"{tensor.datatype}")
        if array.ndim != len(tensor.shape) or any(
                d != -1 and d != n for d, n in zip(tensor.shape, array.shape, strict=True)):
            raise ImportRefused(f"{at} has shape {list(array.shape)}, which does not fit "
                                f"{list(tensor.shape)}")
        if array.ndim and array.shape[0] == 0:
            raise ImportRefused(f"{at} has no rows")
        if tensor.dtype.kind in "iu" and array.size:
            info = np.iinfo(tensor.dtype)
            low, high = tensor.range if tensor.range is not None else (info.min, info.max)
            if array.min() < low or array.max() > high:
                why = "the Embedding's vocabulary" if tensor.range is not None else tensor.datatype
                raise ImportRefused(f"{at} has values outside [{low}, {high}] ({why})")
        converted = array.astype(tensor.dtype)
        if tensor.dtype.kind == "f" and np.isfinite(array).all() and not np.isfinite(converted).all():
            raise ImportRefused(f"{at} has values too large for {tensor.datatype}")
        feeds[tensor.name] = converted
    batched = {t.name: feeds[t.name].shape[0] for t in inputs if t.shape[:1] == (-1,)}
    if len(set(batched.values())) > 1:
        raise ImportRefused(f"{where}: the inputs have different numbers of rows {batched}")
    return feeds


def rows_of(feeds: dict[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()))
    return int(first.shape[0]) if first.ndim else 1


# ------------------------------------------------------------------ export, parity, forward


def export_graph(loaded: Loaded):
    import tensorflow as tf

    from training import export

    specs = [tf.TensorSpec([None if d == -1 else d for d in t.shape], tf.as_dtype(t.dtype), name=t.name)
             for t in loaded.inputs]
    with quiet.python_logs() as records:
        try:
            graph = export.to_onnx(loaded.call, specs)
        except export.ExportError as error:
            logged = [r.getMessage().splitlines()[0] for r in records if r.levelno >= logging.ERROR]
            detail = f"; tf2onnx: {logged[0][:200]}" if logged else ""
            raise ImportRefused(f"{loaded.path.name}: {error}{detail}") from None
        except Exception as error:  # tracing the model failed
            raise ImportRefused(f"{loaded.path.name}: TensorFlow cannot trace the model "
                                f"({one_line(error)})") from None
    check_signature(loaded, graph)
    return graph


def check_signature(loaded: Loaded, graph) -> None:
    """The exported graph's inputs and outputs: the model's names, dtypes and dynamic dimensions."""
    import onnx

    def describe(value) -> tuple[str, list]:
        kind = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type)).name
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]
        return dtype, dims

    name = loaded.path.name
    for value, tensor in zip(graph.graph.input, loaded.inputs, strict=True):
        dtype, dims = describe(value)
        if dtype != tensor.dtype.name or dims != list(tensor.shape):
            raise ImportRefused(f"{name}: the exported input {tensor.name!r} is {dtype} {dims}, the "
                                f"model's is {tensor.dtype.name} {list(tensor.shape)}")
    produced = [value.name for value in graph.graph.output]
    if sorted(produced) != sorted(t.name for t in loaded.outputs):
        raise ImportRefused(f"{name}: the exported graph's outputs are {produced}, expected "
                            f"{[t.name for t in loaded.outputs]}")
    by_name = {value.name: value for value in graph.graph.output}
    for tensor in loaded.outputs:
        dtype, _ = describe(by_name[tensor.name])
        if dtype != tensor.dtype.name:
            raise ImportRefused(f"{name}: the exported output {tensor.name!r} is {dtype}, the "
                                f"model's is {tensor.dtype.name}")
    # The card lists outputs in graph order.
    loaded.outputs.sort(key=lambda t: produced.index(t.name))


def reference_outputs(loaded: Loaded, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's own answers (Keras or TensorFlow), CHUNK rows at a time."""
    import tensorflow as tf

    names = [t.name for t in loaded.inputs]
    batched = all(t.shape[:1] == (-1,) for t in loaded.inputs)
    rows = rows_of(feeds) if batched else 1
    step = CHUNK if batched else max(rows, 1)
    parts: dict[str, list[np.ndarray]] = {t.name: [] for t in loaded.outputs}
    try:
        for start in range(0, rows, step):
            chunk = [tf.constant(feeds[n][start:start + step] if batched else feeds[n]) for n in names]
            with quiet.python_logs():
                answer = loaded.call(*chunk)
            for name in parts:
                value = answer[name]
                parts[name].append(value.numpy() if hasattr(value, "numpy") else np.asarray(value))
    except Exception as error:
        raise ImportRefused(f"{loaded.path.name}: the model fails on the comparison inputs "
                            f"({one_line(error)}); give a --sample") from None
    return {name: np.concatenate(chunks) if batched else chunks[0] for name, chunks in parts.items()}


def onnx_session(loaded: Loaded, model_bytes: bytes):
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise ImportRefused(f"{loaded.path.name}: onnxruntime cannot load the exported graph "
                            f"({one_line(error)})") from None


def onnx_outputs(loaded: Loaded, session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [t.name for t in loaded.outputs]
    try:
        return dict(zip(names, session.run(names, feeds), strict=True))
    except Exception as error:
        raise ImportRefused(f"{loaded.path.name}: onnxruntime fails on the comparison inputs "
                            f"({one_line(error)})") from None


def compare(loaded: Loaded, reference: dict, answers: dict, tolerance: float, what: str) -> dict[str, float]:
    """max |reference - answer| per output; refused above tolerance x max(1, max |reference|)."""
    differences = {}
    name = loaded.path.name
    for tensor in loaded.outputs:
        expected, got = reference[tensor.name], answers[tensor.name]
        if expected.shape != got.shape:
            raise ImportRefused(f"{name}: output {tensor.name!r} has shape {list(got.shape)} in "
                                f"{what}, {list(expected.shape)} in the model")
        expected, got = expected.astype(np.float64), got.astype(np.float64)
        if not np.isfinite(expected).all():
            raise ImportRefused(f"{name}: output {tensor.name!r} is not finite on the comparison "
                                "inputs; give a --sample")
        difference = float(np.max(np.abs(expected - got))) if expected.size else 0.0
        if not math.isfinite(difference):
            difference = math.inf
        scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
        if difference > tolerance * scale:
            raise ImportRefused(f"{name}: output {tensor.name!r}: {what} differs from the model by "
                                f"{difference:.2e}, above the tolerance {tolerance:g}"
                                + (f" x {scale:.3g}" if scale > 1 else ""))
        differences[tensor.name] = difference
    return differences


def forward_section(loaded: Loaded) -> tuple[dict, dict[str, np.ndarray]] | None:
    """The card's forward section and weights.npz, for a plain stack of Dense layers; else None."""
    import keras

    from training import fit

    model = loaded.model
    if model is None or len(loaded.inputs) != 1 or len(loaded.outputs) != 1:
        return None
    (source,), (target,) = loaded.inputs, loaded.outputs
    if source.dtype != np.float32 or len(source.shape) != 2 or source.shape[1] < 1 \
            or source.shape[0] != -1:
        return None
    layers = dense_chain(model)
    if not layers:
        return None
    preprocessing = {"type": "none"}
    features = source.shape[1]
    if isinstance(layers[0], keras.layers.Rescaling):
        scale, offset = np.asarray(layers[0].scale), np.asarray(layers[0].offset)
        if scale.size != 1 or offset.size != 1:
            return None
        preprocessing = fit.rescaling_parameters(layers[0])
        layers = layers[1:]
    elif isinstance(layers[0], keras.layers.Normalization):
        if layers[0].invert or np.asarray(layers[0].mean).size not in (1, features):
            return None
        preprocessing = fit.normalization_parameters(layers[0])
        for key in ("mean", "std"):  # one value per feature, as the card records it
            preprocessing[key] = np.broadcast_to(np.asarray(preprocessing[key], np.float32),
                                                 (features,)).tolist()
        layers = layers[1:]
    if not layers:
        return None
    table, weights = [], {}
    for number, layer in enumerate(layers, start=1):
        if type(layer) is not keras.layers.Dense or getattr(layer, "quantization_mode", None):
            return None
        activation = keras.activations.serialize(layer.activation)
        if activation not in FORWARD_ACTIVATIONS:
            return None
        W = np.asarray(layer.kernel, dtype=np.float32)
        b = np.asarray(layer.bias, dtype=np.float32) if layer.use_bias else np.zeros(W.shape[1], np.float32)
        weights[f"W{number}"], weights[f"b{number}"] = W, b
        table.append({"name": layer.name, "units": int(W.shape[1]), "activation": activation})
    return card.forward_entry(source.name, target.name, preprocessing, table), weights


def dense_chain(model) -> list | None:
    """The layers from the model's input to its output when they form one chain (each takes the
    previous one's output, one float32 tensor in and one out, no layer twice), in order; else None."""
    layers, tensor = [], model.outputs[0]
    while tensor is not model.inputs[0]:
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        layer, node_index, _ = history
        node = layer._inbound_nodes[node_index]
        if len(node.input_tensors) != 1 or len(node.output_tensors) != 1 or \
                getattr(layer, "compute_dtype", None) != "float32" or \
                any(layer is seen for seen in layers) or len(layers) > 1000:
            return None
        layers.append(layer)
        tensor = node.input_tensors[0]
    return layers[::-1]


def check_forward(loaded: Loaded, section: dict, weights: dict, feeds: dict, answers: dict,
                  tolerance: float) -> float:
    """modelcard.forward's NumPy network against onnxruntime, on the comparison inputs."""
    from modelcard import forward

    network = forward.Network({"forward": section}, forward.layers_from(section, weights))
    predicted = {section["output"]: network.predict(feeds[section["input"]])}
    differences = compare(loaded, predicted, answers, tolerance, "the NumPy forward section")
    return differences[section["output"]]


# ------------------------------------------------------------------ card and run


def check_labels(loaded: Loaded, labels: dict[str, list[str]]) -> None:
    outputs = {t.name: t for t in loaded.outputs}
    for name, names in labels.items():
        if name not in outputs:
            raise ImportRefused(f"--labels names output {name!r}, which {loaded.path.name} does not "
                                f"have; its outputs are {list(outputs)}")
        shape = outputs[name].shape
        if not shape or shape[-1] == -1:
            raise ImportRefused(f"--labels {name}: output {name!r} has shape {list(shape)}, without "
                                "a fixed last dimension to label")
        wanted = 2 if shape[-1] == 1 else shape[-1]
        if len(names) != wanted:
            raise ImportRefused(f"--labels {name}: {len(names)} labels for output {name!r} of shape "
                                f"{list(shape)}; it needs {wanted}"
                                + (" (a last dimension of 1 is the probability of the second)"
                                   if shape[-1] == 1 else ""))


def opset_of(graph) -> int:
    return next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), 0)


def imported_card(args, loaded: Loaded, labels: dict, parity: dict, section: dict | None, opset: int,
                  version: int, files: dict) -> dict:
    return card.build(
        name=args.name, version=version,
        description=args.description or f"Imported from {loaded.path.name}.",
        source={"kind": loaded.kind, "file": loaded.path.name, "format": loaded.format},
        inputs=[t.entry() for t in loaded.inputs],
        outputs=[t.entry(labels.get(t.name)) for t in loaded.outputs],
        forward=section, parity=parity, metrics={}, files=files, opset=opset,
    )


def run(args, labels: dict[str, list[str]], say: Callable[[str], None] = print) -> Path:
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
        found = forward_section(loaded)
        if found is not None:
            section, weights = found
            agreement = check_forward(loaded, section, weights, feeds, answers, args.tolerance)
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


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        labels = check_arguments(args)
        run(args, labels)
    except (TrainingError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0

