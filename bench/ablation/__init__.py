"""The ablation benchmark (python -m bench.ablation; see __main__.py): plan, runner, results store, report."""
