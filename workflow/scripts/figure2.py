"""Snakemake script: results/<scale>/figure2.{csv,png} (ride.figures)."""
import sys

from ride import figures

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = sys.stdout = open(sm.log[0], "w")
rows = figures.render_figure2(sm.params.config, sm.wildcards.scale, dict(sm.input.items()), sm.output.csv, sm.output.png)
print(f"wrote {sm.output.csv} and {sm.output.png} ({len(rows)} points)")
