"""The annotation bootstrap loop: rounds, QA renders, review and ingestion of corrections."""
