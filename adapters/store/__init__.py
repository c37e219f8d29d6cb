"""The dataset store: Parquet shards, the manifest and its bookkeeping, the dataset folder,
validation."""
