"""Every command in README.md and docs/training.md is exercised, so the docs and the code cannot drift.

Commands come from the ```bash blocks (continuation lines joined, comments dropped, ``&&`` chains
split) and from inline ``python ...`` spans. Each is checked by what it runs:

- ``python scripts/X.py`` (also under ``srun``/``torchrun``, or as ``diffpost-*``): the script must
  exist and its own parser must accept the arguments: ``train.py`` through its ``main`` with
  ``--print_config`` (LightningCLI resolves every layered file and key), the others through their
  ``main`` with argparse stopped right after parsing. The cheap ``train.py fit`` commands (CPU, no
  checkpoint) then run as a ``fast_dev_run``; a README ``sample.py`` command runs on a checkpoint
  trained by the README's own training command (slow).
- ``python -m MODULE``: the module exists; ``python -m pytest -m EXPR``: every marker is declared.
- ``pip install -e .[extras]``: the extras exist; ``bash FILE``, ``source``/``.``: the file exists.
- ``wandb sweep FILE``: a sweep file of configs/sweeps/ (tests/test_sweeps.py checks its content).
Anything else fails with the line it came from: teach this file how to check it.

A ``...`` placeholder stands for "as in the previous command of the same script": the value of the same
option (``--config ...``) or, right after the script, all its arguments (``sample.py ... --devices 8``).
"""
from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import io
import re
import runpy
import shlex
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/training.md")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: console commands and the scripts they run (lightning_modules/entrypoints.py)
ENTRY_POINTS = {"diffpost-train": "scripts/train.py", "diffpost-sample": "scripts/sample.py",
                "diffpost-sample-target": "scripts/sample_target.py"}
SHELL_LANGS = {"bash", "sh", "shell", "console"}
#: a fast_dev_run on one CPU process with tiny splits
TINY = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=1", "--trainer.strategy=auto",
        "--trainer.precision=32-true", "--trainer.benchmark=false", "--model.init_args.compile=false",
        "--trainer.fast_dev_run=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--data.init_args.batch_size=2", "--data.init_args.n_val=2", "--data.init_args.n_test=2",
        "--data.init_args.n_train=4", "--data.init_args.num_workers=0", "--data.init_args.pin_memory=false"]


@dataclass
class Command:
    doc: str
    line: int
    argv: list[str]

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {shlex.join(self.argv)}"


# ---------------------------------------------------------------- extraction
def _split_chain(tokens: list[str]) -> list[list[str]]:
    out, cur = [], []
    for t in tokens:
        if t in ("&&", ";", "||"):
            out.append(cur)
            cur = []
        else:
            cur.append(t)
    return [c for c in out + [cur] if c]


def extract(doc: str) -> list[Command]:
    text = (ROOT / doc).read_text()
    cmds: list[Command] = []
    for block in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if block.group(1) not in SHELL_LANGS:
            continue
        first = text.count("\n", 0, block.start(2)) + 1
        lines = block.group(2).split("\n")
        k = 0
        while k < len(lines):
            start, line = k, lines[k]
            while line.rstrip().endswith("\\") and k + 1 < len(lines):
                k += 1
                line = line.rstrip()[:-1] + " " + lines[k]
            k += 1
            for argv in _split_chain(shlex.split(line, comments=True)):
                cmds.append(Command(doc, first + start, argv))
    for span in re.finditer(r"(?<!`)`(python3? [^`\n]+)`(?!`)", text):
        cmds.append(Command(doc, text.count("\n", 0, span.start()) + 1, shlex.split(span.group(1))))
    return cmds


def resolve_placeholders(cmds: list[Command]) -> list[Command]:
    """``...`` → the previous command of the same script: its value of that option, or all its arguments."""
    last: dict[str, list[str]] = {}
    out = []
    for c in cmds:
        script, pre, args = split_script(c.argv)
        if script is None:
            out.append(c)
            continue
        resolved: list[str] = []
        for k, a in enumerate(args):
            if a != "...":
                resolved.append(a)
                continue
            before = last.get(script)
            assert before is not None, f"{c}: '...' but no earlier {script} command to take it from"
            if k == 0:
                resolved += before
            else:
                opt = args[k - 1]
                assert opt.startswith("--") and opt in before, f"{c}: '...' after {opt} that no earlier {script} command sets"
                resolved.append(before[before.index(opt) + 1])
        last[script] = resolved
        out.append(Command(c.doc, c.line, [*pre, script, *resolved]))
    return out


