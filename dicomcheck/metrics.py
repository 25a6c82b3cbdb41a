"""Prometheus metrics of this process (prometheus_client: the reference exposition library)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

INSTANCES = Counter(
    "dicomcheck_instances_received_total", "C-STORE requests answered, by DIMSE status", ["status"], registry=REGISTRY
)
ASSOCIATIONS = Counter("dicomcheck_associations_total", "Associations, by result", ["result"], registry=REGISTRY)
DECISIONS = Counter("dicomcheck_decisions_total", "Study decisions made, by outcome", ["outcome"], registry=REGISTRY)
REGISTRY_FILE_ERROR = Gauge(
    "dicomcheck_registry_file_error",
    "1 while the --devices file cannot be used (decisions use its "
    "last good version; /healthz says why), 0 when it is in use or none is configured",
    registry=REGISTRY,
)
STORAGE_BYTES = Gauge(
    "dicomcheck_storage_bytes",
    "Bytes kept, by state: full (instances with their pixel data), header_only (copies after pixel_retention), "
    "quarantine, evidence (packs), retention (signed retention records); updated by each retention pass",
    ["state"],
    registry=REGISTRY,
)
OLDEST_UNPRUNED_STUDY = Gauge(
    "dicomcheck_oldest_unpruned_study_seconds",
    "Seconds since the current decision of the oldest decided study that retention has not gone over yet "
    "(0 when none); above pixel_retention plus an hour, retention is falling behind",
    registry=REGISTRY,
)
STORAGE_FREE_BYTES = Gauge(
    "dicomcheck_storage_free_bytes", "Bytes available on the storage volume (last check)", registry=REGISTRY
)
STORAGE_BELOW_MIN_FREE = Gauge(
    "dicomcheck_storage_below_min_free_space",
    "1 while the storage volume is below min_free_space (new instances refused with 0xA700), else 0",
    registry=REGISTRY,
)
REVIEW_BACKLOG = Gauge(
    "dicomcheck_review_backlog_studies",
    "Studies whose current decision is needs_review and that no current coder review settles (the worklist); "
    "read from the index at each scrape",
    registry=REGISTRY,
)
REVIEW_BACKLOG_OLDEST = Gauge(
    "dicomcheck_review_backlog_oldest_seconds",
    "Seconds since the first arrival of the oldest study waiting for a coder (0 when none)",
    registry=REGISTRY,
)
PENDING_STUDIES = Gauge(
    "dicomcheck_pending_studies", "Studies received and not yet decided with every instance", registry=REGISTRY
)
QUARANTINED = Gauge(
    "dicomcheck_quarantined_inputs", "Inputs quarantined (refused), expired ones included", registry=REGISTRY
)
EVIDENCE_RETURNS = Gauge(
    "dicomcheck_evidence_returns",
    "Evidence returns to the PACS by state: pending (waiting for an attempt) and failed (given up; "
    "`dicomcheck evidence returns --retry`)",
    ["state"],
    registry=REGISTRY,
)
REQUEST_LATENCY = Histogram(
    "dicomcheck_http_request_seconds",
    "HTTP request latency",
    ["route", "method", "status"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
