"""Snakemake script: results/<scale>/<table>.{csv,md,html} and <table>.provenance.json (ride.tables)."""
import sys

import snakemake as _smk

from ride import tables

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = sys.stdout = open(sm.log[0], "w")


def picked(prefix):
    return {k[len(prefix):]: v for k, v in sm.input.items() if k.startswith(prefix)}


rows = tables.render_table(
    sm.params.config,
    sm.wildcards.table,
    sm.wildcards.scale,
    picked("eval_"),
    picked("train_"),
    out_csv=sm.output.csv,
    out_md=sm.output.md,
    out_html=sm.output.html,
    out_provenance=sm.output.provenance,
    benchmark_paths=picked("bench_"),
    dataset_checksums=picked("checksum_"),
    model_paths=picked("model_"),
    extra_provenance={"snakemake": getattr(_smk, "__version__", "?"), "rule": sm.rule},
)
for msg in tables.failures(rows):
    print(msg)
print(f"wrote {sm.output.csv} ({len(rows)} rows)")
