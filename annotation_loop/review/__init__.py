"""The review page: a reviewer marks QA'd subjects "ok" or "needs correction"; decisions go to a CSV."""

from annotation_loop.review.decisions import read_decisions, record_decision
from annotation_loop.review.server import make_server

__all__ = ["make_server", "read_decisions", "record_decision"]
