"""Print pip's configured package sources as uv options, so that ``make setup``'s uv installs from exactly where
pip would: the machine's local indexes and wheel folders, and its version caps.

uv reads no pip configuration. pip takes the best version across all its indexes; uv does so with
``--index-strategy unsafe-best-match`` and, for a version on several indexes, takes the first: the local ones come
before PyPI, uv's default, so a wheel on this disk is never downloaded again.
"""

import subprocess
import sys

OPTIONS = {"index-url": "--default-index", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
           "constraint": "--constraint"}

listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
words: list[str] = []
for line in listed.splitlines():
    key, _, value = line.partition("=")
    option = OPTIONS.get(key.rpartition(".")[2])
    for item in value.strip().strip("'\"").split() if option else ():
        if item not in words[1::2]:  # pip lists a setting from its file and again from the environment
            words += [option, item]
print(" ".join(["--index-strategy", "unsafe-best-match", *words]))
