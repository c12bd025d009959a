"""Where cross-cutting work joins the data plane: a hook is told of every inference, before and
after the model runs, of every call's end, and of every version loaded, unloaded or refused.

Metrics (service/core/metrics.py: the figures /metrics and the statistics extension read) and
classification (service/core/classification.py) are hooks; payload logging, tracing or batching
would be one more. A hook overrides the methods it needs; the data plane calls only those, in
the order of its hook list, for REST and gRPC alike. A hook that raises a ServiceError before a
run refuses the request with that error; after the run it may replace the response's outputs.
"""

from __future__ import annotations

from service.core.types import Call, Inference


class Hook:
    def before_run(self, inference: Inference) -> None:
        """The inputs are checked, the model has not run yet."""

    def after_run(self, inference: Inference) -> None:
        """The model ran: `inference.response` holds its outputs, and the run's figures are set."""

    def finished(self, call: Call, status: str, succeeded: bool) -> None:
        """A call that asked for a model is answered: `status` as its transport says it (an HTTP
        status, a gRPC code's name)."""

    def loaded(self, name: str, version: int) -> None:
        """A version is served, for the first time or again after its folder changed."""

    def unloaded(self, name: str, version: int) -> None:
        """A version is no longer served: gone from the repository, or left out by its policy."""

    def refused(self, name: str, version: int, kept: bool) -> None:
        """A version's folder did not load; `kept`: the copy loaded before it keeps serving."""


def overriding(hooks: list[Hook], method: str) -> tuple:
    """The bound methods of the hooks that override `method`: the only ones worth a call."""
    return tuple(getattr(hook, method) for hook in hooks
                 if getattr(type(hook), method) is not getattr(Hook, method))
