"""Synthetic DICOM for tests and the demo: image series, SEG, RTSTRUCT, single images, PNG masks.

Nothing here is patient data. Every file is deterministic: UIDs are ``2.25`` UIDs derived from a
seed, the patient attributes and the content (name-based UUIDs), and no wall-clock time is
written.

Geometry. Volumes are given in canonical RAS+ voxel order, shape (X, Y, Z): axis 0 toward the
patient's Right, 1 Anterior, 2 Superior (see ``medgrit.core.slicing``), spacing in mm per axis,
and ``origin`` = RAS+ mm of voxel (0, 0, 0) (default: the volume centred on 0). The canonical
affine is therefore ``diag(spacing)`` plus ``origin``, which is what a NIfTI of the same volume
holds. The series is written in DICOM's LPS patient frame (x toward Left, y Posterior,
z Superior), one file per slice of the chosen acquisition plane:

============  ======================  ====================  =====================
orientation   row direction (LPS)     column direction      slice normal
============  ======================  ====================  =====================
axial         +x (toward Left)        +y (Posterior)        +z (Superior)
coronal       +x (toward Left)        -z (Inferior)         +y (Posterior)
sagittal      +y (Posterior)          -z (Inferior)         -x (toward Right)
============  ======================  ====================  =====================

File names (and InstanceNumber) are shuffled by default, so a reader must sort slices by
``ImagePositionPatient``. :func:`write_seg` and :func:`write_rtstruct` take a label volume on
the same canonical grid plus the series files, and recover each file's slice from its position.
"""

from __future__ import annotations

from medgrit.adapters.synthetic.dicom_writer.common import ORIENTATIONS, series_affine
from medgrit.adapters.synthetic.dicom_writer.masks import write_rtstruct, write_seg
from medgrit.adapters.synthetic.dicom_writer.series import write_series
from medgrit.adapters.synthetic.dicom_writer.single import write_mask_png, write_single_image

__all__ = [
    "ORIENTATIONS",
    "series_affine",
    "write_mask_png",
    "write_rtstruct",
    "write_seg",
    "write_series",
    "write_single_image",
]
