"""Snakemake script: copy input[i] to output[i] atomically (results/<scale>/X -> results/X)."""
import shutil
import sys

from ride.data import atomic_write

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = sys.stdout = open(sm.log[0], "w")
for src, dst in zip(sm.input, sm.output):
    atomic_write(dst, lambda tmp, src=src: shutil.copyfile(src, tmp))
    print(f"{src} -> {dst}")
