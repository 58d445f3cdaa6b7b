"""Benchmark subcommands of ``scripts/benchmark.py``: one module per subcommand, each with
``main(argv: list[str]) -> int``. The dispatcher loads this folder as the package
``_diffpost_benchmarks`` (by path: PyPI has unrelated ``scripts``/``benchmarks`` packages), so a
module imports project code absolutely (``diffpost``, ``lightning_modules``, ...) and shared
benchmark helpers relatively (``from . import helpers``)."""
