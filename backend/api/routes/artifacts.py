"""Downloads of a case's image and results, streamed with media type, file name, length and ETag."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, Response
from sqlalchemy.orm import Session

from backend.api.deps import SessionDep, StoreDep, require_role
from backend.errors import BadInput
from backend.services import artifacts as art
from backend.services import audit
from backend.services import cases as case_service
from backend.storage import ArtifactStore

router = APIRouter(prefix="/cases", tags=["results"], dependencies=[Depends(require_role("viewer"))])
JobQuery = Annotated[str | None, Query(description="a specific job; default the newest succeeded one")]


def _send(request: Request, store: ArtifactStore, key: str, media_type: str, filename: str,
          etag: str, session: Session | None = None, case_id: str | None = None, kind: str = "") -> Response:
    quoted = f'"{etag}"'
    if request.headers.get("if-none-match") in (quoted, etag, "*"):
        return Response(status_code=304, headers={"ETag": quoted})
    if session is not None:
        audit.record_request(session, request, "case.download", "case", case_id, kind=kind)
    return FileResponse(store.path(key), media_type=media_type, filename=filename,
                        headers={"ETag": quoted, "Cache-Control": "private, max-age=0, must-revalidate"})


def _serve_kind(request: Request, session: SessionDep, store: StoreDep, case_id: str, kind: str,
                job_id: str | None) -> Response:
    case = case_service.get_case(session, case_id)
    job = art.result_job(session, case, job_id)
    row = art.get_artifact(session, job, kind)
    filename = f"{case.id}_{art.KINDS[kind].filename}"
    return _send(request, store, row.key, row.media_type, filename, row.sha256, session, case.id, kind)


@router.get("/{case_id}/mask", summary="The label mask: NIfTI (uint8, input geometry) or DICOM SEG",
            response_class=FileResponse)
def get_mask(request: Request, case_id: str, session: SessionDep, store: StoreDep,
             format: Annotated[Literal["nifti", "dicom-seg"], Query()] = "nifti",
             job_id: JobQuery = None) -> Response:
    kind = "mask_nifti" if format == "nifti" else "seg_dicom"
    return _serve_kind(request, session, store, case_id, kind, job_id)


@router.get("/{case_id}/uncertainty",
            summary="Voxelwise entropy ÷ log K in [0, 1]: NIfTI (float32), DICOM Parametric Map, or PNG",
            response_class=FileResponse)
def get_uncertainty(
    request: Request, case_id: str, session: SessionDep, store: StoreDep,
    format: Annotated[Literal["nifti", "dicom-pm", "png"], Query()] = "nifti",
    axis: Annotated[Literal["axial", "coronal", "sagittal"], Query(description="png: slice plane")] = "axial",
    slice: Annotated[int | None, Query(ge=0, description="png: slice index; omit for a montage")] = None,
    tiles: Annotated[int, Query(ge=1, le=64, description="png montage: number of slices")] = 16,
    job_id: JobQuery = None,
) -> Response:
    if format == "png":
        from backend.services.previews import render_preview

        case = case_service.get_case(session, case_id)
        job = art.result_job(session, case, job_id)
        try:
            png, etag = render_preview(session, store, case, job, axis=axis, index=slice, tiles=tiles)
        except IndexError as exc:
            raise BadInput(str(exc)) from exc
        quoted = f'"{etag}"'
        if request.headers.get("if-none-match") == quoted:
            return Response(status_code=304, headers={"ETag": quoted})
        audit.record_request(session, request, "case.download", "case", case.id, kind="entropy_png")
        name = f"{case.id}_entropy_{axis}_{'montage' if slice is None else slice}.png"
        return Response(png, media_type="image/png", headers={
            "ETag": quoted, "Content-Disposition": f'inline; filename="{name}"'})
    kind = "entropy_nifti" if format == "nifti" else "pm_dicom"
    return _serve_kind(request, session, store, case_id, kind, job_id)


@router.get("/{case_id}/regions", summary="Ranked uncertain regions (JSON), the clinician's go-to list",
            response_class=FileResponse)
def get_regions(request: Request, case_id: str, session: SessionDep, store: StoreDep,
                job_id: JobQuery = None) -> Response:
    return _serve_kind(request, session, store, case_id, "regions_json", job_id)


@router.get("/{case_id}/image", summary="The stored volume as NIfTI (float32, input geometry), for viewers",
            response_class=FileResponse)
def get_image(request: Request, case_id: str, session: SessionDep, store: StoreDep) -> Response:
    case = case_service.get_case(session, case_id)
    return _send(request, store, case.image_key, "application/gzip", f"{case.id}_image.nii.gz", case.sha256,
                 session, case.id, "image")
