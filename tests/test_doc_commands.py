"""The commands the docs write run as written.

Every `python -m experiments.NAME ...` in README.md, docs/ (the ablation reports' run commands
included) and the docstrings of configs/ and experiments/ names an entry point; every --flag it
passes is one that entry point defines; every --config.section.field override names a field of
the config it loads (the --config file given, else the entry point's default); and a training
command's config, its overrides applied as absl parses them, passes the checks a run makes
before it reads data. A renamed flag or field, or a config change that makes a documented run
refuse to start, fails here, not in a reader's terminal. And every file and gptjax module the
README and the design notes name exists.
"""

import importlib.util
import json
import pathlib
import re
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from gptjax.config import Config
from gptjax.training.start import check_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md"),
               *(ROOT / "configs").rglob("*.py"), *(ROOT / "experiments").glob("*.py")])
COMMAND = re.compile(r"python -m experiments\.(\w+)")
FLAG = re.compile(r"(?<![\w-])--([A-Za-z_][\w.]*)")
# Placeholders the docs use for "any field"; a real field is checked.
GENERIC = ("config.a.b", "config.section.field")
# Entry points whose --config is an experiment config (not a sweep's): their commands must start.
RUNS = ("train", "finetune", "bench_train", "profile_step")
CONFIG_ARG = re.compile(r"""--config(?:\.[\w.]+)?=(?:"[^"]*"|'[^']*'|[^\s`\\\]]+)""")
MAX_COMMAND = 4000  # characters: an unclosed backtick must not swallow a page

# Imports each entry point once, in one process, and prints the flags it defines. A flag name may
# be defined by several entry points (--config, --checkpoint), so each one's flags are removed
# again, and the experiments modules forgotten, before the next is imported.
FLAGS_SCRIPT = r"""
import importlib, json, sys
from absl import app, flags, logging
from ml_collections import ConfigDict
base = set(flags.FLAGS)
out = {}
def paths(d, prefix="config"):
    for k, v in d.items():
        yield f"{prefix}.{k}"
        if isinstance(v, ConfigDict):
            yield from paths(v, f"{prefix}.{k}")
for name in sys.argv[1:]:
    for module in [m for m in sys.modules if m.startswith("experiments.")]:
        if module != "experiments.cli":
            del sys.modules[module]
    before = set(flags.FLAGS)
    importlib.import_module("experiments." + name)
    names = set(flags.FLAGS) - before
    every = names | base
    config = flags.FLAGS["config"].default if "config" in names else None
    out[name] = {"flags": sorted(every),
                 "bools": sorted(f for f in every if getattr(flags.FLAGS[f], "boolean", False)),
                 "config": sorted(paths(config)) if isinstance(config, ConfigDict) else None}
    for flag in names:
        delattr(flags.FLAGS, flag)
print(json.dumps(out))
"""


def _command_text(text: str, start: int, end: int) -> str:
    """The command whose `python -m experiments.NAME` spans text[start:end]: to the closing
    backtick when it is inline code, else its line and the lines a trailing backslash or an
    open bracket carry on to."""
    line_start = text.rfind("\n", 0, start) + 1
    if text.count("`", line_start, start) % 2:  # inside `inline code`
        close = text.find("`", end)
        return text[end:close if close != -1 else end + MAX_COMMAND][:MAX_COMMAND]
    lines, rest = [], text[end:].split("\n")
    for line in rest:
        lines.append(line)
        joined = "\n".join(lines)
        if not line.rstrip().endswith("\\") and joined.count("[") <= joined.count("]"):
            break
    return "\n".join(lines)[:MAX_COMMAND]


def commands() -> list[tuple[str, str, str]]:
    """(file:line, entry point, the text after `python -m experiments.NAME`) of every command."""
    out = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in COMMAND.finditer(text):
            where = f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}"
            command = _command_text(text, match.start(), match.end())
            out.append((where, match.group(1), command.split("python -m ")[0]))  # one per line
    return out


COMMANDS = commands()
ENTRY_POINTS = sorted({name for _, name, _ in COMMANDS
                       if (ROOT / "experiments" / f"{name}.py").is_file() and name != "cli"})


