"""configs/sweeps/*.yaml are sweeps that `wandb sweep` accepts and whose agent command lines our CLI runs.

- each sweep is checked against W&B's documented sweep schema (methods, metric, parameter forms per
  distribution, early termination, command macros), and with W&B's own validator where the optional
  ``sweeps`` package (``wandb[sweeps]``) is installed;
- one agent command line per sweep is built with wandb's own argument formatting
  (``create_sweep_command_args``: ``--name=value``) and macro expansion as ``wandb agent`` does it, then
  parsed by the CLI (each parameter lands at its dotted key) and run as a ``fast_dev_run`` whose
  logged metrics include the sweep's target metric.
W&B never goes online: WANDB_MODE=disabled.
"""
from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

from lightning_modules.cli import DiffpostCLI

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))

#: W&B's documented sweep configuration keys (docs: "Sweep configuration options")
TOP_KEYS = {"program", "method", "metric", "parameters", "command", "early_terminate", "name", "description",
            "project", "entity", "run_cap"}
METHODS = {"grid", "random", "bayes"}
#: required keys of each parameter distribution
DISTRIBUTIONS = {
    "constant": {"value"}, "categorical": {"values"},
    **{d: {"min", "max"} for d in ("int_uniform", "uniform", "q_uniform", "log_uniform", "log_uniform_values",
                                   "q_log_uniform", "q_log_uniform_values", "inv_log_uniform",
                                   "inv_log_uniform_values")},
    **{d: {"mu", "sigma"} for d in ("normal", "q_normal", "log_normal", "q_log_normal")},
    "beta": {"a", "b"}, "q_beta": {"a", "b"},
}
PARAMETER_KEYS = {"value", "values", "probabilities", "distribution", "min", "max", "mu", "sigma", "q", "a", "b"}
MACROS = {"${env}", "${interpreter}", "${program}", "${args}", "${args_no_hyphens}", "${args_no_boolean_flags}",
          "${args_json}", "${args_json_file}", "${project}", "${entity}"}
ARGS_MACROS = {"${args}", "${args_no_hyphens}", "${args_no_boolean_flags}", "${args_json}", "${args_json_file}"}
#: fast_dev_run overrides for the dry run (one CPU process, tiny splits)
TINY = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.fast_dev_run=1",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--data.init_args.batch_size=2", "--data.init_args.n_val=2", "--data.init_args.n_test=2",
        "--data.init_args.n_train=4", "--data.init_args.num_workers=0"]


def _id(p: Path) -> str:
    return p.name


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def schema_problems(cfg: dict) -> list[str]:
    """Violations of W&B's documented sweep schema (an empty list: the sweep is valid)."""
    bad = [f"unknown top-level key {k!r}" for k in set(cfg) - TOP_KEYS]
    if cfg.get("method") not in METHODS:
        bad.append(f"method {cfg.get('method')!r} is not one of {sorted(METHODS)}")
    metric = cfg.get("metric")
    if metric is not None and (not isinstance(metric.get("name"), str) or metric.get("goal") not in ("minimize", "maximize")):
        bad.append(f"metric needs a name and goal minimize|maximize, got {metric!r}")
    if metric is None and (cfg.get("method") == "bayes" or "early_terminate" in cfg):
        bad.append("bayes search and early termination need a metric")
    params = cfg.get("parameters")
    if not isinstance(params, dict) or not params:
        bad.append("parameters must be a non-empty mapping")
        params = {}
    for name, p in params.items():
        if not isinstance(p, dict) or set(p) - PARAMETER_KEYS:
            bad.append(f"parameter {name}: not a mapping of {sorted(PARAMETER_KEYS)}: {p!r}")
            continue
        dist = p.get("distribution")
        if dist is None:
            ok = "value" in p or (isinstance(p.get("values"), list) and p["values"]) or {"min", "max"} <= set(p)
        else:
            ok = dist in DISTRIBUTIONS and DISTRIBUTIONS[dist] <= set(p)
        if ok and {"min", "max"} <= set(p):
            ok = p["min"] < p["max"] and (dist not in ("log_uniform_values", "inv_log_uniform_values") or p["min"] > 0)
        if not ok:
            bad.append(f"parameter {name}: invalid {p!r}")
    et = cfg.get("early_terminate")
    if et is not None and (et.get("type") != "hyperband" or not ({"min_iter", "max_iter"} & set(et))):
        bad.append(f"early_terminate must be hyperband with min_iter or max_iter, got {et!r}")
    command = cfg.get("command", [])
    if not all(isinstance(c, str) for c in command):
        bad.append("command must be a list of strings")
    macros = {c for c in command if isinstance(c, str) and c.startswith("${")}
    bad += [f"unknown command macro {m}" for m in macros - MACROS]
    if command and not macros & ARGS_MACROS:
        bad.append("command passes no parameters (no ${args} macro)")
    if not (ROOT / str(cfg.get("program", ""))).is_file():
        bad.append(f"program {cfg.get('program')!r} does not exist")
    return bad