def split_script(argv: list[str]) -> tuple[str | None, list[str], list[str]]:
    """``(script, launcher prefix, script arguments)`` of a command that runs one of our scripts."""
    for k, a in enumerate(argv):
        if a in ENTRY_POINTS:
            return ENTRY_POINTS[a], argv[:k], argv[k + 1:]
        if a.endswith(".py") and (a.startswith("scripts/") or k > 0 and argv[k - 1] in ("python", "python3")):
            return a, argv[:k], argv[k + 1:]
    return None, argv, []


ALL = resolve_placeholders([c for doc in DOCS for c in extract(doc)])


def _id(c: Command) -> str:
    return f"{c.doc}:{c.line}:{' '.join(c.argv)[:60]}"


# ---------------------------------------------------------------- parsing a script's arguments
class Parsed(BaseException):
    """Raised by the argparse spy right after a successful parse (BaseException: scripts' own
    ``except Exception`` blocks cannot swallow it)."""


def run_main(script: str, args: list[str]):
    """``scripts/<script>``'s ``main(args)``: its return value, or the code of the SystemExit it raised."""
    main = runpy.run_path(str(ROOT / script), run_name="__readme_check__")["main"]
    try:
        return main(args)
    except SystemExit as e:
        return e.code


def parse_argparse_script(script: str, args: list[str]) -> argparse.Namespace:
    """Parse ``args`` with the script's own argparse parser and stop there (nothing runs)."""
    real_parse_args, real_parse_known = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    depth = {"n": 0}

    def parse_args(self, a=None, namespace=None):
        depth["n"] += 1
        try:
            ns = real_parse_args(self, a, namespace)
        finally:
            depth["n"] -= 1
        raise Parsed(ns)

    def parse_known_args(self, a=None, namespace=None):
        result = real_parse_known(self, a, namespace)
        if depth["n"] == 0:  # a script that parses only known arguments
            raise Parsed(result[0])
        return result

    err = io.StringIO()
    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_args), \
            mock.patch.object(argparse.ArgumentParser, "parse_known_args", parse_known_args), redirect_stderr(err):
        try:
            status = run_main(script, args)
        except Parsed as p:
            return p.args[0]
    if status == 0 and {"-h", "--help"} & set(args):
        return argparse.Namespace()
    raise AssertionError(f"{script} {shlex.join(args)} did not parse (exit status {status!r}): {err.getvalue()[-2000:]}")


