"""python -m annotation_loop.review: serve the QA review page on 127.0.0.1 until Ctrl-C."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from annotation_loop.review.server import make_server
from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH


@hydra.main(config_path=CONFIG_PATH, config_name="review", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    try:
        server = make_server(cfg.qa_dir, cfg.decisions_csv, cfg.host, int(cfg.port), str(cfg.reviewer))
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    host, port = server.server_address[:2]
    print(f"QA review of {cfg.qa_dir}: open http://{host}:{port}/ (Ctrl-C to stop)")
    print(f"  decisions of {cfg.reviewer} are added to {cfg.decisions_csv}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("review page stopped")
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
