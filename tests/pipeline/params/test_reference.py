"""docs/params.md is the schema's reference page: every key described once, in the schema, and the page and
params.yaml's comments kept to it."""
from pipeline.params import Params
from pipeline.params.reference import COMMAND, PAGE, description, main, page, undescribed, yaml_comments
from tests.conftest import REPO


def test_every_key_has_a_description():
    assert undescribed() == []


def test_a_field_without_description_is_found():
    class Bare(Params):
        extra_key: int = 0

    assert undescribed(Bare) == ["extra_key"]


def test_the_page_is_what_the_schema_writes():
    assert (REPO / PAGE).read_text() == page(), f"{PAGE} is out of date: run {COMMAND}"


def test_check_fails_naming_the_command_when_the_page_differs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / PAGE).write_text(page().replace("Params reference", "Params"))
    assert main(["--check"]) == 1
    assert COMMAND in capsys.readouterr().err
    assert main([]) == 0 and main(["--check"]) == 0


def _schema_descriptions() -> dict[str, str]:
    """Dotted key -> description, from the page's own walk (sections: their field's or class's docstring)."""
    found = {}
    for line in page().splitlines():
        if line.startswith("- `"):
            key, rest = line[3:].split("`", 1)
            found[key] = rest.split("): ", 1)[1]
    return found


def _norm(text: str) -> str:
    return " ".join(text.split()).lower().rstrip(".")


def test_params_yaml_comments_start_the_schema_descriptions():
    """params.yaml's comment beside a key is the start of its description (a short form of it), never a third,
    drifting text."""
    described = _schema_descriptions()
    section_of = {name: description(field, field.annotation) for name, field in Params.model_fields.items()}
    sections = {f"{s}.{name}": description(field, field.annotation)
                for s, f in Params.model_fields.items()
                for name, field in getattr(f.annotation, "model_fields", {}).items()}
    from fixclip.methods import METHODS
    sections |= {f"train.{name}": " ".join((entry.section.__doc__ or "").split()) for name, entry in METHODS.items()}
    wrong = []
    for key, comment in yaml_comments((REPO / "params.yaml").read_text()).items():
        full = described.get(key) or section_of.get(key) or sections.get(key)
        if full is None or not _norm(full).startswith(_norm(comment)):
            wrong.append(f"{key}: {comment!r} does not start {full!r}")
    assert wrong == []
