"""Snakemake script: results/<scale>/<figure>.{csv,png} (ride.figures)."""
import sys

from ride import figures

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = sys.stdout = open(sm.log[0], "w")
evals = {k[len("eval_"):]: v for k, v in sm.input.items() if k.startswith("eval_")}
rows = figures.render_figure(sm.params.config, sm.wildcards.figure, sm.wildcards.scale, evals, sm.output.csv, sm.output.png)
print(f"wrote {sm.output.csv} and {sm.output.png} ({len(rows)} points)")