def print_config(args: list[str]) -> dict:
    """``scripts/train.py <args> --print_config``: the resolved config (every layered file and key)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = run_main("scripts/train.py", [*args, "--print_config"])
    assert status in (0, None), f"train.py {shlex.join(args)} does not parse (exit {status}): {err.getvalue()[-2000:]}"
    return yaml.safe_load(out.getvalue())


# ---------------------------------------------------------------- checks by command kind
def declared_markers() -> set[str]:
    return {m.split(":")[0].strip() for m in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}


def check_python_module(c: Command, args: list[str]) -> None:
    module, rest = args[0], args[1:]
    if module == "venv":
        assert rest, f"{c}: venv needs a folder"
    elif module == "pytest":
        for k, a in enumerate(rest):
            if a == "-m":
                names = set(re.findall(r"[A-Za-z_]\w*", rest[k + 1])) - {"and", "or", "not"}
                assert names <= declared_markers(), f"{c}: undeclared pytest markers {names - declared_markers()}"
            elif not a.startswith("-") and (k == 0 or rest[k - 1] != "-m"):
                assert (ROOT / a.split("::")[0]).exists(), f"{c}: no test path {a}"
    else:
        assert importlib.util.find_spec(module) is not None, f"{c}: no module {module}"


def check_pip(c: Command, args: list[str]) -> None:
    assert args[:2] == ["install", "-e"] and len(args) == 3, f"{c}: only `pip install -e .[extras]` is documented"
    m = re.fullmatch(r"\.(?:\[([\w,]+)\])?", args[2])
    assert m, f"{c}: install the project itself (.), got {args[2]}"
    extras = set(m.group(1).split(",")) if m.group(1) else set()
    assert extras <= set(PYPROJECT["project"].get("optional-dependencies", {})), f"{c}: unknown extras {extras}"


def check_wandb(c: Command, args: list[str]) -> None:
    verb = args[0] if args else None
    assert verb in ("login", "sync", "sweep", "agent"), f"{c}: unknown wandb command"
    if verb == "sweep":
        path = ROOT / args[-1]
        assert path.is_file() and path.parent == ROOT / "configs" / "sweeps", f"{c}: not a sweep of configs/sweeps/"


def strip_launcher(argv: list[str]) -> list[str]:
    """Drop ``VAR=value`` prefixes and ``srun [options]``."""
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):
        argv = argv[1:]
    if argv and argv[0] == "srun":
        argv = argv[1:]
        while argv and argv[0].startswith("-"):
            argv = argv[1:]
    return argv


def check_command(c: Command) -> None:
    """Everything short of running a script: its parse, or what the command needs to exist."""
    argv = strip_launcher(c.argv)
    prog, args = argv[0], argv[1:]
    script, _, script_args = split_script(argv)
    if script is not None:
        assert (ROOT / script).is_file(), f"{c}: unknown script {script}"
        assert prog in ("python", "python3", "torchrun") or prog in ENTRY_POINTS, f"{c}: runs {script} with {prog}"
        if script == "scripts/train.py":
            print_config(script_args)
        else:
            parse_argparse_script(script, script_args)
    elif prog in ("python", "python3"):
        assert args[:1] == ["-m"] and len(args) > 1, f"{c}: unknown python command"
        check_python_module(c, args[1:])
    elif prog in (".", "source"):
        assert args and args[0].endswith("bin/activate"), f"{c}: sources something else than a venv"
    elif prog == "export":
        assert all(re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", a) for a in args), f"{c}: export what?"
    elif prog == "pip":
        check_pip(c, args)
    elif prog == "bash":
        assert (ROOT / args[0]).is_file(), f"{c}: no file {args[0]}"
    elif prog == "wandb":
        check_wandb(c, args)
    else:
        raise AssertionError(f"{c}: unknown command; teach tests/test_readme.py how to check it")


# ---------------------------------------------------------------- the tests
def test_the_docs_have_commands():
    """The extraction itself: a README whose blocks stopped parsing would make the other tests vacuous."""
    readme = [c for c in ALL if c.doc == "README.md"]
    scripts = {split_script(strip_launcher(c.argv))[0] for c in readme}
    assert {"scripts/quickstart.py", "scripts/train.py", "scripts/sample.py", "scripts/benchmark.py",
            "scripts/sample_target.py"} <= scripts
    assert any(c.argv[:3] == ["pip", "install", "-e"] for c in readme)
    # `...` resolved: the resume command takes the previous train.py command's --config
    resume = next(c for c in readme if "--ckpt_path" in c.argv)
    assert resume.argv[resume.argv.index("--config") + 1].startswith("configs/experiments/")


@pytest.mark.parametrize("cmd", ALL, ids=_id)
def test_command_parses(cmd, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # commands are written for the repository root
    monkeypatch.setenv("WANDB_MODE", "disabled")
    check_command(cmd)


def test_checks_can_fail(monkeypatch):
    """Each doc error below is caught: a removed option, a misspelt key, an unknown script, an unknown
    pytest marker or extra, an unknown tool, a '...' with nothing before it."""
    monkeypatch.chdir(ROOT)
    bad = [["python", "scripts/sample.py", "--checkpoint", "a.ckpt", "--output", "o", "--no-such-option"],
           ["python", "scripts/train.py", "fit", "--config", "configs/experiments/quickstart_prior.yaml",
            "--model.init_args.learning_rate=1"],
           ["python", "scripts/nope.py"], ["python", "-m", "pytest", "-m", "not fast"],
           ["pip", "install", "-e", ".[gpu]"], ["make", "all"], ["python", "scripts/benchmark.py", "nope"]]
    for argv in bad:
        with pytest.raises((AssertionError, SystemExit)):
            check_command(Command("test", 0, argv))
    with pytest.raises(AssertionError, match="no earlier"):
        resolve_placeholders([Command("test", 0, ["python", "scripts/train.py", "fit", "--config", "..."])])


def cheap_fits(doc: str) -> list[Command]:
    """``train.py fit`` commands without a checkpoint to resume, one per distinct command; a bare
    ``fit --config <experiment>`` is left to tests/test_configs.py, which runs every experiment."""
    seen, out = set(), []
    for c in ALL:
        script, _, args = split_script(strip_launcher(c.argv))
        if c.doc != doc or script != "scripts/train.py" or args[:1] != ["fit"] or "--print_config" in args:
            continue
        if len(args) == 3 and args[1] == "--config":
            continue
        if any(a.startswith("--ckpt_path") for a in args) or tuple(args) in seen:
            continue
        seen.add(tuple(args))
        out.append(c)
    return out


def run_fit(cmd: Command, tmp_path: Path, monkeypatch) -> None:
    """The command as a fast_dev_run on one CPU process (GPU settings overridden, as in test_configs)."""
    _, _, args = split_script(strip_launcher(cmd.argv))
    monkeypatch.chdir(tmp_path)  # run folders (runs/...) land here
    abs_args = [str(ROOT / a) if (ROOT / a).is_file() else a for a in args]
    status = run_main("scripts/train.py", [*abs_args, *TINY])
    assert status in (0, None), f"{cmd} failed as a fast_dev_run (exit {status})"


@pytest.mark.parametrize("cmd", cheap_fits("README.md"), ids=_id)
def test_readme_training_command_runs(cmd, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_fit(cmd, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("cmd", cheap_fits("docs/training.md"), ids=_id)
def test_docs_training_command_runs(cmd, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_fit(cmd, tmp_path, monkeypatch)


@pytest.mark.slow
def test_readme_sampling_command_runs_on_the_readme_checkpoint(tmp_path, monkeypatch):
    """The README trains the UCoS quickstart and samples runs/quickstart_ucos/version_0/checkpoints/
    last.ckpt: train a few steps with the README's command, then run the README's sampling command
    (fewer measurements and steps) on the checkpoint that path names."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    train = next(c for c in ALL if c.doc == "README.md" and "quickstart_ucos.yaml" in " ".join(c.argv)
                 and split_script(c.argv)[0] == "scripts/train.py")
    args = [str(ROOT / a) if (ROOT / a).is_file() else a for a in split_script(train.argv)[2]]
    status = run_main("scripts/train.py", [*args, "--trainer.max_steps=2", "--trainer.val_check_interval=2",
                                           "--trainer.limit_val_batches=1", "--data.init_args.n_val=2",
                                           "--trainer.enable_progress_bar=false"])
    assert status in (0, None)
    sample = next(c for c in ALL if c.doc == "README.md" and split_script(c.argv)[0] == "scripts/sample.py")
    args = split_script(sample.argv)[2]
    ckpt = Path(args[args.index("--checkpoint") + 1])
    assert ckpt.is_file(), f"the README samples {ckpt}, which its training command did not write"
    args = [str(ROOT / a) if (ROOT / a).is_file() else a for a in args]
    status = run_main("scripts/sample.py", [*args, "--n", "2", "--n-samples", "2", "--steps", "2"])
    assert status in (0, None)
    out = Path(args[args.index("--output") + 1])
    assert (out / "metrics.json").is_file()


