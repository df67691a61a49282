"""Data preparation and inspection: parquet (hub format) → HDF5 shards + manifest.json."""
