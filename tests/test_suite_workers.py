"""How ``make test`` shares its two pytest-xdist workers: each trained model on one worker, one core each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import LONGEST_FIRST, REPO, SHARED_TRAININGS

# The whole suite's tests in the order the workers get them: module, fixtures used, group.
COLLECT = """
import json, sys, pytest
sys.path.insert(0, "tests")
from conftest import shared_model_groups
class Recorder:
    def pytest_collection_finish(self, session):
        groups = shared_model_groups(session.items)
        print(json.dumps([[i.path.name, sorted(i.fixturenames), groups[i.nodeid]] for i in session.items]))
sys.exit(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests"], plugins=[Recorder()]))
"""


def test_each_trained_model_and_each_module_runs_in_one_group_and_the_longest_first():
    run = subprocess.run([sys.executable, "-c", COLLECT], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    items = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("[[")))
    assert {module for module, _, _ in items} == {path.name for path in (REPO / "tests").glob("test_*.py")}
    for name in SHARED_TRAININGS:
        users = {group for _, fixtures, group in items if name in fixtures}
        assert len(users) == 1, f"{name} would be trained by {len(users)} workers: {sorted(users)}"
    for module in {module for module, _, _ in items}:
        assert len({group for name, _, group in items if name == module}) == 1, module
    loop, heart, tiny = ({group for module, fixtures, group in items if key == module or key in fixtures}
                         for key in LONGEST_FIRST)
    assert len(loop | heart | tiny) == 3, "the two loops and tiny's tests can run on different workers"
    order = [group for _, _, group in items]
    assert order.index(loop.pop()) < order.index(heart.pop()) < order.index(tiny.pop())


def test_a_worker_is_pinned_to_its_share_of_the_cores_and_its_trainings_thread_over_them():
    cores = sorted(os.sched_getaffinity(0))
    code = ("import os, sys; sys.path.insert(0, 'tests'); import conftest; "
            "from totalseg_train.engine.environment import usable_cores; "
            "print(sorted(os.sched_getaffinity(0)), usable_cores())")
    env = {**os.environ, "PYTEST_XDIST_WORKER": "gw1", "PYTEST_XDIST_WORKER_COUNT": "2"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    share = cores[1::2] if len(cores) >= 2 else cores
    assert run.stdout.split("]")[0] + "]" == str(share)
    assert int(run.stdout.split()[-1]) == len(share)
