"""The DICOM receiver: a pynetdicom Storage SCP feeding dicomcheck's ingest service."""
