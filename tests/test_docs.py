"""Every manifest and command in the README and docs/ is checked.

Manifests (YAML blocks) must parse, and a `LipizzanerRun` must validate. Commands are
parsed as the shell would split them and validated against what they name: the
`lipizzaner` and `lipizzaner-operator` parsers accept their arguments, a bench script
accepts every flag it is given, and every file a command names exists (a Helm `--set`
names a value the chart has). Running them happens elsewhere: the README's set-up in
.ci/run and tests/test_quickstart.py, the envtest script in the operator tests.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_RING
from lipizzaner_cell.commands.cli import build_parser as lipizzaner_parser
from lipizzaner_core.spec import parse_run
from lipizzaner_operator.operator_main import build_parser as operator_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
COMMANDS = ("lipizzaner", "lipizzaner-operator", "python", "kubectl", "helm", "docker")
COMMANDS += ("hack/envtest.sh", ".venv/bin/", "python3", "bash", "source", "KUBECONFIG=")


def blocks() -> list[tuple[str, str, str]]:
    """(where, language, text) of every fenced block."""
    found = []
    for doc in DOCS:
        for match in FENCE.finditer(doc.read_text()):
            line = doc.read_text()[: match.start()].count("\n") + 1
            found.append((f"{doc.relative_to(ROOT)}:{line}", match.group(1), match.group(2)))
    return found


def is_commands(language: str, text: str) -> bool:
    first = [line.strip() for line in text.splitlines() if line.strip()]
    return language in ("bash", "sh") or (bool(first) and first[0].startswith(COMMANDS))


def commands_in(text: str) -> list[list[str]]:
    """Each command of a shell block, split as the shell would (comments, `&&`, pipes)."""
    joined = text.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", "|", ";"):
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


YAML_BLOCKS = [b for b in blocks() if b[1] == "yaml"]
COMMAND_BLOCKS = [b for b in blocks() if b[1] != "yaml" and is_commands(b[1], b[2])]


def test_the_docs_have_manifests_and_commands_to_check():
    assert len(YAML_BLOCKS) >= 1 and len(COMMAND_BLOCKS) >= 10


@pytest.mark.parametrize(("where", "language", "text"), YAML_BLOCKS, ids=lambda b: str(b)[:40])
def test_every_manifest_in_the_docs_parses_and_validates(where, language, text):
    for document in yaml.safe_load_all(text):
        if isinstance(document, dict) and document.get("kind") == "LipizzanerRun":
            parse_run(document)
        elif isinstance(document, dict) and set(document) == {"spec"}:  # a spec's excerpt
            parse_run({**TINY_RING, "spec": {**TINY_RING["spec"], **document["spec"]}})


def check_lipizzaner(arguments: list[str], parser) -> None:
    try:
        parser.parse_args(arguments)
    except SystemExit as exit_:
        assert exit_.code == 0, f"rejected: {arguments}"


SCRIPTS = ("bench/", "fuzz/")  # scripts whose --help names every flag they take


def check_bench(script: Path, arguments: list[str]) -> None:
    assert script.exists(), script
    helped = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert helped.returncode == 0, helped.stderr
    for flag in (a.split("=")[0] for a in arguments if a.startswith("--")):
        assert flag in helped.stdout, f"{script.name} has no {flag}"


def helm_values() -> dict:
    return yaml.safe_load((ROOT / "helm" / "lipizzaner" / "values.yaml").read_text())


def check_helm(arguments: list[str]) -> None:
    values = helm_values()
    for index, word in enumerate(arguments):
        if word == "--set":
            key = arguments[index + 1].split("=")[0]
            node = values
            for part in key.split("."):
                if node == {}:
                    break  # a free-form map (labels, annotations): any key goes
                assert isinstance(node, dict) and part in node, f"the chart has no value {key}"
                node = node[part]
        elif word.startswith("helm/"):
            assert (ROOT / word).exists(), word


def check_files(arguments: list[str]) -> None:
    """Repository paths a command names (examples/..., crds/..., -f FILE) must exist."""
    for word in arguments:
        if re.match(r"^(examples|crds|helm|operator|cell_image|hack|bench|fuzz)/", word):
            assert (ROOT / word).exists(), f"{word} does not exist"


@pytest.mark.parametrize(("where", "language", "text"), COMMAND_BLOCKS, ids=lambda b: str(b)[:40])
def test_every_command_in_the_docs_names_real_flags_and_files(where, language, text):
    for command in commands_in(text):
        while command and "=" in command[0] and not command[0].startswith("-"):
            command = command[1:]  # VAR=value prefixes
        if not command:
            continue
        program, arguments = Path(command[0]).name, command[1:]
        check_files(arguments)
        if program == "lipizzaner":
            check_lipizzaner(arguments, lipizzaner_parser())
        elif program == "lipizzaner-operator":
            check_lipizzaner(arguments, operator_parser())
        elif program in ("python", "python3") and arguments[:1] and arguments[0][:5] in SCRIPTS:
            check_bench(ROOT / arguments[0], arguments[1:])
        elif program == "helm":
            check_helm(arguments)


def ci_commands(path: Path) -> list[str]:
    """The shell lines of a GitHub Actions workflow's `run` steps or a GitLab job's script."""
    document = yaml.safe_load(path.read_text())
    lines = []
    for job in document.get("jobs", {}).values():  # GitHub Actions
        lines += [step["run"] for step in job["steps"] if "run" in step]
    for job in document.values():  # GitLab CI
        if isinstance(job, dict) and "script" in job:
            lines += job["script"]
    return lines


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "ci").glob("*.yml")), ids=str)
def test_the_ci_examples_submit_wait_check_the_score_and_keep_the_outcome(path):
    text = "\n".join(ci_commands(path))
    submits = [c for c in commands_in(text) if c[:2] == ["lipizzaner", "submit"]]
    assert submits, f"{path.name} submits nothing"
    for command in submits:
        check_files(command[1:])
        check_lipizzaner(command[1:], lipizzaner_parser())
        assert {"--wait", "--max-score", "--result"} <= set(command), command
        parse_run(yaml.safe_load((ROOT / command[2]).read_text()))
    kept = path.read_text()
    assert "result.json" in kept.split("--result result.json", 1)[1], "the outcome is kept"


EXAMPLES = sorted((ROOT / "examples").glob("**/*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_manifest_validates(path):
    for document in yaml.safe_load_all(path.read_text()):
        if isinstance(document, dict) and document.get("kind") == "LipizzanerRun":
            parse_run(document)


def test_the_paper_configurations_cover_1x1_to_4x4_with_the_published_settings():
    """examples/paper/: the original's NeurIPS 2018 MNIST and CelebA configurations."""
    for dataset, generations, rate in (("mnist", 200, 2e-4), ("celeba", 50, 5e-5)):
        for side in (1, 2, 3, 4):
            run = parse_run(
                yaml.safe_load((ROOT / f"examples/paper/{dataset}-{side}x{side}.yaml").read_text())
            )
            spec = run.spec
            assert (spec.grid.rows, spec.grid.cols) == (side, side)
            assert (spec.generations, spec.coevolution.learning_rate) == (generations, rate)
            assert spec.score.final_samples == 50_000 and spec.mixture.keep == "last"
            assert spec.coevolution.mutation.probability == 0.0  # a constant rate, as published
            assert spec.mixture.score_sample_size == 1000  # what the original's FID read
