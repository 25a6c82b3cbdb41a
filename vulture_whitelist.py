"""Names vulture cannot see used: a library or framework reads or calls them, not our code.

Each is listed with who uses it. ``tests/test_quality_gates.py`` runs vulture with this file
(``[tool.vulture]`` in pyproject.toml); anything else vulture reports is dead code to remove.
"""

# ruff: noqa: B018 - the bare names and attributes below are the point: vulture counts them as used

_ = object()

# pydantic-settings calls settings_customise_sources by keyword with these parameter names (config.py)
_.settings_customise_sources
_.dotenv_settings
_.file_secret_settings

# the context manager protocol passes them (store/files.py __exit__)
_.exc_info

# a typing-only import named in a string: the bound of store/records.py's Record type variable
_.DataclassInstance

# SQLAlchemy: TypeDecorator hooks and class attributes (store/tables.py)
_.impl
_.cache_ok
_.process_bind_param
_.process_result_value
# index columns written by the store and read by SQL, the migrations and the tests (store/tables.py)
_.started_at
_.instances_received
_.read_at

# pynetdicom reads these: settings on the AE and on messages, its spool-file interface, TLS timeouts
_.require_calling_aet
_.require_called_aet
_.maximum_pdu_size
_.STORE_RECV_CHUNKED_DATASET
_.LOG_HANDLER_LEVEL
_.reason_diagnostic
_._data_set_path
_.file  # SpoolFile.file: pynetdicom calls ``.file.flush()``
_.connection_timeout
_.NamedTemporaryFile  # dimse_messages' spool-file factory, replaced by a pinned fault fix (scp/pynetdicom_fixes.py)
_.DataSet  # C_STORE primitive (tests/peers.py, tests/test_receiver_fuzz.py)

# the standard library calls these: socketserver hooks, tempfile's folder, functools.wraps' target
_.request_queue_size
_.get_request
_.server_bind
_.server_activate
_.handle_error
_.tempdir
_.__wrapped__
_.compress_type  # zipfile.ZipInfo

# typer reads a command's __signature__ (cli.py); uvicorn reads a protocol's disconnected flag (api/server.py)
_.__signature__
_.disconnected

# openpyxl, reportlab: attributes the libraries read when writing the file (api/exports.py, evidence/report_pdf.py)
_.freeze_panes
_.drawHeight
_.drawWidth

# tests/test_receiver_fuzz.py: pynetdicom's own reports of handled protocol errors, counted apart from crashes
_.handled

# DICOM keywords written onto pydicom datasets: pydicom encodes them into the file or message
_.BitsAllocated
_.BitsStored
_.CommandDataSetType
_.CommandField
_.CommandGroupLength
_.ContentDate
_.ContentTime
_.DeviceSerialNumber
_.HighBit
_.ImageType
_.InstanceCreationDate
_.InstanceCreationTime
_.MessageID
_.PatientSex
_.PhotometricInterpretation
_.PixelRepresentation
_.Priority
_.ReferencedSOPClassUID
_.RescaleIntercept
_.RescaleSlope
_.SeriesDate
_.SeriesNumber
_.SeriesTime
_.SourceApplicationEntityTitle
_.SpecificCharacterSet
_.StudyID
_.StudyTime
_.VOILUTFunction
_.WindowCenter
_.WindowWidth

# pydantic fields no Python code reads: they are serialised into the JSON a client or a pack receives
# (api/schemas.py StudyPage, DeviceChangeOut, SeriesOut; decision_record.py SeriesRecord; the evidence
# DICOM and PDF read origin_rule from the dumped document)
_.origin_rule
_.next_cursor
_.reanalyze

# InstanceFacts fields no code reads by name: facts_to_dict (dataclasses.asdict) writes them into the
# index's facts column and into the evidence pack's facts (model.py, store/index.py, evidence/pack.py)
_.burned_in_annotation
_.patient_identity_removed

# TokenRole members pydantic builds from the role stored with an audit event (api/schemas.py AuditOut.role,
# the OpenAPI enum); the role guards name them as strings (api/deps.py), only AUDITOR is named in code
_.READER
_.ADMIN

# DICOM attributes and pydicom flags the retention tests set on data sets they write (tests/test_retention.py)
_.CodeMeaning
_.CodingSchemeDesignator
_.is_undefined_length
_.DataSetTrailingPadding
_.FloatPixelData

# the web pages' Jinja2 templates read these (dicomcheck/ui/templates: dashboard.html, equipment.html)
_.backlog_oldest_days
_.backlog_median_days
_.by_month
_.by_station
_.three_d_rate
_.registrable
# issue 11 operations: the evidence-return counts the dashboard template reads (ui/templates/dashboard.html)
_.returns_waiting
_.returns_failed
_.returns_sent
# FastAPI calls the JSON route beside the pages (ui/pages.py, decorated by json_router, not router)
_.equipment_json
# uvicorn and Selenium read these; a test sets a DICOM attribute pydicom writes (tests/test_ui_*.py)
_.should_exit
_.binary_location
_.StudyDescription

# issue 12 reports: response-model fields FastAPI serialises (api/schemas.py ReportOut, ReportVersionOut,
# ReportReceipt); the role a `token create --role reporter` stores and the report guard names as a string
_.report_id
_.REPORTER
# DICOM attributes the report tests set on the text SR they write (tests/test_report_api.py write_text_sr)
_.CompletionFlag
_.VerificationFlag
_.VerifyingObserverName
_.VerifyingObserverSequence
_.RelationshipType

# issue 13 sessions: a field the sessions page template reads (ui/templates/sessions.html, store/sessions.py)
_.last_decided_at
_.study_uids
_.coded_uids  # the studies a coder may choose as the session's carrier (sessions.html)
