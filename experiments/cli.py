"""How every entry point meets a person at a terminal: bad input gets one line, a bug its traceback.

    if __name__ == "__main__":
        cli.run(main)

A user error (a mistyped flag or config override, a missing or unreadable file, a value that
gptjax's validation refuses, a prompt that does not fit) prints one line, `NAME: error: CAUSE`,
where the message names the fix, and exits 1 (2 for flag and usage errors). Anything else is a
bug and keeps its traceback, a ValueError raised inside a library (not by gptjax) included.
INFO logs of libraries (orbax, TFDS) stay out of the terminal; gptjax's own logs and every
warning still show. GPTJAX_DEBUG=1 shows tracebacks and the libraries' INFO logs too.
"""

from __future__ import annotations

import copy
import difflib
import logging as pylogging
import os
import pathlib
import re
import sys
from typing import Callable, Sequence

from absl import app, flags, logging
from ml_collections import ConfigDict

from gptjax.config import default_config

FLAGS = flags.FLAGS
ROOT = pathlib.Path(__file__).resolve().parents[1]
OWN = (str(ROOT / "gptjax") + os.sep, str(ROOT / "experiments") + os.sep)
USAGE = 2  # exit code of flag and usage errors; other user errors exit 1


def debug() -> bool:
    """GPTJAX_DEBUG=1: tracebacks for user errors too, and every library's INFO logs."""
    return os.environ.get("GPTJAX_DEBUG", "") not in ("", "0")


def is_user_error(error: BaseException) -> bool:
    """Bad input rather than a bug: gptjax's own errors, files, flags, text that is not UTF-8,
    and values that gptjax's or experiments' code refused (a ValueError raised there). A
    ValueError raised inside a library (a shape mismatch in jax, ...) is a bug: its traceback
    stays."""
    if type(error).__module__.startswith("gptjax."):  # ConfigError, GenerationError, ...
        return True
    if isinstance(error, (OSError, UnicodeDecodeError, flags.Error, app.UsageError)):
        return True
    return isinstance(error, ValueError) and _raised_in_own_code(error)


def _raised_in_own_code(error: BaseException) -> bool:
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename.startswith(OWN)


def message(error: BaseException) -> str:
    """The error as one line; OSErrors name the path and what to check."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        fix = {FileNotFoundError: "check the path", IsADirectoryError: "give a file, not a folder",
               NotADirectoryError: "give a folder", PermissionError: "check its permissions"}
        text = f"{error.strerror}: {error.filename}"
        hint = next((h for kind, h in fix.items() if isinstance(error, kind)), "")
        text += f"; {hint}" if hint else ""
    elif isinstance(error, UnicodeDecodeError):
        text = f"not UTF-8 text ({error.reason} at byte {error.start}); give a text file"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def fail(text: str, code: int = 1):
    """Print NAME: error: TEXT on stderr and exit with `code`."""
    print(f"{pathlib.Path(sys.argv[0]).stem}: error: {text}", file=sys.stderr, flush=True)
    sys.exit(code)


def output_path(flag: str, *, folder: bool = False) -> pathlib.Path | None:
    """--FLAG's path (a file, or with folder=True a folder) with its folder made, checked before
    any work: a report that cannot be written fails now, not after the minutes it reports."""
    value = FLAGS[flag].value
    if not value:
        return None
    path = pathlib.Path(value).expanduser()
    if not folder and path.is_dir():
        raise app.UsageError(f"--{flag}={value} is a folder; give a file path, e.g. "
                             f"--{flag}={path / 'report.json'}")
    make = path if folder else path.parent
    try:
        make.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise app.UsageError(f"--{flag}={value}: cannot make the folder {make} ({e.strerror}); "
                             "give a path in a folder that exists or can be made") from None
    if not os.access(make, os.W_OK):
        raise app.UsageError(f"--{flag}={value}: {make} is not writable; give a path you can "
                             "write to")
    return path


# ---------------------------------------------------------------------------------------------
# Config overrides: --config.section.field=value that names no field
# ---------------------------------------------------------------------------------------------

def _base_config(name: str, argv: Sequence[str]):
    """The config that --NAME holds before its overrides (gptjax's defaults when unreadable)."""
    try:
        flag = FLAGS[name]
        spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")),
                    flag.default)
        return flag.parser.parse(spec) if isinstance(spec, str) else spec
    except Exception:  # noqa: BLE001 - any failure: suggest from the known sections instead
        return default_config()


