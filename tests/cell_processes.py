"""What the cell-process tests share: a quick manifest, a spec file, one cell's command."""

import copy
import subprocess

import yaml
from lipizzaner_cell.executors.local_processes import cell_command as launcher_cell_command
from lipizzaner_cell.executors.local_processes import free_port_block


def quick(manifest: dict, **spec_changes) -> dict:
    manifest = copy.deepcopy(manifest)
    manifest["spec"].update(spec_changes)
    manifest["spec"]["exchange"] = {"firstStateTimeoutSeconds": 20}
    return manifest


def cell_command(spec_path, cell: int, port_base: int) -> list[str]:
    return launcher_cell_command(spec_path, range(cell, cell + 1), port_base, threads=1)


def write_spec(tmp_path, manifest: dict):
    spec_path = tmp_path / "run.yaml"
    spec_path.write_text(yaml.safe_dump(manifest))
    return spec_path


def run_cell(spec_path, cell: int, ports: int, timeout: float) -> subprocess.CompletedProcess:
    """Run one cell process to its end, on a fresh block of `ports` ports."""
    command = cell_command(spec_path, cell, free_port_block(ports))
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