@pytest.fixture(scope="module")
def defined():
    """{entry point: {"flags", "bools", "config"}} as the entry points define them."""
    result = subprocess.run([sys.executable, "-c", FLAGS_SCRIPT, *ENTRY_POINTS], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def config_paths(spec: str) -> set[str] | None:
    """Dotted paths ('config.model.d_model', ...) of --config=FILE[:ARG]; None for a
    placeholder such as configs/NAME.py."""
    file, _, arg = spec.partition(":")
    path = ROOT / file
    if not path.is_file():
        return None
    module_spec = importlib.util.spec_from_file_location(f"doc_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()

    def paths(d, prefix="config"):
        for key, value in d.items():
            yield f"{prefix}.{key}"
            if hasattr(value, "items"):
                yield from paths(value, f"{prefix}.{key}")

    return set(paths(config))


def test_the_docs_write_commands_of_every_kind():
    """The scan finds the commands (a broken pattern would make the test below vacuous)."""
    assert len(COMMANDS) > 40
    assert {"train", "finetune", "generate", "prepare_data", "bench_train", "ablate"} <= set(
        ENTRY_POINTS)
    readme = [args for where, name, args in COMMANDS
              if where.startswith("README.md") and name == "train"]
    assert any("--config=configs/quickstart.py" in args and "--workdir" in args
               for args in readme)


@pytest.mark.parametrize("where,name,args", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_command_names_real_flags(defined, where, name, args):
    assert (ROOT / "experiments" / f"{name}.py").is_file(), (
        f"{where}: experiments.{name} is no entry point")
    entry = defined[name]
    given = re.search(r"--config=([^\s`\\\]]+)", args)
    fields = config_paths(given.group(1)) if given else (
        set(entry["config"]) if entry["config"] is not None else None)
    for flag in FLAG.findall(args):
        if flag.startswith("config."):
            if flag in GENERIC or fields is None:
                continue
            assert flag in fields, (f"{where}: --{flag} is no field of "
                                    f"{given.group(1) if given else 'the default config'}")
        elif flag not in entry["flags"]:
            negated = flag.startswith("no") and flag[2:] in entry["bools"]
            assert negated, f"{where}: experiments.{name} defines no flag --{flag}"


def parsed_config(args: list[str]):
    """The ConfigDict that --config=FILE and its --config.a.b=V overrides give, parsed as absl and
    ml_collections parse a command line (each value by its field's type)."""
    saved, sys.argv = sys.argv, ["doc", *args]
    try:  # ml_collections registers the override flags from sys.argv when the flag is defined
        values = flags.FlagValues()
        config_flags.DEFINE_config_file("config", None, "", flag_values=values)
        values(sys.argv)
        return values.config
    finally:
        sys.argv = saved


RUN_COMMANDS = [c for c in COMMANDS if c[1] in RUNS and re.search(r"--config=configs/[a-z]", c[2])]


def test_the_scan_finds_training_commands_to_start():
    assert len(RUN_COMMANDS) > 30  # the README's, the configs' and the ablation reports' runs


@pytest.mark.parametrize("where,name,args", RUN_COMMANDS, ids=[c[0] for c in RUN_COMMANDS])
def test_training_command_passes_a_runs_checks(where, name, args, monkeypatch):
    monkeypatch.chdir(ROOT)  # the docs name config files from the repository's root
    given = [a.replace('"', "").replace("'", "") for a in CONFIG_ARG.findall(args)]
    file = next(a for a in given if a.startswith("--config="))[len("--config="):]
    if not (ROOT / file.split(":")[0]).is_file():
        pytest.skip(f"{where}: {file} is a placeholder")
    try:
        check_config(Config.from_dict(parsed_config(given)))
    except ValueError as e:
        pytest.fail(f"{where}: python -m experiments.{name} would refuse to start: {e}")


PROSE = ["README.md", "docs/design.md", "docs/performance.md", "docs/reliability.md"]
PLACEHOLDER_PATHS = {"configs/NAME.py", "experiments/bench_"}


def _names_in_module(path: pathlib.Path, name: str) -> bool:
    source = path.read_text(encoding="utf-8")
    return re.search(rf"^\s*(?:def|class)\s+{name}\b|^{name}\s*[:=]|\bimport\b.*\b{name}\b",
                     source, re.M) is not None


@pytest.mark.parametrize("doc", PROSE)
def test_the_docs_name_files_and_modules_that_exist(doc):
    """Every path (gptjax/..., tests/..., configs/...) and every dotted gptjax.module[.name] the
    map and the README name exists, so "How to add ..." leads to real rooms."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    paths = set(re.findall(r"(?<![\w/.])((?:gptjax|tests|experiments|configs|docs)/[\w/.\-]*\w)",
                           text)) - PLACEHOLDER_PATHS
    missing = [p for p in sorted(paths) if not (ROOT / p).exists()]
    for dotted in sorted(set(re.findall(r"\bgptjax(?:\.\w+)+", text))):
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):  # the longest prefix that is a module
            module = ROOT.joinpath(*parts[:i])
            file = module.with_suffix(".py") if module.with_suffix(".py").is_file() else (
                module / "__init__.py")
            if file.is_file():
                if parts[i:] and not _names_in_module(file, parts[i]):
                    missing.append(dotted)
                break
        else:
            missing.append(dotted)
    assert not missing, f"{doc} names what does not exist: {missing}"


PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_has_python_to_run():
    assert PYTHON_BLOCKS  # the article's example


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.splitlines()[0])
def test_the_readmes_python_runs_as_written(block, monkeypatch, capsys):
    """Each ```python block of the README, executed as a reader would paste it (from the
    repository's root): it runs and prints."""
    monkeypatch.chdir(ROOT)
    exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip()
