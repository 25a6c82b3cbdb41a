"""dicomcheck: evidence, from DICOM headers, of where 3D post-processing was made."""

__version__ = "0.1.0"

__all__ = ["__version__"]
