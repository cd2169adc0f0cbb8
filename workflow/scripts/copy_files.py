"""Snakemake script: copy input[i] to output[i] (results/<scale>/X -> results/X)."""
import shutil
import sys

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = sys.stdout = open(sm.log[0], "w")
for src, dst in zip(sm.input, sm.output):
    shutil.copyfile(src, dst)
    print(f"{src} -> {dst}")
