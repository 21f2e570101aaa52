"""Monitoring what a served model does: the request log, feedback, reports, drift, and curation."""
