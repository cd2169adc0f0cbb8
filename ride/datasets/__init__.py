"""The paper's data sets: downloads, safe extraction, preprocessing, HDF5 image and patch sets.

``download`` (mirrors, resume, retries, checksums), ``archive`` (safe extraction), ``pixels``
(grayscale, dequantisation, seeds), ``patches`` (patch sampling, DC removal, the patch-set
file), ``prepared`` (a split's files and their provenance), one module per source
(``bsds300``, ``photos`` — the offline stand-in —, ``vanhateren``, ``brodatz``, ``maf``),
``sources`` (what the workflow's data rules need from ``config/datasets.yaml``), ``commands``
(``ride download``, ``ride prepare``) and ``bench`` (``ride prepare bench``).
"""
