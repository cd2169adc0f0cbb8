"""Snakemake script: results/<scale>/<table>.{csv,md,html} and <table>.provenance.json (ride.tables)."""
import sys

import snakemake as _smk

from ride import tables

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = sys.stdout = open(sm.log[0], "w")

rows = tables.render_inputs(
    sm.params.config,
    sm.wildcards.table,
    sm.wildcards.scale,
    dict(sm.input.items()),
    sm.output.csv,
    sm.output.md,
    sm.output.html,
    sm.output.provenance,
    extra_provenance={"snakemake": getattr(_smk, "__version__", "?"), "rule": sm.rule},
)
for msg in tables.failures(rows):
    print(msg)
print(f"wrote {sm.output.csv} ({len(rows)} rows)")
