"""Snakemake script: render results/<scale>/table3.{csv,md,html} and provenance.json (ride.tables)."""
import sys

import snakemake as _smk

from ride import tables

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = sys.stdout = open(sm.log[0], "w")
scale = sm.wildcards.scale
evals = {k[len("evaljson_"):]: v for k, v in sm.input.items() if k.startswith("evaljson_")}
trains = {k[len("trainjson_"):]: v for k, v in sm.input.items() if k.startswith("trainjson_")}
bench = {v: f"logs/{scale}/benchmarks/train_{v}.tsv" for v in trains}
rows = tables.render_table3(
    sm.params.config,
    scale,
    evals,
    trains,
    out_csv=sm.output.csv,
    out_md=sm.output.md,
    out_html=sm.output.html,
    out_provenance=sm.output.provenance,
    benchmark_paths=bench,
    dataset_checksums={"train": sm.input.checksum_train, "test": sm.input.checksum_test},
    extra_provenance={"snakemake": getattr(_smk, "__version__", "?"), "rule": sm.rule},
)
for msg in tables.failures(rows):
    print(msg)
print(f"wrote {sm.output.csv} ({len(rows)} rows)")