# ---------------------------------------------------------------- the quickstart samples its own run
def test_quickstart_picks_the_run_it_trained(tmp_path, monkeypatch):
    """scripts/quickstart.py samples the run folder its training created (or, with --skip-train, the
    newest run that has a last.ckpt), never a stale checkpoint of an earlier run."""
    qs = runpy.run_path(str(ROOT / "scripts" / "quickstart.py"), run_name="__readme_check__")
    runs = tmp_path / "runs" / "quickstart_ucos"
    qs["new_run"].__globals__["RUNS"] = str(runs)
    for n in (0, 1, 10):
        (runs / f"version_{n}" / "checkpoints").mkdir(parents=True)
    (runs / "version_1" / "checkpoints" / "last.ckpt").write_bytes(b"")
    (runs / "version_10" / "images").mkdir()
    before = qs["run_versions"]()
    assert sorted(before) == [0, 1, 10]  # numeric, not lexicographic
    assert qs["newest_trained_run"]() == str(runs / "version_1")  # version_10 has no checkpoint
    (runs / "version_11").mkdir()
    assert qs["new_run"](before) == str(runs / "version_11")
    with pytest.raises(SystemExit, match="one new run folder"):
        qs["new_run"](qs["run_versions"]())


def _tiny_ucos_fit() -> None:
    status = run_main("scripts/train.py", [
        "fit", "--config", str(ROOT / "configs" / "experiments" / "quickstart_ucos.yaml"),
        "--data", str(ROOT / "configs" / "task" / "blur_gauss.yaml"), "--trainer.max_steps=2",
        "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1", "--data.init_args.n_val=2",
        "--data.init_args.batch_size=2", "--trainer.enable_progress_bar=false"])
    assert status in (0, None)


