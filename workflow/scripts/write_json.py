"""Snakemake script: write params.cfg as JSON to output[0] (the `ride train --config` file)."""
import json
import sys
from pathlib import Path

from ride.data import atomic_write

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = open(sm.log[0], "w")
text = json.dumps(sm.params.cfg, indent=2, sort_keys=True) + "\n"
atomic_write(sm.output[0], lambda tmp: Path(tmp).write_text(text))
print(f"wrote {sm.output[0]}", file=sys.stderr)