def override_error(argv: Sequence[str]) -> str | None:
    """The first --config.a.b override whose path the config lacks, with the closest field."""
    for arg in argv:
        m = re.match(r"^--?(?:no)?(\w+)\.([\w.]+)", arg)
        if not m or (m[1] not in FLAGS and m[1] != "config"):  # undefined if it just failed
            continue
        node, walked = _base_config(m[1], argv), [m[1]]
        for part in m[2].split("."):
            if isinstance(node, (ConfigDict, dict)) and part in node:
                node, walked = node[part], walked + [part]
                continue
            known = sorted(node.keys()) if isinstance(node, (ConfigDict, dict)) else []
            close = difflib.get_close_matches(part, known, n=1, cutoff=0.5)
            hint = (f"did you mean --{'.'.join(walked + [close[0]])}?" if close
                    else f"known: {', '.join(known)}" if known else "it is not a section")
            return (f"unknown override {arg.split('=', 1)[0]}: {'.'.join(walked)} has no "
                    f"field {part!r}; {hint}")
    return None


# ---------------------------------------------------------------------------------------------
# Decoding flags: transformers' generate options (experiments.generate, experiments.evaluate)
# ---------------------------------------------------------------------------------------------

_GENERATION_FLAGS = {  # same names and meanings as transformers'; unset means the default
    "max_length": (flags.DEFINE_integer, "Maximum total length, prompt included (default 20)."),
    "max_new_tokens": (flags.DEFINE_integer, "Maximum new tokens (wins over --max_length)."),
    "min_length": (flags.DEFINE_integer, "Minimum total length before eos may end a sequence."),
    "min_new_tokens": (flags.DEFINE_integer, "Minimum new tokens before eos may end a "
                       "sequence."),
    "do_sample": (flags.DEFINE_bool, "Sample instead of greedy / beam search."),
    "num_beams": (flags.DEFINE_integer, "Beam width; 1 (default) is greedy or sampling."),
    "temperature": (flags.DEFINE_float, "Sampling temperature (default 1.0)."),
    "top_k": (flags.DEFINE_integer, "Sample among the k most likely tokens (default 50; 0: "
              "off)."),
    "top_p": (flags.DEFINE_float, "Nucleus sampling: smallest set holding this probability."),
    "repetition_penalty": (flags.DEFINE_float, "Penalty > 1 for tokens already in the text."),
    "no_repeat_ngram_size": (flags.DEFINE_integer, "Never repeat an n-gram of this size."),
    "length_penalty": (flags.DEFINE_float, "Beam scores are sum log p / length**this."),
    "early_stopping": (None, "Beam search stopping: true, false (default) or never."),
    "num_return_sequences": (flags.DEFINE_integer, "Outputs per prompt (<= num_beams without "
                             "sampling)."),
    "eos_token_id": (flags.DEFINE_integer, "Token that ends a sequence (default: the "
                     "checkpoint's); -1: none."),
    "pad_token_id": (flags.DEFINE_integer, "Token that pads finished sequences (default: eos)."),
    "seed": (flags.DEFINE_integer, "Sampling seed (default 0)."),
}


def define_generation_flags(skip: Sequence[str] = ()) -> tuple[str, ...]:
    """Define transformers' generate options as flags (all unset by default), but `skip`;
    returns the names defined."""
    names = tuple(n for n in _GENERATION_FLAGS if n not in skip)
    for name in names:
        define, help_text = _GENERATION_FLAGS[name]
        if define is None:  # early_stopping: a bool or the word 'never'
            flags.DEFINE_enum(name, None, ["true", "false", "never"], help_text)
        else:
            define(name, None, help_text)
    return names


