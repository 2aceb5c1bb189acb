"""The layers of docs/architecture.md: stages -> pipeline and fixclip -> core -> third-party. core imports neither
side (nor torch), fixclip never imports the pipeline, and the pipeline imports fixclip only where it wires the model
into a stage (the train section's schema and its reference page, the benchmark entries and adapters)."""
import subprocess
import sys

from tests.conftest import REPO
from tests.test_import_circles import module_imports

# The pipeline modules that may import fixclip, and why: the train: section *is* fixclip's TrainConfig; the
# evaluate: section's benchmark entries and the benchmarks stage's adapters are fixclip's benchmark registry.
PIPELINE_ON_FIXCLIP = {
    "pipeline/params/train.py": "the train: section is fixclip.train.config.TrainConfig",
    "pipeline/params/evaluate.py": "the benchmark entries come from fixclip.eval.benchmarks' registry",
    "pipeline/benchmarks.py": "the benchmarks stage writes each benchmark through its fixclip adapter",
    "pipeline/params/reference.py": "docs/params.md lists the train: section and each method's from fixclip",
}


def imports_of(root: str) -> dict[str, set[str]]:
    """Each module under `root` -> the repository modules it imports."""
    return {module: targets for module, targets in module_imports().items() if module.startswith(f"{root}/")}


def layer_of(module: str) -> str:
    return module.split("/")[0]


def test_core_imports_neither_side():
    found = {module: sorted(t for t in targets if layer_of(t) != "core")
             for module, targets in imports_of("core").items()}
    assert not {m: t for m, t in found.items() if t}, found


def test_fixclip_never_imports_the_pipeline_or_the_stages():
    found = {module: sorted(t for t in targets if layer_of(t) in ("pipeline", "stages"))
             for module, targets in imports_of("fixclip").items()}
    assert not {m: t for m, t in found.items() if t}, found


def test_the_pipeline_imports_fixclip_only_to_wire_the_model():
    found = {module for module, targets in imports_of("pipeline").items()
             if any(layer_of(t) == "fixclip" for t in targets)}
    assert found == set(PIPELINE_ON_FIXCLIP), found ^ set(PIPELINE_ON_FIXCLIP)


def test_core_and_params_validation_do_not_import_torch():
    modules = [p.relative_to(REPO).with_suffix("").as_posix().replace("/", ".") for p in (REPO / "core").glob("*.py")]
    code = (f"import sys; import {', '.join(modules)}, pipeline.params; "
            "sys.exit(sorted({'torch', 'open_clip', 'ray'} & set(sys.modules)) or 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