def trial_values(cfg: dict) -> dict:
    """One trial's parameters: the first value, or the low end of a range."""
    out = {}
    for name, p in cfg["parameters"].items():
        out[name] = p["value"] if "value" in p else p["values"][0] if "values" in p else p.get("min", p.get("mu"))
    return out


def agent_command(cfg: dict, values: dict) -> list[str]:
    """The command line ``wandb agent`` runs for a trial (wandb_agent.Agent._command_run's expansion)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    sweep_vars.update(env=["/usr/bin/env"], interpreter=["python"], program=[cfg["program"]])
    out: list[str] = []
    for c in cfg["command"]:
        out += sweep_vars.get(c[2:-1], []) if c.startswith("${") and c.endswith("}") else [c]
    return out


def cli_argv(command: list[str], program: str) -> list[str]:
    """The program's own arguments in an agent command line (what follows the script), with paths
    relative to the repository root (where agents run) made absolute."""
    assert program in command, f"the command never runs the program {program}: {command}"
    return [str(ROOT / a) if (ROOT / a).is_file() else a for a in command[command.index(program) + 1:]]


def dotted(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(key, raising=False)


def test_the_sweeps_exist():
    names = {p.stem for p in SWEEPS}
    assert {"prior_lr", "ucos_rho0_density"} <= names
    ucos = load(ROOT / "configs" / "sweeps" / "ucos_rho0_density.yaml")["parameters"]
    assert "model.init_args.rho0" in ucos and {"model.init_args.p_mean", "model.init_args.p_std"} <= set(ucos)


@pytest.mark.parametrize("path", SWEEPS, ids=_id)
def test_sweep_follows_the_documented_schema(path):
    assert schema_problems(load(path)) == []


def test_schema_check_rejects_broken_sweeps():
    """The checker itself can fail: each edit below is a sweep `wandb sweep` refuses or that never
    reaches the program."""
    good = load(SWEEPS[0])
    edits = [lambda c: c.update(method="bayesian"), lambda c: c.pop("metric"),
             lambda c: c["parameters"].update(x={"distribution": "log_uniform_values", "min": 1}),
             lambda c: c["parameters"].update(x={"min": 2, "max": 1}),
             lambda c: c.update(command=[x for x in c["command"] if x != "${args}"]),
             lambda c: c.update(program="scripts/nope.py"), lambda c: c.update(colour="red")]
    for edit in edits:
        cfg = yaml.safe_load(yaml.safe_dump(good))
        edit(cfg)
        assert schema_problems(cfg), cfg


@pytest.mark.parametrize("path", SWEEPS, ids=_id)
def test_sweep_passes_wandbs_own_validator(path):
    sweeps = pytest.importorskip("sweeps", reason="wandb's validator needs wandb[sweeps]; the documented schema is checked above")
    assert sweeps.schema_violations_from_proposed_config(load(path)) == []


@pytest.mark.parametrize("path", SWEEPS, ids=_id)
def test_agent_command_line_parses(path):
    """Every parameter name is a key the CLI knows and its value lands there (a misspelt key or a
    parameter the CLI cannot type-check fails here, not hours into a sweep)."""
    cfg = load(path)
    values = trial_values(cfg)
    command = agent_command(cfg, values)
    assert command[:2] == ["/usr/bin/env", "python"] and (ROOT / command[2]).is_file()
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        DiffpostCLI(args=[*cli_argv(command, cfg["program"]), "--print_config"])
    assert exit_info.value.code in (0, None)
    resolved = yaml.safe_load(out.getvalue())
    for key, value in values.items():
        assert dotted(resolved, key) == pytest.approx(value), key


@pytest.mark.parametrize("path", SWEEPS, ids=_id)
def test_agent_run_logs_the_sweep_metric(path, tmp_path, monkeypatch):
    """A trial runs (fast_dev_run) and logs the metric the sweep optimises: a renamed metric would
    leave a Bayesian sweep with nothing to optimise."""
    cfg = load(path)
    monkeypatch.chdir(tmp_path)  # run folders land here
    argv = cli_argv(agent_command(cfg, trial_values(cfg)), cfg["program"])
    cli = DiffpostCLI(args=[*argv, *TINY])
    assert cli.trainer.global_step == 1
    assert cfg["metric"]["name"] in cli.trainer.callback_metrics, sorted(cli.trainer.callback_metrics)

