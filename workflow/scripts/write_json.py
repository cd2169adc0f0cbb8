"""Snakemake script: write params.cfg as JSON to output[0] (the `ride train --config` file)."""
import json
import sys
from pathlib import Path

sys.stderr = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)
out = Path(snakemake.output[0])  # noqa: F821
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(snakemake.params.cfg, indent=2, sort_keys=True) + "\n")  # noqa: F821
print(f"wrote {out}", file=sys.stderr)
