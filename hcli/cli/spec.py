"""`hcli spec show | validate | schema`."""

from typing import Annotated

import typer

from hcli.cli._common import Overrides, print_json

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)

KindOpt = Annotated[
    str | None,
    typer.Option("--kind", "-k", help="Job kind: probe, multiclass, mae, meta, adapt."),
]


@app.command("show")
def show(
    config: Annotated[str | None, typer.Argument(help="YAML spec (path or configs/ name).")] = None,
    kind: KindOpt = None,
    override: Overrides = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON instead of YAML.")] = False,
) -> None:
    """Print the fully resolved spec (defaults < CONFIG < --kind < -o overrides) and its run id."""
    from hcli.identity import run_id
    from hcli.spec import load_spec, spec_to_yaml

    spec = load_spec(config, kind=kind, overrides=override or [])
    if json_out:
        print_json({"run_id": run_id(spec), "spec": spec.model_dump(mode="json")})
    else:
        typer.echo(f"# run id: {run_id(spec)}")
        typer.echo(spec_to_yaml(spec), nl=False)


@app.command("validate")
def validate(
    config: Annotated[str, typer.Argument(help="YAML spec (path or configs/ name).")],
    override: Overrides = None,
) -> None:
    """Check a spec; exit 0 and print its run id when valid, exit 2 naming the key otherwise."""
    from hcli.identity import run_id
    from hcli.spec import load_spec

    spec = load_spec(config, overrides=override or [])
    typer.echo(f"ok: {config} is valid (run id {run_id(spec)})")


@app.command("schema")
def schema() -> None:
    """Print the JSON schema of the spec (point your editor's YAML plugin at it)."""
    from hcli.spec import Spec

    print_json(Spec.model_json_schema())
