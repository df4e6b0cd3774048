"""`nqexp spec schema|fields` and `nqexp init`: the spec format for editors and readers, and the shipped specs to edit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click


@click.group("spec")
def spec():
    """Experiment specs: the JSON Schema editors use to complete and check YAML, and the field reference.

    \b
    Example:
      nqexp spec schema > nqexp.schema.json
      nqexp spec fields
    """


@spec.command("schema")
def spec_schema():
    """Print the JSON Schema of an experiment spec (every section, field, type, bound and description).

    Point your editor's YAML language server at it, e.g. a first line
    `# yaml-language-server: $schema=nqexp.schema.json` in a spec.

    \b
    Example:
      nqexp spec schema > nqexp.schema.json
    """
    from nqexp.experiment import spec as spec_mod

    click.echo(json.dumps(spec_mod.json_schema(), indent=1))


@spec.command("fields")
def spec_fields():
    """Print every section field with its default and meaning, as Markdown (docs/experiments.md §18).

    The meanings are the comments on the fields in the code, the same text `nqexp spec schema`
    gives editors.

    \b
    Example:
      nqexp spec fields | grep model.patch_len
    """
    from nqexp.experiment import spec as spec_mod

    click.echo(spec_mod.field_reference(), nl=False)


@click.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default="experiments")
@click.option("--force", is_flag=True, help="Overwrite specs that already exist there.")
def init(directory, force):
    """Copy the shipped experiment specs into DIRECTORY to edit them (works from an installed wheel).

    Shipped names also work directly: `nqexp run quickstart` runs the shipped quickstart.yaml
    unless a file of that name exists.

    \b
    Example:
      nqexp init my_experiments && nqexp run my_experiments/quickstart.yaml --dry-run
    """
    from nqexp.errors import DataError
    from nqexp.experiment import spec as spec_mod

    if directory.exists() and not directory.is_dir():
        raise DataError(f"{directory} exists and is not a folder")
    directory.mkdir(parents=True, exist_ok=True)
    copied, kept = [], []
    for name, src in spec_mod.shipped_specs().items():
        dst = directory / f"{name}.yaml"
        if dst.exists() and not force:
            kept.append(dst.name)
            continue
        shutil.copyfile(src, dst)
        copied.append(dst.name)
    click.echo(f"Copied {len(copied)} spec(s) to {directory}: {', '.join(copied) or 'none'}.")
    if kept:
        click.echo(f"Kept {len(kept)} existing file(s) (use --force to overwrite): {', '.join(kept)}.")
