"""What every ``arsel`` verb shares: the usage error, the model/backend/device flags, prompt and box
parsing, the predictor builder and the error-to-exit-code wrapper.

A leaf of the CLI: the verbs (``engine.cli``, ``engine.lift.cli``, ``engine.stream.track_cli``,
``engine.demo.cli``, ``calibration.cli``, ``trt.cli``) import from here, never from each other or back
from ``engine.cli``. Importing it is cheap (numpy and the backend names only), so ``arsel --help``
stays fast.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.backends.factory import BACKENDS

EXIT_USAGE = 2
EXIT_INTERNAL = 1
# What a verb may raise for bad input or an unusable environment: printed as one line, exit status 2.
# UsageError is a ValueError; FileNotFoundError and PermissionError are OSErrors.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError, ImportError)


class UsageError(ValueError):
    """Bad command-line input; printed as one line, exit status 2."""


def parse_floats(text: str, n: tuple[int, ...], what: str) -> list[float]:
    """``"1,2.5,3"`` -> ``[1.0, 2.5, 3.0]`` with a count in ``n``; ``what`` names the flag in errors."""
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{what} {text!r} must be comma-separated numbers") from None
    if len(vals) not in n:
        raise UsageError(f"{what} {text!r} must have {' or '.join(map(str, n))} values")
    return vals


def parse_points(items: Sequence[str] | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``["X,Y[,LABEL]", ...]`` -> points ``(N, 2)`` float32 and labels ``(N,)`` (default 1)."""
    if not items:
        return None, None
    rows = [parse_floats(t, (2, 3), "--point") for t in items]
    pts = np.array([r[:2] for r in rows], dtype=np.float32)
    from engine.validate import InputError, point_labels

    try:
        labels = point_labels("--point LABEL", [r[2] if len(r) == 3 else 1.0 for r in rows])
    except InputError as exc:
        raise UsageError(str(exc)) from None
    return pts, labels


def parse_box(text: str | None) -> np.ndarray | None:
    """``"X0,Y0,X1,Y1"`` -> ``(4,)`` float32."""
    return None if text is None else np.array(parse_floats(text, (4,), "--box"), dtype=np.float32)


class DeprecatedFlag(argparse.Action):
    """A retired flag that still works for one release: on use it prints ``arsel: warning: ...`` on
    stderr, raises a ``DeprecationWarning`` and stores its value under ``dest`` (the new flag's, or its
    own where the value needs converting after validation)."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, use: str, note: str = "",
                 **kwargs: Any) -> None:
        self.use, self.note = use, note
        kwargs.setdefault("help", f"deprecated, use {use}{note}")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        message = f"{option_string} is deprecated and goes in the next release: use {self.use}{self.note}"
        print(f"arsel: warning: {message}", file=sys.stderr)
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        setattr(namespace, self.dest, values)


def add_deprecated_flag(p: Any, old: str, *, use: str, dest: str, note: str = "", **kwargs: Any) -> None:
    """Add the retired flag ``old`` (on a parser or group) that warns and stores into ``dest``."""
    p.add_argument(old, dest=dest, action=DeprecatedFlag, use=use, note=note, default=argparse.SUPPRESS,
                   **kwargs)


def add_keyframe_args(p: argparse.ArgumentParser) -> None:
    """``--keyframe-interval auto|K`` (and the retired ``--keyframe``, same values); read it with
    :func:`keyframe_policy`."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--keyframe-interval", metavar="auto|K",
                       help="encode every K frames (default 5), or 'auto': motion/score-driven keyframes")
    add_deprecated_flag(group, "--keyframe", use="--keyframe-interval", dest="keyframe_interval", metavar="auto|K")


