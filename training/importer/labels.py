"""--labels OUTPUT=a,b,c: parsed from the command line, then fitted to the loaded outputs."""

from __future__ import annotations

from training.importer.loaded import ImportRefused, Loaded


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


def check_labels(loaded: Loaded, labels: dict[str, list[str]]) -> None:
    """Each labelled output exists and has a fixed last dimension: as many labels, or two for 1."""
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
