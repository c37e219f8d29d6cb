"""Writers of synthetic and demo data (the bundled demo and the synthetic DICOM writer)."""
