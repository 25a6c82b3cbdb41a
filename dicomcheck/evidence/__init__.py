"""Evidence packs for audits: JSON, PDF report, DICOM KOS / SR, manifest, signature."""