def generation_options(names: Sequence[str]) -> dict:
    """The generate options among `names` given on the command line, as generate takes them
    (--eos_token_id=-1: None; --early_stopping: True, False or 'never')."""
    options = {n: FLAGS[n].value for n in names if FLAGS[n].value is not None}
    if options.get("eos_token_id") == -1:
        options["eos_token_id"] = None
    if "early_stopping" in options:
        options["early_stopping"] = {"true": True, "false": False}.get(
            options["early_stopping"], "never")
    return options


# ---------------------------------------------------------------------------------------------
# Entry
# ---------------------------------------------------------------------------------------------

def _reset_config_defaults(argv: Sequence[str]) -> None:
    """A config flag left at its default parses its overrides from sys.argv when defined; parse
    them again for this argv (`invoke` runs several command lines in one process)."""
    for name in [n for n in FLAGS if type(FLAGS[n]).__name__ == "_ConfigFlag"]:
        flag = FLAGS[name]
        if any(re.match(rf"^--?{name}(=|$)", a) for a in argv):
            continue
        base = _PRISTINE.setdefault(name, copy.deepcopy(flag.default_unparsed))
        flag._set_default(copy.deepcopy(base))  # noqa: SLF001 - absl's own re-parse


_PRISTINE: dict = {}


def parse_flags(argv: Sequence[str], reset: bool = False) -> list[str]:
    """absl's flag parsing, every failure one line with exit code 2."""
    for arg in argv:  # ml_collections would report a missing config file in a dozen words
        m = re.match(r"^--?(\w+)=([^:]+)", arg)
        if (m and m[1] in FLAGS and type(FLAGS[m[1]].parser).__name__ == "_ConfigFileParser"
                and not pathlib.Path(m[2]).is_file()):
            fail(f"--{m[1]}={m[2]}: no such config file; give a path like configs/NAME.py",
                 USAGE)
    try:
        if reset:
            _reset_config_defaults(argv)
        return FLAGS(list(argv))
    except flags.Error as e:
        fail(f"{message(e)} (--helpshort lists the flags)", USAGE)
    except (AttributeError, KeyError):  # ml_collections: an override path the config lacks
        text = override_error(argv)
        if text is None or debug():
            raise
        fail(text, USAGE)


class _QuietLibraries(pylogging.Filter):
    """Drops INFO (and below) records that do not come from gptjax or experiments."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or record.pathname.startswith(OWN)


_QUIET = _QuietLibraries()


def guard(main: Callable, argv: list[str]):
    """Call main(argv); a user error becomes one line on stderr and a non-zero exit."""
    if not debug() and FLAGS["verbosity"].value <= 0:
        logging.get_absl_handler().addFilter(_QUIET)
    try:
        return main(argv)
    except app.UsageError as e:
        if debug():
            raise
        fail(message(e), USAGE)
    except Exception as e:  # noqa: BLE001 - bugs are re-raised with their traceback
        if debug() or not is_user_error(e):
            raise
        fail(message(e))


def run(main: Callable) -> None:
    """app.run(main), with flag errors and user errors reported in one line (module doc)."""
    app.run(lambda argv: guard(main, argv), flags_parser=parse_flags)


def invoke(main: Callable, argv: Sequence[str]) -> int:
    """What `run` does, in this process, for argv; returns the exit code (tests use it)."""
    sys.argv = list(argv)  # ml_collections reads its overrides from sys.argv
    FLAGS.unparse_flags()
    for name in [n for n in FLAGS if "." in n]:  # the last call's --config.a.b override flags
        delattr(FLAGS, name)
    try:
        guard(main, parse_flags(argv, reset=True))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    return 0


def _excepthook(kind, error, tb, default=sys.excepthook):
    """Errors raised while a module defines its flags (a config flag with a default parses
    sys.argv's overrides at import): one line too."""
    text = None if debug() else (
        override_error(sys.argv[1:]) if isinstance(error, (AttributeError, KeyError))
        else message(error) if is_user_error(error) else None)
    if text is None:
        return default(kind, error, tb)
    print(f"{pathlib.Path(sys.argv[0]).stem}: error: {text}", file=sys.stderr, flush=True)


sys.excepthook = _excepthook
