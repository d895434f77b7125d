"""What every step shares: its result, and the wrapper that validates, logs, times and tracks it."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator

from advpatch import params, settings
from advpatch.results import StepResult
from advpatch.steps._params import PARAMS_OF
from advpatch.tracking import RunContext, check_server

if TYPE_CHECKING:
    from advpatch.tracking.runs import StepRun

log = logging.getLogger("advpatch")



class Tracker:
    """A step's MLflow run, opened (its parameters logged) once the step has results to log."""

    def __init__(self, step: str, values: Dict[str, Any], ctx: RunContext, artifacts: Dict[str, Any]) -> None:
        self.step, self.values, self.ctx, self.artifacts = step, values, ctx, artifacts

    @contextlib.contextmanager
    def run(self, name: str = "", *, part: bool = False, **extra: Any) -> Iterator[StepRun]:
        """Open the step's MLflow run, called ``name`` (default: the step's name); ``extra``: more
        settings to log as parameters. A step that records several results (infer on clean and
        patched images) opens one run per result with ``part=True``."""
        from advpatch.tracking import step_run

        with step_run(self.step, self.ctx, self.values, extra, name=name, part=part, artifacts=self.artifacts) as run:
            yield run


def setup_logging() -> None:
    settings.quiet_tensorflow()
    settings.skip_keras_extras()
    settings.no_telemetry()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def long_lived_frozen() -> Iterator[None]:
    """The objects alive when a step starts (the modules and classes imported before it: with MLflow
    loaded, most of the heap) left out of the cycle collector's passes while the step runs
    (``gc.freeze``), and handed back to it after (``gc.unfreeze``: a process running several steps
    still collects their cycles). Every full pass walked them all: 0.2 s of CPU in a 2-second
    deploy_patch. Inside a freeze made elsewhere (a step calling a step), nothing changes."""
    import gc

    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


NO_CONTEXT = RunContext()
"""A step's context when none is given (a frozen record: one instance serves every call)."""

STEPS: Dict[str, Callable[..., StepResult]] = {}
"""Every step, by name, as :func:`step` makes them (the step modules register as they are imported)."""


def step(name: str, *, loops: bool = False) -> Callable[[Callable[..., StepResult]], Callable[..., StepResult]]:
    """Make ``body(p, track, **paths)`` the step ``name`` (``p``: its parameters, typed, as
    :mod:`advpatch.steps._params` declares them; ``track``: its :class:`Tracker`): called as
    ``step(**paths, **parameters, ctx=RunContext())``, it validates the parameters against the table
    (``params.STEP_PARAMS[name]``) before anything else, logs start and end with the duration, and
    returns the body's result.

    ``paths`` are the body's keyword-only arguments: the artifacts it reads and writes. ``loops``: the
    step pastes, and the compiled loops load on a thread while it starts (Numba's first load,
    0.4-0.6 s: :func:`advpatch.patches.paste.loading`)."""

    def wrap(body: Callable[..., StepResult]) -> Callable[..., StepResult]:
        body_params = list(inspect.signature(body).parameters.values())[2:]
        path_names = [p.name for p in body_params]
        required = {p.name for p in body_params if p.default is inspect.Parameter.empty}

        @functools.wraps(body)
        def run(*, ctx: RunContext = NO_CONTEXT, **kwargs: Any) -> StepResult:
            paths = {k: kwargs.pop(k) for k in path_names if k in kwargs}
            missing = sorted(required - set(paths))
            if missing:
                raise TypeError(f"{name}() needs the artifact path(s) {', '.join(missing)}")
            values = params.validate_step(name, kwargs)
            setup_logging()
            with contextlib.ExitStack() as meanwhile:
                if loops:
                    from advpatch.patches.paste import loading

                    meanwhile.enter_context(loading())
                check_server()  # down, failing or refusing: fail before the work, leaving no output
                log.info("%s: start", name)
                started = time.monotonic()
                try:
                    with long_lived_frozen():
                        result = body(PARAMS_OF[name](**values), Tracker(name, values, ctx, paths), **paths)
                finally:
                    log.info("%s: done in %.1f s", name, time.monotonic() - started)
            result.params, result.task = values, ctx.task_name
            return result

        keyword = inspect.Parameter.KEYWORD_ONLY
        run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [*body_params, *[inspect.Parameter(p.name, keyword, default=p.default, annotation=p.type)
                             for p in params.STEP_PARAMS[name]],
             inspect.Parameter("ctx", keyword, default=NO_CONTEXT, annotation=RunContext)],
            return_annotation=StepResult)
        run.step_name = name  # type: ignore[attr-defined]
        run.path_names = path_names  # type: ignore[attr-defined]
        if name not in params.STEP_PARAMS or name in STEPS:
            raise TypeError(f"step {name!r}: not in the parameter table, or defined twice")
        STEPS[name] = run
        return run

    return wrap


def log_input(run: StepRun, path: str, context: str) -> None:
    """Log the Dataset artifact at ``path`` as an input of ``run`` (MLflow's Dataset column): its name
    and content digest from its manifest, ``context`` as the input's tag."""
    from advpatch.data.dataset import Dataset

    spec = Dataset(path, verify=False).spec
    run.log_input(path, context, spec.name, spec.digest)