def keyframe_policy(args: argparse.Namespace) -> Any:
    """The ``KeyframePolicy`` of ``--keyframe-interval`` (default: every 5 frames)."""
    from engine.stream.scheduler import KeyframePolicy

    text = str(getattr(args, "keyframe_interval", None) or "5").strip()
    if text == "auto":
        return KeyframePolicy.parse(text)
    try:
        k = int(text)
    except ValueError:
        raise UsageError(f"--keyframe-interval must be 'auto' or an interval K >= 1, got {text!r}") from None
    if k < 1:
        raise UsageError(f"--keyframe-interval must be >= 1 (1 = every frame), got {k}")
    return KeyframePolicy(mode="interval", interval=k)


def add_checkpoint_arg(p: argparse.ArgumentParser) -> None:
    """``--checkpoint P`` (default: the path ``engine.weights.resolve`` finds)."""
    p.add_argument("--checkpoint", help="checkpoint path (default: resolved, see `arsel models`)")


def add_model_args(
    p: argparse.ArgumentParser,
    default: str = "lite_medsam",
    *,
    backend_default: str = "torch",
    model_help: str | None = None,
    device_help: str = "torch device, e.g. cpu or cuda:0",
    backend_help: str = "runtime (default torch; onnxruntime/tensorrt export ONNX into the cache on first use)",
) -> None:
    """``--model``, ``--checkpoint``, ``--device`` and ``--backend`` (choices ``factory.BACKENDS``)."""
    p.add_argument("--model", default=default,
                   help=model_help or f"registered model name (default {default}; see `arsel models`)")
    add_checkpoint_arg(p)
    p.add_argument("--device", default="cpu", help=device_help)
    p.add_argument("--backend", default=backend_default, choices=BACKENDS,
                   help=f"{backend_help}; tensorrt is not yet verified on a GPU")


def build_predictor(args: argparse.Namespace) -> Any:
    """The ``Predictor`` that ``add_model_args``' flags name (imported here: keeps ``--help`` fast)."""
    from engine.predictor import Predictor

    return Predictor.from_name(args.model, Path(args.checkpoint) if args.checkpoint else None, args.device,
                               args.backend)


def add_debug_arg(p: argparse.ArgumentParser) -> None:
    """``--debug``: let errors show their Python traceback (taken anywhere, see ``parse_with_debug``)."""
    p.add_argument("--debug", action="store_true",
                   help="show the Python traceback of an error (anywhere on the command line)")


def parse_with_debug(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with ``--debug`` allowed anywhere (``arsel segment ... --debug``
    as well as ``arsel --debug segment ...``), up to a ``--`` that ends the options."""
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    rest = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    args = parser.parse_args(rest)
    args.debug = debug
    return args


def run_verb(args: argparse.Namespace, verb: str | None = None) -> int:
    """Run ``args.func(args)``; a ``USER_ERRORS`` exception becomes ``arsel VERB: error: ...`` on
    stderr and exit status 2, any other exception one line with a hint to re-run with ``--debug``
    and exit status 1, both without a traceback (``--debug`` re-raises: the traceback shows).
    ``verb`` defaults to ``args.command``."""
    func: Callable[[argparse.Namespace], int] = args.func
    name = verb or args.command
    try:
        return func(args)
    except USER_ERRORS as exc:
        if getattr(args, "debug", False):
            raise
        print(f"arsel {name}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - the guard: an unexpected error is one line, not a traceback
        if getattr(args, "debug", False):
            raise
        print(f"arsel {name}: internal error: {type(exc).__name__}: {_one_line(exc)} (a bug: re-run with "
              f"--debug for the traceback and report it)", file=sys.stderr)
        return EXIT_INTERNAL


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line, at most 1000 characters (no pages of library output)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 1000 else text[:997] + "..."


def verb_main(add_parser: Callable[[Any], argparse.ArgumentParser], verb: str,
              argv: Sequence[str] | None = None) -> int:
    """Standalone entry of one verb (``python -m MODULE ...``) with the flags of ``arsel VERB``."""
    parser = argparse.ArgumentParser(prog="arsel")
    add_debug_arg(parser)
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parse_with_debug(parser, [verb, *(sys.argv[1:] if argv is None else argv)])
    return run_verb(args, verb)
