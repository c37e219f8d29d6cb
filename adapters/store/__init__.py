"""The dataset store: Parquet shards, the manifest and completion records, the dataset folder,
validation."""
