"""The review page: a local HTTP server (standard library) over a QA folder.

It lists the subjects with their thumbnails and QA flags, filters by flag, opens a subject's
full sheet, and appends each "ok" / "needs correction" decision with its note, the reviewer and
the label map the sheet shows (path and SHA-256, from QA's renders.csv) to the decisions CSV; a
label map changed since its sheet was rendered takes no decision until QA renders it again. Bound to 127.0.0.1 only; requests naming another host are refused (a web page
elsewhere cannot reach it through DNS tricks), and decisions are accepted as JSON only.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd

from annotation_loop.review.decisions import DECISIONS, latest_decisions, read_decisions, record_decision
from annotation_loop.review.page import PAGE
from totalseg_train.checksums import file_sha256

log = logging.getLogger(__name__)

SUBJECT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_BODY = 16_384
# QA's outputs in its folder, as annotation_loop.qa writes them (not imported: that would load the renderer).
RENDERS_CSV = "renders.csv"


class StaleSheet(ValueError):
    """The label map a sheet shows has changed (or gone) since QA rendered it."""


class ReviewData:
    """What the page shows: the QA folder's flags and renders, and the decisions so far."""

    def __init__(self, qa_dir: Path, decisions_csv: Path, reviewer: str):
        self.qa_dir = qa_dir
        self.decisions_csv = decisions_csv
        self.reviewer = reviewer
        self.lock = threading.Lock()
        flags_csv = qa_dir / "flags.csv"
        if not flags_csv.exists():
            raise FileNotFoundError(
                f"{flags_csv} does not exist: render the QA sheets first (python -m annotation_loop.qa labels_dir=...)"
            )
        self.flags = pd.read_csv(flags_csv, keep_default_na=False, dtype={"subject_id": str})
        self.flags = self.flags[self.flags.subject_id.map(lambda s: bool(SUBJECT_ID.match(s)))]
        findings_csv = qa_dir / "flag_findings.csv"
        self.findings = (pd.read_csv(findings_csv, keep_default_na=False, dtype={"subject_id": str})
                         if findings_csv.exists() else pd.DataFrame(columns=["subject_id", "flag", "class_name", "place", "detail"]))
        self.ids = set(self.flags.subject_id)
        # The flag columns between subject_id and the totals: QA's rules, or another stage's QC (heart transfer).
        self.flag_names = [c for c in self.flags.columns if c not in ("subject_id", "n_flags", "flags")]

    def subjects(self) -> list[dict]:
        with self.lock:
            decisions = latest_decisions(read_decisions(self.decisions_csv))
        rows = []
        for r in self.flags.itertuples(index=False):
            decided = decisions.loc[r.subject_id] if r.subject_id in decisions.index else None
            rows.append({
                "subject_id": r.subject_id,
                "flags": [f for f in self.flag_names if str(getattr(r, f)) == "True"],
                "n_flags": int(r.n_flags),
                "flags_text": getattr(r, "flags"),
                "findings": [
                    f"{f.flag}: {f.class_name}{' at ' + f.place if getattr(f, 'place', '') else ''}: {f.detail}"
                    for f in self.findings[self.findings.subject_id == r.subject_id].itertuples()
                ],
                "thumb": f"/thumbs/{r.subject_id}.png",
                "sheet": f"/sheets/{r.subject_id}.png",
                "has_sheet": (self.qa_dir / "subjects" / f"{r.subject_id}.png").exists(),
                "decision": decided.decision if decided is not None else "",
                "note": decided.note if decided is not None else "",
            })
        return rows

    def shown_file(self, subject_id: str) -> tuple[str, str]:
        """The label map the subject's sheet shows and its SHA-256 at rendering; StaleSheet when the file
        has changed since."""
        renders_csv = self.qa_dir / RENDERS_CSV
        renders = (pd.read_csv(renders_csv, keep_default_na=False, dtype=str).set_index("subject_id")
                   if renders_csv.exists() else pd.DataFrame())
        if subject_id not in renders.index or not renders.loc[subject_id].get("labels_sha256"):
            raise StaleSheet(f"{subject_id}: no sheet of a known label map in {renders_csv}; render QA again")
        shown = renders.loc[subject_id]
        path = Path(shown["labels_file"])
        if not path.is_file() or file_sha256(path) != shown["labels_sha256"]:
            raise StaleSheet(f"{subject_id}: {path} has changed since its sheet was rendered; render QA again "
                             "before deciding")
        return str(path), str(shown["labels_sha256"])

    def decide(self, subject_id: str, decision: str, note: str) -> dict:
        if subject_id not in self.ids:
            raise KeyError(f"unknown subject {subject_id!r}")
        with self.lock:
            reviewed_file, sha256 = self.shown_file(subject_id)
            return record_decision(self.decisions_csv, subject_id, decision, note, self.reviewer, reviewed_file,
                                   sha256)


class ReviewHandler(BaseHTTPRequestHandler):
    data: ReviewData  # set on the subclass made by make_server
    server_version = "totalseg-review/1"

    def log_message(self, format: str, *args) -> None:  # route the access log through logging
        log.debug("%s " + format, self.address_string(), *args)

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        return host in {"127.0.0.1", "localhost", "::1"}

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._host_ok():
            return self._json(HTTPStatus.FORBIDDEN, {"error": "host not allowed"})
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            return self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
        if path == "/api/subjects":
            return self._json(HTTPStatus.OK, {"flags": self.data.flag_names, "decisions": list(DECISIONS),
                                              "subjects": self.data.subjects()})
        match = re.fullmatch(r"/(thumbs|sheets)/([^/]+)\.png", path)
        if match and match.group(2) in self.data.ids:
            folder = "thumbs" if match.group(1) == "thumbs" else "subjects"
            file = self.data.qa_dir / folder / f"{match.group(2)}.png"
            if file.exists():
                return self._send(HTTPStatus.OK, file.read_bytes(), "image/png")
        self._json(HTTPStatus.NOT_FOUND, {"error": f"not found: {path}"})

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok():
            return self._json(HTTPStatus.FORBIDDEN, {"error": "host not allowed"})
        if self.path != "/api/decision":
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"not found: {self.path}"})
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            return self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send the decision as JSON"})
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "empty or oversized request"})
        try:
            body = json.loads(self.rfile.read(length))
            row = self.data.decide(str(body["subject_id"]), str(body["decision"]), str(body.get("note", "")))
        except StaleSheet as exc:
            return self._json(HTTPStatus.CONFLICT, {"error": str(exc)})
        except (ValueError, KeyError, TypeError) as exc:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        log.info("decision %s: %s %s", row["subject_id"], row["decision"], row["note"])
        self._json(HTTPStatus.OK, row)


def make_server(qa_dir: str | Path, decisions_csv: str | Path, host: str = "127.0.0.1", port: int = 0,
                reviewer: str = "unknown") -> ThreadingHTTPServer:
    """A review server over ``qa_dir`` (not yet serving); port 0 picks a free port (see server.server_port).
    ``reviewer``: the name stored with every decision."""
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise ValueError(f"the review page serves on this machine only (127.0.0.1), not on {host!r}")
    data = ReviewData(Path(qa_dir), Path(decisions_csv), reviewer)
    handler = type("BoundReviewHandler", (ReviewHandler,), {"data": data})
    return ThreadingHTTPServer((host, port), handler)