@pytest.mark.slow
def test_a_second_ucos_run_writes_its_own_last_ckpt(tmp_path, monkeypatch):
    """Catches a fixed ModelCheckpoint dirpath: the second run then wrote last-v1.ckpt beside the
    first run's last.ckpt, which the quickstart went on sampling."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    _tiny_ucos_fit()
    first = (tmp_path / "runs/quickstart_ucos/version_0/checkpoints/last.ckpt").read_bytes()
    _tiny_ucos_fit()
    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("last*.ckpt"))
    assert found == ["runs/quickstart_ucos/version_0/checkpoints/last.ckpt",
                     "runs/quickstart_ucos/version_1/checkpoints/last.ckpt"]
    assert (tmp_path / "runs/quickstart_ucos/version_0/checkpoints/last.ckpt").read_bytes() == first


# ---------------------------------------------------------------- the install command
def test_console_commands_are_declared_and_resolve():
    scripts = PYPROJECT["project"]["scripts"]
    assert set(scripts) == set(ENTRY_POINTS)
    for name, target in scripts.items():
        module, _, func = target.partition(":")
        assert callable(getattr(importlib.import_module(module), func)), name
    for doc in DOCS:  # every diffpost-* command the docs name is installed
        named = set(re.findall(r"`(diffpost-[a-z-]+)", (ROOT / doc).read_text()))
        assert named <= set(scripts), f"{doc} names {named - set(scripts)}"


def test_console_command_runs_its_script(monkeypatch, capsys):
    """diffpost-sample is scripts/sample.py: same parser, same exit status."""
    from lightning_modules import entrypoints

    monkeypatch.setattr(sys, "argv", ["diffpost-sample", "--help"])
    with pytest.raises(SystemExit) as e:
        entrypoints.sample()
    assert e.value.code == 0 and "usage: sample.py" in capsys.readouterr().out
    monkeypatch.setattr(entrypoints, "SCRIPTS", Path("/nonexistent"))
    assert entrypoints.train() == 2 and "source checkout" in capsys.readouterr().err


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(requirements: list[str]) -> set[str]:
    return {_normal(re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0]) for r in requirements}


def test_every_imported_package_is_declared():
    """pip install -e . must bring what the code imports (PyYAML and Pillow were once missing)."""
    own = {"diffpost", "lightning_modules", "datamodules", "callbacks", "scripts"}
    runtime = _declared(PYPROJECT["project"]["dependencies"])
    dev = runtime | _declared(PYPROJECT["project"]["optional-dependencies"]["dev"])
    dists = importlib.metadata.packages_distributions()
    problems = []
    for folder, allowed in (("diffpost", runtime), ("lightning_modules", runtime), ("datamodules", runtime),
                            ("callbacks", runtime), ("scripts", runtime), ("tests", dev)):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for mod in _imports(path) - own - set(sys.stdlib_module_names):
                if (ROOT / folder / f"{mod}.py").exists() or (ROOT / folder / mod).is_dir():
                    continue  # a sibling module (scripts/benchmarks, tests' helpers)
                provided = {_normal(d) for d in dists.get(mod, [])}
                if not provided & allowed:
                    problems.append(f"{path.relative_to(ROOT)} imports {mod} ({sorted(provided) or 'not installed'})")
    assert not problems, "undeclared imports:\n" + "\n".join(problems)
