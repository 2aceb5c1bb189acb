"""A stage that runs out of disk stops with one line naming where, leaves no temporary or metrics file behind, and
its rerun after space is freed completes (docs/pipeline.md, "When a stage fails"). The disk is a small tmpfs over
data/ in a mount namespace of the test's own (unshare -rm: no root needed, nothing mounted outside it)."""
import shlex
import subprocess
import sys

import pytest
import yaml

from pipeline.paths import stage_command

SCRIPT = """
set -u
mount -t tmpfs -o size=4m tmpfs data
head -c 3600000 /dev/zero > data/ballast
{source} 2> first.err; echo $? > first.rc
find data -name '*.tmp' > first.tmp
ls metrics > first.metrics
rm data/ballast
{source} 2> second.err; echo $? > second.rc
{python} -c "import pyarrow.parquet as pq; print(pq.read_metadata('data/urls.parquet').num_rows)" > second.rows
"""


@pytest.mark.expensive
def test_a_full_disk_is_one_line_and_the_rerun_after_freeing_space_completes(repo_copy):
    if subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs in a mount namespace of its own here (unshare -rm)")
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    params["source"]["toyworld"]["num_images"] = 300  # ~1.2 MB of renders: more than the 0.4 MB left
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo_copy / "data").mkdir(exist_ok=True)
    (repo_copy / "metrics").mkdir(exist_ok=True)
    subprocess.run(["unshare", "-rm", "sh", "-c", SCRIPT.format(python=sys.executable, source=shlex.join(stage_command("source")))], cwd=repo_copy, check=True,
                   timeout=300)

    def read(name: str) -> str:
        return (repo_copy / name).read_text().strip()

    first = read("first.err").splitlines()
    assert read("first.rc") == "1" and "Traceback" not in read("first.err"), read("first.err")
    assert first[-1] == "error: no space left on device writing data/: free space there and rerun the stage"
    assert read("first.tmp") == "" and "source.json" not in read("first.metrics")
    assert read("second.rc") == "0", read("second.err")
    assert read("second.rows") == "300"
