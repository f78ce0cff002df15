"""`fernoise predict IMAGE_OR_FOLDER... [--run RUN]`: classify every face in photos."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fernoise.cli.common import DeviceOpt, WorkspaceOpt, console, handle_errors, wrote


def register(app: typer.Typer) -> None:
    @app.command(name="predict")
    @handle_errors
    def predict_cmd(
        inputs: Annotated[
            list[Path],
            typer.Argument(
                metavar="PHOTOS", help="Photos or folders of photos (searched recursively)."
            ),
        ],
        run: Annotated[
            Path | None,
            typer.Option(
                "--run", help="Training run folder (default: the latest `fernoise train` run)."
            ),
        ] = None,
        out: Annotated[
            Path | None, typer.Option("--out", help="Also write the rows to FILE.csv or FILE.json.")
        ] = None,
        top: Annotated[int, typer.Option("--top", help="Classes listed per face.")] = 3,
        device: DeviceOpt = "auto",
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Align each photo as the run's training data was, and classify every face.

        A photo with no face, or a file that is not an image, gets a row with the reason."""
        from rich.table import Table

        from fernoise.cache import Workspace
        from fernoise.errors import FernoiseError
        from fernoise.predict import PredictParams, predict, write_rows

        if out is not None and out.suffix.lower() not in (".csv", ".json"):
            raise FernoiseError(f"expected a .csv or .json file, got {out.name}", flag="--out")
        params = PredictParams(top=top, device=device)
        run = run or Workspace(workspace).latest("train", what="training run", flag="--run")
        with console.status("detecting and classifying faces"):
            rows = predict(inputs, run, params)
        t = Table(title=f"faces in {len({r['file'] for r in rows})} files (run {Path(run).name})")
        for col in ("file", "face", "label", "prob", f"top-{top}"):
            t.add_column(col, justify="right" if col in ("face", "prob") else "left")
        for r in rows:
            if r["status"] == "ok":
                tops = ", ".join(f"{x['label']} {x['prob']:.2f}" for x in r["top"])
                t.add_row(
                    Path(r["file"]).name, str(r["face"]), r["label"], f"{r['prob']:.2f}", tops
                )
            else:
                t.add_row(
                    Path(r["file"]).name,
                    "—",
                    f"[yellow]{r['status']}[/yellow]",
                    "",
                    r["reason"] or "",
                )
        console.print(t)
        n_faces = sum(r["status"] == "ok" for r in rows)
        console.print(
            f"{n_faces} faces; {sum(r['status'] != 'ok' for r in rows)} files without a face or unreadable"
        )
        if out is not None:
            wrote(write_rows(rows, out))
